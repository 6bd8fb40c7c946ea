//! The placement group table: groups by id, names per namespace, and their states.
//! Pure; owned by the GCS supervisor so it outlives a restart of the manager.

use std::collections::{BTreeMap, HashMap, VecDeque};

use manta_proto::placement::{PlacementGroupInfo, PlacementGroupSpec, PlacementGroupState};
use manta_proto::{ErrorCode, JobId, NodeId, PlacementGroupId, WireError};

use crate::storage::Rows;

/// The table. Besides the groups it keeps two indexes, so no change scans them
/// all: the groups waiting for placement, and the removed ones in removal order.
#[derive(Debug, Default)]
pub struct PlacementTable {
    groups: HashMap<PlacementGroupId, Entry>,
    /// Every group by creation number (creation order).
    order: BTreeMap<u64, PlacementGroupId>,
    /// The `PENDING` and `RESCHEDULING` groups by creation number.
    waiting: BTreeMap<u64, PlacementGroupId>,
    /// Removed groups, the first removed first.
    removed: VecDeque<PlacementGroupId>,
    next_number: u64,
    names: HashMap<(String, String), PlacementGroupId>,
    store: Rows,
}

#[derive(Debug)]
struct Entry {
    info: PlacementGroupInfo,
    /// Creation number: its key in `order` and `waiting`.
    number: u64,
}

/// Removed groups kept for `manta list placement-groups`.
const MAX_REMOVED: usize = 1000;

