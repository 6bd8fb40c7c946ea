//! Where a pushed task's or actor call's outcome goes: straight back to the
//! caller's link.
//!
//! The thread that ran it (the task thread, an actor's method thread, or the
//! runtime for an async method) turns the outcome into the reply and sends it on
//! the link itself ([`Answer`]): no task waits for the call and no wake-up passes
//! it on. Results that need the runtime first (large values stored on this node,
//! refs to register with their owners) finish in a task instead, the same way.

use std::sync::Arc;

use manta_proto::message::Reply;
use manta_proto::net::Answer;
use manta_proto::task::{FailureKind, TaskFailure};
use manta_proto::{ErrorCode, WireError};

use crate::core::current;
use crate::inline::poll_here;
use crate::registry::TaskOutcome;
use crate::service::{Finishing, finish};

/// The reply to one pushed task or actor call. Dropped unsent, it tells the
/// caller the call did not run: an actor call lost in a restart after another
/// call panicked fails with `ActorDied`; a task, with the worker shutting down.
pub(crate) struct CallReply {
    sending: Option<(Answer, Finishing)>,
    name: Arc<str>,
    actor: bool,
}

impl CallReply {
    /// The reply to an actor call.
    pub(crate) fn actor_call(answer: Answer, finishing: Finishing, name: Arc<str>) -> Self {
        Self { sending: Some((answer, finishing)), name, actor: true }
    }

    /// The reply to a normal task.
    pub(crate) fn task(answer: Answer, finishing: Finishing, name: Arc<str>) -> Self {
        Self { sending: Some((answer, finishing)), name, actor: false }
    }

    /// Answers the caller with `outcome`: from this thread when the results need
    /// nothing more (the usual case), else from a task once they are stored.
    pub(crate) fn send(mut self, outcome: TaskOutcome) {
        let Some((answer, finishing)) = self.sending.take() else { return };
        let core = current();
        if let Some(core) = &core {
            core.cancels.forget_here(finishing.task_id);
        }
        let name = self.name.clone();
        let reply = Box::pin(async move { Reply::Task(finish(finishing, &name, outcome).await) });
        // Polled here first, inside the runtime's context (a method thread is not
        // in it; the answer is sent outside it, so such a thread may write it itself).
        match (poll_here(core.as_ref().map(|core| &core.handle), reply), &core) {
            (Ok(reply), _) => answer.send(Ok(reply)),
            (Err(reply), Some(core)) => {
                core.handle.spawn(async move { answer.send(Ok(reply.await)) });
            }
            (Err(_), None) => answer.send(Err(WireError::internal("the worker is shutting down"))),
        }
    }

    /// Answers with a wire error: the call was not queued (or was sent back unrun).
    pub(crate) fn refuse(mut self, error: WireError) {
        if let Some((answer, _)) = self.sending.take() {
            answer.send(Err(error));
        }
    }
}

impl crate::task_queue::Outcome for CallReply {
    fn ran(self: Box<Self>, outcome: TaskOutcome) {
        (*self).send(outcome);
    }

    fn sent_back(self: Box<Self>) {
        (*self).refuse(WireError::new(ErrorCode::Unavailable, crate::service::SENT_BACK));
    }
}

impl Drop for CallReply {
    fn drop(&mut self) {
        let Some((answer, _)) = self.sending.take() else { return };
        if !self.actor {
            answer.send(Err(WireError::internal("the worker is shutting down")));
            return;
        }
        let failure = TaskFailure {
            kind: FailureKind::ActorDied,
            task: self.name.to_string(),
            message: "the actor restarted after a panic in a concurrent call; this call did not run".into(),
            error_type: None,
        };
        answer.send(Ok(Reply::Task(Err(failure))));
    }
}
