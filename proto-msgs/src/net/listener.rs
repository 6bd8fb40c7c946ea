//! [`Listener`]: accepts connections, runs the server handshake, and supervises
//! one [`PeerActor`] per authenticated peer.

use std::net::SocketAddr;
use std::sync::Arc;

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
                tokio::spawn(async move {
                    match accept(stream, &config).await {
                        Ok(established) => {
                            let _ = myself.cast(ListenerMsg::Accepted(established));
                        }
                        Err(reason) => warn!(%remote, %reason, "refused connection"),
                    }
                });
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

impl Drop for ListenerState {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}
