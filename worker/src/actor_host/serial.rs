//! A `max_concurrency = 1` actor's calls: one thread runs them one at a time, in
//! order, fed straight by the supervisor. Several calls wait on its channel, so
//! the next starts as soon as the last ends, without a round trip through the
//! supervisor and the host for each. Sync methods run here; the supervisor sends
//! an async call through the host instead, alone, once this thread is idle (one
//! that reaches the thread anyway runs on the runtime while the thread waits).
//!
//! The thread does not report each call it finishes: it counts them in a
//! [`Progress`] the supervisor reads, and sends [`SupervisorMsg::Room`] only
//! when the supervisor asked for it (its pipeline was full, or an async call
//! waits for the thread to be idle).
//!
//! After a panic the thread runs nothing more: it hands every call still on its
//! channel back to the supervisor ([`SupervisorMsg::Returned`]), in order, and
//! the supervisor runs them on the restarted instance, so a restart loses none.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SendError, Sender};

use ractor::ActorRef;
use tokio::runtime::Handle;

use super::{ActorCallRequest, Finish, HostMsg, SupervisorMsg};
use crate::core::current;
use crate::registry::{ErasedActor, MethodCall, TaskOutcome, panic_message};

/// Calls handed to the thread at once (the supervisor's limit in flight).
pub(crate) const SERIAL_PIPELINE: u64 = 64;

