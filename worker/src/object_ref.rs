//! [`ObjectRef`]: a typed reference to an immutable object owned by some process.

use std::cell::RefCell;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use std::borrow::Cow;

use manta_proto::task::{ObjectRefWire, WorkerAddress};
use manta_proto::{NodeId, ObjectId, WorkerId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::{Core, current};
use crate::error::{Error, Result};

/// An untyped reference; counted in its process's reference table while it lives.
pub(crate) struct RefInner {
    pub(crate) object_id: ObjectId,
    /// Shared by the refs of one owner (see [`shared_owner`]).
    pub(crate) owner: Arc<WorkerAddress>,
    core: Option<Arc<Core>>,
}

impl Drop for RefInner {
    fn drop(&mut self) {
        if let Some(core) = &self.core {
            let actions = core.store.remove_local_ref(self.object_id);
            if !actions.is_empty() {
                core.apply(actions);
            }
        }
    }
}

thread_local! {
    /// Refs serialized on this thread, per open [`collecting`] scope.
    static COLLECTED: RefCell<Vec<Vec<UntypedRef>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `serialize`, returning the refs it serialized (nested in the value):
/// the caller pins them for as long as the serialized value needs them.
pub(crate) fn collecting<R>(serialize: impl FnOnce() -> R) -> (R, Vec<UntypedRef>) {
    COLLECTED.with(|stack| stack.borrow_mut().push(Vec::new()));
    let result = serialize();
    let refs = COLLECTED.with(|stack| stack.borrow_mut().pop()).unwrap_or_default();
    (result, refs)
}

/// A reference without its value type (what the runtime passes around).
#[derive(Clone)]
pub struct UntypedRef(pub(crate) Arc<RefInner>);

impl UntypedRef {
    /// A reference to `object_id` owned by `owner`, counted in this process's store.
    pub(crate) fn new(object_id: ObjectId, owner: Arc<WorkerAddress>) -> Self {
        let core = current();
        if let Some(core) = &core {
            let borrowed = (core.worker.worker_id != owner.worker_id).then_some(&*owner);
            if let Some(action) = core.store.add_local_ref(object_id, borrowed) {
                core.apply(vec![action]);
            }
        }
        Self(Arc::new(RefInner { object_id, owner, core }))
    }

    /// The owner's wire form plus whether this process owns it.
    pub(crate) fn nested_entry(&self, me: &WorkerAddress) -> (ObjectId, Option<WorkerAddress>) {
        let owner = (self.0.owner.worker_id != me.worker_id).then(|| (*self.0.owner).clone());
        (self.0.object_id, owner)
    }

    /// The object's id.
    pub fn object_id(&self) -> ObjectId {
        self.0.object_id
    }

    /// The owner.
    pub(crate) fn owner(&self) -> &WorkerAddress {
        &self.0.owner
    }

    pub(crate) fn to_wire(&self) -> ObjectRefWire {
        ObjectRefWire { object_id: self.0.object_id, owner: (*self.0.owner).clone() }
    }
}

impl fmt::Debug for UntypedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({})", self.0.object_id)
    }
}

impl Serialize for UntypedRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let collected = COLLECTED.with(|stack| match stack.borrow_mut().last_mut() {
            Some(refs) => {
                refs.push(self.clone());
                true
            }
            None => false,
        });
        if !collected {
            // Serialized outside manta (out of band): nobody can tell when the copy is
            // done with, so the object stays pinned for the life of this process.
            std::mem::forget(self.clone());
        }
        WireRef { object_id: self.0.object_id, owner: &self.0.owner }.serialize(serializer)
    }
}

/// [`ObjectRefWire`] written without copying the owner's address.
#[derive(Serialize)]
struct WireRef<'a> {
    object_id: ObjectId,
    owner: &'a WorkerAddress,
}

/// [`ObjectRefWire`] read without copying the owner's address out of the input.
#[derive(Deserialize)]
struct WireRefIn<'a> {
    object_id: ObjectId,
    #[serde(borrow)]
    owner: WireOwnerIn<'a>,
}

#[derive(Deserialize)]
struct WireOwnerIn<'a> {
    worker_id: WorkerId,
    #[serde(borrow)]
    address: Cow<'a, str>,
    node_id: NodeId,
}

thread_local! {
    /// The owner of the last ref read on this thread: the refs in one value
    /// mostly share an owner, and then share one copy of its address.
    static LAST_OWNER: RefCell<Option<Arc<WorkerAddress>>> = const { RefCell::new(None) };
}

