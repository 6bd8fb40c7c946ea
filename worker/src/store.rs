//! The in-process object store of an owner: values of small objects it owns
//! (and copies of borrowed ones it fetched), and waiters for pending ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use manta_proto::ObjectId;
use manta_proto::task::ObjectValue;
use tokio::sync::watch;

struct Entry {
    value: watch::Sender<Option<ObjectValue>>,
    /// Live `ObjectRef` handles in this process.
    local_refs: usize,
    /// A handle was serialized (nested in a value or sent away): keep the value.
    escaped: bool,
}

/// Objects by id.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<ObjectId, Entry>>,
}

impl MemoryStore {
    fn with_entry<R>(&self, object_id: ObjectId, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entries = self.entries.lock().expect("store lock");
        let entry = entries.entry(object_id).or_insert_with(|| Entry {
            value: watch::channel(None).0,
            local_refs: 0,
            escaped: false,
        });
        f(entry)
    }

    /// Stores a value (a task result or a `put`), waking waiters.
    pub fn put(&self, object_id: ObjectId, value: ObjectValue) {
        self.with_entry(object_id, |entry| {
            entry.value.send_replace(Some(value));
        });
    }

    /// The value, if ready.
    pub fn try_get(&self, object_id: ObjectId) -> Option<ObjectValue> {
        let entries = self.entries.lock().expect("store lock");
        entries.get(&object_id).and_then(|entry| entry.value.borrow().clone())
    }

    /// True when the object has a value here.
    pub fn is_ready(&self, object_id: ObjectId) -> bool {
        let entries = self.entries.lock().expect("store lock");
        entries.get(&object_id).is_some_and(|entry| entry.value.borrow().is_some())
    }

    /// Waits up to `timeout` (forever when `None`) for the value.
    pub async fn wait(&self, object_id: ObjectId, timeout: Option<Duration>) -> Option<ObjectValue> {
        let mut receiver = self.with_entry(object_id, |entry| entry.value.subscribe());
        let ready = async {
            match receiver.wait_for(Option::is_some).await {
                Ok(value) => value.clone(),
                Err(_) => None,
            }
        };
        match timeout {
            Some(timeout) => tokio::time::timeout(timeout, ready).await.ok().flatten(),
            None => ready.await,
        }
    }

    /// A new local handle.
    pub fn add_local_ref(&self, object_id: ObjectId) {
        self.with_entry(object_id, |entry| entry.local_refs += 1);
    }

    /// A local handle dropped; frees the value when it was the last one and
    /// the object never left this process.
    pub fn remove_local_ref(&self, object_id: ObjectId) {
        let mut entries = self.entries.lock().expect("store lock");
        if let Some(entry) = entries.get_mut(&object_id) {
            entry.local_refs = entry.local_refs.saturating_sub(1);
            if entry.local_refs == 0 && !entry.escaped && entry.value.borrow().is_some() {
                entries.remove(&object_id);
            }
        }
    }

    /// A handle left this process: the value must stay for borrowers.
    pub fn mark_escaped(&self, object_id: ObjectId) {
        self.with_entry(object_id, |entry| entry.escaped = true);
    }

    /// Number of objects held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().expect("store lock").len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use manta_proto::TaskId;

    use super::*;

    #[tokio::test]
    async fn wait_wakes_on_put_and_times_out() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let id = ObjectId::for_return(TaskId::random(), 0);
        assert!(store.wait(id, Some(Duration::from_millis(10))).await.is_none());
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait(id, None).await })
        };
        store.put(id, Ok(Bytes::from_static(b"v")));
        assert_eq!(waiter.await.unwrap(), Some(Ok(Bytes::from_static(b"v"))));
    }

    #[test]
    fn last_local_ref_frees_unless_escaped() {
        let store = MemoryStore::default();
        let (kept, freed) = (ObjectId::for_return(TaskId::random(), 0), ObjectId::for_return(TaskId::random(), 0));
        for id in [kept, freed] {
            store.add_local_ref(id);
            store.add_local_ref(id);
            store.put(id, Ok(Bytes::new()));
        }
        store.mark_escaped(kept);
        for id in [kept, freed] {
            store.remove_local_ref(id);
            store.remove_local_ref(id);
        }
        assert!(store.is_ready(kept));
        assert!(!store.is_ready(freed));
        assert_eq!(store.len(), 1);
    }
}
