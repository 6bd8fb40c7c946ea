//! Jobs, tasks, actors and objects as they travel between processes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::actor::{
    ActorPanickedEvent, ActorRestartSpec, ActorWorkerDiedEvent, GetActorReply, GetActorRequest, RegisterActorReply,
};
pub use crate::job::{
    FinishJobRequest, JobConfig, JobFinishedEvent, JobRecord, JobRuntimeEnvEvent, RegisterJobReply, RegisterJobRequest,
    SetJobRuntimeEnvRequest,
};
pub use crate::lease::{
    CancelCause, LeaseOutcome, RequestWorkerLeaseRequest, ReturnWorkerLeaseRequest, SchedulingStrategy,
};
pub use crate::state::{ActorState, JobState, TaskState};

use crate::ids::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use crate::object::{ObjectBody, ReturnObject, StoredObject};
use crate::runtime_env::RuntimeEnvSpec;

/// Where a process that owns objects or hosts an actor listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerAddress {
    /// The worker (or driver).
    pub worker_id: WorkerId,
    /// `ip:port` of its listener.
    pub address: String,
    /// The node it runs on.
    pub node_id: NodeId,
}

/// An `ObjectRef` on the wire: the object and who owns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRefWire {
    /// The object.
    pub object_id: ObjectId,
    /// Its owner, which holds the value (small objects) and answers `GetObject`.
    pub owner: WorkerAddress,
}

/// An actor method call inside a [`TaskSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorCall {
    /// The actor.
    pub actor_id: ActorId,
    /// The method name.
    pub method: String,
}

/// The language a task's function or an actor's class is written in: which
/// kind of worker process runs it (and which command a node starts it with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// A function or class registered in the job's Rust program (`#[manta::remote]`).
    #[default]
    Rust,
    /// A Python function or class, run by `python3 -m manta.worker`.
    Python,
}

impl Language {
    /// True for the default (omitted on the wire).
    pub fn is_rust(&self) -> bool {
        *self == Language::Rust
    }
}

/// One task (a remote function call or an actor method call), ready to run:
/// every argument is already a serialized value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// This execution.
    pub task_id: TaskId,
    /// The job.
    pub job_id: JobId,
    /// The function descriptor, read by workers of `language`: for Rust the
    /// registered key (`module::name#hash`, or `module::name` / `name` to look it up
    /// by name); for Python `module:qualname` or `@<key>` (a pickled function in the
    /// GCS KV namespace `manta.functions`). For an actor call: the actor's class.
    pub function: std::sync::Arc<str>,
    /// The language of the function (the worker kind that runs it).
    #[serde(default, skip_serializing_if = "Language::is_rust")]
    pub language: Language,
    /// Name for errors and logs (the function or method name).
    pub name: std::sync::Arc<str>,
    /// Arguments, each a msgpack value.
    pub args: Vec<Bytes>,
    /// Number of return values.
    pub num_returns: u32,
    /// Set for actor method calls.
    pub actor_call: Option<ActorCall>,
    /// The task's runtime environment (its parent's with the task's own over it).
    // Shared (as are `caller`, `function` and `name`): a submitter's queued tasks hold pointers.
    #[serde(default, skip_serializing_if = "is_empty_env")]
    pub runtime_env: std::sync::Arc<RuntimeEnvSpec>,
    /// Who submitted it (and owns its results).
    pub caller: std::sync::Arc<WorkerAddress>,
    /// Arguments left empty in `args` whose values are in an object store.
    #[serde(default)]
    pub stored_args: Vec<StoredArg>,
    /// The placement group this task runs in, when it captures its child tasks.
    #[serde(default)]
    pub placement_group: Option<crate::ids::PlacementGroupId>,
}

fn is_empty_env(env: &std::sync::Arc<RuntimeEnvSpec>) -> bool {
    env.is_empty()
}

/// Everything needed to construct (and reconstruct) an actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorSpec {
    /// The actor.
    pub actor_id: ActorId,
    /// The job that created it.
    pub job_id: JobId,
    /// The class descriptor (as [`TaskSpec::function`], for a class).
    pub class: String,
    /// The language of the class (the worker kind that hosts it).
    #[serde(default, skip_serializing_if = "Language::is_rust")]
    pub language: Language,
    /// Constructor arguments.
    pub args: Vec<Bytes>,
    /// Restarts after a panic (-1 = forever).
    pub max_restarts: i32,
    /// Calls run at once.
    pub max_concurrency: u32,
    /// Registered name, if any.
    pub name: Option<String>,
    /// Namespace of the name.
    pub namespace: String,
    /// Survives its job.
    pub detached: bool,
    /// The actor's runtime environment (its creator's with the actor's own over it).
    #[serde(default, skip_serializing_if = "RuntimeEnvSpec::is_empty")]
    pub runtime_env: RuntimeEnvSpec,
    /// The creator.
    pub owner: WorkerAddress,
    /// Restarts already used (a restarted instance continues the count).
    #[serde(default)]
    pub restarts_used: i32,
}

