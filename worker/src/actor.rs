//! Actor handles: creation (owner-managed: the creator leases a dedicated
//! worker, constructs the actor there and records it in the GCS directory),
//! ordered method calls straight to the actor's worker ([`calls`]), lookup and kill.

mod calls;

use calls::{CallMessage, Calls};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use manta_proto::task::TaskState;
use manta_proto::task::{
    ActorCall, ActorInfo, ActorRestartSpec, ActorSpec, CreateActorRequest, FailureKind, GetActorRequest,
    GetNamedActorRequest, KillWorkerRequest, RegisterActorRequest, RequestWorkerLeaseRequest, TaskFailure, TaskSpec,
    UnregisterActorRequest,
};
use manta_proto::{ActorId, ObjectId, TaskId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::fetch;
use crate::core::{Core, block_on, core, current};
use crate::error::{Error, Result};
use crate::object_ref::{Arg, UntypedRef, split_args};
use crate::options::{ActorOptions, Lifetime};
use crate::retry::RetryBudget;
use crate::submitter::{LeaseAsk, request_lease, store_failure};

/// Deadline of one actor call (it may run long).
const CALL_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Implemented by `#[manta::actor]` for the actor's type.
pub trait ActorClass {
    /// The generated handle type (`<Type>Handle`).
    type Handle: TypedActorHandle;
    /// Registry key: module path, type name and signature hash.
    const KEY: &'static str;
}

/// Implemented by generated handle types.
pub trait TypedActorHandle: Sized {
    /// Wraps an untyped handle.
    fn from_untyped(inner: ActorHandle) -> Self;
    /// The untyped handle.
    fn untyped(&self) -> &ActorHandle;
}

struct HandleInner {
    info: ActorInfo,
    calls: Calls,
    /// The creator's handle of a non-detached actor: dropping the last copy ends it.
    owns_lifetime: bool,
    escaped: AtomicBool,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if self.owns_lifetime
            && !self.escaped.load(Ordering::Relaxed)
            && let Some(core) = current()
        {
            let info = self.info.clone();
            let task_core = core.clone();
            core.handle.spawn(async move { kill_actor(&task_core, &info).await });
        }
    }
}

/// An untyped actor handle. Typed handles (`CounterHandle`) wrap it.
#[derive(Clone)]
pub struct ActorHandle {
    inner: Arc<HandleInner>,
}

impl fmt::Debug for ActorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorHandle({}, {})", self.inner.info.class, self.inner.info.actor_id)
    }
}

impl ActorHandle {
    fn new(core: &Arc<Core>, info: ActorInfo, owns_lifetime: bool) -> Self {
        let calls = Calls::start(core, info.clone());
        Self { inner: Arc::new(HandleInner { info, calls, owns_lifetime, escaped: AtomicBool::new(false) }) }
    }

    /// The actor's id.
    pub fn actor_id(&self) -> ActorId {
        self.inner.info.actor_id
    }

    /// The actor's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.inner.info.name.as_deref()
    }

    /// Calls `method` with `args`; used by generated handles.
    pub fn call_method(&self, method: &str, args: Vec<Arg>) -> UntypedRef {
        let task_id = TaskId::random();
        let Some(core) = current() else {
            panic!("cannot call {method}: manta is not initialised");
        };
        let result = UntypedRef::new(ObjectId::for_return(task_id, 0), core.caller.clone());
        core.cancels.actor_call(task_id);
        let info = &self.inner.info;
        let task_name = format!("{}.{method}", class_name(&info.class));
        let mut spec = TaskSpec {
            task_id,
            job_id: core.job.job_id,
            function: info.class.as_str().into(),
            language: info.language,
            name: task_name.as_str().into(),
            args: Vec::with_capacity(args.len()),
            num_returns: 1,
            actor_call: Some(ActorCall { actor_id: info.actor_id, method: method.to_string() }),
            runtime_env: Default::default(),
            caller: core.caller.clone(),
            stored_args: Vec::new(),
            placement_group: None,
        };
        let split = match split_args(args, &mut spec.args) {
            Ok(split) => split,
            Err(message) => {
                let failure =
                    TaskFailure { kind: FailureKind::TypeMismatch, task: task_name, message, error_type: None };
                store_failure(&core, &spec, failure);
                return result;
            }
        };
        core.task_event(&spec, TaskState::PendingNodeAssignment, None, Default::default());
        let retries = RetryBudget::new(info.max_task_retries);
        let message = CallMessage { spec, arg_refs: split.references, held: split.nested, retries, lost: None };
        self.inner.calls.submit(&core, message);
        result
    }
}

