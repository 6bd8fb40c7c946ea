//! Normal-task submission: wait for `ObjectRef` arguments, lease workers from the
//! raylet (following spillback), push tasks straight to leased workers (several
//! in flight when they are short, see [`on_lease`]), reuse a lease for the next
//! queued tasks of the same shape, return it when idle.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use manta_proto::message::Event;
use manta_proto::net::PeerHandle;
use manta_proto::object::{ObjectBody, ReleaseReturnsEvent, ReturnObject};
use manta_proto::resources::ResourceSet;
use manta_proto::runtime_env::RuntimeEnvSpec;
use manta_proto::task::TaskState;
use manta_proto::task::{FailureKind, SchedulingStrategy, TaskFailure, TaskSpec, WorkerAddress};
use manta_proto::{NodeId, ObjectId};

use crate::core::{Core, EventDetail};
use crate::intern::Interned;
use crate::object_ref::UntypedRef;
use crate::retry::RetryBudget;
use crate::store::Stored;

pub(crate) use crate::lease::{LeaseAsk, request_lease};

mod on_lease;

use on_lease::{return_lease, run_on_lease};

/// How long a lease may sit idle before it goes back to the raylet.
const IDLE_LEASE_TIMEOUT: Duration = Duration::from_millis(10);
/// Lease requests in flight per shape.
const MAX_PENDING_LEASE_REQUESTS: usize = 4;
/// Deadline of one task (it may run long).
const TASK_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A task on its way to a worker.
pub(crate) struct PendingTask {
    pub spec: TaskSpec,
    /// Arguments still to resolve: (position, reference).
    pub arg_refs: Vec<(usize, UntypedRef)>,
    /// Refs the task needs alive until it is done (resolved arguments, refs nested in arguments).
    pub held: Vec<UntypedRef>,
    /// Shared by every task asking for the same resources ([`Submitter::resource_sets`]).
    pub resources: Arc<ResourceSet>,
    pub strategy: SchedulingStrategy,
    /// Retries left (`max_retries`), spent by [`crate::retry::after_failure`].
    pub retries: RetryBudget,
    pub retry_exceptions: crate::options::RetryErrors,
    pub attempts: Vec<String>,
    /// The node its last attempt was lost on (a retry waits until that node answers again).
    pub lost_on: Option<NodeId>,
}

struct Lease {
    id: u64,
    /// Lease outcomes that led to this grant, reported with the first task run on it.
    outcomes: std::sync::Mutex<Vec<String>>,
    worker: WorkerAddress,
    raylet: PeerHandle,
    peer: PeerHandle,
}

#[derive(Default)]
struct Shape {
    language: manta_proto::task::Language,
    resources: Arc<ResourceSet>,
    strategy: SchedulingStrategy,
    /// The node holding most of the tasks' stored arguments: leases are asked there first.
    locality: Option<String>,
    runtime_env: Arc<RuntimeEnvSpec>,
    queue: VecDeque<PendingTask>,
    idle: Vec<Lease>,
    requesting: usize,
}

/// Per-process submitter of normal tasks.
#[derive(Default)]
pub struct Submitter {
    shapes: Mutex<HashMap<ShapeId, Shape>>,
    /// The id of each shape seen (shapes are few and kept for the process's life).
    shape_ids: Mutex<HashMap<ShapeKey, ShapeId>>,
    next_lease: AtomicU64,
    /// Task attempts sent again after a system failure (worker, node or argument lost).
    pub(crate) retried: AtomicU64,
    /// Nodes a worker was lost on, until they answer again.
    suspects: Mutex<crate::retry::Suspects>,
    /// The resource sets tasks asked for: a queued task holds a pointer, not a map of its own.
    pub(crate) resource_sets: Interned<ResourceSet>,
    /// The runtime environments tasks run in, likewise.
    pub(crate) runtime_envs: Interned<RuntimeEnvSpec>,
    /// Function descriptors and task names, likewise.
    pub(crate) names: Interned<str>,
}

impl Submitter {
    fn suspects(&self) -> std::sync::MutexGuard<'_, crate::retry::Suspects> {
        self.suspects.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes the first queued task that may run on a worker of `node`.
fn take_for(queue: &mut VecDeque<PendingTask>, node: NodeId, suspects: &crate::retry::Suspects) -> Option<PendingTask> {
    if suspects.is_empty() {
        return queue.pop_front();
    }
    let position = queue.iter().position(|task| suspects.may_run(task.lost_on, node))?;
    queue.remove(position)
}

/// What makes tasks share leases: the same resources, environment, strategy and preferred node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ShapeKey {
    language: manta_proto::task::Language,
    resources: Arc<ResourceSet>,
    runtime_env: Arc<RuntimeEnvSpec>,
    strategy: SchedulingStrategy,
    locality: Option<String>,
}

/// A shape's number in this process (cheap to copy into every lease task).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ShapeId(u64);

