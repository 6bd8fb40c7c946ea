//! `manta start`: start a head node or join a cluster.
//!
//! Without `--block` the command re-executes itself with `--block` in a new
//! session (never `fork()`ing a threaded process), reads the child's readiness
//! report from a pipe, prints it and returns 0 once the node is up — or prints
//! the child's error and returns its exit status.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

mod daemon;

use daemon::daemonize;

use crate::cli::init_tracing;
use crate::config::{DEFAULT_GCS_PORT, NodeConfig, Role};
use crate::node::{Exit, Prepared, ReadyInfo, StartError, prepare, start};
use crate::resources::{ResourceSpec, parse_custom_resources, parse_labels};
use crate::session::default_temp_dir;

/// Set in the environment of the re-executed child.
const DAEMON_CHILD_ENV: &str = "MANTA_DAEMON_CHILD";
/// Last line of a successful readiness report.
const READY_MARKER: &str = "manta: node ready";
/// Prefix of a failure report; the exit status follows, then the message.
const ERROR_PREFIX: &str = "manta: start failed";

/// Flags of `manta start`.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    /// Start a new cluster: this node hosts the GCS.
    #[arg(long)]
    head: bool,
    /// GCS port of a head node (0 picks a free port).
    #[arg(long, default_value_t = DEFAULT_GCS_PORT)]
    port: u16,
    /// Join the cluster at HOST:PORT; several comma-separated seeds are tried in order.
    #[arg(long, value_delimiter = ',', conflicts_with = "head")]
    address: Vec<String>,
    /// Cluster token of the cluster to join; defaults to <temp-dir>/token. Prefer
    /// --token-file or MANTA_TOKEN: a command line is visible to other users.
    #[arg(long, env = "MANTA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the cluster token from this file (its first line).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Read the cluster token from standard input (how `manta start` hands it to
    /// the node process it starts, so it is never in that process's command line
    /// or environment).
    #[arg(long, hide = true)]
    token_stdin: bool,
    /// IP address this node listens on and advertises.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip_address: String,
    /// Port of this node's own listener (0 picks a free port).
    #[arg(long, default_value_t = 0)]
    node_manager_port: u16,
    /// Logical CPUs this node offers (default: the cores this process may use).
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    num_cpus: Option<f64>,
    /// GPUs this node offers (default: detected NVIDIA GPUs).
    #[arg(long, value_parser = non_negative, allow_negative_numbers = true)]
    num_gpus: Option<f64>,
    /// Bytes of memory for tasks and actors (default: 70% of available memory).
    #[arg(long)]
    memory: Option<u64>,
    /// The node's accelerator type, offered as resource `accelerator_type:<NAME>`
    /// (default: the detected NVIDIA GPU model, e.g. A100).
    #[arg(long)]
    accelerator_type: Option<String>,
    /// Bytes of object store memory (default: 30% of available memory).
    #[arg(long)]
    object_store_memory: Option<u64>,
    /// Tasks the GCS keeps for `manta list tasks` and the dashboard (head only; the
    /// oldest are dropped first and counted). Ray's default, 100,000.
    #[arg(long, default_value_t = manta_gcs::task_events::DEFAULT_MAX_TASKS)]
    task_history: usize,
    /// Lines per second one worker's stdout (or stderr) may send to its driver; the
    /// rest stay in its log file and the driver is told how many were held back.
    #[arg(long, default_value_t = 200_000)]
    log_lines_per_second: u64,
    /// Size at which a worker's log file is rotated (Ray's RAY_ROTATION_MAX_BYTES).
    #[arg(long, default_value_t = 512 << 20)]
    log_rotation_max_bytes: u64,
    /// Rotated copies of a worker's log file kept (Ray's RAY_ROTATION_BACKUP_COUNT).
    #[arg(long, default_value_t = 5)]
    log_rotation_backups: u32,
    /// Milliseconds a `put` waits for room in a full object store before it fails.
    #[arg(long, default_value_t = 10_000)]
    object_store_full_timeout_ms: u64,
    /// Folder for objects spilled from a full store (Ray's
    /// --object-spilling-directory; default: the node's session folder).
    #[arg(long)]
    object_spilling_directory: Option<PathBuf>,
    /// Most bytes spilled to disk at once; 0 turns spilling off (default: until
    /// the disk is 95 % full, as Ray's local_fs_capacity_threshold).
    #[arg(long)]
    object_spilling_max_bytes: Option<u64>,
    /// Custom resources as JSON, e.g. '{"disk": 2}'.
    #[arg(long, value_parser = parse_custom_resources)]
    resources: Option<BTreeMap<String, f64>>,
    /// Node labels, e.g. zone=a,tier=gpu.
    #[arg(long, value_parser = parse_labels)]
    labels: Option<BTreeMap<String, String>>,
    /// Head only: run the autoscaler with this cluster config (YAML with Ray's
    /// fields: available_node_types, max_workers, idle_timeout_minutes, provider).
    #[arg(long, requires = "head")]
    autoscaling_config: Option<PathBuf>,
    /// Set by the autoscaler's providers: TYPE/INSTANCE_ID, recorded as the
    /// node's `manta.io/node-type` and `manta.io/instance-id` labels.
    #[arg(long, hide = true, value_parser = parse_autoscaled_as)]
    autoscaled_as: Option<(String, String)>,
    /// Session folder for the token, pidfiles and logs.
    #[arg(long, env = "MANTA_TEMP_DIR", default_value_os_t = default_temp_dir())]
    temp_dir: PathBuf,
    /// Stay in the foreground until stopped (Ctrl-C or SIGTERM).
    #[arg(long)]
    block: bool,
    /// Seconds a joining node keeps trying its seeds.
    #[arg(long, default_value_t = 30.0, value_parser = non_negative)]
    connect_timeout: f64,
    /// Milliseconds between GCS health checks of each node (head only).
    #[arg(long)]
    health_check_period_ms: Option<u64>,
    /// Milliseconds a health check may take (head only).
    #[arg(long)]
    health_check_timeout_ms: Option<u64>,
    /// Consecutive failed health checks that declare a node dead (head only).
    #[arg(long)]
    health_check_failure_threshold: Option<u32>,
    /// Where the GCS keeps its tables (head only): `embedded` (a redb file,
    /// <temp-dir>/gcs/tables.redb), a file path, `memory` (lost with the head),
    /// or `redis://HOST:PORT` for a shared Redis server.
    #[arg(long, env = "MANTA_STORAGE", default_value = "embedded")]
    storage: String,
    /// Prefix of manta's keys in Redis, so clusters can share one server (head only).
    #[arg(long, default_value = "manta")]
    storage_namespace: String,
    /// Seconds a restarted head waits for the nodes and drivers it recovered to
    /// reconnect before declaring them dead (head only).
    #[arg(long, default_value_t = 30.0, value_parser = non_negative)]
    recovery_grace: f64,
    /// Seconds this node keeps running its work while its GCS link is down,
    /// redialling, before it exits (Ray: gcs_rpc_server_reconnect_timeout_s).
    #[arg(long, default_value_t = 60.0, value_parser = non_negative)]
    gcs_reconnect_timeout: f64,
    /// Port of this node's Prometheus endpoint, `http://<node-ip>:<port>/metrics`
    /// (read-only, no token; 0 picks a free port, shown by `manta status`).
    #[arg(long, default_value_t = 0)]
    metrics_export_port: u16,
    /// Log files of exited workers untouched for this long are removed, e.g. 12h
    /// or 7d (s, m, h, d; Ray keeps them until the session folder is deleted).
    #[arg(long, default_value = "7d", value_parser = manta_agents::log_monitor::parse_retention)]
    log_retention: Duration,
    /// Bytes of unused runtime-env items (job executables, unpacked working dirs,
    /// virtualenvs) this node keeps cached; beyond it the least recently used
    /// unused ones are deleted (items in use never are). Ray: 10 GB per plugin.
    #[arg(long, default_value_t = manta_agents::runtime_env::DEFAULT_CACHE_BYTES)]
    runtime_env_cache_bytes: u64,
    /// Worker processes this node runs at once, at most (default: 8 per CPU, at
    /// least 128). Requests beyond it wait; an idle worker is ended to make room.
    #[arg(long)]
    max_workers: Option<usize>,
    /// Head only: address of the HTTP server (Jobs REST API, dashboard). Ray's
    /// flag; loopback unless told (it needs the cluster token either way).
    #[arg(long, default_value = "127.0.0.1")]
    dashboard_host: String,
    /// Head only: port of the HTTP server (0 picks a free one; a busy default
    /// falls back to a free one, as Ray does).
    #[arg(long, default_value_t = manta_agents::http::DEFAULT_PORT)]
    dashboard_port: u16,
    /// Head only: run the HTTP server (Jobs REST API, dashboard).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    include_dashboard: bool,
    /// Seconds a submitted job may stay PENDING (waiting for resources or its
    /// node) before it fails (head only; Ray: RAY_JOB_START_TIMEOUT_SECONDS, 900).
    #[arg(long, default_value_t = 900.0, value_parser = non_negative)]
    job_start_timeout: f64,
    /// Seconds a stopped job's entrypoint gets between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 3.0, value_parser = non_negative)]
    job_stop_grace: f64,
    /// This node's TLS certificate (PEM), signed by the cluster CA and naming the
    /// node's address. With --tls-key and --tls-ca, every link is mutual TLS.
    #[arg(long, env = "MANTA_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MANTA_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed.
    #[arg(long, env = "MANTA_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

