//! The reading side of an established link: a task that dispatches frames
//! (the writing side is [`super::writer`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::AbortHandle;
use tracing::warn;

use super::answer::Answer;
use super::peer::PeerHandle;
use super::writer::{LinkWriter, WriterQueue};
use super::{Service, monotonic_millis};
use crate::error::{ErrorCode, WireError};
use crate::frame::{Frame, FrameCodec, FrameError};
use crate::rpc::Sender;

/// Requests from one peer being answered at once, at most; a peer that sends
/// more without waiting for replies is cut off (a client keeps to its credits,
/// 1,024 by default, so a correct one never comes near).
pub const MAX_INBOUND_REQUESTS: usize = 8192;
/// Replies and pongs queued for a peer that is not reading them, at most: past
/// this the link stops reading that peer's requests (TCP then slows it down),
/// and closes if it still does not read within the heartbeat timeout.
pub const MAX_QUEUED_REPLIES: usize = 16384;

/// Replies and pongs queued for the writer and not yet taken by it.
pub(crate) type Backlog = Arc<AtomicUsize>;

/// Requests from the peer that are still being answered, so a `Cancel` can abort
/// them: their tasks, or `None` for those a service answers directly ([`super::Answer`]).
pub(crate) type InboundRequests = Arc<Mutex<HashMap<u64, Option<AbortHandle>>>>;

/// The reading half of a link's stream (a TCP socket, or TLS over one).
pub(crate) type LinkReader = Box<dyn AsyncRead + Send + Unpin>;

