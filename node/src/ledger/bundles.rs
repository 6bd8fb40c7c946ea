//! Placement group bundles in the ledger: the node's side of the GCS's
//! two-phase reservation (lock, commit as bundle resources, release).

use std::collections::VecDeque;
use std::time::Instant;

use manta_proto::placement::{self, PrepareBundlesRequest};
use manta_proto::resources::ResourceSet;
use manta_proto::{ErrorCode, PlacementGroupId, WireError};

use super::{Effect, LeaseLedger, WorkerState, pool};

impl LeaseLedger {
    /// GCS phase 1: locks the bundles' resources (all or none); with `commit`,
    /// commits at once. A group already known is a no-op.
    pub fn prepare_bundles(&mut self, request: PrepareBundlesRequest, now: Instant) -> Result<Vec<Effect>, WireError> {
        let pg_id = request.pg_id;
        if self.bundles.prepared.contains_key(&pg_id) || self.bundles.committed.contains_key(&pg_id) {
            return Ok(Vec::new());
        }
        let sum = bundle_sum(&request.bundles);
        if !self.resources.can_acquire(&sum) {
            return Err(WireError::new(
                ErrorCode::ResourceExhausted,
                format!("this node cannot lock {:?} now", sum.to_f64_map()),
            ));
        }
        self.resources.acquire(&sum);
        self.bundles.prepared.insert(pg_id, request.bundles);
        if request.commit {
            self.commit_prepared(pg_id);
            return Ok(self.schedule(now));
        }
        Ok(Vec::new())
    }

    /// GCS phase 2: the locked resources become bundle resources (again: a no-op).
    pub fn commit_bundles(&mut self, pg_id: PlacementGroupId, now: Instant) -> Result<Vec<Effect>, WireError> {
        if self.bundles.committed.contains_key(&pg_id) {
            return Ok(Vec::new());
        }
        if !self.commit_prepared(pg_id) {
            return Err(WireError::new(ErrorCode::NotFound, format!("no prepared bundles of {pg_id}")));
        }
        Ok(self.schedule(now))
    }

    /// A group's bundles go back (a rollback or a removal): what runs in them
    /// ends, their bundle resources go away, what they locked is free again.
    pub fn cancel_bundles(&mut self, pg_id: PlacementGroupId, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(bundles) = self.bundles.prepared.remove(&pg_id) {
            self.resources.release(&bundle_sum(&bundles));
        }
        if let Some(bundles) = self.bundles.committed.remove(&pg_id) {
            let in_group = placement::bundle_resources_of(&pg_id);
            let uses_group = |resources: &ResourceSet| resources.iter().any(|(name, _)| in_group(name));
            // Requests whose worker is still starting in the group end now.
            let (ended, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|pending| pending.starting.is_some() && uses_group(&pending.request.resources));
            self.pending = kept;
            for pending in ended {
                self.unreserve(&pending);
                effects.push(Effect::Cancel {
                    request: pending.id,
                    reason: format!("placement group {pg_id} was removed"),
                    cause: manta_proto::task::CancelCause::Other,
                });
            }
            effects.extend(self.end(
                |_, worker| matches!(&worker.state, WorkerState::Leased(lease) if uses_group(&lease.resources)),
                "its placement group was removed",
            ));
            // Leases in the group hold resources that no longer exist: they are never given back.
            for worker in self.workers.values_mut() {
                if let WorkerState::Leased(lease) = &mut worker.state {
                    lease.resources.retain(|name| !in_group(name));
                    lease.lent.retain(|name| !in_group(name));
                }
            }
            self.resources.remove(in_group);
            self.resources.release(&bundle_sum(&bundles));
        }
        effects.extend(self.schedule(now));
        effects
    }

    /// A placement group was removed in the cluster: requests for it are cancelled.
    pub fn placement_group_removed(&mut self, pg_id: PlacementGroupId, now: Instant) -> Vec<Effect> {
        self.bundles.removed.insert(pg_id);
        self.schedule(now)
    }

    pub(super) fn commit_prepared(&mut self, pg_id: PlacementGroupId) -> bool {
        let Some(bundles) = self.bundles.prepared.remove(&pg_id) else {
            return false;
        };
        for (index, bundle) in &bundles {
            self.resources.grow(&placement::bundle_resources(bundle, &pg_id, *index));
        }
        self.bundles.committed.insert(pg_id, bundles);
        true
    }
}

/// The sum of a group's bundles on this node.
pub(super) fn bundle_sum(bundles: &[(u32, ResourceSet)]) -> ResourceSet {
    pool::sum(bundles.iter().map(|(_, bundle)| bundle))
}
