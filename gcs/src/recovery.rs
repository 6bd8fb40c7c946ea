//! Rebuilding the GCS tables from storage when the head (re)starts.
//!
//! The previous head's own node row is marked dead at once (its raylet and
//! workers died with it); the other nodes that were alive, and the jobs that
//! were running, get a grace period to reconnect before they are declared
//! dead and finished.

use manta_proto::NodeId;
use manta_proto::node::{NodeInfo, NodeState};
use manta_proto::placement::PlacementGroupInfo;
use manta_proto::task::{ActorRecord, JobRecord};
use tracing::{info, warn};

use crate::actor_directory::ActorTable;
use crate::job_manager::JobTable;
use crate::kv::{KvRow, KvTable};
use crate::node_table::NodeTable;
use crate::placement::PlacementTable;
use crate::storage::{Rows, Snapshot, Storage, StorageError, Table, rows_of};
use crate::{GcsConfig, Shared};

/// The durable tables, as loaded.
pub struct Recovered {
    pub nodes: Shared<NodeTable>,
    pub jobs: Shared<JobTable>,
    pub actors: Shared<ActorTable>,
    pub kv: Shared<KvTable>,
    pub placement_groups: Shared<PlacementTable>,
    /// Nodes that were alive and must reconnect within the grace period.
    pub awaited_nodes: Vec<NodeId>,
    /// Whether anything was recovered (a restart, not a first start).
    pub restarted: bool,
}

fn shared<T>(value: T) -> Shared<T> {
    Shared::new(value)
}

impl Recovered {
    /// Decodes `snapshot` into tables whose changes go to `storage`. A row that
    /// does not decode stops the head: it never starts empty over existing data.
    pub fn load(snapshot: &Snapshot, storage: &Storage, config: &GcsConfig, store: &str) -> Result<Self, StorageError> {
        let node_rows: Vec<NodeInfo> = rows_of(snapshot, Table::Nodes, store)?;
        let job_rows: Vec<JobRecord> = rows_of(snapshot, Table::Jobs, store)?;
        let actor_rows: Vec<ActorRecord> = rows_of(snapshot, Table::Actors, store)?;
        let kv_rows: Vec<KvRow> = rows_of(snapshot, Table::Kv, store)?;
        let group_rows: Vec<PlacementGroupInfo> = rows_of(snapshot, Table::PlacementGroups, store)?;
        let restarted = !(node_rows.is_empty() && job_rows.is_empty() && actor_rows.is_empty() && kv_rows.is_empty());
        if restarted {
            info!(
                %store,
                nodes = node_rows.len(),
                jobs = job_rows.len(),
                actors = actor_rows.len(),
                kv = kv_rows.len(),
                placement_groups = group_rows.len(),
                "recovered the GCS tables"
            );
        }
        let mut nodes = NodeTable::restore(config.max_dead_nodes, node_rows, Rows::new(storage.clone(), Table::Nodes));
        let alive: Vec<NodeInfo> = nodes.alive().cloned().collect();
        let mut awaited_nodes = Vec::new();
        for node in alive {
            if node.is_head {
                warn!(node_id = %node.node_id, "the previous head node is gone with its process");
                nodes.mark_dead(node.node_id, "the head process restarted; its workers were lost", crate::now_ms());
            } else {
                awaited_nodes.push(node.node_id);
            }
        }
        debug_assert!(nodes.rows().iter().all(|row| row.state == NodeState::Dead || !row.is_head));
        Ok(Self {
            nodes: shared(nodes),
            jobs: shared(JobTable::restore(job_rows, Rows::new(storage.clone(), Table::Jobs))),
            actors: shared(ActorTable::restore(actor_rows, Rows::new(storage.clone(), Table::Actors))),
            kv: shared(KvTable::restore(kv_rows, Rows::new(storage.clone(), Table::Kv))),
            placement_groups: shared(PlacementTable::restore(
                group_rows,
                Rows::new(storage.clone(), Table::PlacementGroups),
            )),
            awaited_nodes,
            restarted,
        })
    }
}
