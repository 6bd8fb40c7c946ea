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

/// The resource view of every alive node, versioned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterViewEvent {
    /// The GCS start that sent it: one more at every head restart. A view from a
    /// newer incarnation replaces any older one whatever their versions.
    #[serde(default)]
    pub incarnation: u64,
    /// Increases with every change (restarts at 0 in a new incarnation).
    pub version: u64,
    /// Alive nodes, ordered by node id.
    pub nodes: Vec<NodeResources>,
}
