//! The in-process object table of a manta process: the reference counts of the
//! objects it owns or borrows ([`RefTable`]), the values of small objects it owns
//! (and copies of borrowed ones it fetched), where large ones live, and waiters
//! for pending ones.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Mutex;
use std::time::Duration;

use manta_proto::object::{ObjectBody, ObjectRecord};
use manta_proto::object::{ObjectLocation, ObjectState};
use manta_proto::task::{ObjectValue, WorkerAddress};
use manta_proto::{NodeId, ObjectId, WorkerId};
use tokio::sync::watch;

use crate::refcount::{RefEffect, RefTable};

/// What the runtime must do after the table changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Register with an owner.
    Register(WorkerAddress, ObjectId),
    /// Unregister from an owner.
    Unregister(WorkerAddress, ObjectId),
    /// Free the store copies of a freed object on these nodes.
    FreeCopies(ObjectId, Vec<String>),
}

#[derive(Default)]
struct Inner {
    refs: RefTable,
    values: HashMap<ObjectId, watch::Sender<Option<ObjectValue>>>,
    /// Nodes holding copies of stored objects this process owns (beyond the primary).
    copies: HashMap<ObjectId, Vec<String>>,
}

impl Inner {
    fn slot(&mut self, object_id: ObjectId) -> &watch::Sender<Option<ObjectValue>> {
        self.values.entry(object_id).or_insert_with(|| watch::channel(None).0)
    }

    fn apply(&mut self, effects: Vec<RefEffect>, actions: &mut Vec<Action>) {
        for effect in effects {
            match effect {
                RefEffect::Register { owner, object_id } => actions.push(Action::Register(owner, object_id)),
                RefEffect::Unregister { owner, object_id } => actions.push(Action::Unregister(owner, object_id)),
                RefEffect::Free { object_id } | RefEffect::Forget { object_id } => {
                    let value = self.values.remove(&object_id).and_then(|slot| slot.borrow().clone());
                    let copies = self.copies.remove(&object_id).unwrap_or_default();
                    if let (Some(Ok(ObjectBody::Stored(stored))), true) =
                        (value, matches!(effect, RefEffect::Free { .. }))
                    {
                        let mut nodes = copies;
                        nodes.push(stored.node_address);
                        actions.push(Action::FreeCopies(object_id, nodes));
                    }
                }
            }
        }
    }
}

/// Whether a value was kept.
#[derive(Debug)]
pub enum Stored {
    /// Kept; these are the actions its nested refs caused.
    Kept(Vec<Action>),
    /// No reference to the object is left here: the value was dropped.
    Unreferenced,
}

