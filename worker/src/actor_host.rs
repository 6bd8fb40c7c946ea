//! The actor inside its worker: a supervised ractor actor.
//!
//! ```text
//! ActorSupervisor   queues calls, keeps at most max_concurrency in flight,
//!  │                restarts the host after a panic while restarts remain
//!  └─ ActorHost     owns the instance; runs each call (sync methods on its
//!                   method threads, which answer the caller themselves; async
//!                   ones on the runtime); a panic fails that call and then
//!                   fails the host
//! ```
//! Queued calls live in the supervisor, so a restart loses none of them. A
//! `max_concurrency = 1` actor's calls skip the host: the supervisor hands them,
//! several at a time, to one thread that runs them in order ([`serial`]).

mod serial;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use manta_proto::task::{ActorSpec, FailureKind, TaskFailure, TaskSpec};

use crate::registry::TaskOutcome;
use manta_proto::restart::{RestartDecision, RestartPolicy, RestartTracker};
use manta_proto::task::ActorPanickedEvent;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::warn;

use crate::core::current;
use crate::registry::{self, ErasedActor, MethodCall, panic_message};

pub(crate) use crate::reply::CallReply;

/// One method call and where its result goes.
pub(crate) struct ActorCallRequest {
    pub spec: TaskSpec,
    pub reply: CallReply,
}

/// The supervisor of one user actor.
#[derive(Debug, Default)]
pub(crate) struct ActorSupervisor;

/// Messages to the [`ActorSupervisor`].
pub(crate) enum SupervisorMsg {
    /// A method call to queue.
    Call(Box<ActorCallRequest>),
    /// A call the host ran (generation `u64`) finished.
    Done(u64),
    /// The serial thread of generation `u64` finished the calls the supervisor
    /// waited for ([`serial::SerialSender::ask_room`]).
    Room(u64),
    /// A serial thread of generation `u64` hands back a call it did not run (an
    /// earlier call panicked); they come in call order.
    Returned(u64, Box<ActorCallRequest>),
    /// The serial thread of generation `u64` ended: every call it did not run is back.
    Drained(u64),
}

pub(crate) struct SupervisorState {
    spec: ActorSpec,
    host: Option<ActorRef<HostMsg>>,
    /// The serial thread's calls (`max_concurrency = 1`).
    serial: Option<serial::SerialSender>,
    /// A panicked serial thread still handing calls back: nothing goes to the
    /// next instance until it is done, so the calls keep their order.
    draining: Option<u64>,
    /// Calls handed back so far (they go to the front of the queue, in order).
    returned: usize,
    /// A serial actor's async call runs (through the host): nothing else may.
    async_in_flight: bool,
    /// Which of the class's methods are async.
    class_is_async: fn(&str) -> bool,
    generation: u64,
    queue: VecDeque<ActorCallRequest>,
    /// Calls the host runs (a serial actor's thread counts its own).
    in_flight: u32,
    restarts: RestartTracker,
    dead: Option<String>,
}

impl Actor for ActorSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ActorSpec;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        spec: ActorSpec,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // A restart after the process or node died continues the count.
        let restarts = RestartTracker::with_used(RestartPolicy::lifetime(spec.max_restarts), spec_restarts_used(&spec));
        let class_is_async = class_is_async(&spec);
        let mut state = SupervisorState {
            spec,
            host: None,
            serial: None,
            draining: None,
            returned: 0,
            async_in_flight: false,
            class_is_async,
            generation: 0,
            queue: VecDeque::new(),
            in_flight: 0,
            restarts,
            dead: None,
        };
        let restarted = state.restarts.restarts() > 0;
        spawn_host(&myself, &mut state, restarted).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Call(call) => state.queue.push_back(*call),
            SupervisorMsg::Done(generation) => {
                if generation == state.generation {
                    state.in_flight = state.in_flight.saturating_sub(1);
                    if state.in_flight == 0 {
                        state.async_in_flight = false;
                    }
                }
            }
            // Only to look at the queue again (an older thread's is stale).
            SupervisorMsg::Room(generation) => {
                if generation != state.generation {
                    return Ok(());
                }
            }
            SupervisorMsg::Returned(generation, call) => {
                if generation == state.generation && state.draining.is_none() {
                    // The thread panicked (its host's failure may not be here yet): send it nothing more.
                    stop_serial(state);
                }
                let at = state.returned.min(state.queue.len());
                state.queue.insert(at, *call);
                state.returned += 1;
            }
            SupervisorMsg::Drained(generation) => {
                if state.draining == Some(generation) {
                    state.draining = None;
                    state.returned = 0;
                }
            }
        }
        pump(state);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(_, error) = event else {
            return Ok(());
        };
        state.host = None;
        if state.draining.is_none() {
            stop_serial(state);
        }
        state.in_flight = 0;
        state.async_in_flight = false;
        if let RestartDecision::Restart { attempt, .. } = state.restarts.on_failure(std::time::Instant::now()) {
            warn!(actor = %state.spec.actor_id, restart = attempt, %error, "actor panicked; restarting it");
            if let Err(error) = spawn_host(&myself, state, true).await {
                state.dead = Some(format!("the actor's constructor failed on restart: {error}"));
            }
        } else {
            state.dead = Some(format!(
                "the actor panicked ({error}) and has no restarts left (max_restarts = {})",
                state.spec.max_restarts
            ));
        }
        // The GCS counts panic restarts against the same budget as process restarts.
        let (restarted, cause) = match &state.dead {
            Some(cause) => (false, cause.clone()),
            None => (true, format!("the actor panicked ({error}) and was restarted")),
        };
        if let Some(core) = current() {
            let event = ActorPanickedEvent { actor_id: state.spec.actor_id, restarted, cause };
            let _ = core.gcs.peer().send_event(manta_proto::message::Event::ActorPanicked(event));
        }
        pump(state);
        Ok(())
    }
}