/// What kind of failure a task or actor call ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The function returned `Err`.
    Application,
    /// The function panicked.
    Panic,
    /// The worker binary has no function (or class, or method) of that name and signature.
    UnknownFunction,
    /// An argument or result did not decode as the declared type.
    TypeMismatch,
    /// The actor is dead.
    ActorDied,
    /// The actor's process died while the call was in flight; the actor may be
    /// restarting, but the call is not retried (`max_task_retries`).
    ActorUnavailable,
    /// The worker process died while running it, and no retry was left.
    WorkerDied,
    /// The task could not be scheduled.
    Unschedulable,
    /// A result did not fit in the node's object store.
    ObjectStoreFull,
    /// An argument's value was lost (its node died, or it was freed).
    ObjectLost,
    /// An argument's owner died, taking the value with it.
    OwnerDied,
    /// The task was cancelled (`manta::cancel`).
    Cancelled,
    /// Its runtime environment could not be set up on the node (never retried).
    RuntimeEnvSetupFailed,
}

/// A failed task, stored as its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{task} failed: {message}")]
pub struct TaskFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The task's function or method name.
    pub task: String,
    /// What went wrong (the error's text, the panic message, ...).
    pub message: String,
    /// For a returned `Err`: the error's Rust type (what `retry_exceptions_of` matches).
    #[serde(default)]
    pub error_type: Option<String>,
}

/// The result of one task: its return values, or why it failed.
pub type TaskOutcome = Result<Vec<ReturnObject>, TaskFailure>;

/// The value of one object, as its owner holds it.
pub type ObjectValue = Result<ObjectBody, TaskFailure>;

/// An argument whose value is in a node's object store: the executor pulls it
/// to its own node instead of receiving it inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredArg {
    /// Argument position.
    pub position: u32,
    /// The object and its owner.
    pub object: ObjectRefWire,
    /// Where its bytes are.
    pub stored: StoredObject,
}

/// A worker process announces itself to its raylet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterWorkerRequest {
    /// The id the raylet gave it.
    pub worker_id: WorkerId,
    /// Its listener.
    pub address: String,
    /// Its pid.
    pub pid: u32,
}

/// A worker blocked in `get` gives its CPU back (or takes it again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerBlockedRequest {
    /// The worker.
    pub worker_id: WorkerId,
    /// True when it starts waiting, false when it resumes.
    pub blocked: bool,
}

/// Ends a worker process (an actor kill).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KillWorkerRequest {
    /// The worker.
    pub worker_id: WorkerId,
    /// Why, for the logs.
    pub reason: String,
}

/// Runs a task on the worker it is pushed to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushTaskRequest {
    /// The task.
    pub spec: TaskSpec,
}

/// Cancels a task: sent to its owner (`at_executor = false`), which finds it, or by
/// the owner to the worker running it (`at_executor = true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelTaskRequest {
    /// The task.
    pub task_id: TaskId,
    /// End the worker process running it.
    pub force: bool,
    /// Cancel the tasks it submitted too.
    pub recursive: bool,
    /// True when sent to the worker running the task.
    pub at_executor: bool,
}

/// Constructs an actor in the worker leased for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateActorRequest {
    /// The actor.
    pub spec: ActorSpec,
}

/// Asks an owner for an object's value, waiting up to `timeout_ms` for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetObjectRequest {
    /// The object.
    pub object_id: ObjectId,
    /// How long to wait for a pending object.
    pub timeout_ms: u64,
}

/// An object's value, if ready.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetObjectReply {
    /// `None`: not ready within the timeout.
    pub value: Option<ObjectValue>,
}

/// Where an actor lives, as recorded in the GCS directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorInfo {
    /// The actor.
    pub actor_id: ActorId,
    /// Its class key.
    pub class: String,
    /// The class's language (callers from other languages send msgpack values only).
    #[serde(default, skip_serializing_if = "Language::is_rust")]
    pub language: Language,
    /// Its name, if any.
    pub name: Option<String>,
    /// The name's namespace.
    pub namespace: String,
    /// The creating job.
    pub job_id: JobId,
    /// Survives its job.
    pub detached: bool,
    /// The worker hosting it.
    pub worker: WorkerAddress,
    /// Address of the node hosting it (to kill it).
    pub node_address: String,
    /// Calls that fail because the actor's process died are sent again this
    /// many times (-1: always), to the restarted instance.
    #[serde(default)]
    pub max_task_retries: i32,
}

