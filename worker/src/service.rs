//! What a manta process answers on its own port: tasks pushed to it (workers),
//! actor creation and calls (actor workers), and object values (every owner).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use manta_proto::message::{Event, Reply, Request};
use manta_proto::net::{Answer, BoxFuture, PeerHandle, Service};
use manta_proto::object::{AddBorrowerReply, INLINE_OBJECT_MAX_BYTES, ListObjectsReply, ObjectBody, ReturnObject};
use manta_proto::task::{FailureKind, GetObjectReply, TaskFailure, TaskOutcome, TaskSpec};
use manta_proto::{ErrorCode, JobId, ObjectId, TaskId, WireError, WorkerId};
use ractor::{Actor, ActorRef};

use crate::actor_host::{ActorCallRequest, ActorSupervisor, CallReply, SupervisorMsg};
use crate::core::current;
use crate::object_ref::UntypedRef;
use crate::registry::{self, Encoded, panic_message};

/// The service behind every manta process's listener.
pub(crate) struct WorkerService {
    actor: Arc<OnceLock<ActorRef<SupervisorMsg>>>,
    /// Borrowers by the link they registered on (dropped with the link).
    borrowers: Mutex<HashMap<manta_proto::net::LinkId, WorkerId>>,
}

impl WorkerService {
    pub(crate) fn new() -> Self {
        Self { actor: Arc::new(OnceLock::new()), borrowers: Mutex::new(HashMap::new()) }
    }
}

/// Runs one normal task on the calling thread.
pub(crate) fn execute(spec: &TaskSpec) -> registry::TaskOutcome {
    let mut args = spec.args.clone();
    if !spec.stored_args.is_empty() {
        // Large arguments: mapped from this node's store (pulled here first).
        let core = current().ok_or_else(|| TaskFailure {
            kind: FailureKind::WorkerDied,
            task: spec.name.to_string(),
            message: "the worker is shutting down".into(),
            error_type: None,
        })?;
        for stored_arg in &spec.stored_args {
            let object = stored_arg.object.clone();
            let stored = stored_arg.stored.clone();
            let task_core = core.clone();
            let read = crate::core::block_on(&core.handle, async move {
                crate::plasma::read(&task_core, object.object_id, &object.owner, &stored).await
            });
            match (read, args.get_mut(stored_arg.position as usize)) {
                (Ok(bytes), Some(slot)) => *slot = bytes,
                (Err(error), _) => {
                    return Err(TaskFailure {
                        kind: crate::submitter::failure_kind(&error),
                        task: spec.name.to_string(),
                        message: format!("argument {} could not be read: {error}", stored_arg.position),
                        error_type: None,
                    });
                }
                (Ok(_), None) => {
                    return Err(TaskFailure {
                        kind: FailureKind::TypeMismatch,
                        task: spec.name.to_string(),
                        message: format!("stored argument {} is out of range", stored_arg.position),
                        error_type: None,
                    });
                }
            }
        }
    }
    let Some(function) = registry::function(&spec.function) else {
        return Err(TaskFailure {
            kind: FailureKind::UnknownFunction,
            task: spec.name.to_string(),
            message: format!(
                "this worker binary has no remote function {}; build the driver and workers from the same source",
                spec.function
            ),
            error_type: None,
        });
    };
    let core = current();
    // One look at the cancel state: stopped already, or now running here.
    if let Some(core) = &core
        && !core.cancels.executing(spec.task_id)
    {
        return Err(crate::cancel::cancelled_failure(&spec.name));
    }
    announce_name(&spec.name);
    crate::api::IN_TASK.with(|flag| flag.set(true));
    crate::context::set_current_task(Some(spec.task_id));
    crate::context::set_current_group(spec.placement_group);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (function.invoke)(&args)));
    if let Some(core) = &core {
        core.cancels.executed(spec.task_id);
    }
    crate::context::set_current_group(None);
    crate::context::set_current_task(None);
    crate::api::IN_TASK.with(|flag| flag.set(false));
    match outcome {
        Ok(result) => result,
        Err(payload) => Err(TaskFailure {
            kind: FailureKind::Panic,
            task: spec.name.to_string(),
            message: format!("panicked: {}", panic_message(&*payload)),
            error_type: None,
        }),
    }
}

