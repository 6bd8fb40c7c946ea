//! `manta list nodes|jobs|actors|tasks|objects|placement-groups`: the cluster's state, like `ray list`.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use std::time::Duration;

use manta_proto::node::NodeState;
use manta_proto::object::{ListObjectsRequest, ObjectRecord};
use manta_proto::task::{ListStateReply, ListStateRequest, StateTable};
use serde_json::{Value, json};

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
    /// Keep rows whose field equals the value, e.g. `--filter state=ALIVE` (repeatable).
    #[arg(long, value_parser = parse_filter)]
    filter: Vec<(String, String)>,
}

fn parse_filter(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not key=value"))?;
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
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
    let rows: Vec<Value> = rows.into_iter().filter(|row| matches(row, &args.filter)).collect();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows).expect("json")),
        Format::Text => print!("{}", table(args.resource, &rows)),
    }
    ExitCode::SUCCESS
}

async fn fetch(args: &ListArgs) -> Result<Vec<Value>, String> {
    let gcs = args.cluster.connect("manta list").await?;
    if args.resource == Resource::Objects {
        return objects(args, &gcs).await;
    }
    if args.resource == Resource::Nodes {
        let nodes = gcs.get_all_nodes().await.map_err(|error| error.to_string())?;
        let all = crate::cli::status::to_json(&nodes)["nodes"].as_array().cloned().unwrap_or_default();
        let skip = all.len().saturating_sub(args.limit);
        return Ok(all.into_iter().skip(skip).collect());
    }
    let table = match args.resource {
        Resource::Jobs => StateTable::Jobs,
        Resource::Actors => StateTable::Actors,
        Resource::PlacementGroups => StateTable::PlacementGroups,
        _ => StateTable::Tasks,
    };
    let reply = gcs.call(ListStateRequest { table, limit: args.limit }).await.map_err(|error| error.to_string())?;
    Ok(match reply {
        ListStateReply::Jobs(jobs) => jobs.into_iter().map(|job| serde_json::to_value(job).expect("json")).collect(),
        ListStateReply::PlacementGroups(groups) => groups
            .into_iter()
            .map(|group| {
                json!({
                    "placement_group_id": group.spec.pg_id.to_string(),
                    "name": group.spec.name,
                    "namespace": group.spec.namespace,
                    "state": group.state.as_str(),
                    "strategy": group.spec.strategy.as_str(),
                    "job_id": group.spec.job_id.to_string(),
                    "detached": group.spec.detached,
                    "bundles": group.spec.bundles.iter().map(|bundle| bundle.to_f64_map()).collect::<Vec<_>>(),
                    "bundle_nodes": group.bundle_nodes.iter().map(|node| node.map(|id| id.to_string())).collect::<Vec<_>>(),
                    "pending_reason": group.pending_reason,
                    "create_time_ms": group.create_time_ms,
                })
            })
            .collect(),
        ListStateReply::Actors(actors) => actors
            .into_iter()
            .map(|actor| {
                let info = actor.info;
                let class = info
                    .class
                    .split('#')
                    .next()
                    .unwrap_or_default()
                    .rsplit("::")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                json!({
                    "actor_id": info.actor_id.to_string(),
                    "class_name": class,
                    "state": actor.state,
                    "name": info.name,
                    "namespace": info.namespace,
                    "job_id": info.job_id.to_string(),
                    "detached": info.detached,
                    "node_id": info.worker.node_id.to_string(),
                    "worker_id": info.worker.worker_id.to_string(),
                    "address": info.worker.address,
                    "death_cause": actor.death_cause,
                    "num_restarts": actor.num_restarts,
                })
            })
            .collect(),
        ListStateReply::Tasks { tasks, dropped } => {
            if dropped > 0 {
                eprintln!("note: {dropped} task events were dropped (history bound or full buffers)");
            }
            tasks
                .into_iter()
                .map(|task| {
                    json!({
                        "task_id": task.task_id.to_string(),
                        "name": task.name,
                        "state": task.state,
                        "job_id": task.job_id.to_string(),
                        "node_id": task.node_id.map(|id| id.to_string()),
                        "worker_id": task.worker_id.map(|id| id.to_string()),
                        "actor_id": task.actor_id.map(|id| id.to_string()),
                        "error": task.error,
                        "lease_outcomes": task.lease_outcomes,
                        "state_history": task.history.iter().map(|(state, time)| json!({"state": state, "time_ms": time})).collect::<Vec<_>>(),
                    })
                })
                .collect()
        }
    })
}

