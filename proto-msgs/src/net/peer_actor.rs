//! [`PeerActor`]: the supervised actor that owns one peer link.
//!
//! It installs an established socket (spawning the reader and writer tasks),
//! pings on a timer and closes a silent link, and on loss either reconnects
//! with backoff (outbound links) or stops (inbound links: the peer redials).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::connection::{Established, InboundRequests, LinkContext, read_loop};
use super::handshake::{DialError, dial};
use super::peer::{Link, PeerHandle};
use super::writer::write_loop;
use super::{Backoff, NetConfig, Service, monotonic_millis};
use crate::frame::{Frame, FrameCodec};

/// The actor owning one link. Stateless; everything lives in [`PeerState`].
#[derive(Debug, Default)]
pub struct PeerActor;

/// Messages to a [`PeerActor`].
#[derive(Debug)]
pub enum PeerMsg {
    /// Heartbeat timer: ping the peer, or close the link if it has gone silent.
    Heartbeat,
    /// The reader task of link `generation` stopped, for `reason`.
    ConnectionClosed {
        /// Which installation of the link stopped (stale notices are ignored).
        generation: u64,
        /// Why it stopped.
        reason: String,
    },
    /// Backoff timer: dial again (outbound links).
    Reconnect,
    /// Close the link for good and stop.
    Close,
}

/// Which side opened the link.
#[derive(Debug)]
pub enum PeerMode {
    /// Accepted by a listener; stops when the link drops.
    Inbound,
    /// Dialled by us; redials `addresses` when the link drops.
    Outbound {
        /// Seeds to redial, in order.
        addresses: Vec<String>,
    },
}

/// Start-up arguments of a [`PeerActor`].
pub struct PeerArgs {
    pub(crate) handle: PeerHandle,
    pub(crate) service: Arc<dyn Service>,
    pub(crate) config: Arc<NetConfig>,
    pub(crate) mode: PeerMode,
    pub(crate) established: Established,
}

/// State of a [`PeerActor`].
pub struct PeerState {
    handle: PeerHandle,
    service: Arc<dyn Service>,
    config: Arc<NetConfig>,
    mode: PeerMode,
    generation: u64,
    reader: Option<JoinHandle<()>>,
    /// The writer task of the current socket.
    writer: Option<JoinHandle<()>>,
    inbound: InboundRequests,
    last_seen: Arc<AtomicU64>,
    backoff: Backoff,
    heartbeat: Option<JoinHandle<()>>,
    next_nonce: u64,
    pending_install: Option<Established>,
}

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = PeerState;
    type Arguments = PeerArgs;

    async fn pre_start(&self, myself: ActorRef<PeerMsg>, args: PeerArgs) -> Result<PeerState, ActorProcessingErr> {
        args.handle.set_actor(myself.clone());
        let heartbeat = myself.send_interval(args.config.heartbeat_interval, || PeerMsg::Heartbeat);
        Ok(PeerState {
            backoff: Backoff::new(Duration::from_millis(20), args.config.max_reconnect_backoff),
            handle: args.handle,
            service: args.service,
            config: args.config,
            mode: args.mode,
            generation: 0,
            reader: None,
            writer: None,
            inbound: InboundRequests::default(),
            last_seen: Arc::new(AtomicU64::new(monotonic_millis())),
            heartbeat: Some(heartbeat),
            next_nonce: 0,
            pending_install: Some(args.established),
        })
    }

    async fn post_start(&self, myself: ActorRef<PeerMsg>, state: &mut PeerState) -> Result<(), ActorProcessingErr> {
        if let Some(established) = state.pending_install.take() {
            install(&myself, state, established);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PeerMsg>,
        message: PeerMsg,
        state: &mut PeerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeerMsg::Heartbeat => {
                if state.reader.is_none() {
                    return Ok(());
                }
                let silent_ms = monotonic_millis().saturating_sub(state.last_seen.load(Ordering::Relaxed));
                if silent_ms > state.config.heartbeat_timeout.as_millis() as u64 {
                    let reason = format!("no traffic from the peer for {silent_ms} ms");
                    warn!(peer = %state.handle.label(), %reason, "closing silent link");
                    link_lost(&myself, state, reason);
                } else {
                    state.next_nonce += 1;
                    state.handle.send_frame(Frame::Ping { nonce: state.next_nonce });
                }
            }
            PeerMsg::ConnectionClosed { generation, reason } => {
                if generation == state.generation && state.reader.is_some() {
                    link_lost(&myself, state, reason);
                }
            }
            PeerMsg::Reconnect => redial(&myself, state).await,
            PeerMsg::Close => {
                teardown(state, "closed by this process");
                state.handle.set_link(Link::Closed);
                myself.stop(None);
            }
        }
        Ok(())
    }
}