impl Service for WorkerService {
    fn request(&self, peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        match request {
            Request::PushTask(_) => Box::pin(async move {
                Err(WireError::internal("a pushed task is answered by the thread that runs it, not in a task"))
            }),
            Request::CreateActor(create) => {
                let slot = self.actor.clone();
                Box::pin(async move {
                    if slot.get().is_some() {
                        return Err(WireError::invalid("this worker already hosts an actor"));
                    }
                    let task = create.spec.class.split('#').next().unwrap_or_default().to_string();
                    // An actor's lines carry its type name.
                    announce_name(&task);
                    if registry::actor_class(&create.spec.class).is_none() {
                        let failure = crate::actor_host::construct(&create.spec).await.err();
                        return Ok(Reply::Task(Err(failure.unwrap_or_else(|| TaskFailure {
                            kind: FailureKind::UnknownFunction,
                            task,
                            message: "unknown actor class".into(),
                            error_type: None,
                        }))));
                    }
                    match Actor::spawn(None, ActorSupervisor, create.spec).await {
                        Ok((actor, _)) => {
                            let _ = slot.set(actor);
                            // Refs the constructor kept are registered before the creator lets go of them.
                            if let Some(core) = current() {
                                core.flush_registrations().await;
                            }
                            Ok(Reply::Task(Ok(Vec::new())))
                        }
                        Err(error) => Ok(Reply::Task(Err(TaskFailure {
                            kind: FailureKind::Application,
                            task: format!("{task}::new"),
                            message: format!("the constructor failed: {}", spawn_message(&error)),
                            error_type: None,
                        }))),
                    }
                })
            }
            Request::GetObject(get) => Box::pin(async move {
                let core = current().ok_or_else(|| WireError::internal("the worker is shutting down"))?;
                let value = core.store.wait(get.object_id, Some(Duration::from_millis(get.timeout_ms))).await;
                if value.is_none() && !core.store.is_referenced(get.object_id) {
                    return Err(WireError::new(
                        ErrorCode::NotFound,
                        format!("object {} was freed by its owner: no reference to it was left", get.object_id),
                    ));
                }
                Ok(Reply::GetObject(GetObjectReply { value }))
            }),
            Request::AddBorrower(add) => {
                // Recorded before the reply future is built: a later unregistration on
                // this link is processed after it.
                let result = match current() {
                    Some(core) => {
                        self.borrowers.lock().expect("borrowers lock").insert(peer.id(), add.borrower);
                        Ok(Reply::AddBorrower(AddBorrowerReply {
                            unknown: core.store.add_borrower(&add.object_ids, add.borrower),
                        }))
                    }
                    None => Err(WireError::internal("the worker is shutting down")),
                };
                Box::pin(async move { result })
            }
            Request::CancelTask(cancel) => {
                let result = match current() {
                    Some(core) => crate::cancel::serve(&core, cancel),
                    None => Err(WireError::internal("the worker is shutting down")),
                };
                Box::pin(async move { result })
            }
            Request::ListObjects(list) => Box::pin(async move {
                let core = current().ok_or_else(|| WireError::internal("the worker is shutting down"))?;
                let objects =
                    core.store.owned_records(&core.worker, core.worker.node_id, std::process::id(), list.limit);
                Ok(Reply::ListObjects(ListObjectsReply {
                    objects,
                    owners: Vec::new(),
                    store_used: 0,
                    store_capacity: 0,
                }))
            }),
            other => {
                let name = other.name();
                Box::pin(async move {
                    Err(WireError::new(ErrorCode::Unimplemented, format!("a worker does not serve {name} requests")))
                })
            }
        }
    }

    fn answers_directly(&self, request: &Request) -> bool {
        matches!(request, Request::PushTask(_))
    }