/// Starts calls while the concurrency limit allows; fails them when the actor is dead.
fn pump(state: &mut SupervisorState) {
    if let Some(cause) = &state.dead {
        for call in state.queue.drain(..) {
            let failure = TaskFailure {
                kind: FailureKind::ActorDied,
                task: call.spec.name.to_string(),
                message: cause.clone(),
                error_type: None,
            };
            call.reply.send(Err(failure));
        }
        return;
    }
    if state.draining.is_some() {
        return;
    }
    if state.spec.max_concurrency <= 1 {
        // Between a panic and the restart there is no thread (nor host) to feed.
        let (Some(serial), Some(host)) = (&mut state.serial, &state.host) else { return };
        // One at a time, in order: sync calls queue on the thread; an async call
        // runs on the runtime (through the host) alone, once the thread is idle.
        while !state.async_in_flight
            && let Some(front) = state.queue.front()
        {
            if is_async(state.class_is_async, front) {
                if serial.busy() > 0 && serial.ask_room(0) {
                    break;
                }
                let call = state.queue.pop_front().expect("front checked");
                state.in_flight += 1;
                state.async_in_flight = true;
                let _ = host.cast(HostMsg::Run(Box::new(call)));
                break;
            }
            // A full pipeline waits until the thread is half way through it.
            if serial.busy() >= serial::SERIAL_PIPELINE && serial.ask_room(serial::SERIAL_PIPELINE / 2) {
                break;
            }
            let call = state.queue.pop_front().expect("front checked");
            if let Err(std::sync::mpsc::SendError(call)) = serial.send(call) {
                let failure = TaskFailure {
                    kind: FailureKind::ActorDied,
                    task: call.spec.name.to_string(),
                    message: "the actor's method thread stopped".into(),
                    error_type: None,
                };
                call.reply.send(Err(failure));
            }
        }
        return;
    }
    let Some(host) = &state.host else { return };
    while state.in_flight < state.spec.max_concurrency.max(1) {
        let Some(call) = state.queue.pop_front() else { break };
        state.in_flight += 1;
        let _ = host.cast(HostMsg::Run(Box::new(call)));
    }
}

/// Whether `call` is to an async method (`class_is_async`: the class's test).
fn is_async(class_is_async: fn(&str) -> bool, call: &ActorCallRequest) -> bool {
    let method = call.spec.actor_call.as_ref().map(|call| call.method.as_str()).unwrap_or_default();
    class_is_async(method)
}

/// The class's test for async methods (none for a class this binary lacks).
fn class_is_async(spec: &ActorSpec) -> fn(&str) -> bool {
    registry::actor_class(&spec.class).map_or(|_| false, |class| class.is_async)
}

/// Sends the serial thread nothing more; it hands back what it did not run, then
/// says it is drained.
fn stop_serial(state: &mut SupervisorState) {
    if state.serial.take().is_some() {
        state.draining = Some(state.generation);
        state.returned = 0;
        state.in_flight = 0;
    }
    state.async_in_flight = false;
}

fn spec_restarts_used(spec: &ActorSpec) -> usize {
    spec.restarts_used.max(0) as usize
}

