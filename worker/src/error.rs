//! The errors a manta user sees.

use manta_proto::task::{FailureKind, TaskFailure};

/// Everything that can go wrong for a caller of the manta API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The remote function or actor method returned an error or panicked.
    #[error("task {task} failed: {message}")]
    Task {
        /// The function or method name.
        task: String,
        /// The remote error's text or the panic message.
        message: String,
        /// True when it panicked rather than returned `Err`.
        panicked: bool,
    },
    /// The actor is dead: killed, out of restarts, or its process or node died.
    #[error("actor died: {cause}")]
    ActorDied {
        /// Why.
        cause: String,
    },
    /// The actor's process died while the call was in flight; the actor
    /// restarted, but the call was not retried (`max_task_retries`).
    #[error("actor unavailable: {cause}")]
    ActorUnavailable {
        /// Why.
        cause: String,
    },
    /// `get` did not get the value in time.
    #[error("get timed out after {0:?}")]
    GetTimeout(std::time::Duration),
    /// The worker binary has no remote function, actor class or method of that name
    /// and signature: build the driver and workers from the same source.
    #[error("unknown remote function: {0}")]
    UnknownFunction(String),
    /// An argument or result did not decode as the declared type.
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    /// The worker process running the task died, and no retry was left.
    #[error("worker crashed: {0}")]
    WorkerCrashed(String),
    /// The task cannot be scheduled (no node has the resources).
    #[error("cannot schedule: {0}")]
    Unschedulable(String),
    /// No named actor of that name in that namespace.
    #[error("no actor named {name:?} in namespace {namespace:?}")]
    ActorNotFound {
        /// The name.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// An actor with that name already exists (use `get_if_exists` to reuse it).
    #[error("an actor named {name:?} already exists in namespace {namespace:?}")]
    ActorNameTaken {
        /// The name.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// manta is not initialised, or already is.
    #[error("{0}")]
    Init(String),
    /// The process that owned an object exited, and the object went with it.
    #[error("owner died: {0}")]
    OwnerDied(String),
    /// The cluster could not be reached or refused us.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The node's object store is full and nothing could be freed in time.
    #[error("{0}")]
    ObjectStoreFull(String),
    /// The object's value is gone: freed (no reference was left), or its node died.
    #[error("object lost: {0}")]
    ObjectLost(String),
    /// The task was cancelled with `manta::cancel`.
    #[error("task cancelled: {0}")]
    TaskCancelled(String),
    /// An invalid argument to a manta call.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A node could not set up the task's or actor's runtime environment (the
    /// agent's message, e.g. pip's error lines, says why). Never retried.
    #[error("runtime env setup failed: {0}")]
    RuntimeEnvSetupFailed(String),
}

impl From<TaskFailure> for Error {
    fn from(failure: TaskFailure) -> Self {
        match failure.kind {
            FailureKind::Application => Error::Task { task: failure.task, message: failure.message, panicked: false },
            FailureKind::Panic => Error::Task { task: failure.task, message: failure.message, panicked: true },
            FailureKind::UnknownFunction => Error::UnknownFunction(failure.message),
            FailureKind::TypeMismatch => Error::TypeMismatch(format!("{}: {}", failure.task, failure.message)),
            FailureKind::ActorDied => Error::ActorDied { cause: failure.message },
            FailureKind::ActorUnavailable => Error::ActorUnavailable { cause: failure.message },
            FailureKind::WorkerDied => Error::WorkerCrashed(format!("{}: {}", failure.task, failure.message)),
            FailureKind::Unschedulable => Error::Unschedulable(format!("{}: {}", failure.task, failure.message)),
            FailureKind::ObjectStoreFull => Error::ObjectStoreFull(format!("{}: {}", failure.task, failure.message)),
            FailureKind::ObjectLost => Error::ObjectLost(format!("{}: {}", failure.task, failure.message)),
            FailureKind::OwnerDied => Error::OwnerDied(format!("{}: {}", failure.task, failure.message)),
            FailureKind::Cancelled => Error::TaskCancelled(format!("{}: {}", failure.task, failure.message)),
            FailureKind::RuntimeEnvSetupFailed => {
                Error::RuntimeEnvSetupFailed(format!("{}: {}", failure.task, failure.message))
            }
        }
    }
}

impl From<manta_proto::net::CallError> for Error {
    fn from(error: manta_proto::net::CallError) -> Self {
        Error::Cluster(error.to_string())
    }
}

/// Shorthand for results of the manta API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<manta_proto::runtime_env::user::InvalidRuntimeEnv> for Error {
    fn from(error: manta_proto::runtime_env::user::InvalidRuntimeEnv) -> Self {
        Error::InvalidArgument(error.0)
    }
}
