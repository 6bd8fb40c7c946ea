//! The normal tasks pushed to a worker, run one at a time, in order, on its task
//! thread. Callers push several tasks to one leased worker before the first
//! finishes; while the running task is blocked in `get` or `wait` (its CPU lent back to
//! the raylet), the tasks queued behind it are sent back unrun, so a task that
//! waits for one queued behind it cannot deadlock.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use manta_proto::task::TaskSpec;
use tokio::sync::oneshot;

use crate::registry::TaskOutcome;

/// What became of a pushed task: its outcome, or `None` when it was sent back unrun.
pub(crate) type Ran = Option<TaskOutcome>;

/// A pushed task and where its outcome goes.
pub(crate) type Job = (TaskSpec, oneshot::Sender<Ran>);

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// The running task waits in `get` or `wait`: queued tasks go back, new ones are refused.
    blocked: bool,
}

/// The queue between the link (which pushes) and the task thread (which runs).
#[derive(Default)]
pub(crate) struct TaskQueue {
    state: Mutex<State>,
    ready: Condvar,
}

impl TaskQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a task, or sends it back at once while the running task is blocked.
    pub(crate) fn push(&self, job: Job) {
        let mut state = self.lock();
        if state.blocked {
            drop(state);
            let _ = job.1.send(None);
            return;
        }
        state.jobs.push_back(job);
        self.ready.notify_one();
    }

    /// The next task, waiting for one.
    pub(crate) fn next(&self) -> Job {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return job;
            }
            state = self.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The running task blocks (`true`: the queued tasks go back unrun) or resumes.
    pub(crate) fn set_blocked(&self, blocked: bool) {
        let returned: Vec<Job> = {
            let mut state = self.lock();
            state.blocked = blocked;
            if blocked { state.jobs.drain(..).collect() } else { Vec::new() }
        };
        for (_, reply) in returned {
            let _ = reply.send(None);
        }
    }
}

static QUEUE: OnceLock<&'static TaskQueue> = OnceLock::new();

/// This process's queue of normal tasks; its thread starts on first use.
pub(crate) fn queue() -> &'static TaskQueue {
    QUEUE.get_or_init(|| {
        let queue: &'static TaskQueue = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("manta-task".into())
            .spawn(move || {
                loop {
                    let (spec, reply) = queue.next();
                    let _ = reply.send(Some(crate::service::execute(&spec)));
                }
            })
            .expect("spawn the task thread");
        queue
    })
}

/// Called when a task thread blocks in `get` or `wait`, or resumes; only a worker's task
/// thread has a queue to empty.
pub(crate) fn task_thread_blocked(blocked: bool) {
    if let Some(queue) = QUEUE.get() {
        queue.set_blocked(blocked);
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::task::WorkerAddress;
    use manta_proto::{NodeId, WorkerId};

    use super::*;

    fn job() -> (Job, oneshot::Receiver<Ran>) {
        let (sender, receiver) = oneshot::channel();
        let caller = WorkerAddress { worker_id: WorkerId::random(), node_id: NodeId::random(), address: "a:1".into() };
        let spec = crate::resolver::tests::spec(caller, 0);
        ((spec, sender), receiver)
    }

    #[test]
    fn tasks_run_in_order_and_a_blocked_task_sends_the_rest_back() {
        let queue = TaskQueue::default();
        let (first, _first_reply) = job();
        let first_id = first.0.task_id;
        let (second, mut second_reply) = job();
        let second_id = second.0.task_id;
        queue.push(first);
        queue.push(second);
        assert_eq!(queue.next().0.task_id, first_id);
        // The first task now waits in `get`: the second goes back unrun, and so does a new one.
        queue.set_blocked(true);
        assert!(matches!(second_reply.try_recv(), Ok(None)));
        let (third, mut third_reply) = job();
        queue.push(third);
        assert!(matches!(third_reply.try_recv(), Ok(None)));
        // Resumed: tasks queue again.
        queue.set_blocked(false);
        let (fourth, _fourth_reply) = job();
        let fourth_id = fourth.0.task_id;
        queue.push(fourth);
        assert_eq!(queue.next().0.task_id, fourth_id);
        assert_ne!(second_id, fourth_id);
    }
}
