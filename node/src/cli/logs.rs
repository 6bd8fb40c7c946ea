//! `manta logs`: list and read the log files of any node, through the cluster
//! (token-authenticated), like `ray logs`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use manta_proto::logs::{ListLogsRequest, ReadLogRequest};

use manta_proto::net::PeerHandle;
use manta_proto::node::{NodeInfo, NodeState};
use manta_proto::query::{FilterOp, StateFilter};
use manta_proto::task::{ListStateRequest, StateRows, StateTable};
use manta_proto::{ActorId, NodeId, TaskId, WorkerId};

use crate::cli::{ClusterArgs, client_runtime};

/// Flags of `manta logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// A log file name (`manta logs` without one lists them).
    filename: Option<String>,
    /// The node holding the file (default: any node that has it).
    #[arg(long)]
    node_id: Option<NodeId>,
    /// The stdout and stderr of the worker hosting this actor.
    #[arg(long, conflicts_with_all = ["task_id", "filename"])]
    actor_id: Option<ActorId>,
    /// The stdout and stderr of the worker that ran this task.
    #[arg(long, conflicts_with = "filename")]
    task_id: Option<TaskId>,
    /// Keep printing what is appended (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<u64>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `manta logs`.
pub fn run(args: LogsArgs) -> ExitCode {
    match client_runtime().block_on(logs(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

async fn logs(args: &LogsArgs) -> Result<(), String> {
    let gcs = args.cluster.connect("manta logs").await?;
    let nodes: Vec<NodeInfo> = gcs
        .get_all_nodes()
        .await
        .map_err(|error| error.to_string())?
        .into_iter()
        .filter(|node| node.state == NodeState::Alive && args.node_id.is_none_or(|id| id == node.node_id))
        .collect();
    if nodes.is_empty() {
        return Err("no alive node matches; `manta status` lists them".into());
    }
    let worker = match (args.actor_id, args.task_id) {
        (Some(actor_id), _) => Some(actor_worker(&gcs, actor_id).await?),
        (_, Some(task_id)) => Some(task_worker(&gcs, task_id).await?),
        _ => None,
    };
    let mut listed = Vec::new();
    for node in &nodes {
        let peer = args.cluster.connect_to(&node.address, "manta logs").await?;
        let files = match peer.rpc(ListLogsRequest {}, Duration::from_secs(10)).await {
            Ok(reply) => reply.files,
            Err(error) => return Err(format!("node {}: {error}", node.node_id)),
        };
        listed.push((node.node_id, peer, files));
    }
    let wanted: Vec<String> = match (&worker, &args.filename) {
        (Some((worker_id, _)), _) => {
            let prefix = format!("worker-{worker_id}-");
            let mut names: Vec<String> = listed
                .iter()
                .flat_map(|(_, _, files)| files.iter().map(|file| file.name.clone()))
                .filter(|name| name.starts_with(&prefix))
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                return Err(format!("no log file of worker {worker_id} on the alive nodes"));
            }
            names
        }
        (None, Some(name)) => vec![name.clone()],
        (None, None) => {
            for (node_id, _, files) in &listed {
                println!("node {node_id}:");
                for file in files {
                    println!("  {:<70} {:>12} bytes", file.name, file.size);
                }
            }
            return Ok(());
        }
    };
    for name in wanted {
        let (_, peer, _) = listed
            .iter()
            .find(|(_, _, files)| files.iter().any(|file| file.name == name))
            .ok_or_else(|| format!("no node has a log file {name:?}; `manta logs` lists them"))?;
        print_file(peer, &name, args.tail, args.follow).await?;
    }
    Ok(())
}

async fn print_file(peer: &PeerHandle, name: &str, tail: Option<u64>, follow: bool) -> Result<(), String> {
    use std::io::Write;
    let mut request = ReadLogRequest { name: name.to_string(), offset: 0, max_bytes: 4 << 20, tail_lines: tail };
    loop {
        let reply = peer.rpc(request.clone(), Duration::from_secs(10)).await.map_err(|error| error.to_string())?;
        let _ = std::io::stdout().write_all(&reply.data);
        let _ = std::io::stdout().flush();
        let more = !reply.data.is_empty();
        request.offset = reply.next_offset;
        request.tail_lines = None;
        if !more {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The row of `table` whose `key` is `id`.
async fn find(
    gcs: &manta_proto::client::GcsClient,
    table: StateTable,
    key: &str,
    id: String,
) -> Result<StateRows, String> {
    let filter = StateFilter { key: key.to_string(), op: FilterOp::Eq, value: id };
    let request = ListStateRequest { filters: vec![filter], ..ListStateRequest::newest(table, 1) };
    Ok(gcs.call(request).await.map_err(|error| error.to_string())?.rows)
}

async fn actor_worker(gcs: &manta_proto::client::GcsClient, actor_id: ActorId) -> Result<(WorkerId, NodeId), String> {
    let StateRows::Actors(actors) = find(gcs, StateTable::Actors, "actor_id", actor_id.to_string()).await? else {
        return Err("unexpected actor listing".into());
    };
    actors
        .first()
        .map(|actor| (actor.info.worker.worker_id, actor.info.worker.node_id))
        .ok_or_else(|| format!("no actor {actor_id}; `manta list actors` lists them"))
}

async fn task_worker(gcs: &manta_proto::client::GcsClient, task_id: TaskId) -> Result<(WorkerId, NodeId), String> {
    let StateRows::Tasks(tasks) = find(gcs, StateTable::Tasks, "task_id", task_id.to_string()).await? else {
        return Err("unexpected task listing".into());
    };
    let task =
        tasks.first().ok_or_else(|| format!("no task {task_id} in the task history; `manta list tasks` lists them"))?;
    match (task.worker_id, task.node_id) {
        (Some(worker), Some(node)) => Ok((worker, node)),
        _ => Err(format!("task {task_id} has not run on a worker yet")),
    }
}
