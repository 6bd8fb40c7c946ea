//! A handle's calls: sent in order to the actor's worker, their results stored
//! as they come back.
//!
//! A call leaves one of two ways. Straight from the caller's thread onto the
//! link's writer ([`Calls::submit`]) when the handle's sender task holds none of
//! its calls and the actor's link is known and up: no hand-off to the runtime
//! before the frame goes out. Otherwise through the sender task ([`send_calls`]),
//! which fetches reference arguments, finds the actor again after its process
//! died and sends lost calls again. Either way calls keep their order: the
//! caller's thread sends directly only while the task holds nothing, and the
//! task offers the link again only once it has sent everything it held.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manta_proto::message::{Reply, Request};
use manta_proto::net::{CallError, OnReply, PeerHandle, Unsent};
use manta_proto::rpc::Rpc;
use manta_proto::task::{
    ActorInfo, ActorState, FailureKind, GetActorRequest, PushTaskRequest, TaskFailure, TaskSpec, TaskState,
    WorkerAddress,
};
use tokio::sync::mpsc;

use super::{CALL_TIMEOUT, actor_died};
use crate::api::fetch;
use crate::core::{Core, EventDetail};
use crate::error::Error;
use crate::object_ref::UntypedRef;
use crate::options::RetryErrors;
use crate::retry::{AttemptFailure, NextStep, RetryBudget, after_failure};
use crate::submitter::store_failure;

/// One call, on its way.
pub(super) struct CallMessage {
    pub(super) spec: TaskSpec,
    pub(super) arg_refs: Vec<(usize, UntypedRef)>,
    /// Refs nested in inline arguments, held until the call is done.
    pub(super) held: Vec<UntypedRef>,
    /// Times it may still be sent again after the actor's process died under it (`max_task_retries`).
    pub(super) retries: RetryBudget,
    /// Why its last send was lost (the process died while it was in flight).
    pub(super) lost: Option<String>,
}

/// A handle's way to send calls.
pub(super) struct Calls {
    queue: mpsc::UnboundedSender<CallMessage>,
    direct: Arc<Mutex<Direct>>,
}

/// What a handle's callers and its sender task share.
struct Direct {
    /// Calls handed to the sender task that it has not yet sent (or failed).
    queued: usize,
    /// The actor's link and worker while calls may be sent from the caller's thread.
    link: Option<(PeerHandle, WorkerAddress)>,
    /// Where a lost call goes to be sent again (or failed) by the sender task.
    retry: mpsc::UnboundedSender<CallMessage>,
}

impl Calls {
    /// Starts the handle's sender task.
    pub(super) fn start(core: &Arc<Core>, info: ActorInfo) -> Self {
        let (queue, calls) = mpsc::unbounded_channel();
        let (retry, retries) = mpsc::unbounded_channel();
        let direct = Arc::new(Mutex::new(Direct { queued: 0, link: None, retry }));
        let location = Location { info, peer: None, dead: None };
        core.handle.spawn(send_calls(core.clone(), location, calls, retries, direct.clone()));
        Self { queue, direct }
    }

    /// Sends a call: from this thread when it can go straight out, else through the sender task.
    pub(super) fn submit(&self, core: &Arc<Core>, message: CallMessage) {
        let mut direct = self.direct.lock().expect("calls lock");
        let message = match &direct.link {
            Some((peer, worker)) if direct.queued == 0 && message.arg_refs.is_empty() => {
                let call = InFlight::new(core, worker, peer, message, &self.direct);
                let request = call.request();
                match peer.send_if_up_then(request, CALL_TIMEOUT, Box::new(call)) {
                    Ok(()) => return,
                    Err(Unsent::Lost(error, call)) => {
                        direct.link = None;
                        drop(direct);
                        // Sent again (or failed) by the sender task.
                        call.reply(Err(error));
                        return;
                    }
                    Err(Unsent::NotUp(call)) => {
                        direct.link = None;
                        call.message
                    }
                }
            }
            _ => message,
        };
        direct.queued += 1;
        if let Err(unsent) = self.queue.send(message) {
            direct.queued -= 1;
            let spec = &unsent.0.spec;
            store_failure(core, spec, actor_died(&spec.name, "the caller's runtime stopped"));
        }
    }
}

