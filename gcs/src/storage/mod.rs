//! GCS persistence: every durable table (nodes, jobs, actors, KV, placement
//! groups) writes its changed rows through a [`Storage`] handle.
//!
//! Three backends sit behind the [`Backend`] trait: [`memory`] (tests; nothing
//! survives the process), [`embedded`] (the default: a redb file under the
//! session folder, ACID, one fsync per commit) and [`redis`] (a shared Redis
//! server, for heads that move between machines).
//!
//! Writes are **group-committed**: callers queue rows and go on; one writer
//! thread drains everything queued, commits it in a single transaction, then
//! wakes every [`Storage::flush`] that waited for those rows. The GCS answers
//! a mutating request only after its flush, so an acknowledged change is
//! durable, and a thousand concurrent changes cost one commit, not a thousand.

pub mod embedded;
pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tracing::{error, warn};

/// The durable tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Node rows by node id, dead ones included.
    Nodes,
    /// Job records by job id, and the job counter.
    Jobs,
    /// Actor records by actor id.
    Actors,
    /// Internal KV entries by (namespace, key).
    Kv,
    /// Placement groups by id.
    PlacementGroups,
    /// The GCS's own facts (its incarnation).
    Meta,
}

impl Table {
    /// Every table, in load order.
    pub const ALL: [Table; 6] =
        [Table::Nodes, Table::Jobs, Table::Actors, Table::Kv, Table::PlacementGroups, Table::Meta];

    /// The table's name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nodes => "nodes",
            Table::Jobs => "jobs",
            Table::Actors => "actors",
            Table::Kv => "kv",
            Table::PlacementGroups => "placement_groups",
            Table::Meta => "meta",
        }
    }
}

/// One queued change: a row written, or deleted (`value: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub table: Table,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Everything a backend holds: table → key → value.
pub type Snapshot = BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A storage failure, worded for the person starting the head.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// A place that keeps the GCS tables.
pub trait Backend: Send + 'static {
    /// Reads every row.
    fn load(&mut self) -> Result<Snapshot, StorageError>;
    /// Applies `writes` atomically and durably.
    fn commit(&mut self, writes: &[Write]) -> Result<(), StorageError>;
    /// Where the data lives, for messages.
    fn describe(&self) -> String;
}

/// Which backend the head uses (`--storage`).
#[derive(Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// Nothing survives the process.
    Memory,
    /// A redb file (default: `<temp-dir>/gcs/tables.redb`).
    Embedded(PathBuf),
    /// A Redis server (`redis://host:port`), tables under `namespace`.
    Redis { url: String, namespace: String },
}

impl std::fmt::Debug for StorageConfig {
    /// Never shows a Redis password.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => formatter.write_str("Memory"),
            Self::Embedded(path) => formatter.debug_tuple("Embedded").field(path).finish(),
            Self::Redis { url, namespace } => formatter
                .debug_struct("Redis")
                .field("url", &redis::redact_password(url))
                .field("namespace", namespace)
                .finish(),
        }
    }
}

impl StorageConfig {
    /// Parses `--storage`: `memory`, `embedded` (the default file), a path to a
    /// redb file, or `redis://host:port`.
    pub fn parse(value: &str, default_file: PathBuf, namespace: &str) -> Result<Self, String> {
        match value {
            "memory" => Ok(Self::Memory),
            "" | "embedded" => Ok(Self::Embedded(default_file)),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Ok(Self::Redis { url: url.to_string(), namespace: namespace.to_string() })
            }
            path if path.contains("://") => Err(format!(
                "--storage {:?}: unknown scheme; use `memory`, `embedded`, a file path, or redis://host:port",
                redis::redact_password(path)
            )),
            path => Ok(Self::Embedded(PathBuf::from(path))),
        }
    }

    /// Opens the backend. An existing file that cannot be opened is an error,
    /// never a fresh empty store.
    pub fn open(&self) -> Result<Box<dyn Backend>, StorageError> {
        Ok(match self {
            Self::Memory => Box::new(memory::MemoryBackend::default()),
            Self::Embedded(path) => Box::new(embedded::EmbeddedBackend::open(path)?),
            Self::Redis { url, namespace } => Box::new(redis::RedisBackend::open(url, namespace)?),
        })
    }
}

enum Op {
    Write(Write),
    Flush(oneshot::Sender<()>),
}