impl Submitter {
    /// The id of `task`'s shape, numbering new shapes as they come.
    fn shape_id(&self, task: &PendingTask, locality: &Option<String>) -> ShapeId {
        let key = ShapeKey {
            language: task.spec.language,
            resources: task.resources.clone(),
            runtime_env: task.spec.runtime_env.clone(),
            strategy: task.strategy.clone(),
            locality: locality.clone(),
        };
        let mut ids = self.shape_ids.lock().expect("shape ids lock");
        let next = ShapeId(ids.len() as u64);
        *ids.entry(key).or_insert(next)
    }
}

/// Data locality (Ray's default lease policy): under the DEFAULT strategy, a task
/// whose `ObjectRef` arguments live in node stores asks the node holding most of
/// their bytes for its lease (that node may still send it on).
fn locality(task: &PendingTask) -> Option<String> {
    if task.strategy != SchedulingStrategy::Default || task.spec.stored_args.is_empty() {
        return None;
    }
    let mut bytes: HashMap<&str, u64> = HashMap::new();
    for arg in &task.spec.stored_args {
        *bytes.entry(arg.stored.node_address.as_str()).or_default() += arg.stored.size;
    }
    bytes.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0))).map(|(node, _)| node.to_string())
}

/// Submits a task: once its reference arguments are resolved (see
/// [`crate::resolver`]), queues it for a worker.
pub(crate) fn submit(core: &Arc<Core>, task: PendingTask) {
    crate::logs::printer().expect_lines();
    if task.arg_refs.is_empty() {
        ready(core, task);
    } else {
        crate::resolver::submit_waiting(core, task);
    }
}

/// Queues a task whose arguments are all resolved (after rebuilding lost
/// stored arguments of ours, through lineage).
pub(crate) fn ready(core: &Arc<Core>, mut task: PendingTask) {
    if task.spec.stored_args.is_empty() {
        return enqueue(core, task);
    }
    let core = core.clone();
    core.handle.clone().spawn(async move {
        if refresh_or_fail(&core, &mut task).await {
            enqueue(&core, task);
        }
    });
}

fn enqueue(core: &Arc<Core>, task: PendingTask) {
    if core.cancels.is_requested(task.spec.task_id) {
        finish_cancelled(core, &task.spec);
        return;
    }
    let locality = locality(&task);
    let key = core.submitter.shape_id(&task, &locality);
    {
        let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
        let shape = shapes.entry(key).or_insert_with(|| Shape {
            language: task.spec.language,
            resources: task.resources.clone(),
            strategy: task.strategy.clone(),
            locality: locality.clone(),
            runtime_env: task.spec.runtime_env.clone(),
            ..Shape::default()
        });
        shape.queue.push_back(task);
    }
    pump(core, key);
}

/// Points `task`'s stored arguments at live copies (rebuilding ours that were
/// lost); false, with the failure stored as its result, when one cannot be.
async fn refresh_or_fail(core: &Arc<Core>, task: &mut PendingTask) -> bool {
    let Err(error) = crate::lineage::refresh_stored_args(core, task).await else { return true };
    let failure = TaskFailure {
        kind: failure_kind(&error),
        task: task.spec.name.to_string(),
        message: format!("an argument is lost: {error}"),
        error_type: None,
    };
    store_failure(core, &task.spec, failure);
    false
}

/// The failure kind of a task whose argument could not be fetched.
pub(crate) fn failure_kind(error: &crate::Error) -> FailureKind {
    match error {
        crate::Error::OwnerDied(_) => FailureKind::OwnerDied,
        crate::Error::ObjectLost(_) => FailureKind::ObjectLost,
        _ => FailureKind::WorkerDied,
    }
}

/// Matches queued tasks with idle leases and asks for more leases.
fn pump(core: &Arc<Core>, key: ShapeId) {
    let mut to_run = Vec::new();
    let mut to_request = 0;
    {
        let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
        let Some(shape) = shapes.get_mut(&key) else { return };
        let suspects = core.submitter.suspects();
        let mut kept = Vec::new();
        while !shape.queue.is_empty()
            && let Some(lease) = shape.idle.pop()
        {
            match take_for(&mut shape.queue, lease.worker.node_id, &suspects) {
                Some(task) => to_run.push((lease, task)),
                None => kept.push(lease),
            }
        }
        drop(suspects);
        shape.idle.extend(kept);
        while shape.queue.len() > shape.requesting && shape.requesting < MAX_PENDING_LEASE_REQUESTS {
            shape.requesting += 1;
            to_request += 1;
        }
    }
    for (lease, task) in to_run {
        core.handle.spawn(run_on_lease(core.clone(), key, lease, task));
    }
    for _ in 0..to_request {
        core.handle.spawn(obtain_lease(core.clone(), key));
    }
}

/// Stores the cancelled result of a task that will not run (again).
fn finish_cancelled(core: &Core, spec: &TaskSpec) {
    core.cancels.finished(spec.task_id);
    core.task_event(
        spec,
        TaskState::Failed,
        None,
        EventDetail { error: Some("cancelled".into()), lease_outcome: None },
    );
    store_failure(core, spec, crate::cancel::cancelled_failure(&spec.name));
}

