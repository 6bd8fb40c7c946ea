//! The normal tasks pushed to a worker, run one at a time, in order, on its task
//! thread. Callers push several tasks to one leased worker before the first
//! finishes; while the running task is blocked in `get` or `wait` (its CPU lent back to
//! the raylet), the tasks queued behind it are sent back unrun, so a task that
//! waits for one queued behind it cannot deadlock.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use manta_proto::task::TaskSpec;

/// Where a pushed task's outcome goes: its caller's link, or (in tests) a channel.
pub(crate) trait Outcome: Send {
    /// The task ran: answers with its outcome (from the task thread).
    fn ran(self: Box<Self>, outcome: crate::registry::TaskOutcome);
    /// The task is sent back unrun (the running task is blocked in `get` or `wait`).
    fn sent_back(self: Box<Self>);
}

/// A pushed task and where its outcome goes.
pub(crate) type Job = (TaskSpec, Box<dyn Outcome>);

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
            job.1.sent_back();
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
            reply.sent_back();
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
                    reply.ran(crate::service::execute(&spec));
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

    use tokio::sync::oneshot;

    use super::*;
    use crate::registry::TaskOutcome;

    /// What became of a task: its outcome, or `None` when it was sent back unrun.
    type Ran = Option<TaskOutcome>;

    impl Outcome for oneshot::Sender<Ran> {
        fn ran(self: Box<Self>, outcome: TaskOutcome) {
            let _ = self.send(Some(outcome));
        }

        fn sent_back(self: Box<Self>) {
            let _ = self.send(None);
        }
    }

    fn job() -> (Job, oneshot::Receiver<Ran>) {
        let (sender, receiver) = oneshot::channel();
        let caller = WorkerAddress { worker_id: WorkerId::random(), node_id: NodeId::random(), address: "a:1".into() };
        let spec = crate::resolver::tests::spec(caller, 0);
        ((spec, Box::new(sender)), receiver)
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