/// Sends one handle's calls in order (resolving reference arguments first) and
/// stores their results as they come back. When the actor's process goes away
/// it asks the GCS where the actor went: calls wait while it restarts, then go
/// to the new instance; calls that were in flight are sent again while
/// `max_task_retries` allows, else fail with `ActorUnavailable`.
async fn send_calls(
    core: Arc<Core>,
    mut location: Location,
    mut calls: mpsc::UnboundedReceiver<CallMessage>,
    mut retries: mpsc::UnboundedReceiver<CallMessage>,
    direct: Arc<Mutex<Direct>>,
) {
    loop {
        let (message, queued) = tokio::select! {
            biased;
            Some(message) = retries.recv() => (message, false),
            message = calls.recv() => match message {
                Some(message) => (message, true),
                None => break,
            },
        };
        let linked = send_one(&core, &mut location, message, &direct).await;
        let mut shared = direct.lock().expect("calls lock");
        if queued {
            shared.queued -= 1;
        }
        // The link is offered to callers once nothing waits here.
        shared.link = match linked {
            Some(link) if retries.is_empty() => Some(link),
            _ => None,
        };
    }
}

/// Sends one call from the sender task; the link it went on, when it did.
async fn send_one(
    core: &Arc<Core>,
    location: &mut Location,
    message: CallMessage,
    direct: &Arc<Mutex<Direct>>,
) -> Option<(PeerHandle, WorkerAddress)> {
    let CallMessage { mut spec, arg_refs, mut held, mut retries, lost } = message;
    let mut upstream = None;
    for (position, reference) in arg_refs {
        // Actor calls keep their order, so large arguments are mapped here and sent inline.
        match fetch(core, &reference, None).await {
            Ok(bytes) => spec.args[position] = bytes,
            Err(Error::Task { task, message, panicked }) => {
                let kind = if panicked { FailureKind::Panic } else { FailureKind::Application };
                upstream = Some(TaskFailure { kind, task, message, error_type: None });
            }
            Err(error) => {
                upstream = Some(actor_died(&spec.name, &format!("an argument could not be fetched: {error}")))
            }
        }
        held.push(reference);
    }
    if let Some(failure) = upstream {
        store_failure(core, &spec, failure);
        return None;
    }
    if core.cancels.finished_if_requested(spec.task_id) {
        store_failure(core, &spec, crate::cancel::cancelled_failure(&spec.name));
        return None;
    }
    let peer = match location.link(core).await {
        Ok(peer) => peer,
        Err(cause) => {
            store_failure(core, &spec, actor_died(&spec.name, &cause));
            return None;
        }
    };
    if let Some(cause) = lost {
        // In flight when the process died; the actor is back (restarted). Sending it again
        // spends one retry (never the loss itself: one failure, one retry).
        if after_failure(AttemptFailure::WorkerLost, &RetryErrors::None, &mut retries) == NextStep::Fail {
            let message = format!("{cause}; the actor restarted, and the call is not retried (max_task_retries)");
            let failure = TaskFailure {
                kind: FailureKind::ActorUnavailable,
                task: spec.name.to_string(),
                message,
                error_type: None,
            };
            store_failure(core, &spec, failure);
            return None;
        }
    }
    let message = CallMessage { spec, arg_refs: Vec::new(), held, retries, lost: None };
    let call = InFlight::new(core, &location.info.worker, &peer, message, direct);
    let request = call.request();
    if peer.send_then(request, CALL_TIMEOUT, Box::new(call)).await {
        Some((peer, location.info.worker.clone()))
    } else {
        location.peer = None;
        None
    }
}

/// One call on the wire. The link's reader hands it the reply: it stores the
/// results, or sends the call back to the sender task when the link was lost.
struct InFlight {
    core: Arc<Core>,
    worker: WorkerAddress,
    peer: PeerHandle,
    message: CallMessage,
    direct: Arc<Mutex<Direct>>,
}

impl InFlight {
    fn new(
        core: &Arc<Core>,
        worker: &WorkerAddress,
        peer: &PeerHandle,
        message: CallMessage,
        direct: &Arc<Mutex<Direct>>,
    ) -> Self {
        let spec = &message.spec;
        core.cancels.started(spec.task_id, peer);
        core.task_event(spec, TaskState::SubmittedToWorker, Some(worker), EventDetail::default());
        Self { core: core.clone(), worker: worker.clone(), peer: peer.clone(), message, direct: direct.clone() }
    }

    fn request(&self) -> Request {
        Request::PushTask(PushTaskRequest { spec: self.message.spec.clone() })
    }
}

