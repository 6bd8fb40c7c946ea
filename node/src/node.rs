//! Starting and running one node process: [`prepare`], [`start`], [`RunningNode::run_until`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use manta_proto::NodeId;
use manta_proto::frame::PeerRole;
use manta_proto::gcs::RegisterNodeRequest;
use manta_proto::net::{self, CallError, ConnectError, NetConfig};
use manta_proto::resources::{Quantity, names};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{NodeConfig, Role};
use crate::node_service::NodeService;
use crate::object_store::{self, ObjectStoreActor, SpillConfig, StoreArgs, StoreConfig};
use crate::raylet::{NodeIdentity, RAYLET_CHANNELS, Raylet, RayletArgs};
use crate::resources;
use crate::session::{NodeRecord, Session, SessionError, remove_pidfile};
use crate::supervisor::{NodeSupervisor, NodeSupervisorMsg};
use manta_agents::log_monitor::{LogMonitor, LogMonitorArgs};
use manta_proto::client::GcsClient;

/// Why a node could not start. [`StartError::exit_code`] maps it to the CLI's status.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings are invalid.
    #[error("{0}")]
    Config(String),
    /// The session folder could not be used.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A port could not be bound.
    #[error("{0}")]
    Bind(std::io::Error),
    /// No seed could be reached, or the token was refused.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The GCS refused or did not answer the registration.
    #[error("could not register with the GCS: {0}")]
    Register(#[from] CallError),
    /// An actor could not start.
    #[error("could not start {what}: {reason}")]
    Spawn {
        /// Which component.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl StartError {
    /// 2 for bad settings (like a bad flag), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// What exists before the runtime starts: the session, the node's id and folder.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The session folder.
    pub session: Session,
    /// The node's first id.
    pub node_id: NodeId,
    /// The node's own folder (pidfile, record, log).
    pub node_dir: PathBuf,
    /// The cluster token.
    pub token: String,
    /// TLS for every link, when the cluster uses it.
    pub tls: Option<Arc<manta_proto::net::tls::TlsConfig>>,
}

impl Prepared {
    /// The node's log file.
    pub fn log_path(&self) -> PathBuf {
        self.node_dir.join("node.log")
    }
}

/// Validates `config`, resolves the token and creates the node's folder and pidfile.
pub fn prepare(config: &NodeConfig) -> Result<Prepared, StartError> {
    config.validate().map_err(StartError::Config)?;
    let session = Session::new(&config.temp_dir);
    let token = match (&config.token, &config.role) {
        (Some(token), _) if !token.is_empty() => token.clone(),
        (_, Role::Head { .. }) => session.read_or_create_token()?,
        (_, Role::Worker { .. }) => session.read_token()?.ok_or_else(|| {
            StartError::Connect(ConnectError::AuthenticationFailed(format!(
                "authentication failed: no cluster token was found; pass --token, set MANTA_TOKEN, or use the head's --temp-dir (no token file at {})",
                session.token_path().display()
            )))
        })?,
    };
    // TLS: the flags; a node joining from the head's session folder also takes what the head recorded.
    let tls_files = match (&config.tls, &config.role) {
        (Some(files), _) => Some(files.clone()),
        (None, Role::Head { .. }) => None,
        (None, Role::Worker { .. }) => {
            manta_proto::net::tls::TlsFiles::from_session(&config.temp_dir).map_err(StartError::Config)?
        }
    };
    let tls = match tls_files {
        Some(files) => Some(Arc::new(files.load().map_err(StartError::Config)?)),
        None => None,
    };
    let node_id = NodeId::random();
    let node_dir = session.create_node_dir(&format!("node-{}", node_id.short()))?;
    Ok(Prepared { session, node_id, node_dir, token, tls })
}

/// What `manta start` prints once the node is up.
#[derive(Debug, Clone)]
pub struct ReadyInfo {
    /// The node's id.
    pub node_id: NodeId,
    /// The node's own address.
    pub node_address: String,
    /// The GCS address (the cluster address).
    pub gcs_address: String,
    /// True for the head.
    pub is_head: bool,
    /// The token file, when the token came from one.
    pub token_path: PathBuf,
    /// The node's log file.
    pub log_path: PathBuf,
    /// The head's HTTP server (Jobs API, dashboard), `http://host:port`.
    pub dashboard_url: Option<String>,
}

/// A started node.
pub struct RunningNode {
    /// How to reach it.
    pub info: ReadyInfo,
    supervisor: ActorRef<NodeSupervisorMsg>,
    supervisor_done: JoinHandle<()>,
    prepared: Prepared,
    gcs: GcsClient,
    identity: NodeIdentity,
    http: Option<manta_agents::http::HttpServerHandle>,
}

fn net_config(prepared: &Prepared, name: String) -> Arc<NetConfig> {
    let mut config = NetConfig::new(&prepared.token, PeerRole::Node, name);
    config.tls = prepared.tls.clone();
    Arc::new(config)
}

fn spawn_error(what: &'static str) -> impl FnOnce(ractor::SpawnErr) -> StartError {
    move |error| StartError::Spawn { what, reason: error.to_string() }
}

/// Serves `/metrics` and starts the metrics agent (restarted by the supervisor
/// when it fails); returns the agent's slot and the endpoint's address.
async fn start_metrics(
    config: &NodeConfig,
    prepared: &Prepared,
    supervisor: &ActorRef<NodeSupervisorMsg>,
) -> Result<(crate::node_service::MetricsSlot, String), StartError> {
    use manta_agents::metrics_agent::{MetricsAgent, MetricsAgentArgs, Pushed, serve};
    let pushed = Arc::new(std::sync::Mutex::new(Pushed::default()));
    let address = serve(&config.node_ip, config.metrics_export_port, prepared.node_id, pushed.clone())
        .map_err(StartError::Bind)?;
    let args = MetricsAgentArgs { pushed };
    let (agent, _) = Actor::spawn_linked(None, MetricsAgent, args.clone(), supervisor.get_cell())
        .await
        .map_err(spawn_error("the metrics agent"))?;
    let slot = Arc::new(std::sync::RwLock::new(agent.clone()));
    let respawn_slot = slot.clone();
    let respawn: crate::supervisor::Respawn = Arc::new(move |parent| {
        let (args, slot) = (args.clone(), respawn_slot.clone());
        Box::pin(async move {
            let (agent, _) = Actor::spawn_linked(None, MetricsAgent, args, parent).await?;
            *slot.write().expect("metrics lock") = agent.clone();
            Ok(agent.get_cell())
        })
    });
    let agent_entry = crate::supervisor::Agent { name: "metrics agent", respawn };
    let _ = supervisor.cast(NodeSupervisorMsg::Adopt(agent.get_id(), agent_entry));
    Ok((slot, address))
}

/// Hands the log monitor to the supervisor to restart when it fails; returns
/// the slot the node's service reaches it through.
fn adopt_log_monitor(
    supervisor: &ActorRef<NodeSupervisorMsg>,
    monitor: ActorRef<manta_agents::log_monitor::LogMonitorMsg>,
    args: LogMonitorArgs,
) -> crate::node_service::LogMonitorSlot {
    let slot = crate::node_service::LogMonitorSlot::new(monitor.clone());
    let respawn_slot = slot.clone();
    let respawn: crate::supervisor::Respawn = Arc::new(move |parent| {
        let (args, slot) = (args.clone(), respawn_slot.clone());
        Box::pin(async move {
            let (monitor, _) = Actor::spawn_linked(None, LogMonitor, args, parent).await?;
            slot.replace(monitor.clone());
            Ok(monitor.get_cell())
        })
    });
    let agent = crate::supervisor::Agent { name: "log monitor", respawn };
    let _ = supervisor.cast(NodeSupervisorMsg::Adopt(monitor.get_id(), agent));
    slot
}

/// Starts the RuntimeEnvAgent (restarted by the supervisor when it fails, with
/// its cache state kept); returns the slot the raylet reaches it through.
async fn start_runtime_env_agent(
    config: &NodeConfig,
    prepared: &Prepared,
    supervisor: &ActorRef<NodeSupervisorMsg>,
    gcs: GcsClient,
) -> Result<manta_agents::runtime_env::AgentSlot, StartError> {
    use manta_agents::runtime_env::{AgentArgs, AgentShared, RuntimeEnvAgent};
    let args = AgentArgs {
        root: prepared.node_dir.join("runtime_resources"),
        log_dir: prepared.node_dir.join("logs"),
        gcs,
        local_packages: config.is_head().then(|| config.gcs.packages_dir.clone()),
        shared: AgentShared::new(config.runtime_env_cache_bytes),
        slot: Arc::new(OnceLock::new()),
    };
    let (agent, _) = Actor::spawn_linked(None, RuntimeEnvAgent, args.clone(), supervisor.get_cell())
        .await
        .map_err(spawn_error("the runtime env agent"))?;
    let slot = Arc::new(std::sync::RwLock::new(agent.clone()));
    let _ = args.slot.set(slot.clone());
    let respawn: crate::supervisor::Respawn = Arc::new(move |parent| {
        let args = args.clone();
        Box::pin(async move {
            let (agent, _) = Actor::spawn_linked(None, RuntimeEnvAgent, args.clone(), parent).await?;
            if let Some(slot) = args.slot.get() {
                *slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = agent.clone();
            }
            Ok(agent.get_cell())
        })
    });
    let entry = crate::supervisor::Agent { name: "runtime env agent", respawn };
    let _ = supervisor.cast(NodeSupervisorMsg::Adopt(agent.get_id(), entry));
    Ok(slot)
}

/// Starts the JobAgent (restarted by the supervisor when it fails); returns the
/// slot the node's GCS link reaches it through.
async fn start_job_agent(
    supervisor: &ActorRef<NodeSupervisorMsg>,
    args: manta_agents::jobs::JobAgentArgs,
) -> Result<manta_agents::jobs::JobAgentSlot, StartError> {
    use manta_agents::jobs::JobAgent;
    let (agent, _) = Actor::spawn_linked(None, JobAgent, args.clone(), supervisor.get_cell())
        .await
        .map_err(spawn_error("the job agent"))?;
    let slot = Arc::new(std::sync::RwLock::new(agent.clone()));
    let respawn_slot = slot.clone();
    let respawn: crate::supervisor::Respawn = Arc::new(move |parent| {
        let (args, slot) = (args.clone(), respawn_slot.clone());
        Box::pin(async move {
            let (agent, _) = Actor::spawn_linked(None, JobAgent, args, parent).await?;
            *slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = agent.clone();
            Ok(agent.get_cell())
        })
    });
    let entry = crate::supervisor::Agent { name: "job agent", respawn };
    let _ = supervisor.cast(NodeSupervisorMsg::Adopt(agent.get_id(), entry));
    Ok(slot)
}

/// Starts the head's metrics sampler (the dashboard's last hour of metrics),
/// adopted by the node supervisor, which restarts it with the history kept.
async fn start_metrics_sampler(
    supervisor: &ActorRef<NodeSupervisorMsg>,
    gcs: GcsClient,
    history: Arc<std::sync::Mutex<manta_agents::metrics_history::MetricsHistory>>,
) -> Result<(), StartError> {
    use manta_agents::metrics_history::{MetricsSampler, SamplerArgs};
    let args = SamplerArgs { gcs, history };
    let (sampler, _) = Actor::spawn_linked(None, MetricsSampler, args.clone(), supervisor.get_cell())
        .await
        .map_err(spawn_error("the metrics sampler"))?;
    let respawn: crate::supervisor::Respawn = Arc::new(move |parent| {
        let args = args.clone();
        Box::pin(async move { Ok(Actor::spawn_linked(None, MetricsSampler, args, parent).await?.0.get_cell()) })
    });
    let entry = crate::supervisor::Agent { name: "metrics sampler", respawn };
    let _ = supervisor.cast(NodeSupervisorMsg::Adopt(sampler.get_id(), entry));
    Ok(())
}

/// Starts the head's HTTP server (a busy default port falls back to a free
/// one, as Ray does) and records its URL in the GCS KV for remote clients.
async fn start_http(
    supervisor: &ActorRef<NodeSupervisorMsg>,
    prepared: &Prepared,
    (host, port): (&str, u16),
    gcs: &GcsClient,
    gcs_address: &str,
) -> Result<manta_agents::http::HttpServerHandle, StartError> {
    let session_name =
        prepared.session.root().file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let history = Arc::new(std::sync::Mutex::new(Default::default()));
    let grafana_url = std::env::var("MANTA_GRAFANA_HOST").ok().filter(|url| !url.is_empty());
    let mut http_config = manta_agents::http::HttpConfig {
        host: host.to_string(),
        port,
        token: prepared.token.clone(),
        session_name,
        history: history.clone(),
        grafana_url,
    };
    let started = match manta_agents::http::start(http_config.clone(), gcs_address, prepared.tls.clone()).await {
        Err(error) if port == manta_agents::http::DEFAULT_PORT && error.contains("cannot listen") => {
            warn!(%error, "the default dashboard port is busy; using a free one");
            http_config.port = 0;
            manta_agents::http::start(http_config, gcs_address, prepared.tls.clone()).await
        }
        other => other,
    };
    let http = started.map_err(StartError::Config)?;
    // The sampler reads the state tables as a client does, over the HTTP server's own link.
    start_metrics_sampler(supervisor, http.gcs(), history).await?;
    let (namespace, key) = manta_proto::cluster::DASHBOARD_KV;
    let url = format!("http://{}", http.address);
    gcs.kv_put(namespace, key, bytes::Bytes::from(url), true).await?;
    Ok(http)
}

/// Starts the node: the GCS (head), listeners, the GCS link, registration and the raylet.
pub async fn start(config: NodeConfig, prepared: Prepared) -> Result<RunningNode, StartError> {
    let (supervisor, supervisor_done) =
        Actor::spawn(None, NodeSupervisor, ()).await.map_err(spawn_error("the node supervisor"))?;
    match start_components(&config, &prepared, &supervisor).await {
        Ok((info, gcs, identity, http)) => {
            Ok(RunningNode { info, supervisor, supervisor_done, prepared, gcs, identity, http })
        }
        Err(error) => {
            supervisor.kill();
            let _ = supervisor_done.await;
            remove_pidfile(&prepared.node_dir);
            Err(error)
        }
    }
}

async fn start_components(
    config: &NodeConfig,
    prepared: &Prepared,
    supervisor: &ActorRef<NodeSupervisorMsg>,
) -> Result<(ReadyInfo, GcsClient, NodeIdentity, Option<manta_agents::http::HttpServerHandle>), StartError> {
    // Install the process's metrics recorder before any component records.
    if config.install_metrics_recorder {
        manta_agents::metrics_agent::install_recorder();
    }
    let identity = NodeIdentity::new(prepared.node_id);
    let raylet_slot = Arc::new(OnceLock::new());
    let node_label = format!("node {}", prepared.node_id.short());
    let net = net_config(prepared, node_label.clone());

    let seeds = match &config.role {
        Role::Head { gcs_port } => {
            let mut gcs_config = config.gcs.clone();
            gcs_config.token = prepared.token.clone();
            gcs_config.tls = prepared.tls.clone();
            let gcs =
                manta_gcs::start(gcs_config, Some(supervisor.get_cell())).await.map_err(spawn_error("the GCS"))?;
            let socket = net::bind(&format!("{}:{gcs_port}", config.node_ip)).await.map_err(StartError::Bind)?;
            let gcs_net = net_config(prepared, "gcs".into());
            let (_, address) = net::spawn_listener(socket, gcs_net, gcs.service, Some(supervisor.get_cell()))
                .await
                .map_err(spawn_error("the GCS listener"))?;
            vec![address.to_string()]
        }
        Role::Worker { seeds } => seeds.clone(),
    };

    let total = resources::resolve(&config.resources, &config.node_ip);
    let capacity = (total.get(names::OBJECT_STORE_MEMORY).units() / Quantity::SCALE) as u64;
    let store_args = StoreArgs {
        config: StoreConfig {
            capacity,
            full_timeout: config.object_store_full_timeout,
            spill: SpillConfig {
                // One folder per node, so nodes sharing a spill folder never meet.
                dir: match &config.object_spilling_dir {
                    Some(dir) => dir.join(format!("node-{}", prepared.node_id.short())),
                    None => prepared.node_dir.join("spilled_objects"),
                },
                max_bytes: config.object_spilling_max_bytes,
            },
        },
        dir: object_store::choose_dir(capacity, prepared.node_id, &prepared.node_dir.join("objects")),
        node_id: prepared.node_id,
        net: net.clone(),
    };
    let (store, _) = Actor::spawn_linked(None, ObjectStoreActor, store_args, supervisor.get_cell())
        .await
        .map_err(spawn_error("the object store"))?;

    let log_dir = prepared.node_dir.join("logs");
    let _ = manta_proto::private_fs::create_dir_all(&log_dir);
    let monitor_args = LogMonitorArgs {
        log_dir: log_dir.clone(),
        ip: config.node_ip.clone(),
        max_lines_per_second: config.log_lines_per_second,
        offsets: Default::default(),
        retention: config.log_retention,
    };
    let (logs, _) = Actor::spawn_linked(None, LogMonitor, monitor_args.clone(), supervisor.get_cell())
        .await
        .map_err(spawn_error("the log monitor"))?;
    let logs = adopt_log_monitor(supervisor, logs, monitor_args);
    let pipes = logs.pipes();

    let (metrics, metrics_address) = start_metrics(config, prepared, supervisor).await?;

    let node_socket = net::bind(&format!("{}:{}", config.node_ip, config.node_port)).await.map_err(StartError::Bind)?;
    let node_service = Arc::new(
        NodeService::new(identity.clone(), raylet_slot.clone(), store.clone())
            .with_logs(logs, log_dir)
            .with_metrics(metrics),
    );
    let (_, node_address) = net::spawn_listener(node_socket, net.clone(), node_service, Some(supervisor.get_cell()))
        .await
        .map_err(spawn_error("the node listener"))?;

    let jobs_slot = Arc::new(OnceLock::new());
    let link_service = Arc::new(
        NodeService::for_gcs_link(identity.clone(), raylet_slot.clone(), store.clone(), config.gcs_reconnect_timeout)
            .with_jobs(jobs_slot.clone()),
    );
    // What comes on this link comes from the GCS (cluster views, health checks, bundles).
    let gcs_net = Arc::new(NetConfig { remote: Some(manta_proto::rpc::Sender::Gcs), ..(*net).clone() });
    let link =
        net::connect_any(&seeds, gcs_net, link_service, Some(supervisor.get_cell()), config.connect_timeout).await?;
    let gcs = GcsClient::new(link.clone());
    let gcs_address = link.remote_address();

    let registration = RegisterNodeRequest {
        node_id: prepared.node_id,
        address: node_address.to_string(),
        is_head: config.is_head(),
        pid: std::process::id(),
        resources_total: total.clone(),
        resources_available: total,
        labels: config.labels.clone(),
        metrics_address: Some(metrics_address),
    };
    let reply = gcs.register_node(registration.clone()).await?;
    info!(node_id = %reply.node.node_id, address = %node_address, gcs = %gcs_address, "node registered");
    gcs.subscribe(RAYLET_CHANNELS.to_vec()).await?;
    if config.is_head() {
        crate::service_discovery::spawn(gcs.clone(), config.temp_dir.clone());
    }

    let agent = start_runtime_env_agent(config, prepared, supervisor, gcs.clone()).await?;
    let job_args = manta_agents::jobs::JobAgentArgs {
        node_id: prepared.node_id,
        gcs: gcs.clone(),
        gcs_address: gcs_address.clone(),
        token: prepared.token.clone(),
        tls_env: prepared
            .tls
            .iter()
            .flat_map(|tls| tls.files().env())
            .map(|(name, path)| (name.to_string(), path.display().to_string()))
            .collect(),
        log_dir: prepared.node_dir.join("logs"),
        runtime_env: agent.clone(),
        stop_grace: config.job_stop_grace,
    };
    let _ = jobs_slot.set(start_job_agent(supervisor, job_args).await?);
    let args = RayletArgs {
        identity: identity.clone(),
        gcs: gcs.clone(),
        registration,
        report_interval: config.report_interval,
        node_address: node_address.to_string(),
        node_ip: config.node_ip.clone(),
        log_dir: prepared.node_dir.join("logs"),
        token: prepared.token.clone(),
        tls: prepared.tls.as_ref().map(|tls| tls.files().clone()),
        max_workers: config.max_workers,
        fence_after: crate::raylet::fence_window(reply.fence_after_ms),
        store,
        log_rotation: config.log_rotation,
        agent,
        pipes,
    };
    let (raylet, _) =
        Actor::spawn_linked(None, Raylet, args, supervisor.get_cell()).await.map_err(spawn_error("the raylet"))?;
    let _ = raylet_slot.set(raylet);

    let http = match (&config.role, &config.dashboard) {
        (Role::Head { .. }, Some((host, port))) => {
            Some(start_http(supervisor, prepared, (host, *port), &gcs, &gcs_address).await?)
        }
        _ => None,
    };
    if let (Role::Head { .. }, Some(cluster)) = (&config.role, &config.autoscaling) {
        let setup = crate::autoscaling::AutoscalerSetup {
            config: cluster.clone(),
            gcs_address: gcs_address.clone(),
            token: prepared.token.clone(),
            tls: prepared.tls.clone(),
            temp_dir: config.temp_dir.clone(),
        };
        crate::autoscaling::start(supervisor, setup).await.map_err(StartError::Config)?;
    }
    let info = ReadyInfo {
        dashboard_url: http.as_ref().map(|http| format!("http://{}", http.address)),
        node_id: prepared.node_id,
        node_address: node_address.to_string(),
        gcs_address: gcs_address.clone(),
        is_head: config.is_head(),
        token_path: prepared.session.token_path(),
        log_path: prepared.log_path(),
    };
    let record = NodeRecord {
        node_id: prepared.node_id.to_string(),
        address: info.node_address.clone(),
        gcs_address,
        is_head: info.is_head,
        pid: std::process::id(),
    };
    prepared.session.write_node_record(&prepared.node_dir, &record)?;
    if info.is_head {
        prepared.session.write_tls(prepared.tls.as_ref().map(|tls| tls.files()))?;
        prepared.session.write_address(&info.gcs_address)?;
        if let Some(url) = &info.dashboard_url {
            prepared.session.write_dashboard_url(url)?;
        }
    }
    Ok((info, gcs, identity, http))
}

/// How a node's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (signal or caller).
    Requested,
    /// A component failed; the node stopped itself.
    Failed,
}

impl RunningNode {
    /// Runs until `shutdown` resolves (then leaves the cluster cleanly) or a
    /// component fails.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Exit {
        let exit = tokio::select! {
            _ = shutdown => Exit::Requested,
            _ = &mut self.supervisor_done => Exit::Failed,
        };
        self.stop(exit == Exit::Requested).await;
        exit
    }

    /// Leaves the cluster and stops every component.
    async fn stop(self, drain: bool) {
        if drain && !self.info.is_head {
            let reason = "the node was stopped (manta stop or a signal) and left the cluster";
            if let Err(error) = self.gcs.drain_node(self.identity.get(), reason, Duration::from_secs(5)).await {
                warn!(%error, "could not tell the GCS that this node is leaving");
            }
        }
        if let Some(http) = &self.http {
            http.stop().await;
        }
        self.supervisor.stop(Some("node shutting down".into()));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.supervisor_done).await;
        if self.info.is_head {
            self.prepared.session.clear_address(&self.info.gcs_address);
        }
        remove_pidfile(&self.prepared.node_dir);
        info!("node stopped");
    }
}
