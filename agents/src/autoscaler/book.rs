//! The autoscaler's memory between rounds, and the pure step of a round: from
//! the GCS's demand snapshot and the provider's instances, what to do now.
//!
//! - An instance is *launching* until a node with its `manta.io/instance-id`
//!   label is alive; one that has not joined within [`START_TIMEOUT`] is a
//!   failed launch and is terminated.
//! - A node the planner removes is first *drained* (the GCS sends it no new
//!   work and it confirms it holds none); only then is it terminated.
//! - Nodes the provider did not start (the head, nodes joined by hand) are
//!   counted as capacity and never removed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use manta_proto::NodeId;
use manta_proto::autoscaler::{AutoscalerStatus, ClusterDemandReply, INSTANCE_LABEL, InstanceStatus, NodeLoad};
use manta_proto::gcs::ResourceDemand;
use manta_proto::resources::{Quantity, ResourceSet};

use super::config::ClusterConfig;
use super::planner::{Demand, GroupDemand, NodeView, Plan, ShapeDemand, plan};
use super::provider::{Instance, InstanceState};

/// A launched node that has not joined by then failed to start (Ray waits
/// 900 s for cloud machines; a local process or pod that is not up in a minute
/// is stuck).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Failures kept for `manta status`.
const FAILURES_KEPT: usize = 20;

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start `count` nodes of a type.
    Launch { node_type: String, count: usize },
    /// Ask the GCS to drain a node before it is removed.
    Drain { instance_id: String, node_id: NodeId },
    /// Stop an instance (drained, or failed to join).
    Terminate { instance_id: String, reason: String },
}

/// What the autoscaler remembers between rounds.
#[derive(Debug, Default)]
pub struct Book {
    /// Launched, not joined: instance id → (type, when).
    launching: BTreeMap<String, (String, Instant)>,
    /// Being drained: instance id → (node, since).
    draining: BTreeMap<String, (NodeId, Instant)>,
    failures: VecDeque<String>,
    /// The latest plan's infeasible and held-back demand.
    last_plan: Plan,
}

/// How a round sees the cluster.
struct Joined<'a> {
    /// Managed instances that joined, with their node.
    managed: Vec<(&'a Instance, &'a NodeLoad)>,
    /// Nodes the provider did not start.
    unmanaged: Vec<&'a NodeLoad>,
}

fn join<'a>(snapshot: &'a ClusterDemandReply, instances: &'a [Instance]) -> Joined<'a> {
    let by_id: HashMap<&str, &Instance> = instances.iter().map(|instance| (instance.id.as_str(), instance)).collect();
    let mut managed = Vec::new();
    let mut unmanaged = Vec::new();
    for node in &snapshot.nodes {
        let instance =
            node.labels.get(INSTANCE_LABEL).filter(|_| !node.is_head).and_then(|id| by_id.get(id.as_str()).copied());
        match instance {
            Some(instance) => managed.push((instance, node)),
            None => unmanaged.push(node),
        }
    }
    Joined { managed, unmanaged }
}

fn shape(set: &ResourceSet) -> BTreeMap<String, f64> {
    set.to_f64_map()
}

fn set(shape: &BTreeMap<String, f64>) -> ResourceSet {
    let mut set = ResourceSet::new();
    for (name, amount) in shape {
        if let Some(quantity) = Quantity::from_f64(*amount) {
            set.set(name.clone(), quantity);
        }
    }
    set
}

impl Book {
    /// A launch succeeded: these instances are on their way.
    pub fn launched(&mut self, node_type: &str, ids: &[String], now: Instant) {
        for id in ids {
            self.launching.insert(id.clone(), (node_type.to_string(), now));
        }
    }

    /// Something failed (kept for `manta status`).
    pub fn failed(&mut self, message: String) {
        if self.failures.len() == FAILURES_KEPT {
            self.failures.pop_front();
        }
        self.failures.push_back(message);
    }

