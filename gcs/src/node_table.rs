//! The node table: membership decisions as a plain struct, unit-tested without actors.
//!
//! A node id moves `ALIVE → DEAD` once and never back: a dead node that shows
//! up again is fenced and must register under a new id.

use std::collections::HashMap;

use manta_proto::gcs::RegisterNodeRequest;
use manta_proto::node::{NodeInfo, NodeState};
use manta_proto::{ErrorCode, NodeId, WireError};

use crate::storage::Rows;

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterOutcome {
    /// A new node joined.
    Added(NodeInfo),
    /// An alive node registered again (after a reconnect); its row was refreshed.
    Reattached(NodeInfo),
}

/// Every node seen, alive and dead, in registration order.
#[derive(Debug, Default)]
pub struct NodeTable {
    rows: Vec<NodeInfo>,
    index: HashMap<NodeId, usize>,
    max_dead_rows: usize,
    store: Rows,
}

impl NodeTable {
    /// A table that keeps at most `max_dead_rows` dead nodes (oldest dropped first).
    pub fn new(max_dead_rows: usize) -> Self {
        Self { rows: Vec::new(), index: HashMap::new(), max_dead_rows, store: Rows::default() }
    }

    /// A table holding recovered `rows` (any order), persisting changes to `store`.
    pub fn restore(max_dead_rows: usize, mut rows: Vec<NodeInfo>, store: Rows) -> Self {
        rows.sort_by_key(|row| row.start_time_ms);
        let index = rows.iter().enumerate().map(|(position, row)| (row.node_id, position)).collect();
        let mut table = Self { rows, index, max_dead_rows, store };
        table.trim_dead_rows();
        table
    }

    /// Adds or re-attaches a node. A dead id is refused with `NodeFenced`.
    pub fn register(&mut self, request: RegisterNodeRequest, now_ms: u64) -> Result<RegisterOutcome, WireError> {
        if let Some(&position) = self.index.get(&request.node_id) {
            let row = &mut self.rows[position];
            if row.state == NodeState::Dead {
                return Err(fenced(request.node_id));
            }
            row.address = request.address;
            row.pid = request.pid;
            row.resources_total = request.resources_total;
            row.resources_available = request.resources_available;
            row.labels = request.labels;
            row.metrics_address = request.metrics_address;
            self.store.put(row.node_id.to_string(), row);
            return Ok(RegisterOutcome::Reattached(row.clone()));
        }
        let row = NodeInfo {
            node_id: request.node_id,
            address: request.address,
            state: NodeState::Alive,
            death_reason: None,
            is_head: request.is_head,
            pid: request.pid,
            resources_total: request.resources_total,
            resources_available: request.resources_available,
            labels: request.labels,
            start_time_ms: now_ms,
            end_time_ms: None,
            pending_demand: Vec::new(),
            metrics_address: request.metrics_address,
        };
        self.index.insert(row.node_id, self.rows.len());
        self.store.put(row.node_id.to_string(), &row);
        self.rows.push(row.clone());
        Ok(RegisterOutcome::Added(row))
    }

    /// Marks an alive node dead. Returns the updated row, or `None` when the node
    /// is unknown or already dead (nothing changed).
    pub fn mark_dead(&mut self, node_id: NodeId, reason: &str, now_ms: u64) -> Option<NodeInfo> {
        let position = *self.index.get(&node_id)?;
        let row = &mut self.rows[position];
        if row.state == NodeState::Dead {
            return None;
        }
        row.state = NodeState::Dead;
        row.death_reason = Some(reason.to_string());
        row.end_time_ms = Some(now_ms);
        let updated = row.clone();
        self.store.put(node_id.to_string(), &updated);
        self.trim_dead_rows();
        Some(updated)
    }

    /// The row of `node_id`.
    pub fn get(&self, node_id: NodeId) -> Option<&NodeInfo> {
        self.index.get(&node_id).map(|&position| &self.rows[position])
    }

    /// True when `node_id` is registered and alive.
    pub fn is_alive(&self, node_id: NodeId) -> bool {
        self.get(node_id).is_some_and(|row| row.state == NodeState::Alive)
    }

