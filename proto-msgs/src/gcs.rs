//! The GCS service: node membership, resource reports, internal KV and pubsub.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::node::NodeInfo;
use crate::resources::ResourceSet;

/// A node asks to join (or rejoin after a reconnect).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterNodeRequest {
    /// The identity the node proposes. A dead id is refused with `NodeFenced`.
    pub node_id: NodeId,
    /// `ip:port` the node listens on.
    pub address: String,
    /// True for the head node.
    pub is_head: bool,
    /// Process id of the node process.
    pub pid: u32,
    /// Resources the node offers.
    pub resources_total: ResourceSet,
    /// Resources not in use.
    pub resources_available: ResourceSet,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// `ip:port` of the node's Prometheus endpoint (`/metrics`).
    #[serde(default)]
    pub metrics_address: Option<String>,
}

/// Accepted registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterNodeReply {
    /// The node's row as the GCS now holds it.
    pub node: NodeInfo,
    /// True when this id was already alive (a reconnect, not a new node).
    pub reattached: bool,
    /// The node's fence: it serves no actor call once it has heard nothing from
    /// the GCS for this long (half the least time the GCS takes to declare it
    /// dead, so its actors are stopped before they can be restarted elsewhere).
    /// 0: no fence.
    #[serde(default)]
    pub fence_after_ms: u64,
}

/// A node leaves on purpose (`manta stop`, drain); it is marked dead with `reason`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainNodeRequest {
    /// The leaving node.
    pub node_id: NodeId,
    /// Why it leaves, recorded as the death reason.
    pub reason: String,
}

/// A node's current resource availability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportResourcesRequest {
    /// The reporting node.
    pub node_id: NodeId,
    /// Resources the node offers.
    pub resources_total: ResourceSet,
    /// Resources not in use.
    pub resources_available: ResourceSet,
    /// Lease requests queued at the node (for the autoscaler and `manta status`).
    #[serde(default)]
    pub pending_demand: Vec<ResourceDemand>,
    /// The node holds no work: no leased worker, no queued request, no bundle.
    #[serde(default)]
    pub idle: bool,
    /// The node drains (the GCS asked it to): it takes no new work.
    #[serde(default)]
    pub draining: bool,
}

/// Lease requests of one shape waiting at a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDemand {
    /// What each request asks for.
    pub resources: ResourceSet,
    /// How many are waiting.
    pub count: u32,
    /// True when no node of the cluster could ever run them.
    pub infeasible: bool,
}

/// Asks for the whole node table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetAllNodesRequest {}

/// The node table, alive and dead nodes, in registration order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetAllNodesReply {
    /// Every node the GCS has seen.
    pub nodes: Vec<NodeInfo>,
}

/// Stores `value` under `namespace`/`key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvPutRequest {
    /// Key namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// Value bytes.
    pub value: Bytes,
    /// Replace an existing value.
    pub overwrite: bool,
}

/// Whether a new key was added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvPutReply {
    /// False when the key existed (and was replaced only if `overwrite`).
    pub added: bool,
}

/// Reads one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvGetRequest {
    /// Key namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
}

/// The value, when present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvGetReply {
    /// The stored bytes.
    pub value: Option<Bytes>,
}

/// Deletes one key, or every key with the prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvDelRequest {
    /// Key namespace.
    pub namespace: String,
    /// Key or prefix.
    pub key: String,
    /// Treat `key` as a prefix.
    pub by_prefix: bool,
}

/// How many keys were deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvDelReply {
    /// Number of deleted keys.
    pub deleted: u64,
}

/// Lists the keys starting with `prefix`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvKeysRequest {
    /// Key namespace.
    pub namespace: String,
    /// Key prefix.
    pub prefix: String,
}

/// The matching keys, sorted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvKeysReply {
    /// Keys.
    pub keys: Vec<String>,
}

/// A pubsub channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Node added / node dead events ([`NodeChangeEvent`]).
    NodeChanges,
    /// The cluster resource view ([`ClusterViewEvent`]), pushed to every raylet.
    ClusterView,
    /// Job ends ([`crate::task::JobFinishedEvent`]).
    Jobs,
    /// Task events sent to the GCS (not published to subscribers).
    TaskEvents,
    /// Submitted jobs' changes and their drivers' output (the head's HTTP server).
    Submissions,
    /// Demand the cluster view does not carry: placement groups waiting,
    /// `request_resources` (the autoscaler).
    Autoscaler,
}

/// Subscribes this connection to channels; events arrive as one-way frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// Channels to receive.
    pub channels: Vec<Channel>,
}

/// A node joined or died.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeChangeEvent {
    /// The node's row after the change.
    pub node: NodeInfo,
}

