//! The placement group table: groups by id, names per namespace, and their states.
//! Pure; owned by the GCS supervisor so it outlives a restart of the manager.

use std::collections::HashMap;

use manta_proto::placement::{PlacementGroupInfo, PlacementGroupSpec, PlacementGroupState};
use manta_proto::{ErrorCode, JobId, NodeId, PlacementGroupId, WireError};

use crate::storage::Rows;

#[derive(Debug, Default)]
pub struct PlacementTable {
    groups: HashMap<PlacementGroupId, PlacementGroupInfo>,
    order: Vec<PlacementGroupId>,
    names: HashMap<(String, String), PlacementGroupId>,
    store: Rows,
}

/// Removed groups kept for `manta list placement-groups`.
const MAX_REMOVED: usize = 1000;

impl PlacementTable {
    /// A table holding recovered groups, persisting changes to `store`.
    pub fn restore(mut groups: Vec<PlacementGroupInfo>, store: Rows) -> Self {
        groups.sort_by_key(|info| info.create_time_ms);
        let mut table = Self { store, ..Self::default() };
        for info in groups {
            if let Some(name) = &info.spec.name
                && info.state != PlacementGroupState::Removed
            {
                table.names.insert((info.spec.namespace.clone(), name.clone()), info.spec.pg_id);
            }
            table.order.push(info.spec.pg_id);
            table.groups.insert(info.spec.pg_id, info);
        }
        table
    }

    fn persist(&self, id: &PlacementGroupId) {
        match self.groups.get(id) {
            Some(info) => self.store.put(id.to_string(), info),
            None => self.store.delete(id.to_string()),
        }
    }

    /// Records a new group as `PENDING`; refuses an empty bundle list or a taken name.
    pub fn create(&mut self, spec: PlacementGroupSpec, now_ms: u64) -> Result<(), WireError> {
        if spec.bundles.is_empty() {
            return Err(WireError::invalid("a placement group needs at least one bundle"));
        }
        if let Some(index) = spec.bundles.iter().position(|bundle| bundle.iter().all(|(_, amount)| amount.is_zero())) {
            return Err(WireError::invalid(format!("bundle {index} is empty: give every bundle some resources")));
        }
        if self.groups.contains_key(&spec.pg_id) {
            return Ok(());
        }
        if let Some(name) = &spec.name {
            let key = (spec.namespace.clone(), name.clone());
            if self.names.get(&key).is_some_and(|id| self.is_live(id)) {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("a placement group named {name:?} already exists in namespace {:?}", spec.namespace),
                ));
            }
            self.names.insert(key, spec.pg_id);
        }
        let spec_id = spec.pg_id;
        let bundle_nodes = vec![None; spec.bundles.len()];
        self.order.push(spec.pg_id);
        let info = PlacementGroupInfo {
            spec,
            state: PlacementGroupState::Pending,
            bundle_nodes,
            pending_reason: None,
            create_time_ms: now_ms,
        };
        self.groups.insert(info.spec.pg_id, info);
        self.persist(&spec_id);
        Ok(())
    }

    fn is_live(&self, id: &PlacementGroupId) -> bool {
        self.groups.get(id).is_some_and(|info| info.state != PlacementGroupState::Removed)
    }

    /// A group.
    pub fn get(&self, id: &PlacementGroupId) -> Option<&PlacementGroupInfo> {
        self.groups.get(id)
    }

    /// A live group by name.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&PlacementGroupInfo> {
        let id = self.names.get(&(namespace.to_string(), name.to_string()))?;
        self.groups.get(id).filter(|info| info.state != PlacementGroupState::Removed)
    }

    /// Groups waiting for placement, oldest first.
    pub fn pending(&self) -> Vec<PlacementGroupId> {
        self.order
            .iter()
            .filter(|id| {
                self.groups.get(id).is_some_and(|info| {
                    matches!(info.state, PlacementGroupState::Pending | PlacementGroupState::Rescheduling)
                })
            })
            .copied()
            .collect()
    }

    /// Marks a group removed; returns the nodes holding its bundles.
    pub fn remove(&mut self, id: &PlacementGroupId) -> Option<Vec<NodeId>> {
        let info = self.groups.get_mut(id).filter(|info| info.state != PlacementGroupState::Removed)?;
        info.state = PlacementGroupState::Removed;
        let mut nodes: Vec<NodeId> = info.bundle_nodes.iter().flatten().copied().collect();
        nodes.sort();
        nodes.dedup();
        self.persist(id);
        self.trim();
        Some(nodes)
    }

    fn trim(&mut self) {
        let removed = self.order.iter().filter(|id| !self.is_live(id)).count();
        if removed <= MAX_REMOVED {
            return;
        }
        let mut excess = removed - MAX_REMOVED;
        let groups = &mut self.groups;
        let store = &self.store;
        self.order.retain(|id| {
            let live = groups.get(id).is_some_and(|info| info.state != PlacementGroupState::Removed);
            if !live && excess > 0 {
                excess -= 1;
                groups.remove(id);
                store.delete(id.to_string());
                return false;
            }
            true
        });
    }

    /// Bundles placed: the group is `CREATED`.
    pub fn placed(&mut self, id: &PlacementGroupId, nodes: &[NodeId]) -> bool {
        let Some(info) = self.groups.get_mut(id).filter(|info| info.state != PlacementGroupState::Removed) else {
            return false;
        };
        info.bundle_nodes = nodes.iter().copied().map(Some).collect();
        info.state = PlacementGroupState::Created;
        info.pending_reason = None;
        self.persist(id);
        true
    }

    /// Why a group still waits.
    pub fn waiting(&mut self, id: &PlacementGroupId, reason: String) {
        if let Some(info) = self.groups.get_mut(id) {
            info.pending_reason = Some(reason);
        }
    }

    /// A node died: its bundles must be placed again.
    pub fn node_dead(&mut self, node_id: NodeId) -> usize {
        let mut hit = 0;
        for info in self.groups.values_mut().filter(|info| info.state == PlacementGroupState::Created) {
            let mut lost = false;
            for slot in info.bundle_nodes.iter_mut().filter(|slot| **slot == Some(node_id)) {
                *slot = None;
                lost = true;
            }
            if lost {
                info.state = PlacementGroupState::Rescheduling;
                hit += 1;
            }
        }
        let mut touched = Vec::new();
        for info in self.groups.values_mut().filter(|info| info.state != PlacementGroupState::Removed) {
            for slot in info.bundle_nodes.iter_mut().filter(|slot| **slot == Some(node_id)) {
                *slot = None;
                touched.push(info.spec.pg_id);
            }
        }
        for id in touched.iter().chain(
            self.groups
                .values()
                .filter(|info| info.state == PlacementGroupState::Rescheduling)
                .map(|info| &info.spec.pg_id),
        ) {
            self.persist(id);
        }
        hit
    }

    /// Live groups of a finished job that do not outlive it.
    pub fn of_finished_job(&self, job_id: JobId) -> Vec<PlacementGroupId> {
        self.groups
            .values()
            .filter(|info| {
                info.spec.job_id == job_id && !info.spec.detached && info.state != PlacementGroupState::Removed
            })
            .map(|info| info.spec.pg_id)
            .collect()
    }

    /// Groups per state (for the `manta_placement_groups` gauge).
    pub fn count_by_state(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for info in self.groups.values() {
            *counts.entry(info.state.as_str().to_string()).or_default() += 1;
        }
        counts
    }

    /// The page `query` selects, newest first.
    pub fn query(&self, query: &manta_proto::query::StateQuery) -> manta_proto::task::ListStateReply {
        let newest_first = self.order.iter().rev().filter_map(|id| self.groups.get(id));
        let page = query.page(newest_first, self.groups.len());
        manta_proto::task::ListStateReply {
            rows: manta_proto::task::StateRows::PlacementGroups(page.rows),
            total: page.total,
            matched: page.matched,
            dropped: 0,
            counts: self.count_by_state(),
            completed_total: 0,
        }
    }
}
#[cfg(test)]
mod tests {
    use manta_proto::placement::PlacementStrategy;
    use manta_proto::resources::{Quantity, ResourceSet};