fn parse_autoscaled_as(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((node_type, id)) if !node_type.is_empty() && !id.is_empty() => Ok((node_type.into(), id.into())),
        _ => Err(format!("{text:?} is not TYPE/INSTANCE_ID")),
    }
}

fn non_negative(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("must be zero or more, got {text}"));
    }
    Ok(value)
}

impl StartArgs {
    fn to_config(&self) -> Result<NodeConfig, String> {
        let role = match (self.head, self.address.is_empty()) {
            (true, _) => Role::Head { gcs_port: self.port },
            (false, false) => Role::Worker { seeds: self.address.clone() },
            (false, true) => {
                return Err("pass --head to start a new cluster, or --address HOST:PORT to join one".into());
            }
        };
        let mut config = match role {
            Role::Head { .. } => NodeConfig::head(),
            Role::Worker { .. } => NodeConfig::worker(Vec::new()),
        };
        config.role = role;
        config.node_ip = self.node_ip_address.clone();
        config.node_port = self.node_manager_port;
        config.temp_dir = self.temp_dir.clone();
        config.token = self.token()?;
        config.resources = ResourceSpec {
            num_cpus: self.num_cpus,
            num_gpus: self.num_gpus,
            memory: self.memory,
            object_store_memory: self.object_store_memory,
            accelerator_type: self.accelerator_type.clone(),
            custom: self.resources.clone().unwrap_or_default(),
        };
        config.labels = self.labels.clone().unwrap_or_default();
        if let Some(path) = &self.autoscaling_config {
            config.autoscaling = Some(crate::autoscaling::read_config(path)?);
        }
        if let Some((node_type, instance_id)) = &self.autoscaled_as {
            use manta_proto::autoscaler::{INSTANCE_LABEL, NODE_TYPE_LABEL};
            config.labels.insert(NODE_TYPE_LABEL.into(), node_type.clone());
            config.labels.insert(INSTANCE_LABEL.into(), instance_id.clone());
        }
        config.object_store_full_timeout = Duration::from_millis(self.object_store_full_timeout_ms);
        config.object_spilling_dir = self.object_spilling_directory.clone();
        config.object_spilling_max_bytes = self.object_spilling_max_bytes.unwrap_or(u64::MAX);
        config.log_lines_per_second = self.log_lines_per_second.max(1);
        config.log_rotation = crate::worker_logs::Rotation {
            max_bytes: self.log_rotation_max_bytes.max(1),
            backups: self.log_rotation_backups,
        };
        config.connect_timeout = Duration::from_secs_f64(self.connect_timeout);
        config.gcs.max_tasks = self.task_history.max(1);
        let default_file = self.temp_dir.join("gcs").join("tables.redb");
        config.gcs.storage =
            manta_gcs::storage::StorageConfig::parse(&self.storage, default_file, &self.storage_namespace)
                .map_err(|message| format!("--storage: {message}"))?;
        config.gcs.recovery_grace = Duration::from_secs_f64(self.recovery_grace);
        config.gcs.job_start_timeout = Duration::from_secs_f64(self.job_start_timeout);
        config.gcs_reconnect_timeout = Duration::from_secs_f64(self.gcs_reconnect_timeout);
        config.metrics_export_port = self.metrics_export_port;
        config.max_workers = self.max_workers.map(|max| max.max(1));
        config.log_retention = self.log_retention;
        config.runtime_env_cache_bytes = self.runtime_env_cache_bytes;
        config.dashboard = self.include_dashboard.then(|| (self.dashboard_host.clone(), self.dashboard_port));
        config.job_stop_grace = Duration::from_secs_f64(self.job_stop_grace);
        config.gcs.packages_dir = self.temp_dir.join("gcs").join("packages");
        config.tls = manta_proto::net::tls::TlsFiles::from_parts(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_ca.clone(),
            ["--tls-cert", "--tls-key", "--tls-ca"],
        )?;
        if let Some(files) = &config.tls {
            files.load()?;
        }
        if let Some(period) = self.health_check_period_ms {
            config.gcs.health_check_period = Duration::from_millis(period);
        }
        if let Some(timeout) = self.health_check_timeout_ms {
            config.gcs.health_check_timeout = Duration::from_millis(timeout);
        }
        if let Some(threshold) = self.health_check_failure_threshold {
            config.gcs.health_check_failure_threshold = threshold;
        }
        config.validate()?;
        Ok(config)
    }
}

