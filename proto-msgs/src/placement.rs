//! Placement groups: bundles of resources reserved together across nodes (Ray's
//! `placement_group`), the GCS requests that manage them, and the two-phase
//! reservation between the GCS and the raylets.

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeId, PlacementGroupId};
use crate::resources::{Quantity, ResourceSet};

/// How a group's bundles are spread over nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlacementStrategy {
    /// As few nodes as possible (best effort).
    #[default]
    Pack,
    /// One bundle per node where possible (best effort).
    Spread,
    /// All bundles on one node, or wait.
    StrictPack,
    /// Every bundle on a different node, or wait.
    StrictSpread,
}

impl PlacementStrategy {
    /// Ray's name (`PACK`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            PlacementStrategy::Pack => "PACK",
            PlacementStrategy::Spread => "SPREAD",
            PlacementStrategy::StrictPack => "STRICT_PACK",
            PlacementStrategy::StrictSpread => "STRICT_SPREAD",
        }
    }
}

/// Where a group is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementGroupState {
    /// Waiting for room (or being reserved).
    Pending,
    /// Every bundle is reserved.
    Created,
    /// Removed (by the user, or with its job).
    Removed,
    /// A node holding bundles died; they are being placed again.
    Rescheduling,
}

impl PlacementGroupState {
    /// Ray's name (`PENDING`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            PlacementGroupState::Pending => "PENDING",
            PlacementGroupState::Created => "CREATED",
            PlacementGroupState::Removed => "REMOVED",
            PlacementGroupState::Rescheduling => "RESCHEDULING",
        }
    }
}

/// What a user asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementGroupSpec {
    /// The group.
    pub pg_id: PlacementGroupId,
    /// Optional name, unique per namespace.
    pub name: Option<String>,
    /// The name's namespace.
    pub namespace: String,
    /// The bundles, in index order.
    pub bundles: Vec<ResourceSet>,
    /// How to spread them.
    pub strategy: PlacementStrategy,
    /// Survives its job.
    pub detached: bool,
    /// The creating job.
    pub job_id: JobId,
}

/// A group as the GCS knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementGroupInfo {
    /// What was asked for.
    pub spec: PlacementGroupSpec,
    /// Where it is.
    pub state: PlacementGroupState,
    /// The node holding each bundle (`None`: not placed).
    pub bundle_nodes: Vec<Option<NodeId>>,
    /// Why it waits, when it does.
    pub pending_reason: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub create_time_ms: u64,
}

/// GCS: create a group (answered at once; placement happens in the background).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreatePlacementGroupRequest {
    /// The group.
    pub spec: PlacementGroupSpec,
}

/// GCS: remove a group (what runs in it is ended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovePlacementGroupRequest {
    /// The group.
    pub pg_id: PlacementGroupId,
}

/// GCS: look a group up by id, or by name in a namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetPlacementGroupRequest {
    /// By id.
    pub pg_id: Option<PlacementGroupId>,
    /// Or by name.
    pub name: Option<String>,
    /// The name's namespace.
    pub namespace: String,
}

/// GCS: wait up to `timeout_ms` for a group to leave `PENDING`; answers its info.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaitPlacementGroupRequest {
    /// The group.
    pub pg_id: PlacementGroupId,
    /// How long to wait.
    pub timeout_ms: u64,
}

/// The group, if known.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementGroupReply {
    /// Its info.
    pub info: Option<PlacementGroupInfo>,
}

/// GCS to raylet, phase 1: lock these bundles' resources (all or none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepareBundlesRequest {
    /// The group.
    pub pg_id: PlacementGroupId,
    /// (bundle index, resources) placed on this node.
    pub bundles: Vec<(u32, ResourceSet)>,
    /// Commit at once (every unplaced bundle of the group is on this node, so the
    /// node's own atomicity suffices: one round trip instead of two).
    #[serde(default)]
    pub commit: bool,
}

