//! [`PeerHandle`]: the typed, cloneable way to call the process on the other end of a link.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;

use ractor::ActorRef;

use super::feed::{Followed, SharedFeed};
use super::peer_actor::PeerMsg;
use super::writer::{Outgoing, WriterQueue};
use crate::error::{ErrorCode, WireError};
use crate::frame::Frame;
use crate::message::{Event, Reply, Request};
use crate::rpc::Rpc;

/// Why a call did not produce a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The peer answered with an error.
    #[error("{0}")]
    Remote(WireError),
    /// No reply within the deadline; the peer was told to stop working on it.
    #[error("{request} to {peer} got no reply within {timeout:?}")]
    DeadlineExceeded {
        /// The request's name.
        request: &'static str,
        /// The peer's label.
        peer: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The link closed (or was never up) before a reply arrived.
    #[error("the connection to {peer} was lost before {request} was answered")]
    ConnectionLost {
        /// The request's name.
        request: &'static str,
        /// The peer's label.
        peer: String,
    },
    /// The peer answered with a reply of another kind (it runs another version, or is not what it claims).
    #[error("{peer} answered {request} with a {reply} reply")]
    UnexpectedReply {
        /// The request's name.
        request: &'static str,
        /// The peer's label.
        peer: String,
        /// The kind of reply that came.
        reply: &'static str,
    },
}

impl CallError {
    /// The error's wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::Remote(error) => error.code,
            CallError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            CallError::ConnectionLost { .. } => ErrorCode::ConnectionLost,
            CallError::UnexpectedReply { .. } => ErrorCode::Internal,
        }
    }

    /// As a wire error, for forwarding.
    pub fn to_wire(&self) -> WireError {
        match self {
            CallError::Remote(error) => error.clone(),
            other => WireError::new(other.code(), other.to_string()),
        }
    }
}

/// State of the link behind a handle.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// Not up yet, or reconnecting: calls wait until their deadline.
    Connecting,
    /// Up: frames go to this writer.
    Up(WriterQueue),
    /// Closed for good: calls fail at once.
    Closed,
}

/// What a request's reply is for: a task waiting on a [`PendingReply`], or an
/// [`OnReply`] the link's reader runs.
enum Waiter {
    Task(oneshot::Sender<Result<Reply, WireError>>),
    Then { name: &'static str, on_reply: Box<dyn OnReply> },
}

type PendingMap = HashMap<u64, Waiter>;

/// What runs when a request's reply comes ([`PeerHandle::send_if_up_then`]):
/// called once, on the link's reader, with the reply or with why none will come
/// (the link was lost). It must not block: it runs before the link reads on.
pub trait OnReply: Send + 'static {
    /// Takes the reply.
    fn reply(self: Box<Self>, reply: Result<Reply, CallError>);
}

/// Why [`PeerHandle::send_if_up_then`] did not send: the [`OnReply`] comes back uncalled.
pub enum Unsent<T> {
    /// The link is not up (connecting, or closed for good).
    NotUp(Box<T>),
    /// The link failed under the send: the caller runs it with the error once
    /// it holds no lock that the reply's handling takes.
    Lost(CallError, Box<dyn OnReply>),
}

pub(crate) struct PeerShared {
    id: u64,
    label: Mutex<String>,
    next_request_id: AtomicU64,
    pending: Mutex<PendingMap>,
    credits: Semaphore,
    link: watch::Sender<Link>,
    actor: Mutex<Option<ActorRef<PeerMsg>>>,
    remote_address: Mutex<String>,
    /// Feeds this link follows (the GCS's cluster view), with its cursors.
    followed: Followed,
}

/// Which link a request or event came on: process-unique, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "link-{}", self.0)
    }
}

impl LinkId {
    /// A link id for tests of code that keys by link.
    pub fn for_test(id: u64) -> Self {
        Self(id)
    }
}

/// A cloneable handle on one peer link. It outlives reconnects of an outbound link.
#[derive(Clone)]
pub struct PeerHandle {
    shared: Arc<PeerShared>,
}

