//! A `max_concurrency = 1` actor's calls: one thread runs them one at a time, in
//! order, fed straight by the supervisor. Several calls wait on its channel, so
//! the next starts as soon as the last ends, without a round trip through the
//! supervisor and the host for each. Sync methods run here; the supervisor sends
//! an async call through the host instead, alone, once this thread is idle (one
//! that reaches the thread anyway runs on the runtime while the thread waits).
//!
//! After a panic the thread runs nothing more: it hands every call still on its
//! channel back to the supervisor ([`SupervisorMsg::Returned`]), in order, and
//! the supervisor runs them on the restarted instance, so a restart loses none.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use ractor::ActorRef;
use tokio::runtime::Handle;

use super::{ActorCallRequest, Finish, HostMsg, SupervisorMsg};
use crate::core::current;
use crate::registry::{ErasedActor, MethodCall, TaskOutcome, panic_message};

/// Calls handed to the thread at once (the supervisor's limit in flight).
pub(crate) const SERIAL_PIPELINE: u32 = 64;

/// The supervisor's end of a serial actor's thread.
pub(crate) type SerialSender = Sender<ActorCallRequest>;

/// What the thread needs besides its calls.
pub(crate) struct SerialThread {
    pub(crate) instance: Arc<dyn ErasedActor>,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
    pub(crate) host: ActorRef<HostMsg>,
    pub(crate) generation: u64,
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