/// Drops a cancelled task still queued for a worker; true when it was queued.
pub(crate) fn dequeue_cancelled(core: &Core, task_id: manta_proto::TaskId) -> bool {
    let removed = {
        let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
        shapes.values_mut().find_map(|shape| {
            let position = shape.queue.iter().position(|task| task.spec.task_id == task_id)?;
            shape.queue.remove(position)
        })
    };
    match removed {
        Some(task) => {
            finish_cancelled(core, &task.spec);
            true
        }
        None => false,
    }
}

/// Asks the local raylet for a worker, following spillback, and puts the lease to work.
async fn obtain_lease(core: Arc<Core>, key: ShapeId) {
    let ask = {
        let shapes = core.submitter.shapes.lock().expect("shapes lock");
        let Some(shape) = shapes.get(&key) else { return };
        LeaseAsk {
            language: shape.language,
            resources: (*shape.resources).clone(),
            runtime_env: (*shape.runtime_env).clone(),
            strategy: shape.strategy.clone(),
            actor: None,
            detached: false,
            first_node: shape.locality.clone(),
            placement: None,
            backlog: u32::try_from(shape.queue.len().saturating_sub(shape.requesting)).unwrap_or(u32::MAX),
        }
    };
    let asked_at = std::time::Instant::now();
    let outcome = request_lease(&core, ask).await;
    let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
    let Some(shape) = shapes.get_mut(&key) else { return };
    shape.requesting -= 1;
    match outcome {
        Ok((worker, raylet, peer, outcomes)) => {
            let lease = Lease {
                id: core.submitter.next_lease.fetch_add(1, Ordering::Relaxed),
                outcomes: std::sync::Mutex::new(outcomes),
                worker,
                raylet,
                peer,
            };
            // A grant is an answer from that node.
            core.submitter.suspects().answered(lease.worker.node_id, asked_at);
            let next = take_for(&mut shape.queue, lease.worker.node_id, &core.submitter.suspects());
            match next {
                Some(task) => {
                    drop(shapes);
                    core.handle.spawn(run_on_lease(core.clone(), key, lease, task));
                }
                None => {
                    drop(shapes);
                    return_lease(&lease);
                }
            }
        }
        Err(refused) => {
            let failed: Vec<PendingTask> = shape.queue.drain(..).collect();
            drop(shapes);
            let reason = refused.reason.clone();
            for task in failed {
                let failure = TaskFailure {
                    kind: refused.failure_kind(),
                    task: task.spec.name.to_string(),
                    message: reason.clone(),
                    error_type: None,
                };
                let detail = EventDetail { error: Some(reason.clone()), lease_outcome: Some("canceled".into()) };
                core.task_event(&task.spec, TaskState::Failed, None, detail);
                store_failure(&core, &task.spec, failure);
            }
        }
    }
}

/// Stores a task's return values under its return ids, pinning the refs nested
/// in them; once those are registered, tells the executor to drop its pins.
pub(crate) async fn store_returns(core: &Core, spec: &TaskSpec, values: Vec<ReturnObject>, executor: &PeerHandle) {
    if values.len() != spec.num_returns as usize {
        let failure = TaskFailure {
            kind: FailureKind::TypeMismatch,
            task: spec.name.to_string(),
            message: format!("returned {} values, {} expected", values.len(), spec.num_returns),
            error_type: None,
        };
        store_failure(core, spec, failure);
        return;
    }
    let mut any_nested = false;
    for (index, value) in values.into_iter().enumerate() {
        let id = ObjectId::for_return(spec.task_id, index as u32);
        any_nested |= !value.nested.is_empty();
        let nested: Vec<_> = value
            .nested
            .into_iter()
            .map(|wire| {
                let owner = (wire.owner.worker_id != core.worker.worker_id).then_some(wire.owner);
                (wire.object_id, owner)
            })
            .collect();
        let stored = match &value.body {
            ObjectBody::Stored(stored) => Some(stored.node_address.clone()),
            ObjectBody::Inline(_) => None,
        };
        match core.store.put(id, Ok(value.body), &nested) {
            Stored::Kept(actions) => core.apply(actions),
            // Nobody wants the result any more: drop its store copy at once.
            Stored::Unreferenced => {
                if let Some(node) = stored {
                    core.free_copy(id, node);
                }
            }
        }
    }
    if any_nested {
        core.flush_registrations().await;
        let release = Event::ReleaseReturns(ReleaseReturnsEvent { task_id: spec.task_id });
        let _ = executor.send_event_when_up(release, crate::core::EVENT_TIMEOUT).await;
    }
}

/// Stores a failure as every return value of a task.
pub(crate) fn store_failure(core: &Core, spec: &TaskSpec, failure: TaskFailure) {
    for index in 0..spec.num_returns {
        let _ = core.store.put(ObjectId::for_return(spec.task_id, index), Err(failure.clone()), &[]);
    }
}
