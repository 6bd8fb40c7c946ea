//! The in-memory backend: tables live as long as the process (tests, embedded clusters).

use super::{Backend, Snapshot, StorageError, Write};

/// Rows in a map.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    rows: Snapshot,
}

impl Backend for MemoryBackend {
    fn load(&mut self) -> Result<Snapshot, StorageError> {
        Ok(self.rows.clone())
    }

    fn commit(&mut self, writes: &[Write]) -> Result<(), StorageError> {
        for write in writes {
            let table = self.rows.entry(write.table).or_default();
            match &write.value {
                Some(value) => {
                    table.insert(write.key.clone(), value.clone());
                }
                None => {
                    table.remove(&write.key);
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "in-memory storage".into()
    }
}
