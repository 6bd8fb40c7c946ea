//! The ledger toward the GCS: the cluster view it schedules by, whether the
//! node drains, and the load and demand its reports carry.

use std::collections::HashMap;
use std::time::Instant;

use manta_proto::gcs::{ClusterViewEvent, ResourceDemand, ViewUpdate};
use manta_proto::net::LinkId;

use super::{Effect, LeaseLedger, WorkerState};

impl LeaseLedger {
    /// A cluster view pushed by the GCS, whole or a delta; older ones (of this
    /// or an earlier GCS start) are ignored, see [`ClusterViewEvent::apply`].
    pub fn cluster_view(&mut self, update: ClusterViewEvent, now: Instant) -> Vec<Effect> {
        match self.view.as_mut() {
            Some(view) => match view.apply(update) {
                ViewUpdate::Applied => {}
                ViewUpdate::Stale => return Vec::new(),
                ViewUpdate::Gap => return vec![Effect::NeedWholeView],
            },
            None if update.is_delta() => return vec![Effect::NeedWholeView],
            None => self.view = Some(update),
        }
        let own = self.node_id;
        self.draining = self.view.iter().flat_map(|view| &view.nodes).any(|node| node.node_id == own && node.draining);
        self.schedule(now)
    }

    /// The node registered again (its GCS link came back): the view it had may be
    /// a dead GCS's, so it is dropped until the GCS sends its own.
    pub fn forget_view(&mut self) {
        self.view = None;
        self.draining = false;
    }

    /// The latest cluster view.
    pub fn view(&self) -> Option<&ClusterViewEvent> {
        self.view.as_ref()
    }

    /// True when the GCS asked this node to drain (it is to be removed): it
    /// grants nothing new and sends its requests elsewhere.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// True when the node holds no work: no leased worker (task or actor), no
    /// waiting request, no placement group bundle.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.bundles.prepared.is_empty()
            && self.bundles.committed.is_empty()
            && !self.workers.values().any(|worker| matches!(worker.state, WorkerState::Leased(_)))
    }

    /// Requests still to be placed, by shape, for the GCS (and so the
    /// autoscaler): each waiting request, plus each caller's backlog of that
    /// shape once (the largest its waiting requests carry).
    pub fn pending_demand(&self) -> Vec<ResourceDemand> {
        let mut demand: Vec<ResourceDemand> = Vec::new();
        let mut backlogs: HashMap<(usize, LinkId), u32> = HashMap::new();
        for pending in self.pending.iter().filter(|pending| pending.starting.is_none()) {
            let shape = pending.request.placement_resources();
            let index = match demand
                .iter()
                .position(|entry| entry.resources == *shape && entry.infeasible == pending.infeasible)
            {
                Some(index) => index,
                None => {
                    demand.push(ResourceDemand { resources: shape.clone(), count: 0, infeasible: pending.infeasible });
                    demand.len() - 1
                }
            };
            demand[index].count = demand[index].count.saturating_add(1);
            let backlog = backlogs.entry((index, pending.caller)).or_default();
            *backlog = (*backlog).max(pending.request.backlog);
        }
        for ((index, _), backlog) in backlogs {
            demand[index].count = demand[index].count.saturating_add(backlog);
        }
        demand
    }
}
