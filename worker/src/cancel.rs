//! `manta::cancel`: stop a task that is queued or running, as Ray's `ray.cancel`.
//!
//! The owner (the submitter) acts: a task still waiting for its arguments or a
//! worker is dropped from the queue; a running one is told to stop (its
//! `manta::context()?.is_canceled()` turns true) or, with `force`, its worker
//! process is ended. `recursive` also cancels the tasks it submitted, which its
//! worker owns. A cancelled task is never retried and its result is
//! [`Error::TaskCancelled`]. Actor calls: a queued call is dropped, a running sync
//! one sees `is_canceled()`, a running async one is dropped at its next await;
//! `force` is refused (kill the actor instead).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manta_proto::message::{Reply, Request};
use manta_proto::net::PeerHandle;
use manta_proto::task::{CancelTaskRequest, FailureKind, TaskFailure};
use manta_proto::{ErrorCode, ObjectId, TaskId};

use crate::core::{Core, block_on, core};
use crate::error::{Error, Result};
use crate::object_ref::ObjectRef;

/// What the owner knows of its tasks, for cancellation, and what this process
/// runs that was asked to stop. One lock: a cancel and the start of the work it
/// targets can never both miss each other.
#[derive(Default)]
pub(crate) struct Cancellations {
    state: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    /// Tasks asked to stop (checked before a task is queued, pushed, retried or stored).
    requested: HashSet<TaskId>,
    /// Tasks running on a worker: the link to that worker.
    running: HashMap<TaskId, PeerHandle>,
    /// Actor calls not finished yet.
    actor_calls: HashSet<TaskId>,
    /// Tasks submitted by each task running in this process (for `recursive`).
    children: HashMap<TaskId, Vec<TaskId>>,
    /// Tasks this process runs that were asked to stop (`is_canceled`).
    here: HashSet<TaskId>,
    /// Async actor methods running here, to drop on cancel.
    running_async: HashMap<TaskId, tokio::task::AbortHandle>,
    /// Tasks whose function runs in this process right now.
    executing: HashSet<TaskId>,
}

impl Cancellations {
    fn lock(&self) -> std::sync::MutexGuard<'_, CancelState> {
        // The state stays consistent under a panic elsewhere (every update is one step).
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An async actor method started here: dropped at once if its cancel came first.
    pub(crate) fn running_async(&self, task_id: TaskId, handle: tokio::task::AbortHandle) {
        let mut state = self.lock();
        if state.here.contains(&task_id) {
            handle.abort();
        }
        state.running_async.insert(task_id, handle);
    }

    /// An async actor method ended.
    pub(crate) fn async_done(&self, task_id: TaskId) {
        let mut state = self.lock();
        state.running_async.remove(&task_id);
        state.here.remove(&task_id);
    }

    /// At the executor: `task_id` is asked to stop. A running async method is dropped
    /// now; one that starts later is dropped as it starts. Returns its children.
    pub(crate) fn flag_here(&self, task_id: TaskId) -> Vec<TaskId> {
        let mut state = self.lock();
        state.here.insert(task_id);
        if let Some(running) = state.running_async.get(&task_id) {
            running.abort();
        }
        state.children.get(&task_id).cloned().unwrap_or_default()
    }

    /// A task's function is about to run in this process: false (and nothing
    /// recorded) when it was asked to stop already.
    pub(crate) fn executing(&self, task_id: TaskId) -> bool {
        let mut state = self.lock();
        if state.here.contains(&task_id) {
            return false;
        }
        state.executing.insert(task_id);
        true
    }

    /// A task's function returned (or panicked).
    pub(crate) fn executed(&self, task_id: TaskId) {
        self.lock().executing.remove(&task_id);
    }

    /// A forced cancel ends this process only while the named task runs in it;
    /// else another task (or none) would be killed in its place.
    pub(crate) fn force_ends_process(&self, task_id: TaskId) -> bool {
        self.lock().executing.contains(&task_id)
    }