/// One shared copy of the owner's address for refs read in a row.
fn shared_owner(owner: WireOwnerIn<'_>) -> Arc<WorkerAddress> {
    LAST_OWNER.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(known) = last.as_ref()
            && known.worker_id == owner.worker_id
            && known.node_id == owner.node_id
            && known.address == owner.address
        {
            return known.clone();
        }
        let fresh = Arc::new(WorkerAddress {
            worker_id: owner.worker_id,
            address: owner.address.into_owned(),
            node_id: owner.node_id,
        });
        *last = Some(fresh.clone());
        fresh
    })
}

impl<'de> Deserialize<'de> for UntypedRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireRefIn::deserialize(deserializer)?;
        Ok(UntypedRef::new(wire.object_id, shared_owner(wire.owner)))
    }
}

/// A reference to an object whose value is a `T`: what `remote()` and `put`
/// return. `get` it (or `.await` it) for the value; pass it to other tasks
/// and actors, where it is resolved to its value before they run.
pub struct ObjectRef<T> {
    pub(crate) inner: UntypedRef,
    marker: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_untyped(inner: UntypedRef) -> Self {
        Self { inner, marker: PhantomData }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.inner.object_id()
    }

    /// The reference without its type.
    pub fn untyped(&self) -> &UntypedRef {
        &self.inner
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Waits for the value (blocking this thread).
    pub fn get(&self) -> Result<T> {
        crate::api::get(self)
    }

    /// Waits up to `timeout` for the value.
    pub fn get_timeout(&self, timeout: std::time::Duration) -> Result<T> {
        crate::api::get_timeout(self, timeout)
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), marker: PhantomData }
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.inner.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::from_untyped(UntypedRef::deserialize(deserializer)?))
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let core = crate::core::core()?;
            let bytes = crate::api::fetch(&core, &self.inner, None).await?;
            let value = crate::api::decode::<T>(&bytes, self.id());
            core.flush_registrations().await;
            value
        })
    }
}

/// What a remote function or actor method accepts for a parameter of type `T`:
/// a value (sent inline) or an `ObjectRef<T>` (resolved to its value first).
pub trait IntoArg<T> {
    /// The argument as the runtime passes it.
    fn into_arg(self) -> Arg;
}

/// One argument of a call.
#[derive(Debug)]
pub enum Arg {
    /// A serialized value (or why it could not be serialized), and the refs nested
    /// in it (pinned until the call is done).
    Value(Result<bytes::Bytes, String>, Vec<UntypedRef>),
    /// A reference, resolved to its value before the call runs.
    Ref(UntypedRef),
}

impl Arg {
    /// Serializes `value`.
    pub fn value<T: Serialize + ?Sized>(value: &T) -> Self {
        let (bytes, nested) = collecting(|| rmp_serde::to_vec_named(value));
        Arg::Value(
            bytes
                .map(bytes::Bytes::from)
                .map_err(|error| format!("{} cannot be serialized: {error}", std::any::type_name::<T>())),
            nested,
        )
    }
}

/// A call's arguments, split.
pub(crate) struct SplitArgs {
    /// Arguments passed by reference, to resolve before the call: (position, ref).
    pub references: Vec<(usize, UntypedRef)>,
    /// Refs nested in inline arguments: held until the call is done.
    pub nested: Vec<UntypedRef>,
}

/// Splits call arguments into inline values (written into `args`) and references to
/// resolve later. `Err` carries a serialization failure.
pub(crate) fn split_args(call_args: Vec<Arg>, args: &mut Vec<bytes::Bytes>) -> Result<SplitArgs, String> {
    let mut split = SplitArgs { references: Vec::new(), nested: Vec::new() };
    for (position, arg) in call_args.into_iter().enumerate() {
        match arg {
            Arg::Value(Ok(bytes), nested) => {
                args.push(bytes);
                split.nested.extend(nested);
            }
            Arg::Value(Err(message), _) => return Err(message),
            Arg::Ref(reference) => {
                args.push(bytes::Bytes::new());
                split.references.push((position, reference));
            }
        }
    }
    Ok(split)
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Arg {
        Arg::value(&self)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg::Ref(self.inner)
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg {
        Arg::Ref(self.inner.clone())
    }
}

impl IntoArg<String> for &str {
    fn into_arg(self) -> Arg {
        Arg::value(self)
    }
}

#[allow(dead_code)]
fn assert_error_is_send(error: Error) -> impl Send {
    error
}
