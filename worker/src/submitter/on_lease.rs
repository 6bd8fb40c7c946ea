//! Running tasks on a leased worker: several in flight when they are short, the
//! outcome of each (stored, retried, or sent back), and the lease's return.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use manta_proto::ErrorCode;
use manta_proto::client::WorkerClient;
use manta_proto::message::Request;
use manta_proto::net::CallError;
use manta_proto::object::ObjectBody;
use manta_proto::task::{
    FailureKind, Language, PushTaskRequest, ReturnWorkerLeaseRequest, SchedulingStrategy, TaskFailure, TaskState,
};

use super::{
    IDLE_LEASE_TIMEOUT, Lease, PendingTask, ShapeId, TASK_TIMEOUT, finish_cancelled, pump, refresh_or_fail,
    store_failure, store_returns, take_for,
};
use crate::core::{Core, EventDetail};
use crate::retry::{AttemptFailure, NextStep, after_failure};

/// Most tasks in flight on one leased Rust worker (see [`run_on_lease`]).
const MAX_PIPELINE_DEPTH: usize = 32;
/// About how much work may wait at a leased worker behind the running task: short
/// tasks are pipelined deep, tasks of this length or more one at a time, so a
/// slow worker holds few tasks that another worker could have run.
const QUEUED_WORK: Duration = Duration::from_millis(2);

/// Runs `task` on a leased worker, then the next queued tasks of its shape, until
/// the queue is empty (the lease then idles) or the worker dies. A Rust worker
/// runs pushed tasks in order, so several are in flight: as many as finish in
/// [`QUEUED_WORK`] at the pace they have been finishing, at most
/// [`MAX_PIPELINE_DEPTH`]. After one is sent back (the running task blocked),
/// one at a time until the worker has none.
pub(super) async fn run_on_lease(core: Arc<Core>, key: ShapeId, lease: Lease, task: PendingTask) {
    // SPREAD places every task anew, so its leases are not reused.
    let reuse = task.strategy != SchedulingStrategy::Spread;
    let pipelined = task.spec.language == Language::Rust;
    let mut depth = 1;
    let mut last_done = Instant::now();
    let mut running = FuturesUnordered::new();
    running.push(run_one(&core, key, &lease, task));
    let (mut alive, mut sent_back) = (true, false);
    loop {
        let room = if sent_back { 1 } else { depth };
        if alive && reuse && running.len() < room {
            let next: Vec<PendingTask> = {
                let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
                let shape = shapes.get_mut(&key).expect("a running lease's shape exists");
                let suspects = core.submitter.suspects();
                std::iter::from_fn(|| take_for(&mut shape.queue, lease.worker.node_id, &suspects))
                    .take(room - running.len())
                    .collect()
            };
            for task in next {
                running.push(run_one(&core, key, &lease, task));
            }
        }
        match running.next().await {
            Some(Pushed::Done) => {
                let gap = last_done.elapsed();
                last_done = Instant::now();
                if pipelined {
                    depth = pipeline_depth(gap);
                }
            }
            Some(Pushed::SentBack) => sent_back = true,
            Some(Pushed::WorkerLost) => alive = false,
            None => break,
        }
        if running.is_empty() {
            sent_back = false;
        }
    }
    drop(running);
    if !alive {
        pump(&core, key);
        return;
    }
    if !reuse {
        return_lease(&lease);
        pump(&core, key);
        return;
    }
    let lease_id = lease.id;
    {
        let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
        let shape = shapes.get_mut(&key).expect("a running lease's shape exists");
        shape.idle.push(lease);
    }
    // A task queued between the check and the push above must not wait for the timer.
    pump(&core, key);
    tokio::time::sleep(IDLE_LEASE_TIMEOUT).await;
    release_if_idle(&core, key, lease_id);
}

/// Tasks to keep in flight on a worker that finished one `gap` after the last.
fn pipeline_depth(gap: Duration) -> usize {
    let fit = QUEUED_WORK.as_nanos() / gap.as_nanos().max(1);
    usize::try_from(fit).unwrap_or(usize::MAX).clamp(1, MAX_PIPELINE_DEPTH)
}

/// How one push to a leased worker ended.
enum Pushed {
    /// The task ran (or failed and was dealt with).
    Done,
    /// The worker sent it back unrun; it is queued again.
    SentBack,
    /// The worker is gone.
    WorkerLost,
}