    use super::*;

    fn cpus(count: u64) -> ResourceSet {
        ResourceSet::new().with("CPU", Quantity::from_whole(count))
    }

    #[test]
    fn the_table_tracks_states_names_and_node_deaths() {
        let mut table = PlacementTable::default();
        let spec = |name: Option<&str>| PlacementGroupSpec {
            pg_id: PlacementGroupId::random(),
            name: name.map(str::to_string),
            namespace: "ns".into(),
            bundles: vec![cpus(1), cpus(1)],
            strategy: PlacementStrategy::Spread,
            detached: false,
            job_id: JobId::from_counter(1),
        };
        let first = spec(Some("g"));
        table.create(first.clone(), 1).unwrap();
        assert!(table.create(spec(Some("g")), 2).is_err(), "names are unique per namespace");
        let mut empty = spec(None);
        empty.bundles = vec![ResourceSet::new()];
        assert!(table.create(empty, 3).is_err());
        assert_eq!(table.pending(), vec![first.pg_id]);
        let (a, b) = (NodeId::random(), NodeId::random());
        assert!(table.placed(&first.pg_id, &[a, b]));
        assert!(table.pending().is_empty());
        assert_eq!(table.node_dead(a), 1);
        assert_eq!(table.get(&first.pg_id).unwrap().state, PlacementGroupState::Rescheduling);
        assert_eq!(table.get(&first.pg_id).unwrap().bundle_nodes, vec![None, Some(b)]);
        assert_eq!(table.of_finished_job(JobId::from_counter(1)), vec![first.pg_id]);
        assert_eq!(table.remove(&first.pg_id), Some(vec![b]));
        assert!(table.by_name("ns", "g").is_none());
        table.create(spec(Some("g")), 4).unwrap();
    }
}
