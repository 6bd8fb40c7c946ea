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

/// What the owner knows of its tasks, for cancellation.
#[derive(Default)]
pub(crate) struct Cancellations {
    /// Tasks asked to stop (checked before a task is queued, pushed, retried or stored).
    requested: Mutex<HashSet<TaskId>>,
    /// Tasks running on a worker: the link to that worker, and whether it is an actor call.
    running: Mutex<HashMap<TaskId, (PeerHandle, bool)>>,
    /// Actor calls not finished yet.
    actor_calls: Mutex<HashSet<TaskId>>,
    /// Tasks submitted by each task running in this process (for `recursive`).
    children: Mutex<HashMap<TaskId, Vec<TaskId>>>,
    /// Tasks this process runs that were asked to stop (`is_canceled`).
    pub(crate) here: Mutex<HashSet<TaskId>>,
    /// Async actor methods running here, to drop on cancel.
    running_async: Mutex<HashMap<TaskId, tokio::task::AbortHandle>>,
}

impl Cancellations {
    /// An async actor method started here.
    pub(crate) fn running_async(&self, task_id: TaskId, handle: tokio::task::AbortHandle) {
        if self.here.lock().expect("cancel lock").contains(&task_id) {
            handle.abort();
        }
        self.running_async.lock().expect("cancel lock").insert(task_id, handle);
    }

    /// An async actor method ended.
    pub(crate) fn async_done(&self, task_id: TaskId) {
        self.running_async.lock().expect("cancel lock").remove(&task_id);
        self.here.lock().expect("cancel lock").remove(&task_id);
    }

    pub(crate) fn is_requested(&self, task_id: TaskId) -> bool {
        self.requested.lock().expect("cancel lock").contains(&task_id)
    }

    /// For a task about to start: when it was cancelled, forgets it and says so.
    pub(crate) fn finished_if_requested(&self, task_id: TaskId) -> bool {
        self.is_requested(task_id) && self.finished(task_id)
    }

    /// Forgets a finished task; true when it had been cancelled.
    pub(crate) fn finished(&self, task_id: TaskId) -> bool {
        self.running.lock().expect("cancel lock").remove(&task_id);
        self.actor_calls.lock().expect("cancel lock").remove(&task_id);
        self.children.lock().expect("cancel lock").remove(&task_id);
        self.requested.lock().expect("cancel lock").remove(&task_id)
    }

    pub(crate) fn started(&self, task_id: TaskId, worker: &PeerHandle, actor_call: bool) {
        self.running.lock().expect("cancel lock").insert(task_id, (worker.clone(), actor_call));
    }

    pub(crate) fn actor_call(&self, task_id: TaskId) {
        self.actor_calls.lock().expect("cancel lock").insert(task_id);
    }

    /// Records that the task running on this thread (if any) submitted `child`.
    pub(crate) fn submitted(&self, child: TaskId) {
        if let Some(parent) = crate::context::current_task() {
            self.children.lock().expect("cancel lock").entry(parent).or_default().push(child);
        }
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
    let cancels = &core.cancels;
    let is_actor_call = cancels.actor_calls.lock().expect("cancel lock").contains(&task_id);
    if force && is_actor_call {
        return Err(Error::InvalidArgument(
            "force-cancelling an actor call is not supported; use manta::kill(&handle) to end the actor".into(),
        ));
    }
    if core.store.is_ready(ObjectId::for_return(task_id, 0)) {
        return Ok(());
    }
    cancels.requested.lock().expect("cancel lock").insert(task_id);
    if crate::submitter::dequeue_cancelled(core, task_id) {
        return Ok(());
    }
    let running = cancels.running.lock().expect("cancel lock").get(&task_id).cloned();
    if let Some((worker, _)) = running {
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
    core.cancels.here.lock().expect("cancel lock").insert(request.task_id);
    if let Some(running) = core.cancels.running_async.lock().expect("cancel lock").get(&request.task_id) {
        running.abort();
    }
    if request.recursive {
        let children = core.cancels.children.lock().expect("cancel lock").get(&request.task_id).cloned();
        for child in children.unwrap_or_default() {
            let _ = cancel_owned(core, child, request.force, true);
        }
    }
    if request.force {
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