/// The object table of one process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("store lock")
    }

    /// Stores a value (a task result, a `put`, or a fetched copy), waking waiters.
    /// `nested` are the refs inside it (`None` owner = this process), pinned while it lives.
    pub fn put(&self, object_id: ObjectId, value: ObjectValue, nested: &[(ObjectId, Option<WorkerAddress>)]) -> Stored {
        let mut inner = self.lock();
        let mut effects = Vec::new();
        if inner.refs.get(&object_id).is_none() {
            return Stored::Unreferenced;
        }
        if !nested.is_empty() {
            inner.refs.set_nested(object_id, nested, &mut effects);
        }
        inner.slot(object_id).send_replace(Some(value));
        let mut actions = Vec::new();
        inner.apply(effects, &mut actions);
        Stored::Kept(actions)
    }

    /// Forgets a value that was lost (it will be made again): waiters wait anew.
    pub fn reset(&self, object_id: ObjectId) {
        let mut inner = self.lock();
        if inner.refs.get(&object_id).is_some() {
            inner.slot(object_id).send_replace(None);
            inner.copies.remove(&object_id);
        }
    }

    /// The value, if ready.
    pub fn try_get(&self, object_id: ObjectId) -> Option<ObjectValue> {
        let inner = self.lock();
        inner.values.get(&object_id).and_then(|slot| slot.borrow().clone())
    }

    /// True when the object has a value here.
    pub fn is_ready(&self, object_id: ObjectId) -> bool {
        let inner = self.lock();
        inner.values.get(&object_id).is_some_and(|slot| slot.borrow().is_some())
    }

    /// True while some reference to the object is counted here.
    pub fn is_referenced(&self, object_id: ObjectId) -> bool {
        self.lock().refs.get(&object_id).is_some()
    }

    /// Waits up to `timeout` (forever when `None`) for the value. `None` on timeout,
    /// or when the object is not referenced here (freed).
    pub async fn wait(&self, object_id: ObjectId, timeout: Option<Duration>) -> Option<ObjectValue> {
        let mut receiver = {
            let mut inner = self.lock();
            inner.refs.get(&object_id)?;
            inner.slot(object_id).subscribe()
        };
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

    /// A new reference here (`owner` = `None` for objects this process owns).
    pub fn add_local_ref(&self, object_id: ObjectId, owner: Option<&WorkerAddress>) -> Option<Action> {
        match self.lock().refs.add_local(object_id, owner) {
            Some(RefEffect::Register { owner, object_id }) => Some(Action::Register(owner, object_id)),
            _ => None,
        }
    }

    /// A reference here went away.
    pub fn remove_local_ref(&self, object_id: ObjectId) -> Vec<Action> {
        let mut inner = self.lock();
        let mut effects = Vec::new();
        inner.refs.remove_local(object_id, &mut effects);
        let mut actions = Vec::new();
        inner.apply(effects, &mut actions);
        actions
    }

    /// `borrower` holds refs to these owned objects; returns the unknown ones.
    pub fn add_borrower(&self, object_ids: &[ObjectId], borrower: WorkerId) -> Vec<ObjectId> {
        let mut inner = self.lock();
        object_ids.iter().filter(|id| !inner.refs.add_borrower(**id, borrower)).copied().collect()
    }

    /// `borrower` dropped its refs to these objects.
    pub fn remove_borrower(&self, object_ids: &[ObjectId], borrower: WorkerId) -> Vec<Action> {
        let mut inner = self.lock();
        let mut effects = Vec::new();
        for id in object_ids {
            inner.refs.remove_borrower(*id, borrower, &mut effects);
        }
        let mut actions = Vec::new();
        inner.apply(effects, &mut actions);
        actions
    }

    /// `borrower`'s process is gone.
    pub fn remove_borrower_everywhere(&self, borrower: WorkerId) -> Vec<Action> {
        let mut inner = self.lock();
        let mut effects = Vec::new();
        inner.refs.remove_borrower_everywhere(borrower, &mut effects);
        let mut actions = Vec::new();
        inner.apply(effects, &mut actions);
        actions
    }

    /// A copy of owned `object_id` now lives on `node_address`. False when the
    /// object is already freed (the caller must free that copy).
    pub fn add_location(&self, object_id: ObjectId, node_address: &str) -> bool {
        let mut inner = self.lock();
        if inner.refs.get(&object_id).is_none() {
            return false;
        }
        let copies = inner.copies.entry(object_id).or_default();
        if !copies.iter().any(|known| known == node_address) {
            copies.push(node_address.to_string());
        }
        true
    }

    /// The objects this process owns, for `manta list objects`.
    pub fn owned_records(&self, me: &WorkerAddress, node_id: NodeId, pid: u32, limit: usize) -> Vec<ObjectRecord> {
        let inner = self.lock();
        inner
            .refs
            .entries()
            .filter(|(_, entry)| entry.owner.is_none())
            .take(limit)
            .map(|(id, entry)| {
                let value = inner.values.get(id).and_then(|slot| slot.borrow().clone());
                let (location, size) = match &value {
                    None => (ObjectLocation::Pending, None),
                    Some(Err(_)) => (ObjectLocation::Failed, None),
                    Some(Ok(ObjectBody::Inline(bytes))) => (ObjectLocation::Inline, Some(bytes.len() as u64)),
                    Some(Ok(ObjectBody::Stored(stored))) => (ObjectLocation::Store, Some(stored.size)),
                };
                ObjectRecord {
                    object_id: *id,
                    size,
                    owner: Some(me.clone()),
                    node_id,
                    state: ObjectState::Owned,
                    local_refs: Some(entry.local),
                    borrowers: Some(entry.borrowers.len() as u32),
                    location: Some(location),
                    job_id: None,
                    pid: Some(pid),
                }
            })
            .collect()
    }

    /// True while this process owns referenced objects.
    pub fn owns_objects(&self) -> bool {
        self.lock().refs.owns_objects()
    }

    /// Number of objects referenced here.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().refs.len()
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
        store.add_local_ref(id, None);
        assert!(store.wait(id, Some(Duration::from_millis(10))).await.is_none());
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait(id, None).await })
        };
        store.put(id, Ok(ObjectBody::Inline(Bytes::from_static(b"v"))), &[]);
        assert_eq!(waiter.await.unwrap(), Some(Ok(ObjectBody::Inline(Bytes::from_static(b"v")))));
    }

    #[test]
    fn values_go_with_the_last_reference_and_unreferenced_values_are_not_kept() {
        let store = MemoryStore::default();
        let id = ObjectId::for_put(TaskId::random(), 0);
        store.add_local_ref(id, None);
        assert!(matches!(store.put(id, Ok(ObjectBody::Inline(Bytes::new())), &[]), Stored::Kept(_)));
        assert!(store.is_ready(id));
        assert!(store.remove_local_ref(id).is_empty());
        assert!(!store.is_ready(id));
        assert_eq!(store.len(), 0);
        assert!(matches!(store.put(id, Ok(ObjectBody::Inline(Bytes::new())), &[]), Stored::Unreferenced));
        assert!(!store.is_ready(id));
    }

    #[test]
    fn a_freed_stored_object_names_every_node_with_a_copy() {
        let store = MemoryStore::default();
        let id = ObjectId::for_put(TaskId::random(), 0);
        store.add_local_ref(id, None);
        let stored =
            manta_proto::object::StoredObject { node_id: NodeId::random(), node_address: "a:1".into(), size: 1 << 20 };
        store.put(id, Ok(ObjectBody::Stored(stored)), &[]);
        assert!(store.add_location(id, "b:2"));
        let actions = store.remove_local_ref(id);
        assert_eq!(actions, vec![Action::FreeCopies(id, vec!["b:2".into(), "a:1".into()])]);
        assert!(!store.add_location(id, "c:3"));
    }
}