/// A handshaken socket, ready to carry frames.
pub struct Established {
    pub(crate) read: LinkReader,
    pub(crate) write: LinkWriter,
    /// Bytes read past the handshake frame.
    pub(crate) leftover: BytesMut,
    /// The peer's label from the handshake.
    pub(crate) remote_name: String,
    /// The address dialled (outbound) or the peer's socket address (inbound).
    pub(crate) remote_address: String,
    /// Who the peer is (checked against what it sends); `None`: not restricted.
    pub(crate) sender: Option<Sender>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Established")
            .field("remote_name", &self.remote_name)
            .field("remote_address", &self.remote_address)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// What the reader needs besides the socket: where frames go.
pub(crate) struct LinkContext {
    /// The link's handle (replies complete its pending calls).
    pub(crate) handle: PeerHandle,
    /// The link's writer queue.
    pub(crate) writer: WriterQueue,
    /// Where requests and events go.
    pub(crate) service: Arc<dyn Service>,
    /// Requests being answered, for `Cancel`.
    pub(crate) inbound: InboundRequests,
    /// Monotonic millis of the last read, for the heartbeat check.
    pub(crate) last_seen: Arc<AtomicU64>,
    /// Who the peer is; requests and events it may not send are refused.
    pub(crate) sender: Option<Sender>,
    /// Replies and pongs not yet taken by the writer.
    pub(crate) backlog: Backlog,
    /// How long a peer may leave its replies unread before the link closes.
    pub(crate) unread_timeout: Duration,
}

impl LinkContext {
    /// Queues a reply or pong (counted in the backlog).
    fn answer(&self, frame: Frame) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.writer.send(frame.into()).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits while the peer leaves too many replies unread; a reason to close
    /// when it still has not read them after the timeout.
    async fn wait_for_reader(&self) -> Option<String> {
        if self.backlog.load(Ordering::Relaxed) <= MAX_QUEUED_REPLIES {
            return None;
        }
        let deadline = tokio::time::Instant::now() + self.unread_timeout;
        while self.backlog.load(Ordering::Relaxed) > MAX_QUEUED_REPLIES {
            if tokio::time::Instant::now() >= deadline {
                let reason = format!(
                    "the peer left more than {MAX_QUEUED_REPLIES} replies unread for {:?}; closing the link",
                    self.unread_timeout
                );
                warn!(peer = %self.handle.label(), %reason, "backpressure");
                return Some(reason);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

/// Reads and dispatches frames until the link closes; returns why it closed.
pub(crate) async fn read_loop(
    mut socket: LinkReader,
    mut codec: FrameCodec,
    mut buffer: BytesMut,
    link: LinkContext,
) -> String {
    loop {
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    if let Some(reason) = dispatch(frame, &link) {
                        return reason;
                    }
                }
                Ok(None) => break,
                Err(error) => return protocol_error(&link, error),
            }
        }
        // A peer that does not read its replies is not read either (TCP slows it down).
        if let Some(reason) = link.wait_for_reader().await {
            return reason;
        }
        match socket.read_buf(&mut buffer).await {
            Ok(0) => return "the peer closed the connection".to_string(),
            Ok(_) => link.last_seen.store(monotonic_millis(), Ordering::Relaxed),
            Err(error) => return format!("read failed: {error}"),
        }
    }
}

fn protocol_error(link: &LinkContext, error: FrameError) -> String {
    warn!(peer = %link.handle.label(), %error, "closing connection after a bad frame");
    let _ = link.writer.send(Frame::Error(error.to_wire()).into());
    format!("bad frame from peer: {error}")
}

/// Handles one frame; returns a reason when the link must close.
fn dispatch(frame: Frame, link: &LinkContext) -> Option<String> {
    match frame {
        Frame::Request { id, budget_ms, body } => return serve_request(id, budget_ms, body, link),
        Frame::Reply { id, result } => link.handle.complete(id, result),
        Frame::Cancel { id } => {
            if let Some(Some(task)) = link.inbound.lock().expect("inbound lock").remove(&id) {
                task.abort();
            }
        }
        Frame::Event(event) => match link.sender {
            Some(sender) if !event.allowed_from(sender) => {
                warn!(peer = %link.handle.label(), ?sender, "permission denied: dropped an event only the GCS may send");
            }
            _ => link.service.event(&link.handle, event),
        },
        Frame::Ping { nonce } => link.answer(Frame::Pong { nonce }),
        Frame::Pong { .. } => {}
        Frame::Error(error) => {
            warn!(peer = %link.handle.label(), %error, "peer reported a protocol error");
            return Some(format!("peer reported: {error}"));
        }
        Frame::Hello(_)
        | Frame::Challenge { .. }
        | Frame::Proof { .. }
        | Frame::Welcome { .. }
        | Frame::Rejected(_) => {
            let error = WireError::invalid("handshake frame received on an established connection");
            warn!(peer = %link.handle.label(), %error, "closing connection");
            let _ = link.writer.send(Frame::Error(error.clone()).into());
            return Some(error.message);
        }
    }
    None
}

/// Runs one request in its own task under the caller's budget and queues the
/// reply, or hands it to a service that answers it directly; a reason to close
/// when the peer has too many requests in flight.
fn serve_request(id: u64, budget_ms: u64, body: crate::message::Request, link: &LinkContext) -> Option<String> {
    if link.inbound.lock().expect("inbound lock").len() >= MAX_INBOUND_REQUESTS {
        let reason = format!("the peer sent more than {MAX_INBOUND_REQUESTS} requests without waiting for replies");
        warn!(peer = %link.handle.label(), %reason, "closing the link");
        return Some(reason);
    }
    let spec = body.spec();
    let name = spec.name;
    if let Some(sender) = link.sender
        && !spec.allows(sender)
    {
        let message = format!(
            "{name} may not be sent by a {sender:?} link (it is for {:?}); this request was refused",
            spec.senders
        );
        warn!(peer = %link.handle.label(), %message, "permission denied");
        link.answer(Frame::Reply { id, result: Err(WireError::new(ErrorCode::PermissionDenied, message)) });
        return None;
    }
    if link.service.answers_directly(&body) {
        let answer = Answer::new(id, name, link.writer.clone(), link.backlog.clone(), link.inbound.clone());
        link.service.answer_directly(&link.handle, body, answer);
        return None;
    }
    let budget = Duration::from_millis(budget_ms);
    let work = link.service.request(&link.handle, body);
    let (writer, backlog) = (link.writer.clone(), link.backlog.clone());
    let inbound_for_task = link.inbound.clone();
    // Hold the lock across spawn + insert so the task cannot remove its entry first.
    let mut inbound = link.inbound.lock().expect("inbound lock");
    let task = tokio::spawn(async move {
        let result = match tokio::time::timeout(budget, work).await {
            Ok(result) => result,
            Err(_) => Err(WireError::new(
                ErrorCode::DeadlineExceeded,
                format!("{name} did not finish within the caller's {budget_ms} ms budget"),
            )),
        };
        inbound_for_task.lock().expect("inbound lock").remove(&id);
        backlog.fetch_add(1, Ordering::Relaxed);
        if writer.send(Frame::Reply { id, result }.into()).is_err() {
            backlog.fetch_sub(1, Ordering::Relaxed);
        }
    });
    inbound.insert(id, Some(task.abort_handle()));
    None
}