    /// A pushed task or actor call: queued now (calls from one link keep their
    /// order) on the task thread or with the actor's supervisor; the thread that
    /// runs it answers.
    fn answer_directly(&self, _peer: &PeerHandle, request: Request, answer: Answer) {
        let Request::PushTask(push) = request else {
            answer.send(Err(WireError::internal("only pushed tasks are answered directly")));
            return;
        };
        if push.spec.actor_call.is_none() {
            let reply = CallReply::task(answer, Finishing::of(&push.spec), push.spec.name.clone());
            crate::task_queue::queue().push((push.spec, Box::new(reply)));
            return;
        }
        let reply = CallReply::actor_call(answer, Finishing::of(&push.spec), push.spec.name.clone());
        let Some(actor) = self.actor.get() else {
            let failure = TaskFailure {
                kind: FailureKind::ActorDied,
                task: push.spec.name.to_string(),
                message: "this worker hosts no actor (it was never created here)".into(),
                error_type: None,
            };
            reply.send(Err(failure));
            return;
        };
        let call = SupervisorMsg::Call(Box::new(ActorCallRequest { spec: push.spec, reply }));
        if let Err(ractor::MessagingErr::SendErr(SupervisorMsg::Call(call))) = actor.cast(call) {
            call.reply.refuse(WireError::internal("the worker is shutting down"));
        }
    }

    fn event(&self, _peer: &PeerHandle, event: Event) {
        self.on_event(event);
    }

    fn disconnected(&self, peer: &PeerHandle, _reason: &str) {
        // A borrower's process went away: it holds nothing any more.
        let borrower = self.borrowers.lock().expect("borrowers lock").remove(&peer.id());
        if let (Some(borrower), Some(core)) = (borrower, current()) {
            let actions = core.store.remove_borrower_everywhere(borrower);
            core.apply(actions);
        }
    }
}

/// Why a pushed task was sent back unrun (its caller sends it elsewhere).
pub(crate) const SENT_BACK: &str =
    "this worker's running task is blocked in get or wait, so the task did not run here; send it to another worker";

/// What a finished task's results need to know about it.
pub(crate) struct Finishing {
    pub(crate) task_id: TaskId,
    caller: WorkerId,
    job_id: JobId,
}

impl Finishing {
    pub(crate) fn of(spec: &TaskSpec) -> Self {
        Self { task_id: spec.task_id, caller: spec.caller.worker_id, job_id: spec.job_id }
    }
}

/// Turns a task's encoded results into return objects: large ones go to this
/// node's store (owned by the caller), nested refs stay pinned here until the
/// caller confirms it registered them, and refs this worker newly borrowed are
/// registered with their owners before the reply lets the caller unpin them.
pub(crate) async fn finish(finishing: Finishing, name: &str, outcome: registry::TaskOutcome) -> TaskOutcome {
    let encoded = outcome?;
    let Some(core) = current() else {
        return Err(TaskFailure {
            kind: FailureKind::WorkerDied,
            task: name.to_string(),
            message: "the worker is shutting down".into(),
            error_type: None,
        });
    };
    let mut returns = Vec::with_capacity(encoded.len());
    let mut transit = Vec::new();
    for (index, Encoded { bytes, nested }) in encoded.into_iter().enumerate() {
        let body = if bytes.len() > INLINE_OBJECT_MAX_BYTES {
            let id = ObjectId::for_return(finishing.task_id, index as u32);
            let owner = crate::plasma::Ownership { owner: finishing.caller, job_id: finishing.job_id };
            match crate::plasma::put_bytes(&core, id, bytes, owner).await {
                Ok(stored) => ObjectBody::Stored(stored),
                Err(error) => {
                    return Err(TaskFailure {
                        kind: FailureKind::ObjectStoreFull,
                        task: name.to_string(),
                        message: format!("result {index} could not be stored: {error}"),
                        error_type: None,
                    });
                }
            }
        } else {
            ObjectBody::Inline(bytes)
        };
        returns.push(ReturnObject { body, nested: nested.iter().map(UntypedRef::to_wire).collect() });
        transit.extend(nested);
    }
    if !transit.is_empty() {
        core.transit.lock().expect("transit lock").insert(finishing.task_id, transit);
    }
    if core.registrations_pending() {
        core.flush_registrations().await;
    }
    core.report_ownership();
    Ok(returns)
}

