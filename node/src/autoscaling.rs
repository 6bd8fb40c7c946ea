//! Starting the autoscaler: in the head (`manta start --head
//! --autoscaling-config FILE`) or alone (`manta autoscaler`), on its own GCS
//! link, adopted by a node supervisor that restarts it when it fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use manta_agents::autoscaler::actor::{Autoscaler, AutoscalerArgs, connect, provider_for};
use manta_agents::autoscaler::config::ClusterConfig;
use manta_agents::autoscaler::local::LocalProviderArgs;
use manta_proto::frame::PeerRole;
use manta_proto::net::NetConfig;
use ractor::{Actor, ActorRef};

use crate::supervisor::{Agent, NodeSupervisorMsg, Respawn};

/// Reads and checks a cluster config file; errors name the file and the field.
pub fn read_config(path: &Path) -> Result<Arc<ClusterConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the autoscaling config {}: {error}", path.display()))?;
    ClusterConfig::from_yaml(&text).map(Arc::new).map_err(|error| format!("{}: {error}", path.display()))
}

/// What the autoscaler needs to reach the cluster and start nodes in it.
pub struct AutoscalerSetup {
    /// The checked config.
    pub config: Arc<ClusterConfig>,
    /// The GCS address.
    pub gcs_address: String,
    /// The cluster token.
    pub token: String,
    /// TLS for its link, when the cluster uses it.
    pub tls: Option<Arc<manta_proto::net::tls::TlsConfig>>,
    /// The session folder local nodes share.
    pub temp_dir: PathBuf,
}

/// Connects, picks the provider, and starts the actor under `supervisor`.
pub async fn start(supervisor: &ActorRef<NodeSupervisorMsg>, setup: AutoscalerSetup) -> Result<(), String> {
    let mut net = NetConfig::new(setup.token.clone(), PeerRole::Cli, "autoscaler");
    net.tls = setup.tls.clone();
    let slot = Arc::new(RwLock::new(None));
    let gcs = connect(&setup.gcs_address, Arc::new(net), slot.clone()).await?;
    let executable = std::env::current_exe()
        .map_err(|error| format!("cannot find the manta executable the local provider starts: {error}"))?;
    let local = LocalProviderArgs {
        executable,
        gcs_address: setup.gcs_address.clone(),
        token: setup.token.clone(),
        temp_dir: setup.temp_dir.clone(),
        cluster_name: setup.config.cluster_name.clone(),
    };
    let provider = provider_for(&setup.config, local)?;
    let args =
        AutoscalerArgs { config: setup.config, provider, gcs, book: Arc::new(Mutex::new(Default::default())), slot };
    let (actor, _) = Actor::spawn_linked(None, Autoscaler, args.clone(), supervisor.get_cell())
        .await
        .map_err(|error| format!("could not start the autoscaler: {error}"))?;
    let respawn: Respawn = Arc::new(move |parent| {
        let args = args.clone();
        Box::pin(async move { Ok(Actor::spawn_linked(None, Autoscaler, args, parent).await?.0.get_cell()) })
    });
    let _ = supervisor.cast(NodeSupervisorMsg::Adopt(actor.get_id(), Agent { name: "autoscaler", respawn }));
    Ok(())
}