impl fmt::Debug for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerHandle").field("id", &self.shared.id).field("label", &self.label()).finish()
    }
}

impl PartialEq for PeerHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for PeerHandle {}

impl PeerShared {
    /// Tells the waiters of requests that will get no reply.
    fn fail(&self, waiters: impl IntoIterator<Item = (u64, Waiter)>) {
        for (_, waiter) in waiters {
            // A task's waiter, dropped, tells its task.
            if let Waiter::Then { name, on_reply } = waiter {
                let peer = self.label.lock().map(|label| label.clone()).unwrap_or_default();
                on_reply.reply(Err(CallError::ConnectionLost { request: name, peer }));
            }
        }
    }
}

impl Drop for PeerShared {
    fn drop(&mut self) {
        let waiters = match self.pending.get_mut() {
            Ok(pending) => std::mem::take(pending),
            Err(_) => return,
        };
        self.fail(waiters);
    }
}

impl PeerHandle {
    pub(crate) fn new(label: String, max_in_flight: usize) -> Self {
        static NEXT_PEER_ID: AtomicU64 = AtomicU64::new(1);
        let (link, _) = watch::channel(Link::Connecting);
        Self {
            shared: Arc::new(PeerShared {
                id: NEXT_PEER_ID.fetch_add(1, Ordering::Relaxed),
                label: Mutex::new(label),
                next_request_id: AtomicU64::new(1),
                pending: Mutex::new(HashMap::new()),
                credits: Semaphore::new(max_in_flight.max(1)),
                link,
                actor: Mutex::new(None),
                remote_address: Mutex::new(String::new()),
                followed: Followed::default(),
            }),
        }
    }

    /// A process-unique id for this link.
    pub fn id(&self) -> LinkId {
        LinkId(self.shared.id)
    }

    /// The peer's label (from its handshake, or the address dialled).
    pub fn label(&self) -> String {
        self.shared.label.lock().expect("label lock").clone()
    }

    /// The address of the current (or last) link: the address dialled for an
    /// outbound link, the peer's socket address for an inbound one.
    pub fn remote_address(&self) -> String {
        self.shared.remote_address.lock().expect("address lock").clone()
    }

    pub(crate) fn set_remote_address(&self, address: String) {
        *self.shared.remote_address.lock().expect("address lock") = address;
    }

    pub(crate) fn set_actor(&self, actor: ActorRef<PeerMsg>) {
        *self.shared.actor.lock().expect("actor lock") = Some(actor);
    }

    /// Closes the link for good (an outbound link stops reconnecting).
    pub fn close(&self) {
        let actor = self.shared.actor.lock().expect("actor lock").clone();
        match actor {
            Some(actor) => {
                let _ = actor.cast(PeerMsg::Close);
            }
            None => self.set_link(Link::Closed),
        }
    }

    /// True while the link is up.
    pub fn is_connected(&self) -> bool {
        matches!(*self.shared.link.borrow(), Link::Up(_))
    }

    /// True once the link is closed for good.
    pub fn is_closed(&self) -> bool {
        matches!(*self.shared.link.borrow(), Link::Closed)
    }

    pub(crate) fn set_link(&self, link: Link) {
        self.shared.link.send_replace(link);
    }

    /// Fails every call waiting for a reply (the link went down).
    pub(crate) fn fail_pending(&self) {
        let drained: Vec<_> = self.shared.pending.lock().expect("pending lock").drain().collect();
        self.shared.fail(drained);
    }

    pub(crate) fn complete(&self, id: u64, result: Result<Reply, WireError>) {
        let waiter = self.shared.pending.lock().expect("pending lock").remove(&id);
        match waiter {
            Some(Waiter::Task(waiter)) => {
                let _ = waiter.send(result);
            }
            Some(Waiter::Then { on_reply, .. }) => on_reply.reply(result.map_err(CallError::Remote)),
            None => {}
        }
    }

