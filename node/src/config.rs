//! [`NodeConfig`]: everything a node process needs to start, with defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use manta_gcs::GcsConfig;

use crate::resources::ResourceSpec;
use crate::session::default_temp_dir;

/// Default GCS port of a head node (Ray's).
pub const DEFAULT_GCS_PORT: u16 = 6379;

/// Whether this node starts a cluster or joins one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Starts the GCS on `gcs_port` (0 picks a free port).
    Head {
        /// GCS port.
        gcs_port: u16,
    },
    /// Joins through the first of `seeds` that answers.
    Worker {
        /// GCS addresses to try, in order.
        seeds: Vec<String>,
    },
}

/// Settings of one node process.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Head or worker.
    pub role: Role,
    /// Address to listen on and advertise (loopback unless told otherwise).
    pub node_ip: String,
    /// Port of the node's own listener (0 picks a free port).
    pub node_port: u16,
    /// Session folder.
    pub temp_dir: PathBuf,
    /// Cluster token; a head reads or creates `<temp-dir>/token` when `None`.
    pub token: Option<String>,
    /// Resource flags.
    pub resources: ResourceSpec,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// How long a joining node keeps trying the seeds.
    pub connect_timeout: Duration,
    /// How often the raylet reports its resources.
    pub report_interval: Duration,
    /// GCS settings (head only).
    pub gcs: GcsConfig,
    /// How long a create waits for room in a full object store.
    pub object_store_full_timeout: Duration,
    /// Where full stores spill primaries (default: the node's session folder,
    /// `spilled_objects`, as Ray's `ray_spilled_objects`).
    pub object_spilling_dir: Option<PathBuf>,
    /// Most bytes spilled at once (0: off; `u64::MAX`: until the disk is 95 % full).
    pub object_spilling_max_bytes: u64,
    /// Lines per second one worker stream may send to its driver.
    pub log_lines_per_second: u64,
    /// When worker log files rotate.
    pub log_rotation: crate::worker_logs::Rotation,
    /// How long the node keeps running without its GCS link before it exits.
    pub gcs_reconnect_timeout: Duration,
    /// Port of the node's Prometheus endpoint (0: a free one).
    pub metrics_export_port: u16,
    /// Install the process-wide Prometheus recorder for the node's own metrics.
    /// True for `manta start`; false for a cluster embedded in a user's program,
    /// whose process-wide recorder slot stays the program's (its `/metrics` then
    /// serves what workers push).
    pub install_metrics_recorder: bool,
    /// Log files of exited workers untouched for this long are removed (`--log-retention`, default 7 days).
    pub log_retention: Duration,
    /// Bytes of unused runtime-env items (executables, working dirs, venvs) the
    /// node keeps cached (`--runtime-env-cache-bytes`, default 10 GiB).
    pub runtime_env_cache_bytes: u64,
    /// Worker processes on this node, at most (`--max-workers`); `None`: 8 per
    /// CPU, at least 128.
    pub max_workers: Option<usize>,
    /// TLS for every link of this node (`--tls-cert/--tls-key/--tls-ca`); `None`: clear text.
    pub tls: Option<manta_proto::net::tls::TlsFiles>,
    /// Head only: where the HTTP server (Jobs API, dashboard) listens,
    /// `--dashboard-host`/`--dashboard-port` (127.0.0.1:8265; a busy default
    /// port falls back to a free one, as Ray does); `None`: `--include-dashboard false`.
    pub dashboard: Option<(String, u16)>,
    /// Seconds between SIGTERM and SIGKILL when a submitted job is stopped (Ray: 3).
    pub job_stop_grace: Duration,
    /// Head only: run the autoscaler with this cluster config (`--autoscaling-config`).
    pub autoscaling: Option<std::sync::Arc<manta_agents::autoscaler::config::ClusterConfig>>,
}

impl NodeConfig {
    /// A head node with defaults.
    pub fn head() -> Self {
        Self::with_role(Role::Head { gcs_port: DEFAULT_GCS_PORT })
    }

    /// A worker node joining `seeds`, with defaults.
    pub fn worker(seeds: Vec<String>) -> Self {
        Self::with_role(Role::Worker { seeds })
    }

    fn with_role(role: Role) -> Self {
        Self {
            role,
            node_ip: "127.0.0.1".into(),
            node_port: 0,
            temp_dir: default_temp_dir(),
            token: None,
            resources: ResourceSpec::default(),
            labels: BTreeMap::new(),
            connect_timeout: Duration::from_secs(30),
            report_interval: Duration::from_millis(100),
            gcs: GcsConfig::default(),
            object_store_full_timeout: crate::object_store::DEFAULT_FULL_TIMEOUT,
            object_spilling_dir: None,
            object_spilling_max_bytes: u64::MAX,
            log_lines_per_second: 200_000,
            autoscaling: None,
            log_rotation: Default::default(),
            gcs_reconnect_timeout: Duration::from_secs(60),
            metrics_export_port: 0,
            install_metrics_recorder: true,
            max_workers: None,
            log_retention: Duration::from_secs(7 * 86_400),
            runtime_env_cache_bytes: manta_agents::runtime_env::DEFAULT_CACHE_BYTES,
            tls: None,
            dashboard: Some(("127.0.0.1".into(), manta_agents::http::DEFAULT_PORT)),
            job_stop_grace: Duration::from_secs(3),
        }
    }

    /// True for a head node.
    pub fn is_head(&self) -> bool {
        matches!(self.role, Role::Head { .. })
    }

    /// Checks the settings make sense.
    pub fn validate(&self) -> Result<(), String> {
        if let Role::Worker { seeds } = &self.role
            && seeds.is_empty()
        {
            return Err("a joining node needs at least one --address".into());
        }
        if self.node_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("--node-ip-address {:?} is not an IP address", self.node_ip));
        }
        self.gcs.validate()
    }
}
