//! [`Listener`]: accepts connections, runs the server handshake, and supervises
//! one [`PeerActor`] per authenticated peer.
//!
//! Connections that have not finished their handshake are bounded
//! ([`MAX_PENDING_HANDSHAKES`]): when the bound is reached the oldest pending one
//! is dropped, so idle or slow sockets cannot keep a correct peer out. Refusals
//! are logged at most once per [`REFUSAL_LOG_INTERVAL`], with a count.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::connection::Established;
use super::handshake::accept;
use super::peer::PeerHandle;
use super::peer_actor::{PeerActor, PeerArgs, PeerMode};
use super::{NetConfig, Service};

/// Binds `address`, turning the usual failures into a sentence that names the port.
pub async fn bind(address: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(address).await.map_err(|error| {
        let port = address.rsplit(':').next().unwrap_or(address);
        let message = match error.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!("port {port} is already in use on {address}; stop what holds it or choose another port")
            }
            std::io::ErrorKind::AddrNotAvailable => {
                format!("address {address} is not an address of this machine; check --node-ip-address")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!("permission denied binding port {port} on {address}; choose a port above 1023")
            }
            _ => format!("cannot listen on {address}: {error}"),
        };
        std::io::Error::new(error.kind(), message)
    })
}

/// Handshakes in progress per listener, at most.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// At most one "refused connection" log line per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Handshakes in progress, oldest first.
#[derive(Debug, Default)]
struct PendingHandshakes {
    next_id: u64,
    pending: VecDeque<(u64, tokio::task::AbortHandle)>,
}

impl PendingHandshakes {
    /// Makes room for one more (ending the oldest when full); returns its id.
    fn admit(&mut self, limit: usize) -> (u64, Option<tokio::task::AbortHandle>) {
        self.next_id += 1;
        let evicted =
            if self.pending.len() >= limit { self.pending.pop_front().map(|(_, handle)| handle) } else { None };
        (self.next_id, evicted)
    }

    fn started(&mut self, id: u64, handle: tokio::task::AbortHandle) {
        self.pending.push_back((id, handle));
    }

    fn finished(&mut self, id: u64) {
        self.pending.retain(|(pending, _)| *pending != id);
    }
}

/// Rate limit of the refusal log: says when to write a line, and how many refusals it stands for.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self { interval, last: None, unlogged: 0 }
    }

    /// A refusal at `now`: `Some(n)` when a line is due, standing for `n` refusals
    /// (this one and those not logged since the last line).
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < self.interval) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// The accepting actor. Stateless; see [`ListenerState`].
#[derive(Debug, Default)]
pub struct Listener;

/// Messages to a [`Listener`].
#[derive(Debug)]
pub enum ListenerMsg {
    /// A socket passed the handshake; supervise a peer actor for it.
    Accepted(Established),
}

/// Start-up arguments of a [`Listener`].
pub struct ListenerArgs {
    listener: TcpListener,
    config: Arc<NetConfig>,
    service: Arc<dyn Service>,
}

/// State of a [`Listener`].
pub struct ListenerState {
    config: Arc<NetConfig>,
    service: Arc<dyn Service>,
    accept_task: JoinHandle<()>,
}

/// Spawns a listener actor on an already-bound socket, linked to `supervisor`.
/// Returns the actor and the address it listens on.
pub async fn spawn_listener(
    listener: TcpListener,
    config: Arc<NetConfig>,
    service: Arc<dyn Service>,
    supervisor: Option<ActorCell>,
) -> Result<(ActorRef<ListenerMsg>, SocketAddr), ractor::SpawnErr> {
    let local = listener.local_addr().map_err(|error| ractor::SpawnErr::StartupFailed(Box::new(error)))?;
    let args = ListenerArgs { listener, config, service };
    let (actor, _) = match supervisor {
        Some(supervisor) => Actor::spawn_linked(None, Listener, args, supervisor).await?,
        None => Actor::spawn(None, Listener, args).await?,
    };
    Ok((actor, local))
}

impl Actor for Listener {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ListenerMsg>,
        args: ListenerArgs,
    ) -> Result<ListenerState, ActorProcessingErr> {
        let config = args.config.clone();
        let listener = args.listener;
        info!(address = ?listener.local_addr().ok(), "listening");
        let pending = Arc::new(Mutex::new(PendingHandshakes::default()));
        let refusals = Arc::new(Mutex::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)));
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let config = config.clone();
                let myself = myself.clone();
                // Held until the handshake is recorded, so it is always recorded before it finishes.
                let mut table = pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (id, evicted) = table.admit(MAX_PENDING_HANDSHAKES);
                if let Some(evicted) = evicted {
                    evicted.abort();
                    log_refusal(&refusals, &remote, "too many unfinished handshakes: the oldest was dropped");
                }
                let (pending_done, refusals_done) = (pending.clone(), refusals.clone());
                let handshake = tokio::spawn(async move {
                    let outcome = accept(stream, &config).await;
                    pending_done.lock().unwrap_or_else(std::sync::PoisonError::into_inner).finished(id);
                    match outcome {
                        Ok(established) => {
                            let _ = myself.cast(ListenerMsg::Accepted(established));
                        }
                        Err(reason) => log_refusal(&refusals_done, &remote, &reason),
                    }
                });
                table.started(id, handshake.abort_handle());
            }
        });
        Ok(ListenerState { config: args.config, service: args.service, accept_task })
    }

    async fn handle(
        &self,
        myself: ActorRef<ListenerMsg>,
        message: ListenerMsg,
        state: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ListenerMsg::Accepted(established) => {
                let label = format!("{} ({})", established.remote_name, established.remote_address);
                let handle = PeerHandle::new(label, state.config.max_in_flight);
                let args = PeerArgs {
                    handle,
                    service: state.service.clone(),
                    config: state.config.clone(),
                    mode: PeerMode::Inbound,
                    established,
                };
                if let Err(error) = Actor::spawn_linked(None, PeerActor, args, myself.get_cell()).await {
                    warn!(%error, "could not start a peer actor for an accepted connection");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ListenerMsg>,
        event: SupervisionEvent,
        _state: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(actor, error) => {
                warn!(actor = %actor.get_id(), %error, "a peer actor failed; its peer will reconnect");
            }
            other => debug!(event = ?other, "peer actor lifecycle"),
        }
        Ok(())
    }
}

/// Logs a refusal, at most once per interval (with the count since the last line).
fn log_refusal(log: &Mutex<RefusalLog>, remote: &SocketAddr, reason: &str) {
    let due = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).refused(Instant::now());
    if let Some(count) = due {
        warn!(%remote, %reason, refused_since_last_line = count, "refused connection");
    }
}

impl Drop for ListenerState {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_interval_with_a_count() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(log.refused(start), Some(1));
        for second in 1..=5 {
            assert_eq!(log.refused(start + Duration::from_secs(second)), None);
        }
        assert_eq!(log.refused(start + Duration::from_secs(11)), Some(6), "this one and the five held back");
    }

    #[tokio::test]
    async fn the_oldest_pending_handshake_makes_room() {
        let mut table = PendingHandshakes::default();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (id, evicted) = table.admit(3);
            assert!(evicted.is_none());
            let task = tokio::spawn(std::future::pending::<()>());
            table.started(id, task.abort_handle());
            tasks.push(task);
        }
        let (_, evicted) = table.admit(3);
        evicted.expect("full: the oldest goes").abort();
        assert!(tasks.remove(0).await.unwrap_err().is_cancelled());
        table.finished(3);
        assert_eq!(table.pending.len(), 1);
    }
}
