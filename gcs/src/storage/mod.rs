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
    /// Stored packages by name (their bytes are files beside the tables).
    Packages,
    /// Submitted jobs by submission id.
    Submissions,
}

impl Table {
    /// Every table, in load order.
    pub const ALL: [Table; 8] = [
        Table::Nodes,
        Table::Jobs,
        Table::Actors,
        Table::Kv,
        Table::PlacementGroups,
        Table::Meta,
        Table::Packages,
        Table::Submissions,
    ];

    /// The table's name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nodes => "nodes",
            Table::Jobs => "jobs",
            Table::Actors => "actors",
            Table::Kv => "kv",
            Table::PlacementGroups => "placement_groups",
            Table::Meta => "meta",
            Table::Packages => "packages",
            Table::Submissions => "submissions",
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
    /// Closes and opens the store again after a failed commit (redb keeps the
    /// first I/O error until its database is reopened).
    fn reopen(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Why the store can no longer be used at all (it is not the one this head
    /// wrote: a Redis flushed or replaced under it). Checked after each failure;
    /// the writer then gives up at once.
    fn unusable(&self) -> Option<String> {
        None
    }
}

/// How long commits may keep failing before the writer gives up and the head stops.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// Rows queued for the writer, at most; a caller waits for room beyond that.
const MAX_QUEUED: usize = 1 << 16;

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

/// Watches the writer: see [`Storage::failure`].
pub struct Failure(tokio::sync::watch::Receiver<Option<String>>);

impl Failure {
    /// The reason once the writer gave up; `None` when it ended normally (the GCS stopped).
    pub async fn wait(mut self) -> Option<String> {
        self.0.wait_for(Option::is_some).await.ok().and_then(|reason| reason.clone())
    }
}

enum Op {
    Write(Write),
    Flush(oneshot::Sender<()>),
}

/// A cloneable handle on the group-commit writer.
#[derive(Clone)]
pub struct Storage {
    ops: mpsc::SyncSender<Op>,
    /// Set once, when the writer gave up: why.
    failed: tokio::sync::watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

impl Storage {
    /// Starts the writer thread over `backend`.
    pub fn start(backend: Box<dyn Backend>) -> Self {
        Self::start_with(backend, DEFAULT_GIVE_UP_AFTER)
    }

    /// Starts the writer thread; it gives up after commits failed for `give_up_after`.
    pub fn start_with(backend: Box<dyn Backend>, give_up_after: Duration) -> Self {
        let (ops, receiver) = mpsc::sync_channel(MAX_QUEUED);
        let (report, failed) = tokio::sync::watch::channel(None);
        std::thread::Builder::new()
            .name("gcs-storage".into())
            .spawn(move || {
                let describe = backend.describe();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    write_loop(backend, receiver, give_up_after)
                }));
                let reason = match outcome {
                    Ok(None) => return,
                    Ok(Some(reason)) => reason,
                    Err(_) => format!("the storage writer for {describe} crashed"),
                };
                error!(%reason, "the GCS can no longer make changes durable; the head stops");
                let _ = report.send(Some(reason));
            })
            .expect("spawn the GCS storage thread");
        Self { ops, failed }
    }

    /// What resolves when the writer gives up (holding it does not keep the writer alive).
    pub fn failure(&self) -> Failure {
        Failure(self.failed.clone())
    }

    fn unavailable(&self) -> StorageError {
        let reason = self.failed.borrow().clone().unwrap_or_else(|| "the storage writer stopped".into());
        StorageError(format!(
            "the GCS cannot make changes durable ({reason}); restart the head: it recovers the last durable state"
        ))
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

    /// Waits until every write queued before this call is durable; an error when
    /// the writer is gone (the change may not be durable).
    pub async fn flush(&self) -> Result<(), StorageError> {
        let (done, wait) = oneshot::channel();
        self.ops.send(Op::Flush(done)).map_err(|_| self.unavailable())?;
        wait.await.map_err(|_| self.unavailable())
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
/// A failed commit reopens the store and is retried; after `give_up_after` of
/// failures the loop returns why (the rows are not acknowledged: their flushes fail).
fn write_loop(mut backend: Box<dyn Backend>, ops: mpsc::Receiver<Op>, give_up_after: Duration) -> Option<String> {
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
        // A failed commit (disk full, Redis away) is retried on a reopened store:
        // rows are never dropped, and never acknowledged before they are written.
        let mut failing_since = None;
        while !writes.is_empty() {
            match backend.commit(&writes) {
                Ok(()) => {
                    backoff = Duration::from_millis(10);
                    break;
                }
                Err(err) => {
                    if let Some(reason) = backend.unusable() {
                        return Some(reason);
                    }
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= give_up_after {
                        return Some(format!(
                            "commits to {} failed for {:?}; last error: {err}",
                            backend.describe(),
                            give_up_after
                        ));
                    }
                    warn!(store = %backend.describe(), error = %err, "GCS storage commit failed; reopening and retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    if let Err(error) = backend.reopen() {
                        warn!(store = %backend.describe(), %error, "reopening the GCS storage failed");
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
    None
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
        storage.flush().await.unwrap();
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

    /// Fails every commit until it is reopened (like redb after an I/O error).
    struct FailsUntilReopened {
        broken: bool,
        committed: std::sync::Arc<std::sync::Mutex<usize>>,
    }

    impl Backend for FailsUntilReopened {
        fn load(&mut self) -> Result<Snapshot, StorageError> {
            Ok(Snapshot::new())
        }
        fn commit(&mut self, writes: &[Write]) -> Result<(), StorageError> {
            if self.broken {
                return Err(StorageError("I/O error (latched until reopened)".into()));
            }
            *self.committed.lock().unwrap() += writes.len();
            Ok(())
        }
        fn describe(&self) -> String {
            "latching".into()
        }
        fn reopen(&mut self) -> Result<(), StorageError> {
            self.broken = false;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_commit_reopens_the_store_and_the_rows_are_written() {
        let committed = std::sync::Arc::new(std::sync::Mutex::new(0));
        let storage = Storage::start(Box::new(FailsUntilReopened { broken: true, committed: committed.clone() }));
        for index in 0..10u32 {
            storage.put(Table::Kv, &index.to_be_bytes(), &index);
        }
        storage.flush().await.expect("written after the reopen");
        assert_eq!(*committed.lock().unwrap(), 10);
    }

    /// Never commits; or panics on commit.
    struct Broken {
        panics: bool,
    }

    impl Backend for Broken {
        fn load(&mut self) -> Result<Snapshot, StorageError> {
            Ok(Snapshot::new())
        }
        fn commit(&mut self, _writes: &[Write]) -> Result<(), StorageError> {
            assert!(!self.panics, "a backend bug");
            Err(StorageError("disk gone".into()))
        }
        fn describe(&self) -> String {
            "broken".into()
        }
    }

    #[tokio::test]
    async fn a_writer_that_gives_up_or_crashes_fails_every_flush_and_says_so() {
        for panics in [false, true] {
            let storage = Storage::start_with(Box::new(Broken { panics }), Duration::from_millis(100));
            storage.put(Table::Kv, b"k", &1u32);
            let error = storage.flush().await.expect_err("never acknowledged");
            assert!(error.to_string().contains("restart the head"), "{error}");
            let reason = storage.failure().wait().await.unwrap();
            assert!(reason.contains(if panics { "crashed" } else { "disk gone" }), "{reason}");
            storage.put(Table::Kv, b"k", &2u32);
            assert!(storage.flush().await.is_err(), "later changes are refused too");
        }
    }
}