fn is_waiting(state: PlacementGroupState) -> bool {
    matches!(state, PlacementGroupState::Pending | PlacementGroupState::Rescheduling)
}

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
            table.insert(info);
        }
        table
    }

    /// Adds a group under the next creation number, indexed by its state.
    fn insert(&mut self, info: PlacementGroupInfo) {
        let (id, number) = (info.spec.pg_id, self.next_number);
        self.next_number += 1;
        self.order.insert(number, id);
        match info.state {
            state if is_waiting(state) => {
                self.waiting.insert(number, id);
            }
            PlacementGroupState::Removed => self.removed.push_back(id),
            _ => {}
        }
        self.groups.insert(id, Entry { info, number });
    }

    /// Moves a group to `state`, keeping the indexes right, and persists it.
    fn set_state(&mut self, id: &PlacementGroupId, state: PlacementGroupState) {
        let Some(entry) = self.groups.get_mut(id) else { return };
        let before = std::mem::replace(&mut entry.info.state, state);
        match (is_waiting(before), is_waiting(state)) {
            (false, true) => {
                self.waiting.insert(entry.number, *id);
            }
            (true, false) => {
                self.waiting.remove(&entry.number);
            }
            _ => {}
        }
        if state == PlacementGroupState::Removed && before != PlacementGroupState::Removed {
            self.removed.push_back(*id);
        }
        self.persist(id);
    }

    fn persist(&self, id: &PlacementGroupId) {
        match self.groups.get(id) {
            Some(entry) => self.store.put(id.to_string(), &entry.info),
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
        let id = spec.pg_id;
        let bundle_nodes = vec![None; spec.bundles.len()];
        self.insert(PlacementGroupInfo {
            spec,
            state: PlacementGroupState::Pending,
            bundle_nodes,
            pending_reason: None,
            create_time_ms: now_ms,
        });
        self.persist(&id);
        Ok(())
    }

    fn is_live(&self, id: &PlacementGroupId) -> bool {
        self.get(id).is_some_and(|info| info.state != PlacementGroupState::Removed)
    }

    /// A group.
    pub fn get(&self, id: &PlacementGroupId) -> Option<&PlacementGroupInfo> {
        self.groups.get(id).map(|entry| &entry.info)
    }

    /// A live group by name.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&PlacementGroupInfo> {
        let id = self.names.get(&(namespace.to_string(), name.to_string()))?;
        self.get(id).filter(|info| info.state != PlacementGroupState::Removed)
    }

    /// Groups waiting for placement, oldest first.
    pub fn pending(&self) -> Vec<PlacementGroupId> {
        self.waiting.values().copied().collect()
    }

    /// True while some group waits for placement.
    pub fn has_pending(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Marks a group removed; returns the nodes holding its bundles.
    pub fn remove(&mut self, id: &PlacementGroupId) -> Option<Vec<NodeId>> {
        let info = self.get(id).filter(|info| info.state != PlacementGroupState::Removed)?;
        let mut nodes: Vec<NodeId> = info.bundle_nodes.iter().flatten().copied().collect();
        nodes.sort();
        nodes.dedup();
        self.set_state(id, PlacementGroupState::Removed);
        self.trim();
        Some(nodes)
    }

    /// Forgets the groups removed first, beyond the [`MAX_REMOVED`] kept.
    fn trim(&mut self) {
        while self.removed.len() > MAX_REMOVED {
            let Some(id) = self.removed.pop_front() else { break };
            if let Some(entry) = self.groups.remove(&id) {
                self.order.remove(&entry.number);
                self.store.delete(id.to_string());
            }
        }
    }

    /// Bundles placed: the group is `CREATED`.
    pub fn placed(&mut self, id: &PlacementGroupId, nodes: &[NodeId]) -> bool {
        let Some(entry) = self.groups.get_mut(id).filter(|entry| entry.info.state != PlacementGroupState::Removed)
        else {
            return false;
        };
        entry.info.bundle_nodes = nodes.iter().copied().map(Some).collect();
        entry.info.pending_reason = None;
        self.set_state(id, PlacementGroupState::Created);
        true
    }

    /// Why a group still waits.
    pub fn waiting(&mut self, id: &PlacementGroupId, reason: String) {
        if let Some(entry) = self.groups.get_mut(id) {
            entry.info.pending_reason = Some(reason);
        }
    }

    /// A node died: its bundles must be placed again.
    pub fn node_dead(&mut self, node_id: NodeId) -> usize {
        let mut touched = Vec::new();
        let mut lost_created = Vec::new();
        for entry in self.groups.values_mut().filter(|entry| entry.info.state != PlacementGroupState::Removed) {
            let mut lost = false;
            for slot in entry.info.bundle_nodes.iter_mut().filter(|slot| **slot == Some(node_id)) {
                *slot = None;
                lost = true;
            }
            if lost {
                touched.push(entry.info.spec.pg_id);
                if entry.info.state == PlacementGroupState::Created {
                    lost_created.push(entry.info.spec.pg_id);
                }
            }
        }
        for id in &lost_created {
            self.set_state(id, PlacementGroupState::Rescheduling);
        }
        for id in &touched {
            self.persist(id);
        }
        lost_created.len()
    }

    /// Live groups of a finished job that do not outlive it.
    pub fn of_finished_job(&self, job_id: JobId) -> Vec<PlacementGroupId> {
        self.groups
            .values()
            .map(|entry| &entry.info)
            .filter(|info| {
                info.spec.job_id == job_id && !info.spec.detached && info.state != PlacementGroupState::Removed
            })
            .map(|info| info.spec.pg_id)
            .collect()
    }

    /// Groups per state (for the `manta_placement_groups` gauge).
    pub fn count_by_state(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for entry in self.groups.values() {
            *counts.entry(entry.info.state.as_str().to_string()).or_default() += 1;
        }
        counts
    }

    /// The page `query` selects, newest first.
    pub fn query(&self, query: &manta_proto::query::StateQuery) -> manta_proto::task::ListStateReply {
        let newest_first = self.order.values().rev().filter_map(|id| self.get(id));
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

    #[test]
    fn the_indexes_follow_every_change_and_the_first_removed_are_forgotten_first() {
        let mut table = PlacementTable::default();
        let make = |table: &mut PlacementTable, at: u64| {
            let spec = PlacementGroupSpec {
                pg_id: PlacementGroupId::random(),
                name: None,
                namespace: "ns".into(),
                bundles: vec![cpus(1)],
                strategy: PlacementStrategy::Pack,
                detached: false,
                job_id: JobId::from_counter(1),
            };
            table.create(spec.clone(), at).unwrap();
            spec.pg_id
        };
        let ids: Vec<_> = (0..MAX_REMOVED as u64 + 10).map(|at| make(&mut table, at)).collect();
        assert_eq!(table.pending(), ids, "waiting, oldest first");
        let node = NodeId::random();
        // Placed in reverse; the rest keep waiting in creation order.
        for id in ids.iter().rev().take(5) {
            assert!(table.placed(id, &[node]));
        }
        assert_eq!(table.pending(), ids[..ids.len() - 5]);
        assert_eq!(table.node_dead(node), 5);
        assert_eq!(table.pending(), ids, "rescheduled groups wait again, in creation order");
        // Removing all (the oldest last) keeps the last MAX_REMOVED removed.
        for id in ids.iter().skip(1).chain(ids.first()) {
            assert!(table.remove(id).is_some());
        }
        assert!(!table.has_pending());
        assert_eq!(table.groups.len(), MAX_REMOVED);
        assert_eq!(table.order.len(), MAX_REMOVED);
        assert!(table.get(&ids[0]).is_some(), "removed last, kept");
        assert!(table.get(&ids[1]).is_none() && table.get(&ids[10]).is_none(), "removed first, forgotten");
        assert!(table.get(&ids[11]).is_some());
        let page = table.query(&manta_proto::query::StateQuery::default());
        assert_eq!(page.total, MAX_REMOVED);
    }
}
