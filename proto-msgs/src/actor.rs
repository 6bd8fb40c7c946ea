//! Actor fault-tolerance messages: what the GCS keeps to re-create an actor,
//! where a handle asks for an actor that moved, and how a node reports an
//! actor process that died.

use serde::{Deserialize, Serialize};

use crate::task::{ActorInfo, ActorRecord, ActorSpec, RequestWorkerLeaseRequest};
use crate::{ActorId, WorkerId};

/// What the GCS needs to re-create an actor: its constructor call and the
/// lease request that placed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorRestartSpec {
    /// The constructor call.
    pub spec: ActorSpec,
    /// The lease request (resources, strategy, job, env).
    pub lease: RequestWorkerLeaseRequest,
}

/// Asks the GCS where an actor is now (a handle whose actor went away).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetActorRequest {
    /// The actor.
    pub actor_id: ActorId,
}

/// The actor's record, if the GCS knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetActorReply {
    /// `ALIVE`, `RESTARTING` or `DEAD`, and where it lives.
    pub record: Option<ActorRecord>,
}

/// Node to GCS: the process of an actor's worker exited.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorWorkerDiedEvent {
    /// The actor.
    pub actor_id: ActorId,
    /// Its worker.
    pub worker_id: WorkerId,
    /// The exit status.
    pub reason: String,
}

/// Outcome of a registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterActorReply {
    /// `Some(holder)` when the name was already taken.
    pub existing: Option<ActorInfo>,
}

/// Worker to GCS: its actor panicked and was restarted in its process
/// (`restarted`), or has no restarts left and is dead (with the cause).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorPanickedEvent {
    /// The actor.
    pub actor_id: ActorId,
    /// True when it was restarted; false when it is dead.
    pub restarted: bool,
    /// What happened.
    pub cause: String,
}