async fn spawn_host(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    restarted: bool,
) -> Result<(), ActorProcessingErr> {
    state.generation += 1;
    let (serial, calls) = if state.spec.max_concurrency <= 1 {
        let (sender, receiver, progress) = serial::SerialSender::new();
        (Some(sender), Some((receiver, progress)))
    } else {
        (None, None)
    };
    let args = HostArgs { spec: state.spec.clone(), supervisor: myself.clone(), generation: state.generation, calls };
    let (host, _) = Actor::spawn_linked(None, ActorHost, args, myself.get_cell()).await?;
    state.host = Some(host);
    state.serial = serial;
    if let Some(core) = current() {
        *core.actor.lock().expect("actor lock") = Some((state.spec.actor_id, restarted));
    }
    Ok(())
}

/// The actor that owns the user's instance.
#[derive(Debug, Default)]
pub(crate) struct ActorHost;

/// Messages to the [`ActorHost`].
pub(crate) enum HostMsg {
    /// Run one call.
    Run(Box<ActorCallRequest>),
    /// A call panicked: fail, so the supervisor decides.
    Panicked(String),
}

pub(crate) struct HostArgs {
    spec: ActorSpec,
    supervisor: ActorRef<SupervisorMsg>,
    generation: u64,
    /// A serial actor's calls, for its thread (see [`serial`]), and the progress it shares.
    calls: Option<(std::sync::mpsc::Receiver<ActorCallRequest>, Arc<serial::Progress>)>,
}

pub(crate) struct HostState {
    instance: Arc<dyn ErasedActor>,
    supervisor: ActorRef<SupervisorMsg>,
    generation: u64,
    /// Threads that run sync methods (max_concurrency of them), fed in call order;
    /// `None` for a serial actor, whose one thread the supervisor feeds.
    threads: Option<std::sync::mpsc::Sender<BlockingJob>>,
}

type BlockingJob = Box<dyn FnOnce() + Send>;

/// Starts `count` threads that run blocking jobs until the sender is dropped.
fn start_method_threads(count: u32) -> std::sync::mpsc::Sender<BlockingJob> {
    let (sender, receiver) = std::sync::mpsc::channel::<BlockingJob>();
    let receiver = Arc::new(std::sync::Mutex::new(receiver));
    for index in 0..count.max(1) {
        let receiver = receiver.clone();
        let spawned = std::thread::Builder::new().name(format!("manta-actor-{index}")).spawn(move || {
            loop {
                let job = match receiver.lock() {
                    Ok(receiver) => receiver.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            }
        });
        if let Err(error) = spawned {
            warn!(%error, "could not start an actor method thread");
        }
    }
    sender
}

impl Actor for ActorHost {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = HostArgs;

    async fn pre_start(&self, myself: ActorRef<HostMsg>, args: HostArgs) -> Result<HostState, ActorProcessingErr> {
        let instance = construct(&args.spec).await.map_err(|failure| failure.message)?;
        let threads = match args.calls {
            Some((calls, progress)) => {
                let thread = serial::SerialThread {
                    instance: instance.clone(),
                    supervisor: args.supervisor.clone(),
                    host: myself,
                    generation: args.generation,
                    progress,
                };
                thread.start(calls)?;
                None
            }
            None => Some(start_method_threads(args.spec.max_concurrency)),
        };
        Ok(HostState { instance, supervisor: args.supervisor, generation: args.generation, threads })
    }

    async fn handle(
        &self,
        myself: ActorRef<HostMsg>,
        message: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HostMsg::Run(call) => {
                // The node's fence: held (in order) while the GCS may be restarting us elsewhere.
                crate::fence::wait_open().await;
                run_call(myself, state, *call)
            }
            HostMsg::Panicked(message) => return Err(message.into()),
        }
        Ok(())
    }
}

/// Runs the constructor on the blocking pool, catching a panic.
pub(crate) async fn construct(spec: &ActorSpec) -> Result<Arc<dyn ErasedActor>, TaskFailure> {
    let class_name = spec.class.split('#').next().unwrap_or(&spec.class).to_string();
    let Some(class) = registry::actor_class(&spec.class) else {
        return Err(TaskFailure {
            kind: FailureKind::UnknownFunction,
            task: class_name,
            message: format!(
                "this worker binary has no actor class {}; build the driver and workers from the same source",
                spec.class
            ),
            error_type: None,
        });
    };
    let args = spec.args.clone();
    let task = format!("{class_name}::new");
    let outcome =
        tokio::task::spawn_blocking(move || std::panic::catch_unwind(AssertUnwindSafe(|| (class.create)(&args)))).await;
    match outcome {
        Ok(Ok(Ok(instance))) => Ok(Arc::from(instance)),
        Ok(Ok(Err(failure))) => Err(failure),
        Ok(Err(payload)) => {
            Err(TaskFailure { kind: FailureKind::Panic, task, message: panic_message(&*payload), error_type: None })
        }
        Err(error) => Err(TaskFailure { kind: FailureKind::Panic, task, message: error.to_string(), error_type: None }),
    }
}