    /// Decides this round's actions.
    pub fn decide(
        &mut self,
        config: &ClusterConfig,
        snapshot: &ClusterDemandReply,
        instances: &[Instance],
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let joined = join(snapshot, instances);
        let mut views = Vec::new();
        for node in &joined.unmanaged {
            views.push(NodeView {
                id: node.node_id.to_string(),
                node_type: if node.is_head { config.head_node_type.clone() } else { String::new() },
                is_head: true,
                pending: false,
                total: shape(&node.total),
                available: shape(&node.available),
                idle_for: Duration::ZERO,
            });
        }
        let mut alive = HashSet::new();
        for (instance, node) in &joined.managed {
            alive.insert(instance.id.clone());
            self.launching.remove(&instance.id);
            if instance.state == InstanceState::Terminating {
                continue;
            }
            if node.draining || self.draining.contains_key(&instance.id) {
                self.draining.entry(instance.id.clone()).or_insert((node.node_id, now));
                if node.drained {
                    actions.push(Action::Terminate { instance_id: instance.id.clone(), reason: "drained".into() });
                }
                continue;
            }
            views.push(NodeView {
                id: instance.id.clone(),
                node_type: instance.node_type.clone(),
                is_head: false,
                pending: false,
                total: shape(&node.total),
                available: shape(&node.available),
                idle_for: Duration::from_millis(node.idle_ms),
            });
        }
        for instance in instances.iter().filter(|instance| !alive.contains(&instance.id)) {
            if instance.state == InstanceState::Terminating {
                continue;
            }
            let (_, since) =
                self.launching.entry(instance.id.clone()).or_insert_with(|| (instance.node_type.clone(), now));
            if now.saturating_duration_since(*since) >= START_TIMEOUT {
                let reason = format!(
                    "node {} of type {} did not join within {}s; stopped it",
                    instance.id,
                    instance.node_type,
                    START_TIMEOUT.as_secs()
                );
                self.failed(reason.clone());
                self.launching.remove(&instance.id);
                actions.push(Action::Terminate { instance_id: instance.id.clone(), reason });
                continue;
            }
            let resources = config
                .available_node_types
                .get(&instance.node_type)
                .map(|kind| kind.resources.clone())
                .unwrap_or_default();
            views.push(NodeView {
                id: instance.id.clone(),
                node_type: instance.node_type.clone(),
                is_head: false,
                pending: true,
                total: resources.clone(),
                available: resources,
                idle_for: Duration::ZERO,
            });
        }
        // Forget what the provider no longer has.
        let known: HashSet<&str> = instances.iter().map(|instance| instance.id.as_str()).collect();
        self.launching.retain(|id, _| known.contains(id.as_str()));
        self.draining.retain(|id, _| known.contains(id.as_str()));

        let demand = Demand {
            shapes: snapshot
                .shapes
                .iter()
                .map(|demand| ShapeDemand { shape: shape(&demand.resources), count: u64::from(demand.count) })
                .collect(),
            groups: snapshot
                .groups
                .iter()
                .map(|group| GroupDemand {
                    bundles: group.bundles.iter().map(shape).collect(),
                    strategy: group.strategy,
                })
                .collect(),
            requested: snapshot.requested.iter().map(shape).collect(),
        };
        let plan = plan(config, &views, &demand);
        for (node_type, reasons) in &plan.launch {
            actions.push(Action::Launch { node_type: node_type.clone(), count: reasons.len() });
        }
        for instance_id in &plan.terminate {
            if let Some((_, node)) = joined.managed.iter().find(|(instance, _)| &instance.id == instance_id) {
                self.draining.insert(instance_id.clone(), (node.node_id, now));
                actions.push(Action::Drain { instance_id: instance_id.clone(), node_id: node.node_id });
            }
        }
        self.last_plan = plan;
        actions
    }

    /// The state for `manta status`.
    pub fn status(
        &self,
        config: &ClusterConfig,
        snapshot: &ClusterDemandReply,
        instances: &[Instance],
        now: Instant,
        now_ms: u64,
    ) -> AutoscalerStatus {
        let since = |at: &Instant| now.saturating_duration_since(*at).as_millis() as u64;
        let joined = join(snapshot, instances);
        let mut running: BTreeMap<String, u32> = BTreeMap::new();
        if joined.unmanaged.iter().any(|node| node.is_head) {
            *running.entry(config.head_node_type.clone()).or_default() += 1;
        }
        let mut idle = Vec::new();
        for (instance, node) in &joined.managed {
            *running.entry(instance.node_type.clone()).or_default() += 1;
            if node.idle_ms > 0 {
                idle.push(InstanceStatus {
                    instance_id: instance.id.clone(),
                    node_type: instance.node_type.clone(),
                    for_ms: node.idle_ms,
                });
            }
        }
        let types: HashMap<&str, &str> =
            instances.iter().map(|instance| (instance.id.as_str(), instance.node_type.as_str())).collect();
        let type_of = |id: &str| types.get(id).map(|node_type| node_type.to_string()).unwrap_or_default();
        AutoscalerStatus {
            updated_ms: now_ms,
            cluster_name: config.cluster_name.clone(),
            launching: self
                .launching
                .iter()
                .map(|(id, (node_type, at))| InstanceStatus {
                    instance_id: id.clone(),
                    node_type: node_type.clone(),
                    for_ms: since(at),
                })
                .collect(),
            running,
            draining: self
                .draining
                .iter()
                .map(|(id, (_, at))| InstanceStatus {
                    instance_id: id.clone(),
                    node_type: type_of(id),
                    for_ms: since(at),
                })
                .collect(),
            idle,
            infeasible: self
                .last_plan
                .infeasible
                .iter()
                .map(|demand| ResourceDemand {
                    resources: set(&demand.shape),
                    count: u32::try_from(demand.count).unwrap_or(u32::MAX),
                    infeasible: true,
                })
                .collect(),
            held_back: self.last_plan.held_back,
            failures: self.failures.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
