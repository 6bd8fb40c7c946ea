//! Node records and the node service (requests a node answers).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::resources::ResourceSet;

/// Liveness of a node in the GCS node table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Registered and passing health checks.
    Alive,
    /// Gone for good: failed health checks, drained or stopped. Never alive again.
    Dead,
}

impl NodeState {
    /// `ALIVE` or `DEAD`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "ALIVE",
            NodeState::Dead => "DEAD",
        }
    }
}

/// One row of the node table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's identity.
    pub node_id: NodeId,
    /// `ip:port` the node listens on.
    pub address: String,
    /// Current state.
    pub state: NodeState,
    /// Why the node is dead, when it is.
    pub death_reason: Option<String>,
    /// True for the head node.
    pub is_head: bool,
    /// Process id of the node process.
    pub pid: u32,
    /// Resources the node offers.
    pub resources_total: ResourceSet,
    /// Resources not in use, as last reported.
    pub resources_available: ResourceSet,
    /// Labels given with `--labels`.
    pub labels: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch when the node registered.
    pub start_time_ms: u64,
    /// Milliseconds since the Unix epoch when the node was declared dead.
    pub end_time_ms: Option<u64>,
    /// Lease requests waiting at the node, as last reported.
    #[serde(default)]
    pub pending_demand: Vec<crate::gcs::ResourceDemand>,
    /// `ip:port` of the node's Prometheus endpoint (`/metrics`).
    #[serde(default)]
    pub metrics_address: Option<String>,
}

/// A warning for a user, sent to the process it concerns (a driver prints it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarningEvent {
    /// What the user should know, and what to do.
    pub message: String,
}

/// Asks a node whether it is alive and still `node_id`. Sent by the GCS health checker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckRequest {
    /// The identity the GCS knows the node by.
    pub node_id: NodeId,
}

/// The node's answer to a health check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckReply {
    /// The node's current identity.
    pub node_id: NodeId,
}

/// Asks a node for its own view of itself and of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetNodeStatsRequest {}

/// A node's own view: identity, resources, and the cluster view version it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetNodeStatsReply {
    /// The node's identity.
    pub node_id: NodeId,
    /// Resources the node offers.
    pub resources_total: ResourceSet,
    /// Resources not in use.
    pub resources_available: ResourceSet,
    /// Version of the last cluster view received from the GCS.
    pub cluster_view_version: u64,
    /// Number of alive nodes in that view.
    pub cluster_view_nodes: usize,
}

/// Node to its workers: whether actor calls may run. A node that has not heard
/// from the GCS within its fence closes the gate (its actors may be restarted
/// elsewhere) and opens it again once the GCS answers and has not declared it dead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeCallsEvent {
    /// True: run calls; false: hold them.
    pub open: bool,
}
