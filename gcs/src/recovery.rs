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
use crate::packages::{PackageRow, PackageTable};
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
    pub packages: Shared<PackageTable>,
    pub submissions: Shared<crate::submissions::SubmissionTable>,
    /// Nodes that were alive and must reconnect within the grace period.
    pub awaited_nodes: Vec<NodeId>,
    /// Whether anything was recovered (a restart, not a first start).
    pub restarted: bool,
    /// This start's incarnation: one more than the last start's on this storage.
    pub incarnation: u64,
}

/// The key of the incarnation in [`Table::Meta`].
const INCARNATION_KEY: &[u8] = b"incarnation";

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
        let package_rows: Vec<PackageRow> = rows_of(snapshot, Table::Packages, store)?;
        let submission_rows: Vec<manta_proto::submission::JobSubmission> =
            rows_of(snapshot, Table::Submissions, store)?;
        let previous: u64 = match snapshot.get(&Table::Meta).and_then(|rows| rows.get(INCARNATION_KEY)) {
            Some(bytes) => rmp_serde::from_slice(bytes).map_err(|error| {
                StorageError(format!(
                    "{store}: the GCS incarnation row does not decode ({error}); the storage is damaged"
                ))
            })?,
            None => 0,
        };
        let incarnation = previous + 1;
        storage.put(Table::Meta, INCARNATION_KEY, &incarnation);
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
            packages: shared(PackageTable::restore(package_rows, Rows::new(storage.clone(), Table::Packages))),
            submissions: shared(crate::submissions::SubmissionTable::restore(
                submission_rows,
                Rows::new(storage.clone(), Table::Submissions),
            )),
            awaited_nodes,
            restarted,
            incarnation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageConfig;

    #[tokio::test]
    async fn every_start_on_the_same_storage_is_a_new_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::Embedded(dir.path().join("tables.redb"));
        let gcs_config = GcsConfig::for_test();
        let mut incarnations = Vec::new();
        for _start in 0..3 {
            let mut backend = config.open().unwrap();
            let snapshot = backend.load().unwrap();
            let storage = Storage::start(backend);
            let recovered = Recovered::load(&snapshot, &storage, &gcs_config, "test").unwrap();
            storage.flush().await.unwrap();
            incarnations.push(recovered.incarnation);
            drop(recovered);
            drop(storage);
            // The writer thread closes the file once its handle is gone.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while config.open().is_err() {
                assert!(std::time::Instant::now() < deadline, "the store stays locked");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        assert_eq!(incarnations, [1, 2, 3]);
    }
}