    /// Sends `request` and waits up to `timeout` for the reply. Waits for a
    /// credit first when too many requests to this peer are in flight.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Reply, CallError> {
        let deadline = Instant::now() + timeout;
        let name = request.name();
        let _permit = tokio::time::timeout_at(deadline, self.shared.credits.acquire())
            .await
            .map_err(|_| self.deadline_error(name, timeout))?
            .map_err(|_| self.lost_error(name))?;
        self.call_with_deadline(request, deadline, timeout).await
    }

    /// A typed call: sends `request` and returns its typed reply (see [`crate::rpc`]).
    pub async fn rpc<R: Rpc>(&self, request: R, timeout: Duration) -> Result<R::Reply, CallError> {
        let reply = self.call(request.into_request(), timeout).await?;
        self.typed(R::SPEC.name, R::typed_reply(reply))
    }

    /// [`PeerHandle::rpc`] without waiting for a credit (see [`PeerHandle::call_priority`]).
    pub async fn rpc_priority<R: Rpc>(&self, request: R, timeout: Duration) -> Result<R::Reply, CallError> {
        let reply = self.call_priority(request.into_request(), timeout).await?;
        self.typed(R::SPEC.name, R::typed_reply(reply))
    }

    /// A reply of the expected kind, or the error naming what came instead.
    pub fn typed<T>(&self, request: &'static str, reply: Result<T, &'static str>) -> Result<T, CallError> {
        reply.map_err(|kind| CallError::UnexpectedReply { request, peer: self.label(), reply: kind })
    }

    /// Like [`PeerHandle::call`], but never waits for a credit. For health checks
    /// and other control traffic that must not queue behind bulk requests.
    pub async fn call_priority(&self, request: Request, timeout: Duration) -> Result<Reply, CallError> {
        self.call_with_deadline(request, Instant::now() + timeout, timeout).await
    }

    async fn call_with_deadline(
        &self,
        request: Request,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        self.send_with_deadline(request, deadline, timeout).await?.wait().await
    }

    /// Queues `request` on the link (waiting only until the link is up, never
    /// for a credit) and returns the pending reply. Requests sent one after
    /// another this way reach the peer in that order.
    pub async fn send(&self, request: Request, timeout: Duration) -> Result<PendingReply, CallError> {
        self.send_with_deadline(request, Instant::now() + timeout, timeout).await
    }

    async fn send_with_deadline(
        &self,
        request: Request,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<PendingReply, CallError> {
        let writer = self.wait_for_link(request.name(), deadline, timeout).await?;
        self.queue_request(writer, request, deadline, timeout)
    }

    /// [`PeerHandle::send`] from any thread without waiting: queues `request` when
    /// the link is up now. `Err` gives the request back when it is not (connecting
    /// or closed); `send` then waits for the link or says why it cannot.
    pub fn send_if_up(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Result<PendingReply, CallError>, Box<Request>> {
        let writer = match &*self.shared.link.borrow() {
            Link::Up(writer) => writer.clone(),
            _ => return Err(Box::new(request)),
        };
        Ok(self.queue_request(writer, request, Instant::now() + timeout, timeout))
    }

    /// [`PeerHandle::send_if_up`] whose reply goes to `on_reply`, run by the
    /// link's reader (or with the link's loss), instead of to a task waiting on
    /// a [`PendingReply`]. There is no deadline on this side: the reply or the
    /// link's end runs it; `timeout` is the budget the peer is given.
    pub fn send_if_up_then<T: OnReply>(
        &self,
        request: Request,
        timeout: Duration,
        on_reply: Box<T>,
    ) -> Result<(), Unsent<T>> {
        let writer = match &*self.shared.link.borrow() {
            Link::Up(writer) => writer.clone(),
            _ => return Err(Unsent::NotUp(on_reply)),
        };
        let name = request.name();
        let waiter = Waiter::Then { name, on_reply };
        match self.queue_frame(&writer, waiter, request, Instant::now() + timeout) {
            Err((error, Waiter::Then { on_reply, .. })) => Err(Unsent::Lost(error, on_reply)),
            // Queued (the waiter given back is always the one queued).
            _ => Ok(()),
        }
    }

    /// [`PeerHandle::send_if_up_then`], waiting up to `timeout` for the link to
    /// come up; a link that does not (or fails under the send) runs `on_reply`
    /// with the error, here, and false comes back.
    pub async fn send_then(&self, request: Request, timeout: Duration, on_reply: Box<dyn OnReply>) -> bool {
        let writer = match self.wait_for_link(request.name(), Instant::now() + timeout, timeout).await {
            Ok(writer) => writer,
            Err(error) => {
                on_reply.reply(Err(error));
                return false;
            }
        };
        let waiter = Waiter::Then { name: request.name(), on_reply };
        match self.queue_frame(&writer, waiter, request, Instant::now() + timeout) {
            Err((error, Waiter::Then { on_reply, .. })) => {
                on_reply.reply(Err(error));
                false
            }
            _ => true,
        }
    }

    fn queue_request(
        &self,
        writer: WriterQueue,
        request: Request,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<PendingReply, CallError> {
        let name = request.name();
        let (reply_sender, reply_receiver) = oneshot::channel();
        let id =
            self.queue_frame(&writer, Waiter::Task(reply_sender), request, deadline).map_err(|(error, _)| error)?;
        Ok(PendingReply { handle: self.clone(), writer, id, receiver: Some(reply_receiver), deadline, timeout, name })
    }

    /// Registers `waiter` and queues the request's frame; its id. `Err` gives
    /// the waiter back, unregistered, when the link failed under the send.
    fn queue_frame(
        &self,
        writer: &WriterQueue,
        waiter: Waiter,
        request: Request,
        deadline: Instant,
    ) -> Result<u64, (CallError, Waiter)> {
        let name = request.name();
        let id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let alone = {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            pending.insert(id, waiter);
            pending.len() == 1
        };
        let budget_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
        let frame = Frame::Request { id, budget_ms, body: request };
        // The only request waiting: written from this thread when the writer is
        // idle. Several in flight, the writer task coalesces them.
        let written = if alone { writer.try_write(frame) } else { Err(frame) };
        let sent = match written {
            Ok(()) => true,
            Err(frame) => writer.send(frame.into()).is_ok(),
        };
        // A link torn down meanwhile may have failed its waiters before this one
        // was registered: the request counts as lost unless this writer is still the link's.
        let current = matches!(&*self.shared.link.borrow(), Link::Up(up) if up.same(writer));
        if !sent || !current {
            let waiter = self.shared.pending.lock().expect("pending lock").remove(&id);
            return match waiter {
                Some(waiter) => Err((self.lost_error(name), waiter)),
                // Failed already by the link's teardown.
                None => Ok(id),
            };
        }
        Ok(id)
    }

    /// Sends a one-way event. Fails when the link is not up.
    pub fn send_event(&self, event: Event) -> Result<(), CallError> {
        self.queue_event(Frame::Event(event).into())
    }

    /// Queues a one-way item on the current link; fails when it is not up.
    fn queue_event(&self, item: Outgoing) -> Result<(), CallError> {
        if self.send_frame_item(item) {
            Ok(())
        } else {
            Err(CallError::ConnectionLost { request: "event", peer: self.label() })
        }
    }

    /// Queues `item` for the current link's writer; false when the link is not up.
    fn send_frame_item(&self, item: Outgoing) -> bool {
        match &*self.shared.link.borrow() {
            Link::Up(writer) => writer.send(item).is_ok(),
            _ => false,
        }
    }

    /// Sends a one-way event, waiting up to `timeout` for the link to come up
    /// (a link just opened may still be finishing its handshake).
    pub async fn send_event_when_up(&self, event: Event, timeout: Duration) -> Result<(), CallError> {
        let writer = self.wait_for_link("event", Instant::now() + timeout, timeout).await?;
        writer.send(Frame::Event(event).into()).map_err(|_| self.lost_error("event"))
    }

    /// Sends a raw frame on the current link, if it is up.
    pub(crate) fn send_frame(&self, frame: Frame) -> bool {
        self.send_frame_item(frame.into())
    }

    /// Sends a frame encoded once for many links ([`crate::frame::encode_shared`]):
    /// a publisher's event costs each link a reference, not a copy. Fails when
    /// the link is not up.
    pub fn send_encoded(&self, frame: bytes::Bytes) -> Result<(), CallError> {
        self.queue_event(Outgoing::Encoded(frame))
    }

    /// Tells this link that `feed` changed (following it from nothing if new,
    /// or if `restart`: the link then gets the feed's state whole): its writer
    /// sends the feed's frames when it gets to them. However often this is
    /// called, at most one wake-up waits in the link's queue.
    pub fn follow(&self, feed: &SharedFeed, restart: bool) {
        if self.shared.followed.mark_due(feed, restart) {
            self.send_frame_item(Outgoing::FeedsDue);
        }
    }

    /// The frames of the feeds now due (the writer's side of [`PeerHandle::follow`]).
    pub(crate) fn feeds_due(&self) -> Vec<bytes::Bytes> {
        self.shared.followed.take_due()
    }

    /// A new socket: it has been sent nothing from any feed.
    pub(crate) fn reset_feeds(&self) {
        self.shared.followed.reset();
    }

    async fn wait_for_link(
        &self,
        name: &'static str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<WriterQueue, CallError> {
        let mut link = self.shared.link.subscribe();
        loop {
            match &*link.borrow_and_update() {
                Link::Up(writer) => return Ok(writer.clone()),
                Link::Closed => return Err(self.lost_error(name)),
                Link::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(self.lost_error(name)),
                Err(_) => return Err(self.deadline_error(name, timeout)),
            }
        }
    }

    fn lost_error(&self, request: &'static str) -> CallError {
        CallError::ConnectionLost { request, peer: self.label() }
    }

    fn deadline_error(&self, request: &'static str, timeout: Duration) -> CallError {
        CallError::DeadlineExceeded { request, peer: self.label(), timeout }
    }
}

/// A request on the wire, waiting for its reply. Dropping it before the reply
/// arrives forgets the request and tells the peer to cancel it.
pub struct PendingReply {
    handle: PeerHandle,
    writer: WriterQueue,
    id: u64,
    receiver: Option<oneshot::Receiver<Result<Reply, WireError>>>,
    deadline: Instant,
    timeout: Duration,
    name: &'static str,
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReply").field("id", &self.id).field("request", &self.name).finish()
    }
}

impl PendingReply {
    /// The request's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Waits for the typed reply of request type `R` (what was sent).
    pub async fn wait_for<R: Rpc>(self) -> Result<R::Reply, CallError> {
        let handle = self.handle.clone();
        handle.typed(R::SPEC.name, R::typed_reply(self.wait().await?))
    }

    /// Waits for the reply until the request's deadline.
    pub async fn wait(mut self) -> Result<Reply, CallError> {
        let receiver = self.receiver.take().expect("a pending reply is waited once");
        match tokio::time::timeout_at(self.deadline, receiver).await {
            Ok(Ok(result)) => result.map_err(CallError::Remote),
            Ok(Err(_closed)) => Err(self.handle.lost_error(self.name)),
            Err(_elapsed) => {
                self.cancel();
                Err(self.handle.deadline_error(self.name, self.timeout))
            }
        }
    }

    fn cancel(&self) {
        self.handle.shared.pending.lock().expect("pending lock").remove(&self.id);
        let _ = self.writer.send(Frame::Cancel { id: self.id }.into());
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        // Still holding the receiver means nobody waited to the end.
        if self.receiver.is_some() {
            self.cancel();
        }
    }
}
