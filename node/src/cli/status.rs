//! `manta status`: the cluster's nodes with state and resources used/total.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use manta_proto::autoscaler::{ClusterDemandReply, GetClusterDemandRequest};
use manta_proto::gcs::ResourceDemand;
use manta_proto::node::{NodeInfo, NodeState};
use manta_proto::resources::ResourceSet;
use manta_proto::resources::{Quantity, names};
use serde_json::json;

use crate::cli::{ClusterArgs, client_runtime};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Flags of `manta status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Runs `manta status`.
pub fn run(args: StatusArgs) -> ExitCode {
    let answer = client_runtime().block_on(async {
        let gcs = args.cluster.connect("manta status").await?;
        let nodes = gcs.get_all_nodes().await.map_err(|error| error.to_string())?;
        let demand = gcs.call(GetClusterDemandRequest {}).await.map_err(|error| error.to_string())?;
        Ok::<_, String>((nodes, demand))
    });
    let (nodes, demand) = match answer {
        Ok(answer) => answer,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    match args.format {
        Format::Json => {
            let mut value = to_json(&nodes);
            value["demand"] = demand_json(&demand);
            value["autoscaler"] = serde_json::to_value(&demand.autoscaler).unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&value).expect("json"));
        }
        Format::Text => print!("{}{}", to_text(&nodes), demand_text(&demand)),
    }
    ExitCode::SUCCESS
}

/// The JSON form: `{"nodes": [...]}`.
pub fn to_json(nodes: &[NodeInfo]) -> serde_json::Value {
    let rows: Vec<_> = nodes
        .iter()
        .map(|node| {
            json!({
                "node_id": node.node_id.to_string(),
                "address": node.address,
                "state": node.state.as_str(),
                "death_reason": node.death_reason,
                "is_head": node.is_head,
                "pid": node.pid,
                "resources_total": node.resources_total.to_f64_map(),
                "resources_available": node.resources_available.to_f64_map(),
                "labels": node.labels,
                "metrics_address": node.metrics_address,
                "start_time_ms": node.start_time_ms,
                "end_time_ms": node.end_time_ms,
                "pending_demand": node.pending_demand.iter().map(|demand| json!({
                    "resources": demand.resources.to_f64_map(),
                    "count": demand.count,
                    "infeasible": demand.infeasible,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "nodes": rows })
}

/// The text form, modelled on `ray status`.
pub fn to_text(nodes: &[NodeInfo]) -> String {
    let rule = "-".repeat(63);
    let mut out = format!("======== Cluster status ========\nNode status\n{rule}\n");
    let (alive, dead): (Vec<_>, Vec<_>) = nodes.iter().partition(|node| node.state == NodeState::Alive);
    out.push_str("Alive:\n");
    if alive.is_empty() {
        out.push_str(" (no alive nodes)\n");
    }
    for node in &alive {
        out.push_str(&format!(
            " {}  {:<21}  pid {:<8}{}{}\n",
            node.node_id,
            node.address,
            node.pid,
            if node.is_head { "  head" } else { "" },
            labels_text(node),
        ));
    }
    out.push_str("Dead:\n");
    if dead.is_empty() {
        out.push_str(" (no dead nodes)\n");
    }
    for node in &dead {
        out.push_str(&format!(
            " {}  {:<21}  pid {:<8} {}\n",
            node.node_id,
            node.address,
            node.pid,
            node.death_reason.as_deref().unwrap_or("no reason recorded")
        ));
    }
    out.push_str(&format!("\nResources\n{rule}\nUsage:\n"));
    let mut totals: BTreeMap<String, (Quantity, Quantity)> = BTreeMap::new();
    for node in &alive {
        for (name, total) in node.resources_total.iter() {
            if name.starts_with(names::NODE_PREFIX) {
                continue;
            }
            let available = node.resources_available.get(name);
            let entry = totals.entry(name.to_string()).or_default();
            entry.0 = entry.0.saturating_add(total.saturating_sub(available));
            entry.1 = entry.1.saturating_add(total);
        }
    }
    if totals.is_empty() {
        out.push_str(" (no resources)\n");
    }
    for (name, (used, total)) in totals {
        if name == names::MEMORY || name == names::OBJECT_STORE_MEMORY {
            out.push_str(&format!(" {}/{} {name}\n", bytes_text(used), bytes_text(total)));
        } else {
            out.push_str(&format!(" {used}/{total} {name}\n"));
        }
    }
    out
}

/// The demand snapshot as JSON (shapes as resource maps).
pub fn demand_json(demand: &ClusterDemandReply) -> serde_json::Value {
    let shapes = |list: &[ResourceDemand]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|entry| json!({"resources": entry.resources.to_f64_map(), "count": entry.count, "infeasible": entry.infeasible}))
            .collect()
    };
    json!({
        "shapes": shapes(&demand.shapes),
        "placement_groups": demand.groups.iter().map(|group| json!({
            "placement_group_id": group.pg_id.to_string(),
            "name": group.name,
            "strategy": group.strategy,
            "bundles": group.bundles.iter().map(|bundle| bundle.to_f64_map()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "requested": demand.requested.iter().map(|bundle| bundle.to_f64_map()).collect::<Vec<_>>(),
        "idle_ms": demand.nodes.iter().map(|node| (node.node_id.to_string(), node.idle_ms)).collect::<BTreeMap<_, _>>(),
    })
}

/// The demand and the autoscaler's state, as `ray status` shows them.
pub fn demand_text(demand: &ClusterDemandReply) -> String {
    let rule = "-".repeat(63);
    let mut out = format!("\nDemands\n{rule}\n");
    let shape = |set: &ResourceSet| -> String {
        let map = set.to_f64_map();
        let pairs: Vec<String> = map.iter().map(|(name, amount)| format!("{name:?}: {amount}")).collect();
        format!("{{{}}}", pairs.join(", "))
    };
    let empty = demand.shapes.is_empty() && demand.groups.is_empty() && demand.requested.is_empty();
    if empty {
        out.push_str(" (no resource demands)\n");
    }
    for entry in &demand.shapes {
        let kind = if entry.infeasible { "infeasible" } else { "waiting" };
        out.push_str(&format!(" {}: {}+ pending tasks/actors ({kind})\n", shape(&entry.resources), entry.count));
    }
    for group in &demand.groups {
        let bundles: Vec<String> = group.bundles.iter().map(shape).collect();
        out.push_str(&format!(" {} * {:?}: 1+ pending placement groups\n", bundles.join(" + "), group.strategy));
    }
    if !demand.requested.is_empty() {
        out.push_str(&format!(" request_resources: {} bundles\n", demand.requested.len()));
    }
    let Some(status) = &demand.autoscaler else {
        out.push_str("\nAutoscaler\n");
        out.push_str(&format!("{rule}\n (no autoscaler runs: start the head with --autoscaling-config)\n"));
        return out;
    };
    out.push_str(&format!("\nAutoscaler ({})\n{rule}\n", status.cluster_name));
    for (node_type, count) in &status.running {
        out.push_str(&format!(" {count} {node_type}\n"));
    }
    let list = |title: &str, entries: &[manta_proto::autoscaler::InstanceStatus], out: &mut String| {
        out.push_str(&format!("{title}:\n"));
        if entries.is_empty() {
            out.push_str(" (none)\n");
        }
        for entry in entries {
            out.push_str(&format!(
                " {} {} ({:.1}s)\n",
                entry.node_type,
                entry.instance_id,
                entry.for_ms as f64 / 1000.0
            ));
        }
    };
    list("Pending launches", &status.launching, &mut out);
    list("Draining", &status.draining, &mut out);
    list("Idle", &status.idle, &mut out);
    out.push_str("Infeasible (no node type can hold them):\n");
    if status.infeasible.is_empty() {
        out.push_str(" (none)\n");
    }
    for entry in &status.infeasible {
        out.push_str(&format!(" {}: {}\n", shape(&entry.resources), entry.count));
    }
    if status.held_back > 0 {
        out.push_str(&format!(" {} requests wait for max_workers or upscaling_speed\n", status.held_back));
    }
    out.push_str("Recent failures:\n");
    if status.failures.is_empty() {
        out.push_str(" (none)\n");
    }
    for failure in &status.failures {
        out.push_str(&format!(" {failure}\n"));
    }
    out
}

fn labels_text(node: &NodeInfo) -> String {
    if node.labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<_> = node.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
    format!("  [{}]", pairs.join(","))
}

fn bytes_text(quantity: Quantity) -> String {
    let bytes = quantity.as_f64();
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0}{}", UNITS[unit]) } else { format!("{value:.2}{}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use manta_proto::NodeId;
    use manta_proto::resources::ResourceSet;

    use super::*;

    fn node(state: NodeState, cpus: u64, free: u64) -> NodeInfo {
        NodeInfo {
            node_id: NodeId::random(),
            address: "127.0.0.1:1".into(),
            state,
            death_reason: (state == NodeState::Dead).then(|| "missed 5 health checks".to_string()),
            is_head: false,
            pid: 7,
            resources_total: ResourceSet::new()
                .with("CPU", Quantity::from_whole(cpus))
                .with("memory", Quantity::from_whole(2 << 30))
                .with("node:127.0.0.1", Quantity::from_whole(1)),
            resources_available: ResourceSet::new()
                .with("CPU", Quantity::from_whole(free))
                .with("memory", Quantity::from_whole(2 << 30)),
            labels: [("zone".to_string(), "a".to_string())].into(),
            pending_demand: Vec::new(),
            start_time_ms: 1,
            end_time_ms: None,
            metrics_address: Some("127.0.0.1:2".into()),
        }
    }

    #[test]
    fn text_sums_alive_nodes_only() {
        let nodes = vec![node(NodeState::Alive, 4, 3), node(NodeState::Alive, 2, 2), node(NodeState::Dead, 8, 0)];
        let text = to_text(&nodes);
        assert!(text.contains(" 1.0/6.0 CPU"), "{text}");
        assert!(text.contains(" 0B/4.00GiB memory"), "{text}");
        assert!(text.contains("missed 5 health checks"), "{text}");
        assert!(text.contains("[zone=a]"), "{text}");
        assert!(!text.contains("node:127.0.0.1"), "{text}");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let value = to_json(&[node(NodeState::Alive, 2, 2)]);
        let row = &value["nodes"][0];
        for field in
            ["node_id", "address", "state", "is_head", "pid", "resources_total", "resources_available", "labels"]
        {
            assert!(!row[field].is_null(), "missing {field}");
        }
        assert_eq!(row["state"], "ALIVE");
        assert_eq!(row["resources_total"]["CPU"], 2.0);
    }
}
