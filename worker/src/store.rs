//! The in-process object table of a manta process: the reference counts of the
//! objects it owns or borrows ([`RefTable`]), the values of small objects it owns
//! (and copies of borrowed ones it fetched), where large ones live, and who waits
//! for pending ones. An object costs a slot in two tables; a waiter is added only
//! while someone waits.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manta_proto::object::{ObjectBody, ObjectRecord};
use manta_proto::object::{ObjectLocation, ObjectState};
use manta_proto::task::{ObjectValue, WorkerAddress};
use manta_proto::{NodeId, ObjectId, WorkerId};
use tokio::sync::{Notify, oneshot};

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

/// An object's value (once it has one) and who waits for it.
#[derive(Default)]
struct Slot {
    value: Option<ObjectValue>,
    waiters: Vec<Waiter>,
}

/// Someone waiting for one object's value.
enum Waiter {
    /// A `get` of this object: sent the value.
    One(oneshot::Sender<ObjectValue>),
    /// A `wait` on many objects: told this one's position.
    Many(Arc<WaitSet>, usize),
}

impl Waiter {
    fn is_live(&self) -> bool {
        match self {
            Waiter::One(sender) => !sender.is_closed(),
            Waiter::Many(set, _) => !set.done.load(Ordering::Relaxed),
        }
    }

    fn wake(self, value: &ObjectValue) {
        match self {
            Waiter::One(sender) => {
                let _ = sender.send(value.clone());
            }
            Waiter::Many(set, position) => set.mark(position),
        }
    }
}

/// The objects one `wait` watches: positions are pushed as their values arrive.
/// Waiters of a closed set are dropped the next time their slot is touched.
#[derive(Default)]
pub struct WaitSet {
    ready: Mutex<Vec<usize>>,
    notify: Notify,
    done: AtomicBool,
}

impl WaitSet {
    fn mark(&self, position: usize) {
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(position);
        self.notify.notify_one();
    }

