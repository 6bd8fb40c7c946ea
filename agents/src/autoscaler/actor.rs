//! The autoscaler actor: a round (read the GCS's demand snapshot and the
//! provider's instances, decide with [`Book::decide`], act, report the state to
//! the GCS) runs 50 ms after a demand change (a cluster view or a
//! `DemandChanged` event on its own GCS link), coalescing bursts, and once a
//! second for what only time changes (idle timeouts, launches that never
//! joined). It runs in the head (`manta start --head --autoscaling-config`) or
//! alone (`manta autoscaler`), supervised either way; its [`Book`] and its
//! link outlive a restart.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use manta_proto::WireError;
use manta_proto::autoscaler::{DrainForRemovalRequest, GetClusterDemandRequest};
use manta_proto::client::GcsClient;
use manta_proto::gcs::Channel;
use manta_proto::message::{Event, Reply, Request};
use manta_proto::net::{BoxFuture, NetConfig, PeerHandle, Service};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::book::{Action, Book};
use super::config::ClusterConfig;
use super::local::{LocalProvider, LocalProviderArgs};
use super::provider::NodeProvider;

/// Wait after a demand change before a round, so a burst makes one round.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Rounds for what only time changes.
pub const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Where the link's events reach the running actor (replaced on restart).
pub type AutoscalerSlot = Arc<RwLock<Option<ActorRef<AutoscalerMsg>>>>;

/// Start-up arguments (kept across restarts).
#[derive(Clone)]
pub struct AutoscalerArgs {
    /// The cluster config.
    pub config: Arc<ClusterConfig>,
    /// Starts and stops nodes.
    pub provider: Arc<dyn NodeProvider>,
    /// The autoscaler's GCS link.
    pub gcs: GcsClient,
    /// Launches, drains and failures so far.
    pub book: Arc<Mutex<Book>>,
    /// Where its link delivers events.
    pub slot: AutoscalerSlot,
}

/// Messages to the [`Autoscaler`].
#[derive(Debug)]
pub enum AutoscalerMsg {
    /// The demand may have changed: a round soon.
    Changed,
    /// Run a round now.
    Round,
}

/// The autoscaler actor.
#[derive(Debug, Default)]
pub struct Autoscaler;

/// Its state.
pub struct AutoscalerState {
    args: AutoscalerArgs,
    scheduled: bool,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for AutoscalerState {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

impl Actor for Autoscaler {
    type Msg = AutoscalerMsg;
    type State = AutoscalerState;
    type Arguments = AutoscalerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AutoscalerMsg>,
        args: AutoscalerArgs,
    ) -> Result<AutoscalerState, ActorProcessingErr> {
        *args.slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(myself.clone());
        let ticker = myself.send_interval(HOUSEKEEPING, || AutoscalerMsg::Round);
        let _ = myself.cast(AutoscalerMsg::Round);
        info!(cluster = %args.config.cluster_name, types = args.config.available_node_types.len(), "autoscaler running");
        Ok(AutoscalerState { args, scheduled: false, ticker })
    }

    async fn handle(
        &self,
        myself: ActorRef<AutoscalerMsg>,
        message: AutoscalerMsg,
        state: &mut AutoscalerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AutoscalerMsg::Changed => {
                if !state.scheduled {
                    state.scheduled = true;
                    myself.send_after(DEBOUNCE, || AutoscalerMsg::Round);
                }
            }
            AutoscalerMsg::Round => {
                state.scheduled = false;
                if let Err(error) = round(&state.args).await {
                    warn!(%error, "autoscaler round failed; the next one retries");
                }
            }
        }
        Ok(())
    }
}

/// One round: read, decide, act, report.
async fn round(args: &AutoscalerArgs) -> Result<(), String> {
    let snapshot = args.gcs.call(GetClusterDemandRequest {}).await.map_err(|error| error.to_string())?;
    let instances = args.provider.list().await?;
    let now = Instant::now();
    let actions = args.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner).decide(
        &args.config,
        &snapshot,
        &instances,
        now,
    );
    for action in actions {
        act(args, action).await;
    }
    // The launches just made are in the book; the listing from before serves the rest.
    let status = args.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner).status(
        &args.config,
        &snapshot,
        &instances,
        Instant::now(),
        now_ms(),
    );
    args.gcs.call(status).await.map_err(|error| error.to_string())
}

async fn act(args: &AutoscalerArgs, action: Action) {
    let failed = |message: String| {
        warn!(%message, "autoscaler");
        args.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner).failed(message);
    };
    match action {
        Action::Launch { node_type, count } => {
            let Some(spec) = args.config.available_node_types.get(&node_type) else { return };
            info!(%node_type, count, "launching nodes");
            match args.provider.create(&node_type, spec, count).await {
                Ok(ids) => args.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner).launched(
                    &node_type,
                    &ids,
                    Instant::now(),
                ),
                Err(error) => failed(format!("could not launch {count} node(s) of type {node_type}: {error}")),
            }
        }
        Action::Drain { instance_id, node_id } => {
            info!(%instance_id, %node_id, "draining an idle node before removing it");
            if let Err(error) = args.gcs.call(DrainForRemovalRequest { node_id }).await {
                failed(format!("could not drain node {instance_id}: {error}"));
            }
        }
        Action::Terminate { instance_id, reason } => {
            info!(%instance_id, %reason, "removing a node");
            if let Err(error) = args.provider.terminate(&instance_id).await {
                failed(format!("could not remove node {instance_id}: {error}"));
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// The autoscaler's side of its GCS link: subscribes to the cluster view and
/// the demand channel on every (re)connect, and turns their events into rounds.
struct LinkService(AutoscalerSlot);

impl LinkService {
    fn poke(&self) {
        if let Some(actor) = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            let _ = actor.cast(AutoscalerMsg::Changed);
        }
    }
}

impl Service for LinkService {
    fn request(&self, _peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let name = request.name();
        Box::pin(async move {
            Err(WireError::new(manta_proto::ErrorCode::Unimplemented, format!("the autoscaler does not serve {name}")))
        })
    }

    fn event(&self, _peer: &PeerHandle, event: Event) {
        if matches!(event, Event::ClusterView(_) | Event::DemandChanged(_)) {
            self.poke();
        }
    }

    fn connected(&self, peer: &PeerHandle) {
        let gcs = GcsClient::new(peer.clone());
        tokio::spawn(async move {
            if let Err(error) = gcs.subscribe(vec![Channel::ClusterView, Channel::Autoscaler]).await {
                warn!(%error, "the autoscaler could not subscribe to demand changes");
            }
        });
        self.poke();
    }
}

/// Opens the autoscaler's own GCS link (a command-line client's role).
pub async fn connect(gcs_address: &str, net: Arc<NetConfig>, slot: AutoscalerSlot) -> Result<GcsClient, String> {
    let peer = manta_proto::net::connect(gcs_address, net, Arc::new(LinkService(slot)), None, Duration::from_secs(10))
        .await
        .map_err(|error| format!("the autoscaler cannot reach the GCS at {gcs_address}: {error}"))?;
    Ok(GcsClient::new(peer))
}

/// The provider the config names.
pub fn provider_for(config: &ClusterConfig, local: LocalProviderArgs) -> Result<Arc<dyn NodeProvider>, String> {
    match config.provider.kind.as_str() {
        "local" => Ok(Arc::new(LocalProvider::new(local))),
        "kubernetes" => super::kubernetes::provider(config, &local.gcs_address),
        other => {
            Err(format!("the autoscaling config's provider.type {other:?} is not a provider; use local or kubernetes"))
        }
    }
}
