//! The connection layer: authenticated, framed TCP links between manta processes.
//!
//! ```text
//! Listener (ractor actor)            connect() / connect_any()
//!   │ accepts, handshakes              │ dials seeds, handshakes
//!   └─ PeerActor per connection ◄──────┘ PeerActor (reconnects with backoff)
//!        ├─ reader task: frames → replies to waiting callers,
//!        │                requests/events → the local `Service`
//!        └─ writer task: coalesces queued frames into few writes; while it
//!                        is idle, a thread outside the runtime may write a lone
//!                        frame itself (writer.rs)
//! ```
//!
//! A [`PeerHandle`] is the typed way to talk to the other side: `call` sends a
//! request with a deadline (sent as a remaining budget) and waits for its reply,
//! `send_event` sends a one-way message. Requests take a credit from a bounded
//! pool per peer; replies, cancels and heartbeats never do, so a nested request
//! cannot deadlock. Both sides ping each other; a link silent for longer than the
//! heartbeat timeout is closed, and an outbound link reconnects with backoff
//! capped at one second.

mod answer;
pub mod auth;
mod backoff;
mod connection;
mod feed;
mod handshake;
mod listener;
mod peer;
mod peer_actor;
pub mod tls;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use answer::Answer;
pub use backoff::Backoff;
pub use feed::{Feed, SharedFeed};
pub use handshake::{ConnectError, connect, connect_any};
pub use listener::{Listener, ListenerMsg, bind, spawn_listener};
pub use peer::{CallError, LinkId, OnReply, PeerHandle, PendingReply, Unsent};
pub use peer_actor::{PeerActor, PeerMsg};

use crate::error::WireError;
use crate::frame::{DEFAULT_MAX_FRAME_BYTES, PeerRole};
use crate::message::{Event, Reply, Request};

/// A boxed, sendable future, as returned by [`Service::request`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a process does with the requests and events that arrive on a connection.
///
/// Implementations hand the message to a local actor and return quickly; the
/// connection layer runs each request in its own task under the caller's
/// deadline, unless the service answers it itself through an [`Answer`].
pub trait Service: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn request(&self, peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>>;

    /// Whether the service answers `request` itself through an [`Answer`]
    /// ([`Service::answer_directly`]) instead of a future from [`Service::request`].
    fn answers_directly(&self, _request: &Request) -> bool {
        false
    }

    /// Takes a request for which [`Service::answers_directly`] said yes; the
    /// reply goes out when `answer` is sent, from whichever thread does the work
    /// (no task of its own, no budget timer here: the caller's deadline holds).
    fn answer_directly(&self, _peer: &PeerHandle, request: Request, answer: Answer) {
        let name = request.name();
        answer.send(Err(WireError::new(
            crate::ErrorCode::Unimplemented,
            format!("this peer does not serve {name} requests"),
        )));
    }

    /// Receives one event from `peer`.
    fn event(&self, _peer: &PeerHandle, _event: Event) {}

    /// Called each time a link to `peer` is established (again, after a reconnect).
    fn connected(&self, _peer: &PeerHandle) {}

    /// Called each time the link to `peer` is lost.
    fn disconnected(&self, _peer: &PeerHandle, _reason: &str) {}
}

/// A service that answers every request with `Unimplemented` (for clients that only call).
#[derive(Debug, Default)]
pub struct NoService;

impl Service for NoService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move {
            Err(WireError::new(crate::ErrorCode::Unimplemented, format!("this peer does not serve {name} requests")))
        })
    }
}

/// Settings of the connection layer. Defaults suit a cluster; tests shorten the timers.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The cluster token presented and expected in the handshake.
    pub token: String,
    /// What this process is, sent in the handshake.
    pub role: PeerRole,
    /// This process's label for the peer's logs.
    pub name: String,
    /// Largest frame body accepted or sent after the handshake.
    pub max_frame_bytes: usize,
    /// Requests in flight per peer before `call` waits for a credit.
    pub max_in_flight: usize,
    /// How often each side pings.
    pub heartbeat_interval: Duration,
    /// A link with no incoming traffic for this long is closed.
    pub heartbeat_timeout: Duration,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for one TCP connect attempt.
    pub connect_attempt_timeout: Duration,
    /// Largest pause between reconnect attempts.
    pub max_reconnect_backoff: Duration,
    /// Whether an outbound link redials after it drops (false: it closes for good).
    pub reconnect: bool,
    /// Who answers at the far end of an outbound link, when known (a node's link to
    /// the GCS): what it sends is checked as from that sender. Inbound links take it
    /// from the peer's handshake.
    pub remote: Option<crate::rpc::Sender>,
    /// TLS for every link made or accepted with this configuration (`None`: clear text).
    pub tls: Option<Arc<tls::TlsConfig>>,
}

impl NetConfig {
    /// Defaults for a peer with `role`, presenting `token`.
    pub fn new(token: impl Into<String>, role: PeerRole, name: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            role,
            name: name.into(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_in_flight: 1024,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            connect_attempt_timeout: Duration::from_secs(2),
            max_reconnect_backoff: Duration::from_secs(1),
            reconnect: true,
            remote: None,
            tls: None,
        }
    }
}

/// Milliseconds on a process-wide monotonic clock.
pub(crate) fn monotonic_millis() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests;