/// GCS to raylet, phase 2: turn the locked resources into bundle resources.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitBundlesRequest {
    /// The group.
    pub pg_id: PlacementGroupId,
}

/// GCS to raylet: give a group's bundles back (rollback or removal), ending what runs in them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CancelBundlesRequest {
    /// The group.
    pub pg_id: PlacementGroupId,
}

/// Published when a group is removed: waiting requests for it are cancelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementGroupRemovedEvent {
    /// The group.
    pub pg_id: PlacementGroupId,
}

/// The resource a committed bundle offers for `resource`: `CPU_group_<i>_<pg>` for
/// bundle `i`, `CPU_group_<pg>` for any bundle of the group (Ray's naming).
pub fn bundle_resource(resource: &str, pg_id: &PlacementGroupId, index: Option<u32>) -> String {
    match index {
        Some(index) => format!("{resource}_group_{index}_{}", pg_id.hex()),
        None => format!("{resource}_group_{}", pg_id.hex()),
    }
}

/// The marker each bundle offers (1000 units), so a task asking for nothing still
/// lands in its group.
pub const BUNDLE_MARKER: &str = "bundle";

/// A request's resources rewritten to target a group's bundle (`index`) or any of its
/// bundles (`None`), plus 0.001 of the bundle marker.
pub fn rewrite_for_bundle(resources: &ResourceSet, pg_id: &PlacementGroupId, index: Option<u32>) -> ResourceSet {
    let mut rewritten = ResourceSet::new();
    for (name, amount) in resources.iter() {
        if amount == Quantity::ZERO {
            continue;
        }
        rewritten.set(bundle_resource(name, pg_id, None), amount);
        if index.is_some() {
            rewritten.set(bundle_resource(name, pg_id, index), amount);
        }
    }
    rewritten.set(bundle_resource(BUNDLE_MARKER, pg_id, index), Quantity::from_units(10));
    rewritten
}

/// The bundle resources a committed bundle adds to its node.
pub fn bundle_resources(bundle: &ResourceSet, pg_id: &PlacementGroupId, index: u32) -> ResourceSet {
    let mut added = ResourceSet::new();
    for (name, amount) in bundle.iter() {
        added.set(bundle_resource(name, pg_id, Some(index)), amount);
        added.set(bundle_resource(name, pg_id, None), amount);
    }
    added.set(bundle_resource(BUNDLE_MARKER, pg_id, Some(index)), Quantity::from_whole(1000));
    added.set(bundle_resource(BUNDLE_MARKER, pg_id, None), Quantity::from_whole(1000));
    added
}

/// True when `name` is a bundle resource of `pg_id`.
pub fn is_bundle_resource_of(name: &str, pg_id: &PlacementGroupId) -> bool {
    bundle_resources_of(pg_id)(name)
}

/// A test for the bundle resources of `pg_id`, with the id's hex made once (for
/// scanning many names).
pub fn bundle_resources_of(pg_id: &PlacementGroupId) -> impl Fn(&str) -> bool + use<> {
    let suffix = pg_id.hex();
    move |name| name.ends_with(&suffix) && name.contains("_group_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_demand_names_match_what_a_committed_bundle_offers() {
        let pg = PlacementGroupId::random();
        let bundle = ResourceSet::new().with("CPU", Quantity::from_whole(2)).with("GPU", Quantity::from_whole(1));
        let offered = bundle_resources(&bundle, &pg, 1);
        let task = ResourceSet::new().with("CPU", Quantity::from_whole(1));
        for index in [Some(1), None] {
            let demand = rewrite_for_bundle(&task, &pg, index);
            for (name, amount) in demand.iter() {
                assert!(offered.get(name) >= amount, "{name} missing from {offered:?}");
            }
        }
        let wrong_bundle = rewrite_for_bundle(&task, &pg, Some(0));
        assert!(wrong_bundle.iter().any(|(name, amount)| offered.get(name) < amount));
        assert!(offered.iter().all(|(name, _)| is_bundle_resource_of(name, &pg)));
    }
}