fn class_name(key: &str) -> &str {
    let path = key.split('#').next().unwrap_or(key);
    path.rsplit("::").next().unwrap_or(path)
}

fn actor_died(task: &str, cause: &str) -> TaskFailure {
    TaskFailure { kind: FailureKind::ActorDied, task: task.to_string(), message: cause.to_string(), error_type: None }
}

impl Serialize for ActorHandle {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        // The handle leaves this process: the actor now lives until its job ends.
        self.inner.escaped.store(true, Ordering::Relaxed);
        self.inner.info.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ActorHandle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let info = ActorInfo::deserialize(deserializer)?;
        let core = core().map_err(serde::de::Error::custom)?;
        Ok(ActorHandle::new(&core, info, false))
    }
}

/// Creates an actor (used by generated `Type::remote`).
pub fn create_actor(key: &str, class: &str, args: Vec<Arg>, options: ActorOptions) -> Result<ActorHandle> {
    let core = core()?;
    let key = key.to_string();
    let class = class.to_string();
    let task_core = core.clone();
    let info = block_on(&core.handle, async move { create(&task_core, key, class, args, options).await })?;
    let owns_lifetime = !info.1;
    Ok(ActorHandle::new(&core, info.0, owns_lifetime))
}

/// Creates the actor; returns its info and whether it is detached (or someone else's).
async fn create(
    core: &Arc<Core>,
    key: String,
    class: String,
    args: Vec<Arg>,
    options: ActorOptions,
) -> Result<(ActorInfo, bool)> {
    let namespace = options.namespace.clone().unwrap_or_else(|| core.job.namespace.clone());
    if options.get_if_exists && options.name.is_none() {
        return Err(Error::InvalidArgument("get_if_exists needs a name".into()));
    }
    if let Some(name) = &options.name {
        if name.is_empty() {
            return Err(Error::InvalidArgument("an actor name must not be empty".into()));
        }
        if options.get_if_exists
            && let Some(info) = lookup(core, name, &namespace).await?
        {
            return Ok((info, true));
        }
    }
    let mut resolved = Vec::with_capacity(args.len());
    // Refs in the arguments stay alive until the actor is constructed (and has registered what it keeps).
    let mut held = Vec::new();
    for arg in args {
        match arg {
            Arg::Value(Ok(bytes), nested) => {
                resolved.push(bytes);
                held.extend(nested);
            }
            Arg::Value(Err(message), _) => return Err(Error::TypeMismatch(format!("{class}::new: {message}"))),
            Arg::Ref(reference) => {
                resolved.push(fetch(core, &reference, None).await?);
                held.push(reference);
            }
        }
    }
    let actor_id = ActorId::random();
    let detached = options.lifetime == Lifetime::Detached;
    let runtime_env = crate::runtime_env::effective(core, options.runtime_env.as_ref(), &options.env_vars)
        .map_err(|error| Error::InvalidArgument(format!("actor {class}: {error}")))?;
    let spec = ActorSpec {
        actor_id,
        job_id: core.job.job_id,
        class: key.clone(),
        language: manta_proto::task::Language::Rust,
        args: resolved,
        max_restarts: options.max_restarts,
        max_concurrency: options.max_concurrency.unwrap_or(1),
        name: options.name.clone(),
        namespace: namespace.clone(),
        detached,
        runtime_env: runtime_env.clone(),
        owner: core.worker.clone(),
        restarts_used: 0,
    };
    crate::logs::printer().expect_lines();
    let ask = LeaseAsk {
        language: manta_proto::task::Language::Rust,
        resources: options.resource_set(),
        runtime_env,
        strategy: options.strategy.clone(),
        actor: Some(actor_id),
        detached,
        first_node: None,
        placement: options.placement_set(),
        backlog: 0,
    };
    // What the GCS needs to re-create the actor if its process or node dies.
    let restart = (options.max_restarts != 0).then(|| {
        Box::new(ActorRestartSpec {
            spec: spec.clone(),
            lease: RequestWorkerLeaseRequest {
                strategy: ask.strategy.clone(),
                job: core.job.clone(),
                resources: ask.resources.clone(),
                runtime_env: ask.runtime_env.clone(),
                actor: Some(actor_id),
                detached,
                allow_spill: true,
                placement: ask.placement.clone(),
                backlog: 0,
                language: ask.language,
            },
        })
    });
    let (worker, raylet, peer, _outcomes) = request_lease(core, ask).await.map_err(|refused| {
        let message = format!("actor {class}: {}", refused.reason);
        match refused.cause {
            manta_proto::task::CancelCause::RuntimeEnvSetupFailed => Error::RuntimeEnvSetupFailed(message),
            manta_proto::task::CancelCause::Other => Error::Unschedulable(message),
        }
    })?;
    let info = ActorInfo {
        actor_id,
        class: key,
        language: manta_proto::task::Language::Rust,
        name: options.name.clone(),
        namespace: namespace.clone(),
        job_id: core.job.job_id,
        detached,
        worker,
        node_address: raylet.remote_address(),
        max_task_retries: options.max_task_retries,
    };
    match peer.rpc(CreateActorRequest { spec }, Duration::from_secs(300)).await {
        Ok(Ok(_)) => {}
        Ok(Err(failure)) => {
            kill_actor(core, &info).await;
            return Err(Error::from(failure));
        }
        Err(error @ manta_proto::net::CallError::UnexpectedReply { .. }) => {
            kill_actor(core, &info).await;
            return Err(Error::Cluster(error.to_string()));
        }
        Err(error) => {
            kill_actor(core, &info).await;
            return Err(Error::ActorDied { cause: format!("the actor's worker exited during construction: {error}") });
        }
    }
    let registered = core.gcs.call(RegisterActorRequest { info: info.clone(), restart }).await?;
    if let Some(existing) = registered.existing {
        kill_worker(core, &info).await;
        if options.get_if_exists {
            return Ok((existing, true));
        }
        return Err(Error::ActorNameTaken { name: options.name.unwrap_or_default(), namespace });
    }
    Ok((info, detached))
}