/// One node in the cluster view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeResources {
    /// The node.
    pub node_id: NodeId,
    /// `ip:port` the node listens on.
    pub address: String,
    /// Resources the node offers.
    pub total: ResourceSet,
    /// Resources not in use.
    pub available: ResourceSet,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Lease requests waiting at the node.
    #[serde(default)]
    pub pending_demand: Vec<ResourceDemand>,
    /// Being drained for removal: send it no new work.
    #[serde(default)]
    pub draining: bool,
}

/// The resource view of every alive node, versioned: the whole view, or a
/// delta on top of an earlier version (what the GCS sends a link that has it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterViewEvent {
    /// The GCS start that sent it: one more at every head restart. A view from a
    /// newer incarnation replaces any older one whatever their versions.
    #[serde(default)]
    pub incarnation: u64,
    /// Increases with every change (restarts at 0 in a new incarnation).
    pub version: u64,
    /// The whole view: alive nodes, ordered by node id. A delta: the nodes that
    /// joined or changed since `base_version`, ordered by node id.
    pub nodes: Vec<NodeResources>,
    /// Absent: the whole view. Present: a delta on top of this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// A delta: the nodes gone since `base_version`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<NodeId>,
}

/// What [`ClusterViewEvent::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewUpdate {
    /// The view is now the update's version.
    Applied,
    /// The update is older than the view (or the same): ignored.
    Stale,
    /// A delta on top of a version the view is not at: ignored; the follower
    /// needs a whole view.
    Gap,
}

impl ClusterViewEvent {
    /// A whole view.
    pub fn whole(incarnation: u64, version: u64, nodes: Vec<NodeResources>) -> Self {
        Self { incarnation, version, nodes, base_version: None, removed: Vec::new() }
    }

    /// True for a delta.
    pub fn is_delta(&self) -> bool {
        self.base_version.is_some()
    }

    /// Brings this (whole) view to `update`: a newer whole view replaces it, a
    /// delta on top of its version is merged into it.
    pub fn apply(&mut self, update: ClusterViewEvent) -> ViewUpdate {
        if (update.incarnation, update.version) <= (self.incarnation, self.version) {
            return ViewUpdate::Stale;
        }
        let Some(base) = update.base_version else {
            *self = update;
            return ViewUpdate::Applied;
        };
        if update.incarnation != self.incarnation || base != self.version {
            return ViewUpdate::Gap;
        }
        let mut nodes: BTreeMap<NodeId, NodeResources> =
            std::mem::take(&mut self.nodes).into_iter().map(|node| (node.node_id, node)).collect();
        for gone in &update.removed {
            nodes.remove(gone);
        }
        for node in update.nodes {
            nodes.insert(node.node_id, node);
        }
        self.nodes = nodes.into_values().collect();
        self.version = update.version;
        ViewUpdate::Applied
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;

    fn node(node_id: NodeId, free: u64) -> NodeResources {
        NodeResources {
            node_id,
            address: "a".into(),
            total: ResourceSet::new(),
            available: ResourceSet::new().with("CPU", crate::resources::Quantity::from_whole(free)),
            labels: BTreeMap::new(),
            pending_demand: Vec::new(),
            draining: false,
        }
    }

    #[test]
    fn deltas_merge_on_their_base_and_nothing_else() {
        let (a, b, c) = (NodeId::random(), NodeId::random(), NodeId::random());
        let mut view = ClusterViewEvent::whole(1, 3, vec![node(a, 1), node(b, 1)]);
        let delta = |base, version, nodes, removed| ClusterViewEvent {
            incarnation: 1,
            version,
            nodes,
            base_version: Some(base),
            removed,
        };
        assert_eq!(view.apply(delta(2, 5, vec![node(c, 4)], vec![])), ViewUpdate::Gap);
        assert_eq!(view.apply(delta(3, 5, vec![node(c, 4), node(a, 0)], vec![b])), ViewUpdate::Applied);
        let mut expected = vec![node(a, 0), node(c, 4)];
        expected.sort_by_key(|node| node.node_id);
        assert_eq!((view.version, &view.nodes), (5, &expected));
        assert_eq!(view.apply(delta(4, 5, vec![], vec![a])), ViewUpdate::Stale);
        assert_eq!(view.apply(ClusterViewEvent::whole(2, 0, vec![])), ViewUpdate::Applied, "a newer GCS start");
        assert!(view.nodes.is_empty());
        assert_eq!(view.apply(delta(7, 8, vec![], vec![])), ViewUpdate::Stale, "an older start's delta");
        let next = ClusterViewEvent { incarnation: 2, ..delta(1, 2, vec![], vec![]) };
        assert_eq!(view.apply(next), ViewUpdate::Gap, "a delta on top of a version it never had");
    }
}
