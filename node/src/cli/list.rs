//! `manta list nodes|jobs|actors|tasks|objects|placement-groups`: the cluster's state, like `ray list`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use manta_agents::state_json;
use manta_proto::query::StateFilter;
use manta_proto::task::{ListStateRequest, StateRows, StateTable};
use serde_json::Value;

use crate::cli::status::Format;
use crate::cli::{ClusterArgs, client_runtime};

/// What to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    /// Nodes, alive and dead.
    Nodes,
    /// Jobs (one per driver).
    Jobs,
    /// Actors, alive and recently dead.
    Actors,
    /// Tasks and actor calls, newest last (a bounded history).
    Tasks,
    /// Placement groups: state, strategy, bundles and the node of each.
    PlacementGroups,
    /// Objects: their owners' reference counts and the nodes' store copies
    /// (gathered from the nodes and owners; the GCS keeps no objects).
    Objects,
}

/// Flags of `manta list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// What to list.
    #[arg(value_enum)]
    resource: Resource,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// At most this many rows (the newest).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep rows whose field equals (`key=value`) or differs from (`key!=value`)
    /// the value, e.g. `--filter state=ALIVE` (repeatable; all must pass).
    #[arg(long, value_parser = StateFilter::parse)]
    filter: Vec<StateFilter>,
    /// Every field (tasks: their state history and lease outcomes).
    #[arg(long)]
    detail: bool,
}

/// Runs `manta list`.
pub fn run(args: ListArgs) -> ExitCode {
    let rows = client_runtime().block_on(fetch(&args));
    let rows = match rows {
        Ok(rows) => rows,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows).expect("json")),
        Format::Text => print!("{}", table(args.resource, &rows)),
    }
    ExitCode::SUCCESS
}

async fn fetch(args: &ListArgs) -> Result<Vec<Value>, String> {
    let gcs = args.cluster.connect("manta list").await?;
    let mut rows = match args.resource {
        Resource::Objects => objects(args, &gcs).await?,
        Resource::Nodes => {
            let nodes = gcs.get_all_nodes().await.map_err(|error| error.to_string())?;
            let all = nodes.iter().map(state_json::node).filter(|row| state_json::passes(row, &args.filter));
            let all: Vec<Value> = all.collect();
            let skip = all.len().saturating_sub(args.limit);
            all.into_iter().skip(skip).collect()
        }
        resource => {
            let table = match resource {
                Resource::Jobs => StateTable::Jobs,
                Resource::Actors => StateTable::Actors,
                Resource::PlacementGroups => StateTable::PlacementGroups,
                _ => StateTable::Tasks,
            };
            let request =
                ListStateRequest { filters: args.filter.clone(), ..ListStateRequest::newest(table, args.limit) };
            let reply = gcs.call(request).await.map_err(|error| error.to_string())?;
            if reply.dropped > 0 {
                eprintln!(
                    "note: {} rows were dropped from the history (its bound, or full event buffers)",
                    reply.dropped
                );
            }
            let mut rows: Vec<Value> = match reply.rows {
                StateRows::Jobs(jobs) => jobs.iter().map(state_json::job).collect(),
                StateRows::PlacementGroups(groups) => groups.iter().map(state_json::placement_group).collect(),
                StateRows::Actors(actors) => actors.iter().map(state_json::actor).collect(),
                StateRows::Tasks(tasks) => tasks.iter().map(|task| state_json::task(task, args.detail)).collect(),
            };
            // The GCS answers newest first; a listing reads oldest to newest, like a log.
            rows.reverse();
            rows
        }
    };
    if args.resource == Resource::Objects {
        rows.retain(|row| state_json::passes(row, &args.filter));
        rows.truncate(args.limit);
    }
    Ok(rows)
}

/// Asks every alive node for its store's objects and owner processes, then each
/// owner for the objects it owns.
async fn objects(args: &ListArgs, gcs: &manta_proto::client::GcsClient) -> Result<Vec<Value>, String> {
    let nodes = gcs.get_all_nodes().await.map_err(|error| error.to_string())?;
    let connect = |address: String| async move { args.cluster.connect_to(&address, "manta list").await };
    let (rows, notes) = state_json::gather_objects(&nodes, args.limit, connect).await;
    for note in notes {
        eprintln!("note: {note}");
    }
    Ok(rows)
}

fn table(resource: Resource, rows: &[Value]) -> String {
    let columns: &[&str] = match resource {
        Resource::Nodes => &["node_id", "state", "address", "is_head", "pid"],
        Resource::Jobs => &["job_id", "state", "namespace", "driver_pid"],
        Resource::Actors => &["actor_id", "class_name", "state", "name", "job_id", "node_id"],
        Resource::Tasks => &["task_id", "name", "state", "job_id", "node_id", "error"],
        Resource::PlacementGroups => {
            &["placement_group_id", "name", "state", "strategy", "creator_job_id", "pending_reason"]
        }
        Resource::Objects => &["object_id", "state", "size", "node_id", "pid", "local_refs", "borrowers", "location"],
    };
    let cell = |row: &Value, column: &str| match &row[column] {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut widths: Vec<usize> = columns.iter().map(|column| column.len()).collect();
    for row in rows {
        for (index, column) in columns.iter().enumerate() {
            widths[index] = widths[index].max(cell(row, column).chars().count().min(48));
        }
    }
    let mut out = format!("{} rows\n", rows.len());
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(value, width)| {
                let value: String = value.chars().take(48).collect();
                format!("{value:<width$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push_str(&line(columns.iter().map(|column| column.to_uppercase()).collect()));
    out.push('\n');
    for row in rows {
        out.push_str(&line(columns.iter().map(|column| cell(row, column)).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_header_and_one_line_per_row() {
        let rows =
            vec![serde_json::json!({"job_id": "00000001", "state": "RUNNING", "namespace": "ns", "driver_pid": 3})];
        let text = table(Resource::Jobs, &rows);
        assert!(text.starts_with("1 rows\nJOB_ID"), "{text}");
        assert!(text.contains("00000001  RUNNING"), "{text}");
    }
}