impl WorkerService {
    fn on_event(&self, event: Event) {
        let Some(core) = current() else { return };
        match event {
            Event::RemoveBorrower(remove) => {
                let actions = core.store.remove_borrower(&remove.object_ids, remove.borrower);
                core.apply(actions);
            }
            // Freed while the copy was being made: drop the copy too.
            Event::ObjectLocation(location) if !core.store.add_location(location.object_id, &location.node_address) => {
                core.free_copy(location.object_id, location.node_address);
            }
            Event::ReleaseReturns(release) => {
                let pins = core.transit.lock().expect("transit lock").remove(&release.task_id);
                drop(pins);
            }
            _ => {}
        }
    }
}

fn spawn_message(error: &ractor::SpawnErr) -> String {
    match error {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// Tells the log monitor (through stdout and stderr) which task or actor the
/// following lines come from, when it changed.
pub(crate) fn announce_name(name: &str) {
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let short = name.rsplit("::").next().unwrap_or(name);
    let mut last = LAST.lock().expect("name lock");
    if *last != short {
        *last = short.to_string();
        let marker = manta_proto::logs::TASK_NAME_MARKER;
        println!("{marker}{short}");
        eprintln!("{marker}{short}");
    }
}

/// Prints a warning a node sent this process (to the driver's terminal, or a worker's log).
fn print_warning(event: Event) {
    if let Event::Warning(warning) = event {
        eprintln!("manta: warning: {}", warning.message);
    }
}

/// The driver's link to the GCS: after a reconnect (the head restarted) it
/// claims the driver's job again, so the recovered GCS keeps it running.
#[derive(Default)]
pub(crate) struct DriverGcsLink {
    pub(crate) job: std::sync::OnceLock<manta_proto::JobId>,
}

impl Service for DriverGcsLink {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(
            async move { Err(WireError::new(ErrorCode::Unimplemented, format!("a driver does not serve {name}"))) },
        )
    }

    fn connected(&self, peer: &PeerHandle) {
        let Some(&job_id) = self.job.get() else { return };
        let peer = peer.clone();
        tokio::spawn(async move {
            let request = Request::RegisterJob(manta_proto::task::RegisterJobRequest {
                namespace: String::new(),
                driver_pid: std::process::id(),
                reattach: Some(job_id),
                submission_id: None,
            });
            match peer.call(request, std::time::Duration::from_secs(10)).await {
                Ok(_) => tracing::info!(%job_id, "reattached the job to the GCS"),
                Err(error) => tracing::warn!(%job_id, %error, "could not reattach the job to the GCS"),
            }
        });
    }
}

/// The service of a driver's links to nodes: prints their warnings.
pub(crate) struct DriverLinkService;

impl Service for DriverLinkService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move { Err(WireError::new(ErrorCode::Unimplemented, format!("drivers do not serve {name}"))) })
    }

    fn event(&self, _peer: &PeerHandle, event: Event) {
        match event {
            Event::LogBatch(batch) => crate::logs::printer().print(batch),
            other => print_warning(other),
        }
    }
}

/// The service of a worker's link to its raylet: the worker exits when the link drops.
pub(crate) struct RayletLinkService;

impl Service for RayletLinkService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move { Err(WireError::new(ErrorCode::Unimplemented, format!("workers do not serve {name}"))) })
    }

    fn event(&self, _peer: &PeerHandle, event: Event) {
        match event {
            Event::ServeCalls(gate) => crate::fence::set_open(gate.open),
            other => print_warning(other),
        }
    }

    fn disconnected(&self, _peer: &PeerHandle, reason: &str) {
        eprintln!("manta worker: lost the link to its raylet ({reason}); exiting");
        std::process::exit(0);
    }
}