    /// True when the task this process runs was asked to stop.
    pub(crate) fn is_cancelled_here(&self, task_id: TaskId) -> bool {
        self.lock().here.contains(&task_id)
    }

    /// A task that ran here is done: its stop request is forgotten.
    pub(crate) fn forget_here(&self, task_id: TaskId) {
        self.lock().here.remove(&task_id);
    }

    pub(crate) fn is_requested(&self, task_id: TaskId) -> bool {
        self.lock().requested.contains(&task_id)
    }

    /// For a task about to start: when it was cancelled, forgets it and says so.
    pub(crate) fn finished_if_requested(&self, task_id: TaskId) -> bool {
        let mut state = self.lock();
        state.requested.contains(&task_id) && state.finish(task_id)
    }

    /// Forgets a finished task; true when it had been cancelled.
    pub(crate) fn finished(&self, task_id: TaskId) -> bool {
        self.lock().finish(task_id)
    }

    pub(crate) fn started(&self, task_id: TaskId, worker: &PeerHandle) {
        self.lock().running.insert(task_id, worker.clone());
    }

    pub(crate) fn actor_call(&self, task_id: TaskId) {
        self.lock().actor_calls.insert(task_id);
    }

    /// Records that the task running on this thread (if any) submitted `child`.
    pub(crate) fn submitted(&self, child: TaskId) {
        if let Some(parent) = crate::context::current_task() {
            self.lock().children.entry(parent).or_default().push(child);
        }
    }
}

impl CancelState {
    fn finish(&mut self, task_id: TaskId) -> bool {
        self.running.remove(&task_id);
        self.actor_calls.remove(&task_id);
        self.children.remove(&task_id);
        self.requested.remove(&task_id)
    }
}

/// The failure a cancelled task's results hold.
pub(crate) fn cancelled_failure(task: &str) -> TaskFailure {
    TaskFailure {
        kind: FailureKind::Cancelled,
        task: task.to_string(),
        message: "the task was cancelled".into(),
        error_type: None,
    }
}

/// Cancels the task that produces `reference` (see the module docs). Cancelling a
/// task that already finished does nothing.
pub fn cancel<T>(reference: &ObjectRef<T>, force: bool, recursive: bool) -> Result<()> {
    let core = core()?;
    let task_id = reference.id().task_id();
    let owner = reference.untyped().owner().clone();
    if owner.worker_id == core.worker.worker_id {
        return cancel_owned(&core, task_id, force, recursive);
    }
    // Only the owner knows where the task is: ask it.
    let request = Request::CancelTask(CancelTaskRequest { task_id, force, recursive, at_executor: false });
    let reply = block_on(&core.handle, {
        let core = core.clone();
        async move {
            let peer = core.peers.get(&owner.address).await?;
            peer.call(request, Duration::from_secs(30)).await.map_err(Error::from)
        }
    });
    match reply {
        Ok(_) => Ok(()),
        Err(Error::Cluster(message)) if message.contains("force") => Err(Error::InvalidArgument(message)),
        Err(error) => Err(error),
    }
}

/// Cancels a task this process owns.
pub(crate) fn cancel_owned(core: &Arc<Core>, task_id: TaskId, force: bool, recursive: bool) -> Result<()> {
    let is_actor_call = core.cancels.lock().actor_calls.contains(&task_id);
    if force && is_actor_call {
        return Err(Error::InvalidArgument(
            "force-cancelling an actor call is not supported; use manta::kill(&handle) to end the actor".into(),
        ));
    }
    if core.store.is_ready(ObjectId::for_return(task_id, 0)) {
        return Ok(());
    }
    core.cancels.lock().requested.insert(task_id);
    if crate::submitter::dequeue_cancelled(core, task_id) {
        return Ok(());
    }
    let running = core.cancels.lock().running.get(&task_id).cloned();
    if let Some(worker) = running {
        let request = Request::CancelTask(CancelTaskRequest { task_id, force, recursive, at_executor: true });
        core.handle.spawn(async move {
            let _ = worker.call(request, Duration::from_secs(30)).await;
        });
    }
    Ok(())
}