impl OnReply for InFlight {
    fn reply(self: Box<Self>, reply: Result<Reply, CallError>) {
        let InFlight { core, worker, peer, message, direct } = *self;
        let reply = reply.and_then(|reply| peer.typed(PushTaskRequest::SPEC.name, PushTaskRequest::typed_reply(reply)));
        let spec = &message.spec;
        let (state, error) = match &reply {
            Ok(Ok(_)) => (TaskState::Finished, None),
            Ok(Err(failure)) => (TaskState::Failed, Some(failure.message.clone())),
            Err(error) => (TaskState::Failed, Some(error.to_string())),
        };
        core.task_event(spec, state, Some(&worker), EventDetail { error, lease_outcome: None });
        if core.cancels.finished(spec.task_id) {
            store_failure(&core, spec, crate::cancel::cancelled_failure(&spec.name));
            return;
        }
        match reply {
            Ok(Ok(values)) => {
                let handle = core.handle.clone();
                let stored =
                    Box::pin(async move { crate::submitter::store_returns(&core, &message.spec, values, &peer).await });
                // Stored here, on the reader, unless it must wait (refs to register).
                if let Err(pending) = crate::inline::poll_here(Some(&handle), stored) {
                    handle.spawn(pending);
                }
            }
            Ok(Err(failure)) => store_failure(&core, spec, failure),
            Err(error @ CallError::UnexpectedReply { .. }) => {
                store_failure(&core, spec, actor_died(&spec.name, &error.to_string()))
            }
            Err(error) => {
                let retried = CallMessage { lost: Some(lost_cause(&error)), ..message };
                // Later calls go through the sender task, behind this one.
                let retry = {
                    let mut direct = direct.lock().expect("calls lock");
                    direct.link = None;
                    direct.retry.clone()
                };
                if let Err(unsent) = retry.send(retried) {
                    let spec = &unsent.0.spec;
                    store_failure(&core, spec, actor_died(&spec.name, "the caller's handle was dropped"));
                }
            }
        }
    }
}

fn lost_cause(error: &impl fmt::Display) -> String {
    format!("the actor's worker process exited or the actor was killed ({error})")
}

/// Where a handle sends its calls; re-resolved through the GCS when the link drops.
struct Location {
    info: ActorInfo,
    peer: Option<manta_proto::net::PeerHandle>,
    /// Set once the GCS says the actor is dead: the cause.
    dead: Option<String>,
}

/// How often a handle asks the GCS about an actor that is restarting.
const RESTART_POLL: Duration = Duration::from_millis(50);

impl Location {
    /// A live link to the actor, waiting while it restarts; `Err(cause)` once it is dead.
    async fn link(&mut self, core: &Arc<Core>) -> std::result::Result<manta_proto::net::PeerHandle, String> {
        if let Some(cause) = &self.dead {
            return Err(cause.clone());
        }
        if let Some(peer) = self.peer.as_ref().filter(|peer| !peer.is_closed()) {
            return Ok(peer.clone());
        }
        let lost = self.peer.take().map(|_| self.info.worker.worker_id);
        if lost.is_none()
            && let Ok(peer) = core.peers.get(&self.info.worker.address).await
        {
            self.peer = Some(peer.clone());
            return Ok(peer);
        }
        let failed = self.info.worker.worker_id;
        loop {
            let request = Request::GetActor(GetActorRequest { actor_id: self.info.actor_id });
            let record = match core.gcs.peer().call(request, Duration::from_secs(10)).await {
                Ok(Reply::GetActor(reply)) => reply.record,
                // The GCS may be restarting itself: ask again.
                _ => {
                    tokio::time::sleep(RESTART_POLL).await;
                    continue;
                }
            };
            let Some(record) = record else {
                let cause = "the GCS no longer knows the actor (it was killed, or its job ended)".to_string();
                self.dead = Some(cause.clone());
                return Err(cause);
            };
            match record.state {
                ActorState::Dead => {
                    let cause = record.death_cause.unwrap_or_else(|| "the actor died".into());
                    self.dead = Some(cause.clone());
                    return Err(cause);
                }
                ActorState::Alive if record.info.worker.worker_id != failed => {
                    if let Ok(peer) = core.peers.get(&record.info.worker.address).await {
                        self.info = record.info;
                        self.peer = Some(peer.clone());
                        return Ok(peer);
                    }
                }
                // The same process, still ALIVE to the GCS (which has not heard of its
                // death yet), or RESTARTING: wait for the news.
                _ => {}
            }
            tokio::time::sleep(RESTART_POLL).await;
        }
    }
}