/// Records an actor; a taken name is refused with `AlreadyExists` and the holder's info.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterActorRequest {
    /// The actor.
    pub info: ActorInfo,
    /// How the GCS re-creates it when its process or node dies (actors with restarts).
    #[serde(default)]
    pub restart: Option<Box<ActorRestartSpec>>,
}

/// Looks up a named actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetNamedActorRequest {
    /// The name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

/// The actor, if found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetNamedActorReply {
    /// The actor.
    pub info: Option<ActorInfo>,
}

/// Drops an actor from the directory (killed or dead).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnregisterActorRequest {
    /// The actor.
    pub actor_id: ActorId,
}

/// An actor as `manta list actors` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorRecord {
    /// Where it lives (lived).
    pub info: ActorInfo,
    /// Alive, restarting or dead.
    pub state: ActorState,
    /// Why it died.
    pub death_cause: Option<String>,
    /// Times it was restarted after its process or node died.
    #[serde(default)]
    pub num_restarts: u32,
    /// How to restart it (kept by the GCS; not shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Box<ActorRestartSpec>>,
}

/// One state change of a task, reported by its owner in batches (never on the hot path).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The task.
    pub task_id: TaskId,
    /// Its job.
    pub job_id: JobId,
    /// Function or `Class.method` name.
    pub name: String,
    /// The state it entered.
    pub state: TaskState,
    /// Where it runs, once known.
    pub node_id: Option<NodeId>,
    /// Which worker runs it, once known.
    pub worker_id: Option<WorkerId>,
    /// Set for actor method calls.
    pub actor_id: Option<ActorId>,
    /// The failure, for `FAILED`.
    pub error: Option<String>,
    /// Lease outcome that led here (`granted`, `reschedule`, `canceled`), if any.
    pub lease_outcome: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The states the task entered before `state` since its owner's last batch,
    /// oldest first, with their times: an owner may fold a task's events of one
    /// batch into one event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<(TaskState, u64)>,
}

impl TaskEvent {
    /// `task_id` entering `state` at `time_ms` (milliseconds since the Unix
    /// epoch), with nothing else known yet.
    pub fn entered(task_id: TaskId, job_id: JobId, name: String, state: TaskState, time_ms: u64) -> Self {
        Self {
            task_id,
            job_id,
            name,
            state,
            node_id: None,
            worker_id: None,
            actor_id: None,
            error: None,
            lease_outcome: None,
            time_ms,
            earlier: Vec::new(),
        }
    }

    /// Whether [`TaskEvent::fold`] may take `later`: the same task's, and not a
    /// second lease outcome (a record keeps each one).
    pub fn can_fold(&self, later: &TaskEvent) -> bool {
        later.task_id == self.task_id && (later.lease_outcome.is_none() || self.lease_outcome.is_none())
    }

    /// Folds `later`, the same task's next event, into this one: the later
    /// state, place and error win, and this one's state joins `earlier`. The
    /// caller checks [`TaskEvent::can_fold`] first.
    pub fn fold(&mut self, later: TaskEvent) {
        debug_assert!(self.can_fold(&later), "fold takes the same task's event");
        self.earlier.push((self.state, self.time_ms));
        self.earlier.extend(later.earlier);
        self.state = later.state;
        self.time_ms = later.time_ms;
        self.node_id = later.node_id.or(self.node_id);
        self.worker_id = later.worker_id.or(self.worker_id);
        self.error = later.error.or(self.error.take());
        self.lease_outcome = later.lease_outcome.or(self.lease_outcome.take());
    }
}

/// A batch of task events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEventsBatch {
    /// The events, oldest first.
    pub events: Vec<TaskEvent>,
    /// Events the reporter dropped because its buffer was full.
    pub dropped: u64,
}

/// A task as `manta list tasks` shows it: its events folded together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task.
    pub task_id: TaskId,
    /// Its job.
    pub job_id: JobId,
    /// Function or `Class.method` name.
    pub name: String,
    /// The latest state.
    pub state: TaskState,
    /// Where it ran.
    pub node_id: Option<NodeId>,
    /// Which worker ran it.
    pub worker_id: Option<WorkerId>,
    /// Set for actor method calls.
    pub actor_id: Option<ActorId>,
    /// The failure, if any.
    pub error: Option<String>,
    /// Every state with its time, oldest first.
    pub history: Vec<(TaskState, u64)>,
    /// Lease outcomes seen (`granted`, `reschedule`, `canceled`).
    pub lease_outcomes: Vec<String>,
}

