//! `manta::context()`: who and where the calling code runs.

use std::cell::Cell;

use manta_proto::{ActorId, JobId, NodeId, PlacementGroupId, TaskId, WorkerId};

use crate::core::{Mode, core};
use crate::error::Result;

thread_local! {
    static CURRENT_TASK: Cell<Option<TaskId>> = const { Cell::new(None) };
    static CURRENT_GROUP: Cell<Option<PlacementGroupId>> = const { Cell::new(None) };
}

pub(crate) fn set_current_group(group: Option<PlacementGroupId>) {
    CURRENT_GROUP.with(|current| current.set(group));
}

/// The placement group the running task captures its children into (Ray's
/// `get_current_placement_group()` with `placement_group_capture_child_tasks`):
/// tasks it submits with the default strategy run in that group too.
pub fn get_current_placement_group() -> Option<PlacementGroupId> {
    CURRENT_GROUP.with(Cell::get)
}

pub(crate) fn set_current_task(task: Option<TaskId>) {
    CURRENT_TASK.with(|current| current.set(task));
}

/// The task running on this thread, if any.
pub(crate) fn current_task() -> Option<TaskId> {
    CURRENT_TASK.with(Cell::get)
}

/// The runtime context of the calling code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeContext {
    /// The job.
    pub job_id: JobId,
    /// The job's namespace.
    pub namespace: String,
    /// The node this process runs on.
    pub node_id: NodeId,
    /// This process's worker id.
    pub worker_id: WorkerId,
    /// The task being run on this thread (sync tasks and methods), if any.
    pub task_id: Option<TaskId>,
    /// The actor this process hosts, if any.
    pub actor_id: Option<ActorId>,
    /// True when this actor was restarted after a panic.
    pub was_restarted: bool,
    /// True in the driver, false in a worker.
    pub is_driver: bool,
}

impl RuntimeContext {
    /// True when the task running on this thread was cancelled (`manta::cancel`
    /// without `force`): a long task should check it and return early.
    pub fn is_canceled(&self) -> bool {
        let (Some(task_id), Ok(core)) = (self.task_id, core()) else { return false };
        core.cancels.is_cancelled_here(task_id)
    }
}

/// The runtime context of the calling code.
pub fn context() -> Result<RuntimeContext> {
    let core = core()?;
    let actor = *core.actor.lock().expect("actor lock");
    Ok(RuntimeContext {
        job_id: core.job.job_id,
        namespace: core.job.namespace.clone(),
        node_id: core.worker.node_id,
        worker_id: core.worker.worker_id,
        task_id: CURRENT_TASK.with(Cell::get),
        actor_id: actor.map(|(actor_id, _)| actor_id),
        was_restarted: actor.is_some_and(|(_, restarted)| restarted),
        is_driver: core.mode == Mode::Driver,
    })
}

/// The GPU ids assigned to this worker (what its `CUDA_VISIBLE_DEVICES` holds);
/// empty in a driver or a worker without GPUs.
pub fn get_gpu_ids() -> Vec<u32> {
    GPU_IDS.get().cloned().unwrap_or_default()
}

/// The GPU ids the node gave this worker (read from its start-up environment).
static GPU_IDS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// Records the worker's GPU ids (`MANTA_GPU_IDS`, a comma-separated list) at start.
pub(crate) fn set_gpu_ids(ids: Option<&str>) {
    let ids = ids.map(|ids| ids.split(',').filter_map(|id| id.trim().parse().ok()).collect()).unwrap_or_default();
    let _ = GPU_IDS.set(ids);
}
