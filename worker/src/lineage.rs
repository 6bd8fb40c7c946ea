//! Lineage reconstruction: an owner keeps how each of its large task results
//! was made (the task, its resources, its remaining retries, and refs to its
//! arguments), and when the only copy of such a result is lost with its node,
//! runs the task again under the same id, rebuilding its own lost arguments
//! first. Objects made by `put` have no lineage: losing them is final, as in Ray.
//! An entry is dropped when its object is freed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manta_proto::node::NodeState;
use manta_proto::object::ObjectBody;
use manta_proto::resources::ResourceSet;
use manta_proto::task::{SchedulingStrategy, TaskSpec};
use manta_proto::{ObjectId, TaskId};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::object_ref::UntypedRef;
use crate::submitter::PendingTask;

/// How long the owner trusts its list of dead nodes.
const NODE_LIST_TTL: Duration = Duration::from_millis(500);

struct Entry {
    spec: TaskSpec,
    resources: std::sync::Arc<ResourceSet>,
    strategy: SchedulingStrategy,
    retries: crate::retry::RetryBudget,
    retry_exceptions: crate::options::RetryErrors,
    /// The task's arguments, pinned while the lineage may be needed.
    held: Vec<UntypedRef>,
}

/// The lineage of this process's large task results.
#[derive(Default)]
pub struct Lineage {
    entries: Mutex<HashMap<TaskId, Entry>>,
    rebuilding: Mutex<HashSet<TaskId>>,
    dead_nodes: Mutex<Option<(Instant, HashSet<String>)>>,
    /// Tasks run again to rebuild lost objects.
    pub(crate) rebuilt: std::sync::atomic::AtomicU64,
}

/// True for the ids `put` hands out (numbered down from the top of the index space).
fn is_put(object_id: ObjectId) -> bool {
    let bytes = object_id.as_bytes();
    u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]) > u32::MAX / 2
}

impl Lineage {
    /// Keeps how `task` was made (its results went to node stores).
    pub(crate) fn record(&self, task: &PendingTask) {
        let entry = Entry {
            spec: task.spec.clone(),
            resources: task.resources.clone(),
            strategy: task.strategy.clone(),
            retries: task.retries,
            retry_exceptions: task.retry_exceptions.clone(),
            held: task.held.clone(),
        };
        self.entries.lock().expect("lineage lock").insert(task.spec.task_id, entry);
    }

    /// The object was freed: its task's lineage is no longer needed.
    pub fn forget(&self, object_id: ObjectId) {
        self.entries.lock().expect("lineage lock").remove(&object_id.task_id());
    }
}

/// What this process's runtime did to get past failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Task attempts sent again after their worker, node or an argument was lost.
    pub tasks_retried: u64,
    /// Tasks run again to rebuild lost objects (lineage reconstruction).
    pub objects_rebuilt: u64,
}