/// Asks the GCS for a state table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateTable {
    /// Jobs.
    Jobs,
    /// Actors.
    Actors,
    /// Tasks.
    Tasks,
    /// Placement groups.
    PlacementGroups,
}

/// Lists one state table: the rows a query selects, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListStateRequest {
    /// Which table.
    pub table: StateTable,
    /// At most this many rows ([`crate::query::MAX_LIMIT`] at most).
    pub limit: usize,
    /// Rows skipped, newest first, before the page starts.
    #[serde(default)]
    pub offset: usize,
    /// Every filter must pass.
    #[serde(default)]
    pub filters: Vec<crate::query::StateFilter>,
}

impl ListStateRequest {
    /// The newest `limit` rows of `table`.
    pub fn newest(table: StateTable, limit: usize) -> ListStateRequest {
        ListStateRequest { table, limit, offset: 0, filters: Vec::new() }
    }

    /// The query part.
    pub fn query(&self) -> crate::query::StateQuery {
        crate::query::StateQuery { filters: self.filters.clone(), offset: self.offset, limit: self.limit }
    }
}

/// A page of a state table, with counts for pagers and summaries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListStateReply {
    /// The rows, newest first.
    pub rows: StateRows,
    /// Rows the table holds.
    pub total: usize,
    /// Rows that passed the filters.
    pub matched: usize,
    /// Rows dropped by the history bound (and, for tasks, events lost by reporters).
    pub dropped: u64,
    /// Rows of the whole table per state (`RUNNING`, `ALIVE`, ...).
    pub counts: std::collections::BTreeMap<String, usize>,
    /// Tasks only: tasks ever seen to finish or fail (never decreases; a rate of it is throughput).
    #[serde(default)]
    pub completed_total: u64,
}

/// The rows of a state table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StateRows {
    /// Jobs.
    Jobs(Vec<JobRecord>),
    /// Actors.
    Actors(Vec<ActorRecord>),
    /// Placement groups.
    PlacementGroups(Vec<crate::placement::PlacementGroupInfo>),
    /// Tasks.
    Tasks(Vec<TaskRecord>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(task_id: TaskId, state: TaskState, time_ms: u64) -> TaskEvent {
        TaskEvent::entered(task_id, JobId::from_counter(1), "f".into(), state, time_ms)
    }

    #[test]
    fn an_event_without_earlier_states_reads_as_before() {
        let task = TaskId::random();
        let single = event(task, TaskState::Finished, 5);
        let bytes = rmp_serde::to_vec_named(&single).expect("encode");
        let as_map: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
            rmp_serde::from_slice(&bytes).expect("a map");
        assert!(!as_map.contains_key("earlier"), "an empty list is not sent");
        assert_eq!(rmp_serde::from_slice::<TaskEvent>(&bytes).expect("decode"), single);

        let mut folded = event(task, TaskState::PendingNodeAssignment, 1);
        folded.fold(event(task, TaskState::Finished, 2));
        let bytes = rmp_serde::to_vec_named(&folded).expect("encode");
        assert_eq!(rmp_serde::from_slice::<TaskEvent>(&bytes).expect("decode"), folded);
    }

    #[test]
    fn fold_keeps_one_task_and_one_lease_outcome() {
        let task = TaskId::random();
        let mut first = event(task, TaskState::PendingNodeAssignment, 1);
        assert!(!first.can_fold(&event(TaskId::random(), TaskState::Finished, 2)), "another task's");
        first.lease_outcome = Some("reschedule".into());
        let mut granted = event(task, TaskState::SubmittedToWorker, 2);
        granted.lease_outcome = Some("granted".into());
        assert!(!first.can_fold(&granted), "a second lease outcome");
        let mut failed = event(task, TaskState::Failed, 3);
        failed.error = Some("boom".into());
        assert!(first.can_fold(&failed));
        first.fold(failed);
        assert_eq!((first.state, first.time_ms, first.error.as_deref()), (TaskState::Failed, 3, Some("boom")));
        assert_eq!(first.lease_outcome.as_deref(), Some("reschedule"));
        assert_eq!(first.earlier, vec![(TaskState::PendingNodeAssignment, 1)]);
    }
}