/// A cloneable handle on the group-commit writer.
#[derive(Clone)]
pub struct Storage {
    ops: mpsc::Sender<Op>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

impl Storage {
    /// Starts the writer thread over `backend`.
    pub fn start(backend: Box<dyn Backend>) -> Self {
        let (ops, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("gcs-storage".into())
            .spawn(move || write_loop(backend, receiver))
            .expect("spawn the GCS storage thread");
        Self { ops }
    }

    /// An in-memory store (tests and embedded clusters).
    pub fn in_memory() -> Self {
        Self::start(Box::new(memory::MemoryBackend::default()))
    }

    /// Queues a row.
    pub fn put<T: Serialize>(&self, table: Table, key: &[u8], row: &T) {
        match rmp_serde::to_vec_named(row) {
            Ok(value) => {
                let _ = self.ops.send(Op::Write(Write { table, key: key.to_vec(), value: Some(value) }));
            }
            Err(error) => error!(table = table.name(), %error, "cannot encode a GCS row; it is not persisted"),
        }
    }

    /// Queues a deletion.
    pub fn delete(&self, table: Table, key: &[u8]) {
        let _ = self.ops.send(Op::Write(Write { table, key: key.to_vec(), value: None }));
    }

    /// Waits until every write queued before this call is durable.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.ops.send(Op::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// A table's way out to storage: its mutating methods queue the rows they
/// change. The default port persists nothing (unit tests, `--storage memory`
/// callers that never restart).
#[derive(Clone, Debug, Default)]
pub struct Rows(Option<(Storage, Table)>);

impl Rows {
    /// Rows of `table` go to `storage`.
    pub fn new(storage: Storage, table: Table) -> Self {
        Self(Some((storage, table)))
    }

    /// Queues a row.
    pub fn put<T: Serialize>(&self, key: impl AsRef<[u8]>, row: &T) {
        if let Some((storage, table)) = &self.0 {
            storage.put(*table, key.as_ref(), row);
        }
    }

    /// Queues a deletion.
    pub fn delete(&self, key: impl AsRef<[u8]>) {
        if let Some((storage, table)) = &self.0 {
            storage.delete(*table, key.as_ref());
        }
    }
}

/// Decodes every row of `table` in `snapshot`.
pub fn rows_of<T: DeserializeOwned>(snapshot: &Snapshot, table: Table, store: &str) -> Result<Vec<T>, StorageError> {
    let Some(rows) = snapshot.get(&table) else { return Ok(Vec::new()) };
    rows.iter().map(|(key, value)| decode(table, key, value, store)).collect()
}

/// Group commit: block for the first op, take everything else queued, commit once.
fn write_loop(mut backend: Box<dyn Backend>, ops: mpsc::Receiver<Op>) {
    let mut backoff = Duration::from_millis(10);
    while let Ok(first) = ops.recv() {
        let mut writes = Vec::new();
        let mut flushes = Vec::new();
        let mut take = |op: Op| match op {
            Op::Write(write) => writes.push(write),
            Op::Flush(done) => flushes.push(done),
        };
        take(first);
        while let Ok(op) = ops.try_recv() {
            take(op);
        }
        // A failed commit (disk full, Redis away) is retried: rows are never dropped.
        while !writes.is_empty() {
            match backend.commit(&writes) {
                Ok(()) => {
                    backoff = Duration::from_millis(10);
                    break;
                }
                Err(err) => {
                    warn!(store = %backend.describe(), error = %err, "GCS storage commit failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Decodes a row read back from storage, naming where it came from on failure.
pub fn decode<T: DeserializeOwned>(table: Table, key: &[u8], value: &[u8], store: &str) -> Result<T, StorageError> {
    rmp_serde::from_slice(value).map_err(|error| {
        StorageError(format!(
            "{store}: cannot decode a row of table {:?} (key {}): {error}. The store was written by an \
             incompatible manta or is damaged; move it aside to start with empty tables",
            table.name(),
            String::from_utf8_lossy(key)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that records each commit, to see batching.
    struct Recording(std::sync::Arc<std::sync::Mutex<Vec<usize>>>);

    impl Backend for Recording {
        fn load(&mut self) -> Result<Snapshot, StorageError> {
            Ok(Snapshot::new())
        }
        fn commit(&mut self, writes: &[Write]) -> Result<(), StorageError> {
            std::thread::sleep(Duration::from_millis(5));
            self.0.lock().unwrap().push(writes.len());
            Ok(())
        }
        fn describe(&self) -> String {
            "recording".into()
        }
    }

    #[tokio::test]
    async fn writes_are_group_committed_and_flush_waits_for_them() {
        let commits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let storage = Storage::start(Box::new(Recording(commits.clone())));
        for index in 0..1000u32 {
            storage.put(Table::Kv, &index.to_be_bytes(), &index);
        }
        storage.flush().await;
        let commits = commits.lock().unwrap().clone();
        assert_eq!(commits.iter().sum::<usize>(), 1000, "every row is committed before flush returns");
        assert!(commits.len() < 100, "1000 queued rows take few commits, got {}", commits.len());
    }

    #[test]
    fn storage_flag_parses() {
        let file = PathBuf::from("/tmp/x/tables.redb");
        assert_eq!(StorageConfig::parse("memory", file.clone(), "m").unwrap(), StorageConfig::Memory);
        assert_eq!(StorageConfig::parse("embedded", file.clone(), "m").unwrap(), StorageConfig::Embedded(file.clone()));
        assert!(matches!(
            StorageConfig::parse("redis://127.0.0.1:7000", file.clone(), "m").unwrap(),
            StorageConfig::Redis { .. }
        ));
        assert!(StorageConfig::parse("postgres://x", file, "m").is_err());
    }
}
