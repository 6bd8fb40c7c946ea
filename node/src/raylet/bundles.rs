//! Placement group bundles on a node: the raylet's side of the GCS's two-phase
//! reservation (lock, commit as bundle resources, release).

use std::collections::{HashMap, HashSet};

use manta_proto::placement::{self, PrepareBundlesRequest};
use manta_proto::resources::ResourceSet;
use manta_proto::{ErrorCode, PlacementGroupId, WireError};

use super::{RayletState, add_into, subtract_from};

/// Placement group bundles on this node.
#[derive(Default)]
pub(super) struct BundleState {
    /// Locked, not yet committed: (index, resources).
    prepared: HashMap<PlacementGroupId, Vec<(u32, ResourceSet)>>,
    /// Committed: offered as bundle resources.
    committed: HashMap<PlacementGroupId, Vec<(u32, ResourceSet)>>,
    /// Groups removed in the cluster.
    pub(super) removed: HashSet<PlacementGroupId>,
}

/// Phase 1: locks the bundles' resources (all or none); with `commit`, commits at
/// once. `Ok(true)` when bundle resources were added.
pub(super) fn prepare(state: &mut RayletState, request: PrepareBundlesRequest) -> Result<bool, WireError> {
    let bundles = &mut state.bundles;
    if bundles.prepared.contains_key(&request.pg_id) || bundles.committed.contains_key(&request.pg_id) {
        return Ok(false);
    }
    let sum = bundle_sum(&request.bundles);
    if !state.available.contains(&sum) {
        return Err(WireError::new(
            ErrorCode::ResourceExhausted,
            format!("this node cannot lock {:?} now", sum.to_f64_map()),
        ));
    }
    subtract_from(&mut state.available, &sum);
    state.bundles.prepared.insert(request.pg_id, request.bundles);
    Ok(request.commit && commit_locked(state, request.pg_id))
}

/// Phase 2: turns the locked resources into bundle resources (again: a no-op).
pub(super) fn commit(state: &mut RayletState, pg_id: PlacementGroupId) -> Result<(), WireError> {
    if state.bundles.committed.contains_key(&pg_id) || commit_locked(state, pg_id) {
        Ok(())
    } else {
        Err(WireError::new(ErrorCode::NotFound, format!("no prepared bundles of {pg_id}")))
    }
}

/// Gives a group's bundles back (a rollback or a removal): what runs in them ends,
/// their bundle resources go away, the resources they locked are free again.
pub(super) fn cancel(state: &mut RayletState, pg_id: PlacementGroupId) {
    if let Some(bundles) = state.bundles.prepared.remove(&pg_id) {
        add_into(&mut state.available, &bundle_sum(&bundles));
    }
    if let Some(bundles) = state.bundles.committed.remove(&pg_id) {
        state.pool.kill_using(|name| placement::is_bundle_resource_of(name, &pg_id), "its placement group was removed");
        state.registration.resources_total.retain(|name| !placement::is_bundle_resource_of(name, &pg_id));
        state.available.retain(|name| !placement::is_bundle_resource_of(name, &pg_id));
        add_into(&mut state.available, &bundle_sum(&bundles));
    }
}

fn commit_locked(state: &mut RayletState, pg_id: PlacementGroupId) -> bool {
    let Some(bundles) = state.bundles.prepared.remove(&pg_id) else {
        return false;
    };
    for (index, bundle) in &bundles {
        let added = placement::bundle_resources(bundle, &pg_id, *index);
        add_into(&mut state.registration.resources_total, &added);
        add_into(&mut state.available, &added);
    }
    state.bundles.committed.insert(pg_id, bundles);
    true
}

fn bundle_sum(bundles: &[(u32, ResourceSet)]) -> ResourceSet {
    let mut sum = ResourceSet::new();
    for (_, bundle) in bundles {
        add_into(&mut sum, bundle);
    }
    sum
}