impl StartArgs {
    /// The token given: `--token` (or `MANTA_TOKEN`), `--token-file`, or standard input.
    fn token(&self) -> Result<Option<String>, String> {
        let token = if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read the token file {}: {error}", path.display()))?;
            text.lines().next().map(str::trim).map(str::to_string)
        } else if self.token_stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|error| format!("cannot read the token from stdin: {error}"))?;
            Some(line.trim().to_string())
        } else {
            self.token.clone()
        };
        Ok(token.filter(|token| !token.is_empty()))
    }
}

/// Runs `manta start`.
pub fn run(args: StartArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if config.tls.is_none() && config.node_ip.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback()) {
        eprintln!(
            "warning: this node listens on {}: its links are authenticated by the cluster token but not \
             encrypted, so their traffic crosses the network in clear; keep the cluster on a private network \
             or a tunnel, or start every node with --tls-cert/--tls-key/--tls-ca",
            config.node_ip
        );
    }
    if !args.block {
        return daemonize(config.connect_timeout, config.token.as_deref());
    }
    let daemon_child = std::env::var_os(DAEMON_CHILD_ENV).is_some_and(|value| value == "1");
    run_blocking(config, daemon_child)
}

/// Raises this process's open-file soft limit to its hard limit: a node holds a
/// socket per peer and worker, and files per worker log and object.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "could not raise the open-file limit");
        }
    }
}