async fn lookup(core: &Arc<Core>, name: &str, namespace: &str) -> Result<Option<ActorInfo>> {
    let request = GetNamedActorRequest { name: name.to_string(), namespace: namespace.to_string() };
    Ok(core.gcs.call(request).await?.info)
}

async fn kill_worker(core: &Arc<Core>, info: &ActorInfo) {
    if let Ok(node) = core.peers.get(&info.node_address).await {
        let request = KillWorkerRequest {
            worker_id: info.worker.worker_id,
            reason: format!("actor {} was killed", info.actor_id),
        };
        let _ = node.rpc(request, Duration::from_secs(10)).await;
    }
}

/// Ends an actor for good: the GCS records it dead (so it is not restarted)
/// and ends the process it lives in now (a node takes kills only from the
/// lease's holder or the GCS). An actor the GCS does not know yet (its
/// construction failed) is ended here, by the lease's holder.
async fn kill_actor(core: &Arc<Core>, info: &ActorInfo) {
    let known =
        matches!(core.gcs.call(GetActorRequest { actor_id: info.actor_id }).await, Ok(reply) if reply.record.is_some());
    if known {
        let _ = core.gcs.call(UnregisterActorRequest { actor_id: info.actor_id }).await;
    } else {
        kill_worker(core, info).await;
    }
}

/// Finds the actor named `name` in the job's namespace.
pub fn get_actor<A: ActorClass>(name: &str) -> Result<A::Handle> {
    let core = core()?;
    let namespace = core.job.namespace.clone();
    get_actor_in::<A>(name, &namespace)
}

/// Finds the actor named `name` in `namespace`.
pub fn get_actor_in<A: ActorClass>(name: &str, namespace: &str) -> Result<A::Handle> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("an actor name must not be empty".into()));
    }
    let core = core()?;
    let (task_core, task_name, task_namespace) = (core.clone(), name.to_string(), namespace.to_string());
    let info = block_on(&core.handle, async move { lookup(&task_core, &task_name, &task_namespace).await })?
        .ok_or_else(|| Error::ActorNotFound { name: name.to_string(), namespace: namespace.to_string() })?;
    if info.class != A::KEY {
        return Err(Error::TypeMismatch(format!(
            "actor {name:?} is a {}, not a {}",
            class_name(&info.class),
            class_name(A::KEY)
        )));
    }
    Ok(A::Handle::from_untyped(ActorHandle::new(&core, info, false)))
}

/// Ends an actor at once: running and queued calls fail with `ActorDied`.
pub fn kill(actor: &impl TypedActorHandle) -> Result<()> {
    let core = core()?;
    let info = actor.untyped().inner.info.clone();
    let task_core = core.clone();
    block_on(&core.handle, async move { kill_actor(&task_core, &info).await });
    Ok(())
}