/// Cleanup lives in `Drop`, not `post_stop`: a supervisor that stops kills its
/// children without running their `post_stop`, but their state is always dropped.
impl Drop for PeerState {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
        teardown(self, "peer actor stopped");
        self.handle.set_link(Link::Closed);
    }
}

/// How long a closed link's writer may still run to send what was queued.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the reader and writer for a fresh socket and marks the link up.
fn install(myself: &ActorRef<PeerMsg>, state: &mut PeerState, established: Established) {
    state.generation += 1;
    let generation = state.generation;
    let mut codec = FrameCodec::new(state.config.max_frame_bytes);
    codec.set_max_frame_bytes(state.config.max_frame_bytes);
    // Threads may write a frame themselves on plain TCP links (see `super::writer`).
    let direct = state.config.tls.is_none();
    let (writer, task) = super::writer::writer(established.write, codec.clone(), direct);
    state.handle.reset_feeds();
    let backlog = super::connection::Backlog::default();
    state.writer = Some(tokio::spawn(write_loop(task, state.handle.clone(), backlog.clone())));
    state.last_seen.store(monotonic_millis(), Ordering::Relaxed);
    let context = LinkContext {
        handle: state.handle.clone(),
        writer: writer.clone(),
        service: state.service.clone(),
        inbound: state.inbound.clone(),
        last_seen: state.last_seen.clone(),
        sender: established.sender,
        backlog,
        unread_timeout: state.config.heartbeat_timeout,
    };
    let reader = read_loop(established.read, codec, established.leftover, context);
    let notify = myself.clone();
    state.reader = Some(tokio::spawn(async move {
        let reason = reader.await;
        let _ = notify.cast(PeerMsg::ConnectionClosed { generation, reason });
    }));
    state.handle.set_remote_address(established.remote_address);
    state.handle.set_link(Link::Up(writer));
    state.backoff.reset();
    info!(peer = %state.handle.label(), generation, "link up");
    state.service.connected(&state.handle);
}

/// Stops the link's tasks, fails waiting calls and tells the service.
fn teardown(state: &mut PeerState, reason: &str) {
    let Some(reader) = state.reader.take() else {
        return;
    };
    reader.abort();
    for task in state.inbound.lock().expect("inbound lock").drain().filter_map(|(_, task)| task) {
        task.abort();
    }
    // The writer ends by itself once its queue is drained; one stuck on a peer that
    // does not read is ended after a grace period, closing the socket.
    if let Some(writer) = state.writer.take() {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(WRITER_GRACE).await;
                    writer.abort();
                });
            }
            Err(_) => writer.abort(),
        }
    }
    state.handle.set_link(Link::Connecting);
    state.handle.fail_pending();
    state.service.disconnected(&state.handle, reason);
}

/// The link dropped: redial (outbound) or stop (inbound).
fn link_lost(myself: &ActorRef<PeerMsg>, state: &mut PeerState, reason: String) {
    info!(peer = %state.handle.label(), %reason, "link lost");
    teardown(state, &reason);
    let redial = matches!(state.mode, PeerMode::Outbound { .. }) && state.config.reconnect;
    match redial {
        false => {
            state.handle.set_link(Link::Closed);
            myself.stop(Some(reason));
        }
        true => {
            let _ = myself.cast(PeerMsg::Reconnect);
        }
    }
}

/// One pass over the seed addresses; schedules another after a backoff pause.
async fn redial(myself: &ActorRef<PeerMsg>, state: &mut PeerState) {
    let PeerMode::Outbound { addresses } = &state.mode else {
        return;
    };
    if state.reader.is_some() {
        return;
    }
    for address in addresses.clone() {
        match dial(&address, &state.config).await {
            Ok(established) => {
                install(myself, state, established);
                return;
            }
            Err(DialError::Final(refusal)) => {
                error!(peer = %state.handle.label(), %refusal, "reconnect refused; giving up on this link");
                state.handle.set_link(Link::Closed);
                state.service.disconnected(&state.handle, &refusal.to_string());
                myself.stop(Some(refusal.to_string()));
                return;
            }
            Err(DialError::Transient(reason)) => {
                tracing::debug!(peer = %state.handle.label(), %reason, "reconnect attempt failed");
            }
        }
    }
    let pause = state.backoff.next_delay();
    myself.send_after(pause, || PeerMsg::Reconnect);
}
