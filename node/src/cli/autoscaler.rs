//! `manta autoscaler`: the autoscaler on its own, for a cluster whose head runs
//! without `--autoscaling-config` (as Ray's standalone `monitor`). It stays in
//! the foreground until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use ractor::Actor;

use crate::cli::{ClusterArgs, init_tracing};
use crate::supervisor::NodeSupervisor;

/// Flags of `manta autoscaler`.
#[derive(Debug, Clone, Args)]
pub struct AutoscalerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The cluster config (YAML with Ray's fields).
    #[arg(long)]
    autoscaling_config: PathBuf,
}

/// Runs `manta autoscaler`.
pub fn run(args: AutoscalerArgs) -> ExitCode {
    init_tracing("info");
    let config = match crate::autoscaling::read_config(&args.autoscaling_config) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let (gcs_address, token) = match args.cluster.resolve() {
        Ok(resolved) => resolved,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let Ok((supervisor, mut done)) = Actor::spawn(None, NodeSupervisor, ()).await else {
            eprintln!("error: could not start the supervisor");
            return ExitCode::from(1);
        };
        let setup = crate::autoscaling::AutoscalerSetup {
            config,
            gcs_address,
            token,
            tls: None,
            temp_dir: args.cluster.temp_dir.clone(),
        };
        if let Err(message) = crate::autoscaling::start(&supervisor, setup).await {
            eprintln!("error: {message}");
            supervisor.stop(None);
            return ExitCode::from(1);
        }
        println!("autoscaler running; Ctrl-C stops it (the nodes it started keep running)");
        tokio::select! {
            _ = crate::cli::shutdown_signal() => {
                supervisor.stop(None);
                let _ = (&mut done).await;
                ExitCode::SUCCESS
            }
            _ = &mut done => {
                eprintln!("error: the autoscaler failed too often; see the log above");
                ExitCode::from(1)
            }
        }
    })
}