fn run_call(myself: ActorRef<HostMsg>, state: &HostState, call: ActorCallRequest) {
    let ActorCallRequest { spec, reply } = call;
    let method = spec.actor_call.as_ref().map(|call| call.method.clone()).unwrap_or_default();
    let supervisor = state.supervisor.clone();
    let generation = state.generation;
    let cancelled = crate::core::current().is_some_and(|core| core.cancels.is_cancelled_here(spec.task_id));
    let prepared = if cancelled {
        Err(crate::cancel::cancelled_failure(&spec.name))
    } else {
        state.instance.call(&method, spec.args.clone())
    };
    let finish = Finish { myself, supervisor, generation, reply: Some(reply), name: spec.name.clone(), progress: None };
    match prepared {
        Err(failure) => finish.outcome(Ok(Err(failure))),
        Ok(MethodCall::Blocking(body)) => {
            // The method thread answers the caller and the supervisor itself.
            let task_id = spec.task_id;
            let job: BlockingJob = Box::new(move || {
                crate::context::set_current_task(Some(task_id));
                let result = std::panic::catch_unwind(AssertUnwindSafe(body));
                crate::context::set_current_task(None);
                finish.outcome(result.map_err(|payload| panic_message(&*payload)));
            });
            // Unsent, the job drops its `Finish`, which fails the call.
            if let Some(threads) = &state.threads {
                let _ = threads.send(job);
            }
        }
        Ok(MethodCall::Async(future)) => {
            tokio::spawn(async move {
                let running = tokio::spawn(future);
                // `manta::cancel` drops a running async method at its next await.
                let cancels = crate::core::current();
                if let Some(core) = &cancels {
                    core.cancels.running_async(spec.task_id, running.abort_handle());
                }
                let result = running.await;
                if let Some(core) = &cancels {
                    core.cancels.async_done(spec.task_id);
                }
                finish.outcome(match result {
                    Ok(result) => Ok(result),
                    Err(error) if error.is_panic() => Err(panic_message(&*error.into_panic())),
                    Err(error) if error.is_cancelled() => Ok(Err(crate::cancel::cancelled_failure(&spec.name))),
                    Err(error) => Err(error.to_string()),
                });
            });
        }
    }
}

/// Where a call's outcome goes: the caller, then the supervisor (done) or the
/// host (a panic, which fails it so the supervisor decides). Dropped unsent (the
/// method threads stopped), it reports that as the call's failure.
struct Finish {
    myself: ActorRef<HostMsg>,
    supervisor: ActorRef<SupervisorMsg>,
    generation: u64,
    reply: Option<CallReply>,
    name: Arc<str>,
    /// A serial thread's count, told instead of the supervisor.
    progress: Option<Arc<serial::Progress>>,
}

impl Finish {
    /// `Err` is a panic's message.
    fn outcome(mut self, outcome: Result<TaskOutcome, String>) {
        self.send(outcome);
    }

    fn send(&mut self, outcome: Result<TaskOutcome, String>) {
        let Some(reply) = self.reply.take() else { return };
        match outcome {
            Ok(result) => {
                reply.send(result);
                match &self.progress {
                    Some(progress) => {
                        if progress.finished() {
                            let _ = self.supervisor.cast(SupervisorMsg::Room(self.generation));
                        }
                    }
                    None => {
                        let _ = self.supervisor.cast(SupervisorMsg::Done(self.generation));
                    }
                }
            }
            Err(message) => {
                let failure = TaskFailure {
                    kind: FailureKind::Panic,
                    task: self.name.to_string(),
                    message: message.clone(),
                    error_type: None,
                };
                reply.send(Err(failure));
                // No `Done`: the supervisor sends this host nothing more; it restarts it on the failure.
                let _ = self.myself.cast(HostMsg::Panicked(format!("{} panicked: {message}", self.name)));
            }
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.send(Err("the actor's method thread stopped".to_string()));
    }
}

/// Errors for a method the class does not have (used by generated dispatch).
pub fn unknown_method(class: &str, method: &str) -> TaskFailure {
    TaskFailure {
        kind: FailureKind::UnknownFunction,
        task: format!("{class}.{method}"),
        message: format!(
            "actor class {class} has no method {method}; build the driver and workers from the same source"
        ),
        error_type: None,
    }
}