/// At the worker running `task_id`: flag it (and its children when `recursive`);
/// with `force`, end this process once the answer is sent.
pub(crate) fn cancel_here(core: &Arc<Core>, request: &CancelTaskRequest) -> Result<(), manta_proto::WireError> {
    let children = core.cancels.flag_here(request.task_id);
    if request.recursive {
        for child in children {
            let _ = cancel_owned(core, child, request.force, true);
        }
    }
    if request.force {
        if !core.cancels.force_ends_process(request.task_id) {
            // Not running here (finished, not started, or never ours): flagged only.
            return Ok(());
        }
        if core.actor.lock().expect("actor lock").is_some() {
            return Err(manta_proto::WireError::new(
                ErrorCode::InvalidArgument,
                "force-cancelling an actor call is not supported; use manta::kill(&handle) to end the actor",
            ));
        }
        core.handle.spawn(async {
            // Let the answer leave first; the owner sees the link drop and stores TaskCancelled.
            tokio::time::sleep(Duration::from_millis(20)).await;
            eprintln!("manta worker: the running task was force-cancelled; exiting");
            std::process::exit(1);
        });
    }
    Ok(())
}

/// Serves a `CancelTask` request.
pub(crate) fn serve(core: &Arc<Core>, request: CancelTaskRequest) -> Result<Reply, manta_proto::WireError> {
    if request.at_executor {
        cancel_here(core, &request)?;
    } else {
        cancel_owned(core, request.task_id, request.force, request.recursive)
            .map_err(|error| manta_proto::WireError::invalid(error.to_string()))?;
    }
    Ok(Reply::Ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_ids(count: usize) -> Vec<TaskId> {
        (0..count).map(|_| TaskId::random()).collect()
    }

    #[test]
    fn a_cancel_reaches_an_async_method_whichever_comes_first() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let cancels = Arc::new(Cancellations::default());
        // The race: the method registers while the cancel arrives, from two threads, many times.
        for (round, id) in task_ids(2_000).into_iter().enumerate() {
            let method = runtime.spawn(std::future::pending::<()>());
            let handle = method.abort_handle();
            let (registering, flagging) = (cancels.clone(), cancels.clone());
            let register = std::thread::spawn(move || registering.running_async(id, handle));
            let flag = std::thread::spawn(move || flagging.flag_here(id));
            register.join().unwrap();
            flag.join().unwrap();
            let outcome = runtime.block_on(method);
            assert!(outcome.is_err_and(|error| error.is_cancelled()), "round {round}: the cancel was missed");
            cancels.async_done(id);
        }
        assert!(cancels.lock().here.is_empty() && cancels.lock().running_async.is_empty());
    }

    #[test]
    fn finished_forgets_everything_and_reports_a_cancel() {
        let cancels = Cancellations::default();
        let id = TaskId::random();
        cancels.actor_call(id);
        assert!(!cancels.finished_if_requested(id), "not cancelled: nothing forgotten");
        assert!(cancels.lock().actor_calls.contains(&id));
        cancels.lock().requested.insert(id);
        assert!(cancels.finished_if_requested(id));
        let state = cancels.lock();
        assert!(state.requested.is_empty() && state.actor_calls.is_empty() && state.running.is_empty());
    }

    #[test]
    fn a_forced_cancel_ends_the_process_only_while_its_task_runs_here() {
        let cancels = Cancellations::default();
        let [running, other] = [TaskId::random(), TaskId::random()];
        assert!(!cancels.force_ends_process(running), "nothing runs yet");
        assert!(cancels.executing(running));
        assert!(cancels.force_ends_process(running));
        assert!(!cancels.force_ends_process(other), "another task's id does not end this one");
        cancels.executed(running);
        assert!(!cancels.force_ends_process(running), "it finished");
    }
}
