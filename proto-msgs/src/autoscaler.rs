//! The autoscaler's exchanges with the GCS: the demand snapshot it plans from,
//! `request_resources`, draining a node before it is removed, and the status it
//! reports back for `manta status`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gcs::ResourceDemand;
use crate::ids::{NodeId, PlacementGroupId};
use crate::placement::PlacementStrategy;
use crate::resources::ResourceSet;

/// Asks for the demand snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetClusterDemandRequest {}

/// What the cluster has and what waits for room, as the GCS sees it now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterDemandReply {
    /// Alive nodes.
    pub nodes: Vec<NodeLoad>,
    /// Queued lease requests over all nodes, by shape (feasible and infeasible apart).
    pub shapes: Vec<ResourceDemand>,
    /// Placement groups waiting to be placed.
    pub groups: Vec<PendingGroup>,
    /// The latest `request_resources` bundles (empty: none).
    pub requested: Vec<ResourceSet>,
    /// What the autoscaler last reported, if one runs.
    pub autoscaler: Option<AutoscalerStatus>,
}

/// One alive node's resources and load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// The node.
    pub node_id: NodeId,
    /// `ip:port` it listens on.
    pub address: String,
    /// True for the head.
    pub is_head: bool,
    /// Its labels (an autoscaled node carries its type and instance id).
    pub labels: BTreeMap<String, String>,
    /// Resources in all.
    pub total: ResourceSet,
    /// Resources free.
    pub available: ResourceSet,
    /// Milliseconds it has held no work (0 while it holds any).
    pub idle_ms: u64,
    /// Asked to drain: no new work goes there.
    pub draining: bool,
    /// The node confirmed it drains and holds no work: it may be removed.
    pub drained: bool,
}

/// A placement group waiting for room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingGroup {
    /// The group.
    pub pg_id: PlacementGroupId,
    /// Its name, if any.
    pub name: Option<String>,
    /// How its bundles must be spread.
    pub strategy: PlacementStrategy,
    /// Its bundles.
    pub bundles: Vec<ResourceSet>,
}

/// `manta::request_resources`: the cluster should have room for all of these
/// bundles at once, busy or not. Replaces the previous request; empty clears it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestResourcesRequest {
    /// The bundles (`num_cpus` single-CPU bundles come in as `{CPU: 1}` each).
    pub bundles: Vec<ResourceSet>,
}

/// Bundles one `request_resources` may hold (`num_cpus` counts one each).
pub const MAX_REQUESTED_BUNDLES: usize = 100_000;

/// Drain a node that is to be removed: no new work is sent there, and the node
/// confirms (in its next report) once it holds none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainForRemovalRequest {
    /// The node.
    pub node_id: NodeId,
}

/// The autoscaler's state, for `manta status` and the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerStatus {
    /// When this was reported (ms since the epoch).
    pub updated_ms: u64,
    /// The cluster config's name.
    pub cluster_name: String,
    /// Nodes the provider started that have not joined yet.
    pub launching: Vec<InstanceStatus>,
    /// Joined nodes per type (the head's type included).
    pub running: BTreeMap<String, u32>,
    /// Nodes being drained before removal.
    pub draining: Vec<InstanceStatus>,
    /// Idle nodes and for how long (ms).
    pub idle: Vec<InstanceStatus>,
    /// Demand no node type can meet.
    pub infeasible: Vec<ResourceDemand>,
    /// Requests that fit a type but wait for `max_workers` or `upscaling_speed`.
    pub held_back: u64,
    /// The latest launch and removal failures, newest last.
    pub failures: Vec<String>,
}

/// One provider instance in [`AutoscalerStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The provider's id.
    pub instance_id: String,
    /// Its node type.
    pub node_type: String,
    /// Milliseconds in this state.
    pub for_ms: u64,
}

/// Pubsub (`Autoscaler` channel): the demand changed (a placement group waits,
/// `request_resources` was called); the cluster view carries the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandChangedEvent {}

/// Label carrying an autoscaled node's type.
pub const NODE_TYPE_LABEL: &str = "manta.io/node-type";
/// Label carrying an autoscaled node's provider instance id.
pub const INSTANCE_LABEL: &str = "manta.io/instance-id";
