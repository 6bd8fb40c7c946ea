//! The registry of remote functions and actor classes, built by the linker from
//! the `#[manta::remote]` and `#[manta::actor]` items of every linked crate.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use bytes::Bytes;
use linkme::distributed_slice;
use manta_proto::task::{FailureKind, TaskFailure};

use crate::object_ref::{UntypedRef, collecting};

/// One encoded result, with the refs nested in it.
#[derive(Debug)]
pub struct Encoded {
    /// The msgpack value.
    pub bytes: Bytes,
    /// Refs serialized inside it (the caller, its owner, pins them while it lives).
    pub nested: Vec<UntypedRef>,
}

/// What running a task or method gives: its encoded results, or why it failed.
pub type TaskOutcome = Result<Vec<Encoded>, TaskFailure>;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A registered remote function.
#[derive(Debug)]
pub struct RemoteFunction {
    /// Module path, name and signature hash.
    pub key: &'static str,
    /// Decodes the arguments, runs the function, encodes the results.
    pub invoke: fn(&[Bytes]) -> TaskOutcome,
}

/// Runs an actor class's constructor on serialized arguments.
pub type ActorConstructor = fn(&[Bytes]) -> Result<Box<dyn ErasedActor>, TaskFailure>;

/// A registered actor class.
#[derive(Debug)]
pub struct ActorClass {
    /// Module path, type name and signature hash.
    pub key: &'static str,
    /// Runs the constructor.
    pub create: ActorConstructor,
    /// Whether a method is `async` (it runs on the runtime, not a method thread).
    pub is_async: fn(&str) -> bool,
}

/// Every remote function linked into this binary.
#[distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteFunction];

/// Every actor class linked into this binary.
#[distributed_slice]
pub static ACTOR_CLASSES: [ActorClass];

/// A method call ready to run.
pub enum MethodCall {
    /// A synchronous method: run it on a blocking thread.
    Blocking(Box<dyn FnOnce() -> TaskOutcome + Send>),
    /// An async method: run it on the runtime.
    Async(Pin<Box<dyn Future<Output = TaskOutcome> + Send>>),
}

/// An actor instance behind a type-erased interface.
pub trait ErasedActor: Send + Sync {
    /// Prepares a call of `method` with `args`; `Err` for an unknown method.
    fn call(&self, method: &str, args: Vec<Bytes>) -> Result<MethodCall, TaskFailure>;
}

/// Finds a remote function by key, or by name (see [`by_name`]).
pub fn function(key: &str) -> Option<&'static RemoteFunction> {
    static INDEX: OnceLock<HashMap<&'static str, &'static RemoteFunction>> = OnceLock::new();
    let index = INDEX.get_or_init(|| REMOTE_FUNCTIONS.iter().map(|entry| (entry.key, entry)).collect());
    index.get(key).copied().or_else(|| by_name(REMOTE_FUNCTIONS.iter(), key, |entry| entry.key))
}

/// Finds an actor class by key, or by name (see [`by_name`]).
pub fn actor_class(key: &str) -> Option<&'static ActorClass> {
    static INDEX: OnceLock<HashMap<&'static str, &'static ActorClass>> = OnceLock::new();
    let index = INDEX.get_or_init(|| ACTOR_CLASSES.iter().map(|entry| (entry.key, entry)).collect());
    index.get(key).copied().or_else(|| by_name(ACTOR_CLASSES.iter(), key, |entry| entry.key))
}

/// The one entry whose key, without its `#hash`, is `name` or ends in `::name`:
/// how callers in other languages, which cannot compute signature hashes, name a
/// Rust function (`"add"`, `"my_crate::add"`). A name with a `#` or shared by two
/// entries finds nothing.
fn by_name<T>(entries: impl Iterator<Item = T>, name: &str, key: impl Fn(&T) -> &'static str) -> Option<T> {
    if name.is_empty() || name.contains('#') {
        return None;
    }
    let mut found = entries.filter(|entry| {
        let path = key(entry).split('#').next().unwrap_or_default();
        path == name || path.strip_suffix(name).is_some_and(|prefix| prefix.ends_with("::"))
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Decodes argument `index` as `T`.
pub fn decode_arg<T: DeserializeOwned>(args: &[Bytes], index: usize, task: &str) -> Result<T, TaskFailure> {
    let Some(bytes) = args.get(index) else {
        return Err(failure(FailureKind::TypeMismatch, task, format!("argument {index} is missing")));
    };
    rmp_serde::from_slice(bytes).map_err(|error| {
        failure(
            FailureKind::TypeMismatch,
            task,
            format!("argument {index} does not decode as {}: {error}", std::any::type_name::<T>()),
        )
    })
}

/// Encodes a return value.
pub fn encode<T: Serialize>(value: &T, task: &str) -> Result<Encoded, TaskFailure> {
    let (bytes, nested) = collecting(|| rmp_serde::to_vec_named(value));
    bytes.map(|bytes| Encoded { bytes: Bytes::from(bytes), nested }).map_err(|error| {
        failure(
            FailureKind::TypeMismatch,
            task,
            format!("the result ({}) cannot be encoded: {error}", std::any::type_name::<T>()),
        )
    })
}

/// A task error from a returned `Err`, naming the error's type.
pub fn application_error<E: std::fmt::Display>(error: &E, task: &str) -> TaskFailure {
    let mut failure = failure(FailureKind::Application, task, error.to_string());
    failure.error_type = Some(std::any::type_name::<E>().to_string());
    failure
}

/// Builds a failure.
pub fn failure(kind: FailureKind, task: &str, message: String) -> TaskFailure {
    TaskFailure { kind, task: task.to_string(), message, error_type: None }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}
