//! The embedded backend (the default): one redb file, one table per GCS table.
//!
//! redb is pure Rust (no C build), keeps a copy-on-write B-tree with ACID
//! transactions, and makes each commit durable with one fsync, which group
//! commit shares among every change queued meanwhile. Its API changes at
//! each major release, so it stays inside this file.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Backend, Snapshot, StorageError, Table, Write};

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A redb database file.
pub struct EmbeddedBackend {
    /// `None` only between closing and reopening in [`Backend::reopen`].
    db: Option<Database>,
    path: PathBuf,
}

impl EmbeddedBackend {
    /// Opens `path`, creating it (and its folder) when absent. A file that
    /// exists but cannot be opened is an error naming it.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent() {
            manta_proto::private_fs::create_dir_all(parent).map_err(|error| {
                StorageError(format!("cannot create the GCS storage folder {}: {error}", parent.display()))
            })?;
        }
        // Create it private (0600, no link followed); redb initialises an empty file.
        match manta_proto::private_fs::create_new(path) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(StorageError(format!("cannot create the GCS storage file {}: {error}", path.display())));
            }
        }
        let db = Database::create(path).map_err(|error| {
            StorageError(format!(
                "cannot open the GCS storage file {}: {error}. Fix or move the file aside (its tables would be \
                 lost), or start with --storage memory",
                path.display()
            ))
        })?;
        Ok(Self { db: Some(db), path: path.to_path_buf() })
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db.as_ref().ok_or_else(|| self.error("not open", "reopening it failed"))
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) -> StorageError {
        StorageError(format!("GCS storage file {}: {what}: {error}", self.path.display()))
    }
}

impl Backend for EmbeddedBackend {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        let read = self.db()?.begin_read().map_err(|error| self.error("cannot read", error))?;
        let mut snapshot = Snapshot::new();
        for table in Table::ALL {
            let rows = match read.open_table(definition(table)) {
                Ok(rows) => rows,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(error) => return Err(self.error(&format!("cannot open table {}", table.name()), error)),
            };
            let entries = snapshot.entry(table).or_default();
            for entry in rows.iter().map_err(|error| self.error("cannot scan", error))? {
                let (key, value) = entry.map_err(|error| self.error("cannot read a row", error))?;
                entries.insert(key.value().to_vec(), value.value().to_vec());
            }
        }
        Ok(snapshot)
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StorageError> {
        let transaction = self.db()?.begin_write().map_err(|error| self.error("cannot write", error))?;
        for table in Table::ALL {
            let mut batch = writes.iter().filter(|write| write.table == table).peekable();
            if batch.peek().is_none() {
                continue;
            }
            let mut rows = transaction
                .open_table(definition(table))
                .map_err(|error| self.error(&format!("cannot open table {}", table.name()), error))?;
            for write in batch {
                let done = match &write.value {
                    Some(value) => rows.insert(write.key.as_slice(), value.as_slice()).map(drop),
                    None => rows.remove(write.key.as_slice()).map(drop),
                };
                done.map_err(|error| self.error("cannot write a row", error))?;
            }
        }
        transaction.commit().map_err(|error| self.error("commit failed", error))
    }

    fn describe(&self) -> String {
        format!("GCS storage file {}", self.path.display())
    }

    fn reopen(&mut self) -> Result<(), StorageError> {
        // Close first: redb refuses a second open of a file this process holds.
        self.db = None;
        let db = Database::create(&self.path).map_err(|error| self.error("cannot reopen", error))?;
        self.db = Some(db);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_reopening_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gcs/tables.redb");
        {
            let mut backend = EmbeddedBackend::open(&path).unwrap();
            let writes = vec![
                Write { table: Table::Kv, key: b"a".to_vec(), value: Some(b"1".to_vec()) },
                Write { table: Table::Kv, key: b"b".to_vec(), value: Some(b"2".to_vec()) },
                Write { table: Table::Nodes, key: b"n".to_vec(), value: Some(b"3".to_vec()) },
            ];
            backend.commit(&writes).unwrap();
            backend.commit(&[Write { table: Table::Kv, key: b"a".to_vec(), value: None }]).unwrap();
        }
        let snapshot = EmbeddedBackend::open(&path).unwrap().load().unwrap();
        assert_eq!(snapshot[&Table::Kv].len(), 1);
        assert_eq!(snapshot[&Table::Kv][b"b".as_slice()], b"2");
        assert_eq!(snapshot[&Table::Nodes][b"n".as_slice()], b"3");

        std::fs::write(&path, b"this is not a redb file at all, just some bytes....").unwrap();
        let error = EmbeddedBackend::open(&path).err().expect("a damaged file is refused");
        assert!(error.to_string().contains("tables.redb"), "{error}");
    }

    /// Durable writes per second, one at a time versus from 256 concurrent
    /// writers sharing group commits (`cargo test --release -p manta-gcs
    /// group_commit -- --ignored --nocapture`; figures in BENCHMARKS.md).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark"]
    async fn group_commit_throughput() {
        use std::time::Instant;

        use crate::storage::Storage;

        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::start(Box::new(EmbeddedBackend::open(&dir.path().join("t.redb")).unwrap()));
        let row = vec![7u8; 100];
        let count = 2000u32;
        let started = Instant::now();
        for index in 0..count {
            storage.put(Table::Kv, &index.to_be_bytes(), &row);
            storage.flush().await.unwrap();
        }
        let serial = f64::from(count) / started.elapsed().as_secs_f64();

        let writers = 256u32;
        let per_writer = 100u32;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let (storage, row) = (storage.clone(), row.clone());
            tasks.push(tokio::spawn(async move {
                for index in 0..per_writer {
                    storage.put(Table::Actors, &(writer * per_writer + index).to_be_bytes(), &row);
                    storage.flush().await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let grouped = f64::from(writers * per_writer) / started.elapsed().as_secs_f64();
        println!("durable writes/s: one at a time {serial:.0}, 256 concurrent writers {grouped:.0}");
        assert!(grouped > serial, "group commit must beat one commit per write");
    }

    #[test]
    fn a_reopened_file_keeps_its_rows_and_takes_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut backend = EmbeddedBackend::open(&dir.path().join("tables.redb")).unwrap();
        let write = |key: &[u8]| Write { table: Table::Kv, key: key.to_vec(), value: Some(b"v".to_vec()) };
        backend.commit(&[write(b"before")]).unwrap();
        backend.reopen().unwrap();
        backend.commit(&[write(b"after")]).unwrap();
        let rows = backend.load().unwrap().remove(&Table::Kv).unwrap();
        assert_eq!(rows.keys().cloned().collect::<Vec<_>>(), [b"after".to_vec(), b"before".to_vec()]);
    }
}
