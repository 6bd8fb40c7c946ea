//! A round's decisions: launches wait to join, drains come before terminations,
//! failed launches are stopped, nodes the provider did not start are kept.

use std::time::{Duration, Instant};

use manta_proto::autoscaler::{ClusterDemandReply, INSTANCE_LABEL, NODE_TYPE_LABEL, NodeLoad};
use manta_proto::gcs::ResourceDemand;
use manta_proto::resources::{Quantity, ResourceSet};

use super::*;

const CONFIG: &str = "
max_workers: 5
idle_timeout_minutes: 0.05
head_node_type: head
provider: {type: local}
available_node_types:
  head: {resources: {CPU: 0}, max_workers: 0}
  small: {resources: {CPU: 1}, min_workers: 1, max_workers: 3}
  beta: {resources: {CPU: 1, beta: 1}, max_workers: 3}
";

fn config() -> ClusterConfig {
    ClusterConfig::from_yaml(CONFIG).unwrap()
}

fn set(pairs: &[(&str, u64)]) -> ResourceSet {
    pairs.iter().fold(ResourceSet::new(), |set, (name, amount)| set.with(*name, Quantity::from_whole(*amount)))
}

fn head() -> NodeLoad {
    NodeLoad {
        node_id: NodeId::random(),
        address: "127.0.0.1:1".into(),
        is_head: true,
        labels: Default::default(),
        total: set(&[("CPU", 0)]),
        available: set(&[("CPU", 0)]),
        idle_ms: 0,
        draining: false,
        drained: false,
    }
}

fn joined(instance: &Instance, free: u64, idle_ms: u64) -> NodeLoad {
    let mut total = set(&[("CPU", 1)]);
    if instance.node_type == "beta" {
        total = total.with("beta", Quantity::from_whole(1));
    }
    let mut available = total.clone();
    available.set("CPU", Quantity::from_whole(free));
    NodeLoad {
        node_id: NodeId::random(),
        address: "127.0.0.1:2".into(),
        is_head: false,
        labels: [
            (INSTANCE_LABEL.to_string(), instance.id.clone()),
            (NODE_TYPE_LABEL.to_string(), instance.node_type.clone()),
        ]
        .into_iter()
        .collect(),
        total,
        available,
        idle_ms,
        draining: false,
        drained: false,
    }
}

fn instance(id: &str, node_type: &str) -> Instance {
    Instance { id: id.into(), node_type: node_type.into(), state: InstanceState::Running }
}

fn beta_tasks(count: u32) -> ResourceDemand {
    ResourceDemand { resources: set(&[("CPU", 1), ("beta", 1)]), count, infeasible: true }
}