    /// Every row, in registration order.
    pub fn rows(&self) -> &[NodeInfo] {
        &self.rows
    }

    /// Alive rows.
    pub fn alive(&self) -> impl Iterator<Item = &NodeInfo> {
        self.rows.iter().filter(|row| row.state == NodeState::Alive)
    }

    fn trim_dead_rows(&mut self) {
        let dead = self.rows.iter().filter(|row| row.state == NodeState::Dead).count();
        if dead <= self.max_dead_rows {
            return;
        }
        let mut to_drop = dead - self.max_dead_rows;
        let store = &self.store;
        self.rows.retain(|row| {
            if to_drop > 0 && row.state == NodeState::Dead {
                to_drop -= 1;
                store.delete(row.node_id.to_string());
                false
            } else {
                true
            }
        });
        self.index = self.rows.iter().enumerate().map(|(position, row)| (row.node_id, position)).collect();
    }
}

/// The error a fenced node gets.
pub fn fenced(node_id: NodeId) -> WireError {
    WireError::new(
        ErrorCode::NodeFenced,
        format!("node {node_id} was declared dead and cannot come back under the same id; register as a new node"),
    )
}

#[cfg(test)]
mod tests {
    use manta_proto::resources::{Quantity, ResourceSet};

    use super::*;

    fn request(node_id: NodeId) -> RegisterNodeRequest {
        RegisterNodeRequest {
            node_id,
            address: "127.0.0.1:1".into(),
            is_head: false,
            pid: 1,
            resources_total: ResourceSet::new().with("CPU", Quantity::from_whole(2)),
            resources_available: ResourceSet::new().with("CPU", Quantity::from_whole(2)),
            labels: Default::default(),
            metrics_address: None,
        }
    }

    #[test]
    fn register_then_reattach() {
        let mut table = NodeTable::new(10);
        let id = NodeId::random();
        assert!(matches!(table.register(request(id), 1), Ok(RegisterOutcome::Added(_))));
        let mut again = request(id);
        again.pid = 2;
        match table.register(again, 2).unwrap() {
            RegisterOutcome::Reattached(row) => {
                assert_eq!(row.pid, 2);
                assert_eq!(row.start_time_ms, 1);
            }
            other => panic!("expected reattach, got {other:?}"),
        }
        assert_eq!(table.rows().len(), 1);
    }

    #[test]
    fn dead_is_final_and_fenced() {
        let mut table = NodeTable::new(10);
        let id = NodeId::random();
        table.register(request(id), 1).unwrap();
        let dead = table.mark_dead(id, "health check failed", 5).unwrap();
        assert_eq!(dead.state, NodeState::Dead);
        assert_eq!(dead.death_reason.as_deref(), Some("health check failed"));
        assert_eq!(dead.end_time_ms, Some(5));
        assert!(table.mark_dead(id, "again", 6).is_none(), "a second death changes nothing");
        let error = table.register(request(id), 7).unwrap_err();
        assert_eq!(error.code, ErrorCode::NodeFenced);
        assert!(!table.is_alive(id));
    }

    #[test]
    fn unknown_node_cannot_die() {
        let mut table = NodeTable::new(10);
        assert!(table.mark_dead(NodeId::random(), "x", 1).is_none());
    }

    #[test]
    fn dead_history_is_bounded() {
        let mut table = NodeTable::new(2);
        let ids: Vec<_> = (0..5).map(|_| NodeId::random()).collect();
        for id in &ids {
            table.register(request(*id), 1).unwrap();
        }
        for id in &ids[..4] {
            table.mark_dead(*id, "gone", 2);
        }
        assert_eq!(table.rows().len(), 3);
        assert!(table.get(ids[0]).is_none());
        assert!(table.get(ids[3]).is_some());
        assert!(table.is_alive(ids[4]));
        // A trimmed id is still unknown, not resurrected as alive by a lookup.
        assert!(!table.is_alive(ids[0]));
    }
}