/// Runs the node in this process until SIGTERM/SIGINT.
fn run_blocking(config: NodeConfig, daemon_child: bool) -> ExitCode {
    raise_open_file_limit();
    let prepared = match prepare(&config) {
        Ok(prepared) => prepared,
        Err(error) => return report_failure(&error, daemon_child),
    };
    if daemon_child {
        redirect_to_log(&prepared, false);
    }
    init_tracing("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            return report_failure(
                &StartError::Config(format!("cannot start the async runtime: {error}")),
                daemon_child,
            );
        }
    };
    let rotation = config.log_rotation;
    runtime.block_on(async move {
        let running = match start(config, prepared.clone()).await {
            Ok(running) => running,
            Err(error) => {
                tracing::error!(%error, "node failed to start");
                return report_failure(&error, daemon_child);
            }
        };
        print_ready(&running.info);
        if daemon_child {
            println!("{READY_MARKER}");
            let _ = std::io::stdout().flush();
            redirect_to_log(&prepared, true);
            spawn_log_rotation(prepared.clone(), rotation);
        }
        match running.run_until(shutdown_signal()).await {
            Exit::Requested => ExitCode::SUCCESS,
            Exit::Failed => ExitCode::from(1),
        }
    })
}

fn report_failure(error: &StartError, daemon_child: bool) -> ExitCode {
    if daemon_child {
        println!("{ERROR_PREFIX} {} {error}", error.exit_code());
        let _ = std::io::stdout().flush();
    }
    eprintln!("error: {error}");
    ExitCode::from(error.exit_code())
}

