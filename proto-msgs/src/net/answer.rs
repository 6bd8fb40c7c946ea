//! [`Answer`]: a request's reply, sent by whichever thread finishes the work.
//!
//! Most requests are answered by a future that the link runs in a task of its
//! own under the caller's budget. A service that hands a request to a thread of
//! its own (an actor's method thread) can take an `Answer` instead
//! ([`super::Service::answer_directly`]): the thread queues the reply on the
//! link's writer itself, with no task, timer or wake-up between. The caller's
//! deadline still holds on its side, and a `Cancel` only forgets the request
//! (the work, on a thread, cannot be stopped from here; a reply that comes after
//! it is dropped by the caller, who no longer waits for it).

use std::sync::atomic::Ordering;

use super::connection::{Backlog, InboundRequests};
use super::writer::WriterQueue;
use crate::error::WireError;
use crate::frame::Frame;
use crate::message::Reply;

/// The way to answer one request, from any thread. Dropped unsent, it answers
/// with an internal error, so the caller never waits for a reply that will not come.
pub struct Answer {
    id: u64,
    /// The request's name, for the error sent if the answer is dropped.
    name: &'static str,
    writer: WriterQueue,
    backlog: Backlog,
    inbound: InboundRequests,
    sent: bool,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Answer").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Answer {
    /// An answer to request `id`, registered among the link's requests being answered.
    pub(crate) fn new(
        id: u64,
        name: &'static str,
        writer: WriterQueue,
        backlog: Backlog,
        inbound: InboundRequests,
    ) -> Self {
        inbound.lock().expect("inbound lock").insert(id, None);
        Self { id, name, writer, backlog, inbound, sent: false }
    }

    /// Queues the reply on the link's writer (dropped if the link has closed since).
    pub fn send(mut self, result: Result<Reply, WireError>) {
        self.queue(result);
    }

    fn queue(&mut self, result: Result<Reply, WireError>) {
        self.sent = true;
        let others = {
            let mut inbound = self.inbound.lock().expect("inbound lock");
            inbound.remove(&self.id);
            inbound.len()
        };
        let frame = Frame::Reply { id: self.id, result };
        // The only reply owed: written from this thread when the writer is idle.
        // With more to come, the writer task coalesces them.
        let written = if others == 0 { self.writer.try_write(frame) } else { Err(frame) };
        let Err(frame) = written else { return };
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.writer.send(frame.into()).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.sent {
            let name = self.name;
            self.queue(Err(WireError::internal(format!("{name} was dropped before it was answered"))));
        }
    }
}
