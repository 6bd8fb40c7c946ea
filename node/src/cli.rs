//! The `manta` command line: `start`, `status`, `stop`, `list`, `logs`, `job`, `autoscaler`.
//!
//! Verbs that talk to a cluster take `--address`, `--token` and `--temp-dir`
//! (or `MANTA_ADDRESS`, `MANTA_TOKEN`, `MANTA_TEMP_DIR`); without them they use
//! the session under the default temp dir, so on the head's machine no flag is needed.

mod autoscaler;
mod job;
mod list;
mod logs;
mod start;
mod status;
mod stop;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use manta_proto::cluster::ClusterTarget;
use manta_proto::frame::PeerRole;
use manta_proto::net::{self, NoService};

use crate::session::default_temp_dir;
use manta_proto::client::GcsClient;

/// manta: a fast, secure-by-default distributed computing engine in the spirit of Ray Core.
#[derive(Debug, Parser)]
#[command(name = "manta", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a head node (--head) or join a cluster (--address).
    Start(Box<start::StartArgs>),
    /// Show the cluster's nodes, their state and resources.
    Status(status::StatusArgs),
    /// Stop every node process recorded under --temp-dir.
    Stop(stop::StopArgs),
    /// List nodes, jobs, actors, tasks, objects or placement groups (like `ray list`).
    List(list::ListArgs),
    /// List and read log files on any node (like `ray logs`).
    Logs(logs::LogsArgs),
    /// Submit and manage jobs through the head's Jobs API (like `ray job`).
    Job(job::JobArgs),
    /// Run the autoscaler for a cluster whose head runs without --autoscaling-config.
    Autoscaler(autoscaler::AutoscalerArgs),
    /// Measure manta on Ray's microbenchmark lines, on a local cluster it starts itself.
    Microbenchmark(MicrobenchmarkArgs),
}

/// Flags of `manta microbenchmark` (run by the `manta` binary, which sees the user API).
#[derive(Debug, Clone, Args)]
pub struct MicrobenchmarkArgs {
    /// Run only the lines whose name contains this text (several: `a|b`).
    #[arg(long)]
    pub filter: Option<String>,
    /// Seconds of measurement per line (split into 4 samples, after a short warm-up).
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// CPUs of the local cluster (default: the cores of this machine).
    #[arg(long)]
    pub num_cpus: Option<f64>,
}

/// Where a cluster is and how to prove we belong to it.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The cluster's GCS address (host:port) — for `manta job`, also the head's HTTP
    /// server (http://host:8265); defaults to the head recorded under --temp-dir.
    #[arg(long, env = "MANTA_ADDRESS")]
    pub address: Option<String>,
    /// Cluster token; defaults to <temp-dir>/token.
    #[arg(long, env = "MANTA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Session folder.
    #[arg(long, env = "MANTA_TEMP_DIR", default_value_os_t = default_temp_dir())]
    pub temp_dir: PathBuf,
}

impl ClusterArgs {
    /// The cluster these flags name.
    pub fn target(&self) -> ClusterTarget {
        ClusterTarget {
            address: self.address.clone(),
            token: self.token.clone(),
            temp_dir: self.temp_dir.clone(),
            tls: None,
        }
    }

    /// Resolves the address and token, or says what to do.
    pub fn resolve(&self) -> Result<(String, String), String> {
        self.target().resolve()
    }

    /// Connects to the cluster's GCS as a command-line client.
    pub async fn connect(&self, name: &str) -> Result<GcsClient, String> {
        self.target().connect_gcs(name, PeerRole::Cli, std::sync::Arc::new(NoService)).await
    }

    /// Connects to another process of the cluster (a node or an object owner).
    pub async fn connect_to(&self, address: &str, name: &str) -> Result<net::PeerHandle, String> {
        self.target().connect_to(address, name).await
    }
}

/// Runs the command line; `microbenchmark` runs the given function.
pub fn main(microbenchmark: fn(MicrobenchmarkArgs) -> ExitCode) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => start::run(*args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
        Command::List(args) => list::run(args),
        Command::Logs(args) => logs::run(args),
        Command::Job(args) => job::run(args),
        Command::Autoscaler(args) => autoscaler::run(args),
        Command::Microbenchmark(args) => microbenchmark(args),
    }
}

pub(crate) use start::shutdown_signal;

/// A current-thread runtime for short client commands.
pub(crate) fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Logs to stderr at `MANTA_LOG` (default `info`), without colour off a terminal.
pub(crate) fn init_tracing(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MANTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