/// Asks every alive node for its store's objects and owner processes, then each
/// owner for the objects it owns.
async fn objects(args: &ListArgs, gcs: &manta_proto::client::GcsClient) -> Result<Vec<Value>, String> {
    let nodes = gcs.get_all_nodes().await.map_err(|error| error.to_string())?;
    let request = ListObjectsRequest { limit: args.limit };
    let mut rows = Vec::new();
    let mut owners = Vec::new();
    for node in nodes.iter().filter(|node| node.state == NodeState::Alive) {
        let reply = match args.cluster.connect_to(&node.address, "manta list").await {
            Ok(peer) => peer.rpc(request.clone(), Duration::from_secs(10)).await.map_err(|error| error.to_string()),
            Err(error) => Err(error),
        };
        match reply {
            Ok(reply) => {
                rows.extend(reply.objects.iter().map(object_row));
                owners.extend(reply.owners);
            }
            Err(error) => eprintln!("note: node {} did not list its objects: {error}", node.node_id),
        }
    }
    for owner in owners {
        // An owner may exit meanwhile; its objects went with it.
        let Ok(peer) = args.cluster.connect_to(&owner, "manta list").await else { continue };
        if let Ok(reply) = peer.rpc(request.clone(), Duration::from_secs(10)).await {
            rows.extend(reply.objects.iter().map(object_row));
        }
    }
    rows.truncate(args.limit);
    Ok(rows)
}

fn object_row(record: &ObjectRecord) -> Value {
    json!({
        "object_id": record.object_id.to_string(),
        "state": record.state,
        "size": record.size,
        "node_id": record.node_id.to_string(),
        "owner_worker_id": record.owner.as_ref().map(|owner| owner.worker_id.to_string()),
        "owner_address": record.owner.as_ref().map(|owner| owner.address.clone()),
        "pid": record.pid,
        "local_refs": record.local_refs,
        "borrowers": record.borrowers,
        "location": record.location,
        "job_id": record.job_id.map(|job| job.to_string()),
    })
}

/// True when every `key=value` filter matches the row's field (compared as text).
fn matches(row: &Value, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(key, value)| match &row[key] {
        Value::String(text) => text == value,
        Value::Null => value == "null" || value.is_empty(),
        other => serde_json::from_str::<Value>(value).is_ok_and(|parsed| parsed == *other),
    })
}

fn table(resource: Resource, rows: &[Value]) -> String {
    let columns: &[&str] = match resource {
        Resource::Nodes => &["node_id", "state", "address", "is_head", "pid"],
        Resource::Jobs => &["job_id", "state", "namespace", "driver_pid"],
        Resource::Actors => &["actor_id", "class_name", "state", "name", "job_id", "node_id"],
        Resource::Tasks => &["task_id", "name", "state", "job_id", "node_id", "error"],
        Resource::PlacementGroups => &["placement_group_id", "name", "state", "strategy", "job_id", "pending_reason"],
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
    fn filters_compare_as_text() {
        let row = json!({"state": "ALIVE", "pid": 7, "name": null});
        assert!(matches(&row, &[("state".into(), "ALIVE".into())]));
        assert!(matches(&row, &[("pid".into(), "7".into())]));
        assert!(matches(&row, &[("name".into(), "null".into())]));
        assert!(!matches(&row, &[("state".into(), "DEAD".into())]));
        assert!(parse_filter("novalue").is_err());
    }

    #[test]
    fn table_has_a_header_and_one_line_per_row() {
        let rows = vec![json!({"job_id": "00000001", "state": "RUNNING", "namespace": "ns", "driver_pid": 3})];
        let text = table(Resource::Jobs, &rows);
        assert!(text.starts_with("1 rows\nJOB_ID"), "{text}");
        assert!(text.contains("00000001  RUNNING"), "{text}");
    }
}
