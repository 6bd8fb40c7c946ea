//! What a manta process answers on its own port: tasks pushed to it (workers),
//! actor creation and calls (actor workers), and object values (every owner).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use manta_proto::message::{Reply, Request};
use manta_proto::net::{BoxFuture, PeerHandle, Service};
use manta_proto::task::{FailureKind, GetObjectReply, TaskFailure, TaskOutcome, TaskSpec};
use manta_proto::{ErrorCode, WireError};
use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;

use crate::actor_host::{ActorCallRequest, ActorSupervisor, SupervisorMsg};
use crate::core::current;
use crate::registry::{self, panic_message};

type TaskJob = (TaskSpec, oneshot::Sender<TaskOutcome>);

/// The service behind every manta process's listener.
pub(crate) struct WorkerService {
    executor: OnceLock<std_mpsc::Sender<TaskJob>>,
    actor: Arc<OnceLock<ActorRef<SupervisorMsg>>>,
}

impl WorkerService {
    pub(crate) fn new() -> Self {
        Self { executor: OnceLock::new(), actor: Arc::new(OnceLock::new()) }
    }

    /// The thread normal tasks run on, one at a time, started on first use.
    fn executor(&self) -> std_mpsc::Sender<TaskJob> {
        self.executor
            .get_or_init(|| {
                let (sender, receiver) = std_mpsc::channel::<TaskJob>();
                std::thread::Builder::new()
                    .name("manta-task".into())
                    .spawn(move || {
                        for (spec, reply) in receiver {
                            let _ = reply.send(execute(&spec));
                        }
                    })
                    .expect("spawn the task thread");
                sender
            })
            .clone()
    }
}

/// Runs one normal task on the calling thread.
fn execute(spec: &TaskSpec) -> TaskOutcome {
    let Some(function) = registry::function(&spec.function) else {
        return Err(TaskFailure {
            kind: FailureKind::UnknownFunction,
            task: spec.name.clone(),
            message: format!(
                "this worker binary has no remote function {}; build the driver and workers from the same source",
                spec.function
            ),
        });
    };
    crate::api::IN_TASK.with(|flag| flag.set(true));
    crate::context::set_current_task(Some(spec.task_id));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| (function.invoke)(&spec.args)));
    crate::context::set_current_task(None);
    crate::api::IN_TASK.with(|flag| flag.set(false));
    match outcome {
        Ok(result) => result,
        Err(payload) => Err(TaskFailure {
            kind: FailureKind::Panic,
            task: spec.name.clone(),
            message: format!("panicked: {}", panic_message(&*payload)),
        }),
    }
}

impl Service for WorkerService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        match request {
            Request::PushTask(push) => {
                let name = push.spec.name.clone();
                let (reply, outcome) = oneshot::channel();
                // Queue synchronously, so calls from one link keep their order.
                let queued = if push.spec.actor_call.is_some() {
                    match self.actor.get() {
                        Some(actor) => actor
                            .cast(SupervisorMsg::Call(Box::new(ActorCallRequest { spec: push.spec, reply })))
                            .is_ok(),
                        None => {
                            let failure = TaskFailure {
                                kind: FailureKind::ActorDied,
                                task: push.spec.name.clone(),
                                message: "this worker hosts no actor (it was never created here)".into(),
                            };
                            let _ = reply.send(Err(failure));
                            true
                        }
                    }
                } else {
                    self.executor().send((push.spec, reply)).is_ok()
                };
                Box::pin(async move {
                    if !queued {
                        return Err(WireError::internal("the worker is shutting down"));
                    }
                    match outcome.await {
                        Ok(outcome) => Ok(Reply::Task(outcome)),
                        Err(_) => Ok(Reply::Task(Err(TaskFailure {
                            kind: FailureKind::ActorDied,
                            task: name,
                            message: "the actor restarted after a panic in a concurrent call; this call did not run"
                                .into(),
                        }))),
                    }
                })
            }
            Request::CreateActor(create) => {
                let slot = self.actor.clone();
                Box::pin(async move {
                    if slot.get().is_some() {
                        return Err(WireError::invalid("this worker already hosts an actor"));
                    }
                    let task = create.spec.class.split('#').next().unwrap_or_default().to_string();
                    if registry::actor_class(&create.spec.class).is_none() {
                        let failure = crate::actor_host::construct(&create.spec).await.err();
                        return Ok(Reply::Task(Err(failure.unwrap_or_else(|| TaskFailure {
                            kind: FailureKind::UnknownFunction,
                            task,
                            message: "unknown actor class".into(),
                        }))));
                    }
                    match Actor::spawn(None, ActorSupervisor, create.spec).await {
                        Ok((actor, _)) => {
                            let _ = slot.set(actor);
                            Ok(Reply::Task(Ok(Vec::new())))
                        }
                        Err(error) => Ok(Reply::Task(Err(TaskFailure {
                            kind: FailureKind::Application,
                            task: format!("{task}::new"),
                            message: format!("the constructor failed: {}", spawn_message(&error)),
                        }))),
                    }
                })
            }
            Request::GetObject(get) => Box::pin(async move {
                let core = current().ok_or_else(|| WireError::internal("the worker is shutting down"))?;
                let value = core.store.wait(get.object_id, Some(Duration::from_millis(get.timeout_ms))).await;
                Ok(Reply::GetObject(GetObjectReply { value }))
            }),
            other => {
                let name = other.name();
                Box::pin(async move {
                    Err(WireError::new(ErrorCode::Unimplemented, format!("a worker does not serve {name} requests")))
                })
            }
        }
    }
}

fn spawn_message(error: &ractor::SpawnErr) -> String {
    match error {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// The service of a worker's link to its raylet: the worker exits when the link drops.
pub(crate) struct RayletLinkService;

impl Service for RayletLinkService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move { Err(WireError::new(ErrorCode::Unimplemented, format!("workers do not serve {name}"))) })
    }

    fn disconnected(&self, _peer: &PeerHandle, reason: &str) {
        eprintln!("manta worker: lost the link to its raylet ({reason}); exiting");
        std::process::exit(0);
    }
}