    /// Waits until some watched objects have values; returns their positions.
    pub async fn ready(&self) -> Vec<usize> {
        loop {
            let taken = std::mem::take(&mut *self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if !taken.is_empty() {
                return taken;
            }
            self.notify.notified().await;
        }
    }

    /// Stops watching: the set's waiters are dropped.
    pub fn close(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Inner {
    refs: RefTable,
    values: HashMap<ObjectId, Slot>,
    /// Nodes holding copies of stored objects this process owns (beyond the primary).
    copies: HashMap<ObjectId, Vec<String>>,
}

impl Inner {
    fn slot(&mut self, object_id: ObjectId) -> &mut Slot {
        self.values.entry(object_id).or_default()
    }

    /// Adds a waiter to a pending object, dropping those that stopped waiting.
    fn add_waiter(&mut self, object_id: ObjectId, waiter: Waiter) {
        let slot = self.slot(object_id);
        slot.waiters.retain(Waiter::is_live);
        slot.waiters.push(waiter);
    }

    fn apply(&mut self, effects: Vec<RefEffect>, actions: &mut Vec<Action>) {
        for effect in effects {
            match effect {
                RefEffect::Register { owner, object_id } => actions.push(Action::Register(owner, object_id)),
                RefEffect::Unregister { owner, object_id } => actions.push(Action::Unregister(owner, object_id)),
                RefEffect::Free { object_id } | RefEffect::Forget { object_id } => {
                    let value = self.values.remove(&object_id).and_then(|slot| slot.value);
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
        let slot = inner.slot(object_id);
        for waiter in std::mem::take(&mut slot.waiters) {
            waiter.wake(&value);
        }
        slot.value = Some(value);
        let mut actions = Vec::new();
        inner.apply(effects, &mut actions);
        Stored::Kept(actions)
    }

    /// Forgets a value that was lost (it will be made again): waiters wait anew.
    pub fn reset(&self, object_id: ObjectId) {
        let mut inner = self.lock();
        if inner.refs.get(&object_id).is_some() {
            inner.slot(object_id).value = None;
            inner.copies.remove(&object_id);
        }
    }

    /// The value, if ready.
    pub fn try_get(&self, object_id: ObjectId) -> Option<ObjectValue> {
        let inner = self.lock();
        inner.values.get(&object_id).and_then(|slot| slot.value.clone())
    }

    /// True when the object has a value here.
    pub fn is_ready(&self, object_id: ObjectId) -> bool {
        let inner = self.lock();
        inner.values.get(&object_id).is_some_and(|slot| slot.value.is_some())
    }

    /// True while some reference to the object is counted here.
    pub fn is_referenced(&self, object_id: ObjectId) -> bool {
        self.lock().refs.get(&object_id).is_some()
    }

    /// Waits up to `timeout` (forever when `None`) for the value. `None` on timeout,
    /// or when the object is not referenced here (freed).
    pub async fn wait(&self, object_id: ObjectId, timeout: Option<Duration>) -> Option<ObjectValue> {
        let receiver = {
            let mut inner = self.lock();
            inner.refs.get(&object_id)?;
            if let Some(value) = inner.values.get(&object_id).and_then(|slot| slot.value.clone()) {
                return Some(value);
            }
            let (sender, receiver) = oneshot::channel();
            inner.add_waiter(object_id, Waiter::One(sender));
            receiver
        };
        // The sender is dropped when the object is freed.
        let ready = async { receiver.await.ok() };
        match timeout {
            Some(timeout) => tokio::time::timeout(timeout, ready).await.ok().flatten(),
            None => ready.await,
        }
    }

    /// Watches `objects` (position, id) for `set`: a position is marked when its
    /// object has a value, at once if it has one now. Objects no longer referenced
    /// here are skipped (they never become ready); returns how many are watched.
    pub fn watch(&self, set: &Arc<WaitSet>, objects: &[(usize, ObjectId)]) -> usize {
        let mut inner = self.lock();
        let mut watched = 0;
        for &(position, object_id) in objects {
            if inner.refs.get(&object_id).is_none() {
                continue;
            }
            watched += 1;
            match inner.values.get(&object_id).and_then(|slot| slot.value.as_ref()) {
                Some(_) => set.mark(position),
                None => inner.add_waiter(object_id, Waiter::Many(set.clone(), position)),
            }
        }
        watched
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
                let value = inner.values.get(id).and_then(|slot| slot.value.clone());
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

    #[tokio::test]
    async fn a_wait_set_hears_of_values_now_and_later_and_closed_sets_are_dropped() {
        let store = MemoryStore::default();
        let ids: Vec<_> = (0..3).map(|index| ObjectId::for_put(TaskId::random(), index)).collect();
        for id in &ids[..2] {
            store.add_local_ref(*id, None);
        }
        store.put(ids[0], Ok(ObjectBody::Inline(Bytes::new())), &[]);
        let set = Arc::new(WaitSet::default());
        // The third object is not referenced here: it is not watched.
        let objects: Vec<_> = ids.iter().copied().enumerate().collect();
        assert_eq!(store.watch(&set, &objects), 2);
        assert_eq!(set.ready().await, vec![0]);
        store.put(ids[1], Ok(ObjectBody::Inline(Bytes::new())), &[]);
        assert_eq!(set.ready().await, vec![1]);

        // A closed set's waiter goes when the next waiter comes.
        let pending = ObjectId::for_put(TaskId::random(), 9);
        store.add_local_ref(pending, None);
        let closed = Arc::new(WaitSet::default());
        store.watch(&closed, &[(0, pending)]);
        closed.close();
        let open = Arc::new(WaitSet::default());
        store.watch(&open, &[(5, pending)]);
        assert_eq!(store.lock().values[&pending].waiters.len(), 1);
        store.put(pending, Ok(ObjectBody::Inline(Bytes::new())), &[]);
        assert_eq!(open.ready().await, vec![5]);
        assert!(closed.ready.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_get_waiting_on_a_freed_object_ends() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let id = ObjectId::for_return(TaskId::random(), 0);
        store.add_local_ref(id, None);
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait(id, None).await })
        };
        while store.lock().values.get(&id).is_none_or(|slot| slot.waiters.is_empty()) {
            tokio::task::yield_now().await;
        }
        store.remove_local_ref(id);
        assert_eq!(waiter.await.unwrap(), None);
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