/// Rotates `node.log` like worker logs (`--log-rotation-max-bytes`,
/// `--log-rotation-backups`): checked every second; at the limit the file
/// becomes `node.log.1` and the process's output goes to a new `node.log`.
fn spawn_log_rotation(prepared: Prepared, rotation: crate::worker_logs::Rotation) {
    tokio::spawn(async move {
        let path = prepared.log_path();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let Ok(metadata) = std::fs::metadata(&path) else { continue };
            if metadata.len() < rotation.max_bytes {
                continue;
            }
            match crate::worker_logs::rotate(&path, rotation.backups) {
                Ok(()) => redirect_to_log(&prepared, true),
                Err(error) => tracing::warn!(%error, "could not rotate node.log"),
            }
        }
    });
}

/// Points stderr (and, once ready, stdout) at the node's log file.
fn redirect_to_log(prepared: &Prepared, stdout_too: bool) {
    let Ok(log) = manta_proto::private_fs::open_append(&prepared.log_path()) else {
        return;
    };
    let _ = rustix::stdio::dup2_stderr(log.as_fd());
    if stdout_too {
        let _ = rustix::stdio::dup2_stdout(log.as_fd());
    }
}

fn print_ready(info: &ReadyInfo) {
    let mut out = String::new();
    if info.is_head {
        out.push_str(&format!("manta head node started at {} (node {}).\n\n", info.gcs_address, info.node_id.short()));
        out.push_str("To add a node to this cluster:\n");
        out.push_str(&format!("    manta start --address {}\n", info.gcs_address));
        out.push_str(&format!(
            "  on this machine it reads the token from {} (mode 0600); elsewhere pass --token or MANTA_TOKEN.\n\n",
            info.token_path.display()
        ));
        if let Some(url) = &info.dashboard_url {
            out.push_str(&format!(
                "Dashboard and Jobs API: {url} (log in with the token in {}; scripts send it as a Bearer token)\n",
                info.token_path.display()
            ));
            out.push_str("To submit a job:      manta job submit -- <command>\n");
        }
        out.push_str("To see the cluster:   manta status\n");
        out.push_str("To stop every node:   manta stop\n");
    } else {
        out.push_str(&format!(
            "manta node {} joined the cluster at {} (listening on {}).\n",
            info.node_id.short(),
            info.gcs_address,
            info.node_address
        ));
    }
    out.push_str(&format!("Node log: {}\n", info.log_path.display()));
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT received; stopping"),
    }
}