/// This process's fault-tolerance counters.
pub fn stats() -> Stats {
    let Some(core) = crate::core::current() else { return Stats::default() };
    Stats {
        tasks_retried: core.submitter.retried.load(std::sync::atomic::Ordering::Relaxed),
        objects_rebuilt: core.lineage.rebuilt.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// True when `node_address` belongs to a node the GCS declared dead.
pub(crate) async fn node_is_dead(core: &Arc<Core>, node_address: &str) -> bool {
    {
        let cached = core.lineage.dead_nodes.lock().expect("dead nodes lock");
        if let Some((at, dead)) = cached.as_ref()
            && at.elapsed() < NODE_LIST_TTL
        {
            return dead.contains(node_address);
        }
    }
    let Ok(nodes) = core.gcs.get_all_nodes().await else { return false };
    let alive: HashSet<String> =
        nodes.iter().filter(|node| node.state == NodeState::Alive).map(|node| node.address.clone()).collect();
    let dead: HashSet<String> = nodes
        .into_iter()
        .filter(|node| node.state == NodeState::Dead && !alive.contains(&node.address))
        .map(|node| node.address)
        .collect();
    let answer = dead.contains(node_address);
    *core.lineage.dead_nodes.lock().expect("dead nodes lock") = Some((Instant::now(), dead));
    answer
}

/// Rebuilds a lost object this process owns by running its task again; returns
/// once the new value is stored. Fails with `ObjectLost` saying why it cannot.
pub(crate) async fn rebuild(core: &Arc<Core>, object_id: ObjectId) -> Result<()> {
    if is_put(object_id) {
        return Err(Error::ObjectLost(format!(
            "object {object_id} was lost with its node; it was made by put, so it cannot be rebuilt"
        )));
    }
    let task_id = object_id.task_id();
    let first = core.lineage.rebuilding.lock().expect("rebuilding lock").insert(task_id);
    if first {
        let task = {
            let mut entries = core.lineage.entries.lock().expect("lineage lock");
            let Some(entry) = entries.get_mut(&task_id) else {
                core.lineage.rebuilding.lock().expect("rebuilding lock").remove(&task_id);
                return Err(Error::ObjectLost(format!(
                    "object {object_id} was lost with its node, and no lineage is kept for it"
                )));
            };
            // Rebuilding is a retry of the task that made the object: the same budget, the same rule.
            let rule = crate::retry::after_failure(
                crate::retry::AttemptFailure::WorkerLost,
                &entry.retry_exceptions,
                &mut entry.retries,
            );
            if rule == crate::retry::NextStep::Fail {
                core.lineage.rebuilding.lock().expect("rebuilding lock").remove(&task_id);
                return Err(Error::ObjectLost(format!(
                    "object {object_id} was lost with its node; its task {} has no retries left to rebuild it",
                    entry.spec.name
                )));
            }
            PendingTask {
                spec: entry.spec.clone(),
                arg_refs: Vec::new(),
                held: entry.held.clone(),
                resources: entry.resources.clone(),
                strategy: entry.strategy.clone(),
                retries: entry.retries,
                retry_exceptions: entry.retry_exceptions.clone(),
                attempts: Vec::new(),
                lost_on: None,
            }
        };
        tracing::info!(task = %task.spec.name, %object_id, "rebuilding a lost object by running its task again");
        core.lineage.rebuilt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for index in 0..task.spec.num_returns {
            core.store.reset(ObjectId::for_return(task_id, index));
        }
        let mut task = task;
        if let Err(error) = refresh_stored_args(core, &mut task).await {
            core.lineage.rebuilding.lock().expect("rebuilding lock").remove(&task_id);
            // Waiters on the reset results learn why the rebuild failed.
            let failure = manta_proto::task::TaskFailure {
                kind: crate::submitter::failure_kind(&error),
                task: format!("rebuilding {object_id}"),
                message: error.to_string(),
                error_type: None,
            };
            crate::submitter::store_failure(core, &task.spec, failure);
            return Err(error);
        }
        crate::submitter::submit(core, task);
    }
    let value = core.store.wait(object_id, None).await;
    core.lineage.rebuilding.lock().expect("rebuilding lock").remove(&task_id);
    match value {
        Some(_) => Ok(()),
        None => Err(Error::ObjectLost(format!("object {object_id} was freed while it was being rebuilt"))),
    }
}

/// Points a task's stored arguments at their current copies, first rebuilding
/// the ones this process owns that were lost with a dead node.
pub(crate) async fn refresh_stored_args(core: &Arc<Core>, task: &mut PendingTask) -> Result<()> {
    for index in 0..task.spec.stored_args.len() {
        let arg = &task.spec.stored_args[index];
        if arg.object.owner.worker_id != core.worker.worker_id {
            continue;
        }
        let object_id = arg.object.object_id;
        if node_is_dead(core, &arg.stored.node_address).await {
            Box::pin(rebuild(core, object_id)).await?;
        }
        if let Some(Ok(ObjectBody::Stored(stored))) = core.store.try_get(object_id) {
            task.spec.stored_args[index].stored = stored;
        }
    }
    Ok(())
}