fn launches(actions: &[Action]) -> Vec<(String, usize)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Launch { node_type, count } => Some((node_type.clone(), *count)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_launch_counts_until_it_joins_and_is_stopped_if_it_never_does() {
    let config = config();
    let mut book = Book::default();
    let now = Instant::now();
    let small = instance("s1", "small");
    let snapshot = ClusterDemandReply {
        nodes: vec![head(), joined(&small, 1, 0)],
        shapes: vec![beta_tasks(1)],
        ..Default::default()
    };
    let actions = book.decide(&config, &snapshot, std::slice::from_ref(&small), now);
    assert_eq!(launches(&actions), vec![("beta".to_string(), 1)], "{actions:?}");
    book.launched("beta", &["b1".to_string()], now);

    // Not joined yet: it is counted, nothing more is launched.
    let both = [small.clone(), instance("b1", "beta")];
    let actions = book.decide(&config, &snapshot, &both, now + Duration::from_secs(1));
    assert!(launches(&actions).is_empty(), "{actions:?}");
    let status = book.status(&config, &snapshot, &both, now, 0);
    assert_eq!(status.launching.len(), 1);

    // Never joined: stopped, the failure kept, and a new one launched for the demand.
    let actions = book.decide(&config, &snapshot, &both, now + START_TIMEOUT);
    assert!(
        actions.iter().any(|action| matches!(action, Action::Terminate { instance_id, .. } if instance_id == "b1"))
    );
    assert_eq!(launches(&actions), vec![("beta".to_string(), 1)]);
    assert_eq!(book.status(&config, &snapshot, &both, now, 0).failures.len(), 1);
}

#[test]
fn an_idle_node_is_drained_then_terminated_and_min_workers_stay() {
    let config = config();
    let mut book = Book::default();
    let now = Instant::now();
    let (small, extra, beta) = (instance("s1", "small"), instance("s2", "small"), instance("b1", "beta"));
    let instances = [small.clone(), extra.clone(), beta.clone()];
    let mut nodes = vec![head(), joined(&small, 1, 10_000), joined(&extra, 1, 10_000), joined(&beta, 1, 10_000)];
    let snapshot = ClusterDemandReply { nodes: nodes.clone(), ..Default::default() };
    let actions = book.decide(&config, &snapshot, &instances, now);
    let drained: Vec<&str> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Drain { instance_id, .. } => Some(instance_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(drained.len(), 2, "one small (min_workers 1) and the beta: {actions:?}");
    assert!(drained.contains(&"b1"));
    assert!(!actions.iter().any(|action| matches!(action, Action::Terminate { .. })), "not before it is drained");

    // The GCS marks them draining; terminated once the nodes confirm.
    for node in
        nodes.iter_mut().filter(|node| node.labels.get(INSTANCE_LABEL).is_some_and(|id| drained.contains(&id.as_str())))
    {
        node.draining = true;
    }
    let snapshot = ClusterDemandReply { nodes: nodes.clone(), ..Default::default() };
    let actions = book.decide(&config, &snapshot, &instances, now);
    assert!(!actions.iter().any(|action| matches!(action, Action::Terminate { .. })), "{actions:?}");
    for node in nodes.iter_mut().filter(|node| node.draining) {
        node.drained = true;
    }
    let snapshot = ClusterDemandReply { nodes, ..Default::default() };
    let actions = book.decide(&config, &snapshot, &instances, now);
    let terminated = actions.iter().filter(|action| matches!(action, Action::Terminate { .. })).count();
    assert_eq!(terminated, 2, "{actions:?}");
    assert!(launches(&actions).is_empty(), "min_workers still holds: {actions:?}");
}

#[test]
fn nodes_the_provider_did_not_start_are_capacity_and_never_removed() {
    let config = config();
    let mut book = Book::default();
    let mut by_hand = head();
    by_hand.is_head = false;
    by_hand.total = set(&[("CPU", 1), ("beta", 1)]);
    by_hand.available = by_hand.total.clone();
    by_hand.idle_ms = 3_600_000;
    let small = instance("s1", "small");
    let snapshot = ClusterDemandReply {
        nodes: vec![head(), by_hand, joined(&small, 1, 0)],
        shapes: vec![beta_tasks(1)],
        ..Default::default()
    };
    let actions = book.decide(&config, &snapshot, &[small], Instant::now());
    assert!(actions.is_empty(), "the hand-joined node fits the demand and stays: {actions:?}");
}

#[test]
fn infeasible_demand_launches_nothing_and_is_reported() {
    let config = config();
    let mut book = Book::default();
    let small = instance("s1", "small");
    let impossible = ResourceDemand { resources: set(&[("GPU", 1)]), count: 2, infeasible: true };
    let snapshot = ClusterDemandReply {
        nodes: vec![head(), joined(&small, 1, 0)],
        shapes: vec![impossible],
        ..Default::default()
    };
    let instances = [small];
    let actions = book.decide(&config, &snapshot, &instances, Instant::now());
    assert!(actions.is_empty(), "{actions:?}");
    let status = book.status(&config, &snapshot, &instances, Instant::now(), 0);
    assert_eq!(status.infeasible.len(), 1);
    assert_eq!(status.infeasible[0].count, 2);
    assert_eq!(status.running.get("small"), Some(&1));
}