/// Runs one task on a lease.
async fn run_one(core: &Arc<Core>, key: ShapeId, lease: &Lease, mut task: PendingTask) -> Pushed {
    if core.cancels.is_requested(task.spec.task_id) {
        finish_cancelled(core, &task.spec);
        return Pushed::Done;
    }
    core.cancels.started(task.spec.task_id, &lease.peer);
    let outcomes = std::mem::take(&mut *lease.outcomes.lock().expect("outcomes lock"));
    for (index, outcome) in outcomes.iter().enumerate() {
        let state =
            if index + 1 == outcomes.len() { TaskState::SubmittedToWorker } else { TaskState::PendingNodeAssignment };
        let detail = EventDetail { error: None, lease_outcome: Some(outcome.clone()) };
        core.task_event(&task.spec, state, Some(&lease.worker), detail);
    }
    if outcomes.is_empty() {
        core.task_event(&task.spec, TaskState::SubmittedToWorker, Some(&lease.worker), EventDetail::default());
    }
    let worker = WorkerClient::new(lease.peer.clone(), TASK_TIMEOUT);
    let sent_at = Instant::now();
    let reply = worker.call(PushTaskRequest { spec: task.spec.clone() }).await;
    if let Err(CallError::Remote(error)) = &reply
        && error.code == ErrorCode::Unavailable
    {
        requeue(core, key, task);
        return Pushed::SentBack;
    }
    if reply.is_ok() {
        core.submitter.suspects().answered(lease.worker.node_id, sent_at);
    }
    if core.cancels.is_requested(task.spec.task_id) {
        // Cancelled while it ran: never retried, whatever it returned.
        finish_cancelled(core, &task.spec);
        return if reply.is_ok() { Pushed::Done } else { Pushed::WorkerLost };
    }
    core.cancels.finished(task.spec.task_id);
    match &reply {
        Ok(Ok(_)) => core.task_event(&task.spec, TaskState::Finished, Some(&lease.worker), EventDetail::default()),
        Ok(Err(failure)) => {
            let detail = EventDetail { error: Some(failure.message.clone()), lease_outcome: None };
            core.task_event(&task.spec, TaskState::Failed, Some(&lease.worker), detail);
        }
        Err(error) => {
            let detail = EventDetail { error: Some(error.to_string()), lease_outcome: None };
            core.task_event(&task.spec, TaskState::Failed, Some(&lease.worker), detail);
        }
    }
    match reply {
        Ok(Ok(values)) => {
            if values.iter().any(|value| matches!(value.body, ObjectBody::Stored(_))) {
                // Results in node stores can be lost with their node: keep how to remake them.
                core.lineage.record(&task);
            }
            store_returns(core, &task.spec, values, &lease.peer).await;
            Pushed::Done
        }
        Ok(Err(failure))
            if failure.kind == FailureKind::ObjectLost
                && after_failure(AttemptFailure::ArgumentLost, &task.retry_exceptions, &mut task.retries)
                    == NextStep::Retry =>
        {
            // A stored argument was lost with its node: rebuild the ones we own, then run again.
            core.submitter.retried.fetch_add(1, Ordering::Relaxed);
            task.attempts.push(failure.message.clone());
            let core = core.clone();
            tokio::spawn(async move {
                if refresh_or_fail(&core, &mut task).await {
                    requeue(&core, key, task);
                }
            });
            Pushed::Done
        }
        Ok(Err(failure)) => {
            if after_failure(AttemptFailure::Application(&failure), &task.retry_exceptions, &mut task.retries)
                == NextStep::Retry
            {
                task.attempts.push(failure.message.clone());
                requeue(core, key, task);
            } else {
                store_failure(core, &task.spec, failure);
            }
            Pushed::Done
        }
        Err(error @ CallError::UnexpectedReply { .. }) => {
            let failure = TaskFailure {
                kind: FailureKind::WorkerDied,
                task: task.spec.name.to_string(),
                message: error.to_string(),
                error_type: None,
            };
            store_failure(core, &task.spec, failure);
            Pushed::Done
        }
        Err(error) => {
            // The worker (or its node) died: system failure, retried per max_retries,
            // and not on that node again until it answers.
            task.attempts.push(error.to_string());
            core.submitter.suspects().lost(lease.worker.node_id, Instant::now());
            task.lost_on = Some(lease.worker.node_id);
            if after_failure(AttemptFailure::WorkerLost, &task.retry_exceptions, &mut task.retries) == NextStep::Retry {
                core.submitter.retried.fetch_add(1, Ordering::Relaxed);
                requeue(core, key, task);
            } else {
                let attempts = task.attempts.len();
                let failure = TaskFailure {
                    kind: FailureKind::WorkerDied,
                    task: task.spec.name.to_string(),
                    message: format!(
                        "the worker running it died; {attempts} attempt(s) failed: {}",
                        task.attempts.join("; ")
                    ),
                    error_type: None,
                };
                store_failure(core, &task.spec, failure);
            }
            Pushed::WorkerLost
        }
    }
}

pub(super) fn requeue(core: &Arc<Core>, key: ShapeId, task: PendingTask) {
    {
        let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
        if let Some(shape) = shapes.get_mut(&key) {
            shape.queue.push_front(task);
        }
    }
    pump(core, key);
}

fn release_if_idle(core: &Arc<Core>, key: ShapeId, lease_id: u64) {
    let lease = {
        let mut shapes = core.submitter.shapes.lock().expect("shapes lock");
        let Some(shape) = shapes.get_mut(&key) else { return };
        let Some(position) = shape.idle.iter().position(|lease| lease.id == lease_id) else { return };
        shape.idle.swap_remove(position)
    };
    return_lease(&lease);
}

pub(super) fn return_lease(lease: &Lease) {
    let raylet = lease.raylet.clone();
    let worker_id = lease.worker.worker_id;
    tokio::spawn(async move {
        let request = Request::ReturnWorkerLease(ReturnWorkerLeaseRequest { worker_id });
        let _ = raylet.call(request, Duration::from_secs(10)).await;
    });
}