/// How far the thread has got, shared with the supervisor.
pub(crate) struct Progress {
    finished: AtomicU64,
    /// The count of finished calls at which the supervisor wants a
    /// [`SupervisorMsg::Room`]; `u64::MAX` while it wants none.
    wake_at: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self { finished: AtomicU64::new(0), wake_at: AtomicU64::new(u64::MAX) }
    }

    /// Counts a finished call; true when the supervisor asked to hear of this
    /// one (the caller then sends it [`SupervisorMsg::Room`]).
    pub(crate) fn finished(&self) -> bool {
        // SeqCst on both sides: either the supervisor sees this count after it
        // asks ([`Progress::ask`]), or this thread sees its request.
        let finished = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        finished >= self.wake_at.load(Ordering::SeqCst) && self.wake_at.swap(u64::MAX, Ordering::SeqCst) != u64::MAX
    }

    /// Of `sent` calls, asks to hear once at most `busy` are unfinished: true
    /// when asked, false when that is already so (nothing asked).
    fn ask(&self, sent: u64, busy: u64) -> bool {
        let target = sent.saturating_sub(busy);
        self.wake_at.store(target, Ordering::SeqCst);
        if self.finished.load(Ordering::SeqCst) >= target {
            // Reached meanwhile; a Room the thread sent anyway is harmless.
            self.wake_at.store(u64::MAX, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// The supervisor's end of a serial actor's thread.
pub(crate) struct SerialSender {
    calls: Sender<ActorCallRequest>,
    progress: Arc<Progress>,
    sent: u64,
}

impl SerialSender {
    /// A channel to a thread not started yet: its receiving end, and the progress it shares.
    pub(crate) fn new() -> (Self, Receiver<ActorCallRequest>, Arc<Progress>) {
        let (calls, receiver) = std::sync::mpsc::channel();
        let progress = Arc::new(Progress::new());
        (Self { calls, progress: progress.clone(), sent: 0 }, receiver, progress)
    }

    /// Calls sent to the thread that it has not finished.
    pub(crate) fn busy(&self) -> u64 {
        self.sent.saturating_sub(self.progress.finished.load(Ordering::SeqCst))
    }

    /// Hands the thread a call.
    // The call comes back as it went in: boxing it would cost every call an allocation.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&mut self, call: ActorCallRequest) -> Result<(), SendError<ActorCallRequest>> {
        self.calls.send(call)?;
        self.sent += 1;
        Ok(())
    }

    /// Asks the thread for a [`SupervisorMsg::Room`] once at most `busy` calls
    /// are left: true when asked, false when that is already so (nothing asked).
    pub(crate) fn ask_room(&self, busy: u64) -> bool {
        self.progress.ask(self.sent, busy)
    }
}

/// What the thread needs besides its calls.
pub(crate) struct SerialThread {
    pub(crate) instance: Arc<dyn ErasedActor>,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
    pub(crate) host: ActorRef<HostMsg>,
    pub(crate) generation: u64,
    pub(crate) progress: Arc<Progress>,
}

impl SerialThread {
    /// Starts the thread; it ends when the supervisor drops its sender.
    pub(crate) fn start(self, calls: Receiver<ActorCallRequest>) -> std::io::Result<()> {
        let runtime = Handle::current();
        std::thread::Builder::new().name("manta-actor-0".into()).spawn(move || self.run(&runtime, calls))?;
        Ok(())
    }

    fn run(self, runtime: &Handle, calls: Receiver<ActorCallRequest>) {
        let mut panicked = false;
        for call in calls {
            if panicked {
                let _ = self.supervisor.cast(SupervisorMsg::Returned(self.generation, Box::new(call)));
                continue;
            }
            // The node's fence: held (in order) while the GCS may be restarting us elsewhere.
            if !crate::fence::is_open() {
                runtime.block_on(crate::fence::wait_open());
            }
            panicked = !self.run_one(runtime, call);
        }
        // Last, after every returned call: the supervisor may feed the next instance.
        let _ = self.supervisor.cast(SupervisorMsg::Drained(self.generation));
    }

    /// Runs one call and answers it; false when it panicked.
    fn run_one(&self, runtime: &Handle, call: ActorCallRequest) -> bool {
        let ActorCallRequest { spec, reply } = call;
        let finish = Finish {
            myself: self.host.clone(),
            supervisor: self.supervisor.clone(),
            generation: self.generation,
            reply: Some(reply),
            name: spec.name.clone(),
            progress: Some(self.progress.clone()),
        };
        let core = current();
        let prepared = if core.as_ref().is_some_and(|core| core.cancels.is_cancelled_here(spec.task_id)) {
            Err(crate::cancel::cancelled_failure(&spec.name))
        } else {
            let method = spec.actor_call.as_ref().map(|call| call.method.as_str()).unwrap_or_default();
            self.instance.call(method, spec.args.clone())
        };
        let outcome: Result<TaskOutcome, String> = match prepared {
            Err(failure) => Ok(Err(failure)),
            Ok(MethodCall::Blocking(body)) => {
                crate::context::set_current_task(Some(spec.task_id));
                let result = std::panic::catch_unwind(AssertUnwindSafe(body));
                crate::context::set_current_task(None);
                result.map_err(|payload| panic_message(&*payload))
            }
            Ok(MethodCall::Async(future)) => {
                let running = runtime.spawn(future);
                // `manta::cancel` drops a running async method at its next await.
                if let Some(core) = &core {
                    core.cancels.running_async(spec.task_id, running.abort_handle());
                }
                let result = runtime.block_on(running);
                if let Some(core) = &core {
                    core.cancels.async_done(spec.task_id);
                }
                match result {
                    Ok(result) => Ok(result),
                    Err(error) if error.is_panic() => Err(panic_message(&*error.into_panic())),
                    Err(error) if error.is_cancelled() => Ok(Err(crate::cancel::cancelled_failure(&spec.name))),
                    Err(error) => Err(error.to_string()),
                }
            }
        };
        let ran = outcome.is_ok();
        finish.outcome(outcome);
        ran
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisor_hears_only_of_the_call_it_waits_for() {
        let progress = Progress::new();
        // Nobody asked: finishing tells no one.
        assert!(!progress.finished());
        // 5 sent, 1 finished: asks to hear once at most 2 are left.
        assert!(progress.ask(5, 2));
        assert!(!progress.finished());
        assert!(progress.finished(), "the third finished call is the one asked for");
        assert!(!progress.finished(), "told once");
        // Already so: nothing is asked, and nothing is told.
        assert!(!progress.ask(5, 2));
        assert!(!progress.finished());
    }

    #[test]
    fn a_call_finishing_while_the_supervisor_asks_is_never_missed() {
        for _ in 0..2000 {
            let progress = Arc::new(Progress::new());
            let thread = {
                let progress = progress.clone();
                std::thread::spawn(move || progress.finished())
            };
            let asked = progress.ask(1, 0);
            let told = thread.join().expect("the thread ends");
            // Asked means still waiting: then the thread must have said so.
            assert!(!asked || told, "the supervisor waits for a call that finished unheard");
        }
    }
}
