//! Distributed reference counting, as a pure state machine (Ray's ownership model).
//!
//! Each process keeps one [`RefTable`]. For an object it **owns**, the entry counts
//! the refs held in this process (`local`: user handles, plus pins held by
//! in-flight tasks that take it as an argument and by live objects whose value
//! contains it) and the set of other processes that **borrow** it. The object is
//! freed when both are empty. For an object it **borrows**, the entry counts local
//! refs only; the first one registers this process with the owner, the last one
//! unregisters it.
//!
//! The protocol around the table keeps two rules, which the property test below
//! checks against arbitrary message interleavings:
//! 1. whoever hands a ref to another process keeps it pinned until that process
//!    has registered with the owner (a task argument until the task's reply, a
//!    nested return ref until the caller's `ReleaseReturns`, a nested value ref for
//!    as long as the containing object lives), and a registration is only
//!    considered done once the owner has answered it;
//! 2. a process's register and unregister messages for one owner travel on one
//!    ordered link, so the owner sees them in the order they were made.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

use manta_proto::task::WorkerAddress;
use manta_proto::{ObjectId, WorkerId};

/// One object's references in this process.
#[derive(Debug, Clone)]
pub struct RefEntry {
    /// `None`: owned by this process (most entries: boxed, so they stay small).
    pub owner: Option<Box<WorkerAddress>>,
    /// Refs held here (handles and pins).
    pub local: u32,
    /// Other processes holding refs (owned objects only).
    pub borrowers: BTreeSet<WorkerId>,
    /// Objects whose refs this object's value contains: pinned while it lives.
    pub nested: Vec<ObjectId>,
}

impl RefEntry {
    fn is_unused(&self) -> bool {
        self.local == 0 && self.borrowers.is_empty()
    }
}

/// What the caller of the table must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefEffect {
    /// A borrowed object is newly held here: register with its owner.
    Register {
        /// The owner.
        owner: WorkerAddress,
        /// The object.
        object_id: ObjectId,
    },
    /// No ref to a borrowed object is left here: tell its owner.
    Unregister {
        /// The owner.
        owner: WorkerAddress,
        /// The object.
        object_id: ObjectId,
    },
    /// An owned object has no ref left anywhere: free its value and store copies.
    Free {
        /// The object.
        object_id: ObjectId,
    },
    /// A borrowed object has no ref left here: drop any cached copy.
    Forget {
        /// The object.
        object_id: ObjectId,
    },
}

/// The reference table of one process.
#[derive(Debug, Default)]
pub struct RefTable {
    entries: FxHashMap<ObjectId, RefEntry>,
    owned: usize,
}

impl RefTable {
    /// The entry of `object_id`.
    pub fn get(&self, object_id: &ObjectId) -> Option<&RefEntry> {
        self.entries.get(object_id)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectId, &RefEntry)> {
        self.entries.iter()
    }

    /// True while this process owns objects that are referenced somewhere.
    pub fn owns_objects(&self) -> bool {
        self.owned > 0
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no object is referenced.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One more ref here. `owner` is `None` for objects this process owns.
    /// Returns a `Register` effect when a borrowed object becomes held.
    pub fn add_local(&mut self, object_id: ObjectId, owner: Option<&WorkerAddress>) -> Option<RefEffect> {
        if let Some(entry) = self.entries.get_mut(&object_id) {
            entry.local += 1;
            return None;
        }
        self.entries.insert(
            object_id,
            RefEntry { owner: owner.cloned().map(Box::new), local: 1, borrowers: BTreeSet::new(), nested: Vec::new() },
        );
        if owner.is_none() {
            self.owned += 1;
        }
        owner.map(|owner| RefEffect::Register { owner: owner.clone(), object_id })
    }

    /// One ref fewer here; frees or unregisters on the last one, and releases
    /// what the object's value pinned.
    pub fn remove_local(&mut self, object_id: ObjectId, effects: &mut Vec<RefEffect>) {
        let Some(entry) = self.entries.get_mut(&object_id) else { return };
        entry.local = entry.local.saturating_sub(1);
        if entry.is_unused() {
            self.release_if_unused(object_id, effects);
        }
    }

    /// Records that `object_id`'s value contains refs to `nested` (with their
    /// owners; `None` = this process), pinning them while it lives. Returns false
    /// (pinning nothing) when `object_id` is no longer referenced here.
    pub fn set_nested(
        &mut self,
        object_id: ObjectId,
        nested: &[(ObjectId, Option<WorkerAddress>)],
        effects: &mut Vec<RefEffect>,
    ) -> bool {
        if !self.entries.contains_key(&object_id) {
            return false;
        }
        let mut ids = Vec::with_capacity(nested.len());
        for (inner, owner) in nested {
            effects.extend(self.add_local(*inner, owner.as_ref()));
            ids.push(*inner);
        }
        if let Some(entry) = self.entries.get_mut(&object_id) {
            entry.nested.extend(ids);
        }
        true
    }

    /// `borrower` holds refs to owned `object_id`. False when the object is unknown
    /// (already freed: a protocol breach or a late message from a dead process).
    pub fn add_borrower(&mut self, object_id: ObjectId, borrower: WorkerId) -> bool {
        match self.entries.get_mut(&object_id) {
            Some(entry) if entry.owner.is_none() => {
                entry.borrowers.insert(borrower);
                true
            }
            _ => false,
        }
    }

    /// `borrower` dropped its refs to `object_id`.
    pub fn remove_borrower(&mut self, object_id: ObjectId, borrower: WorkerId, effects: &mut Vec<RefEffect>) {
        let Some(entry) = self.entries.get_mut(&object_id) else { return };
        entry.borrowers.remove(&borrower);
        self.release_if_unused(object_id, effects);
    }

    /// `borrower` is gone (its process died): it holds nothing any more.
    pub fn remove_borrower_everywhere(&mut self, borrower: WorkerId, effects: &mut Vec<RefEffect>) {
        let held: Vec<ObjectId> =
            self.entries.iter().filter(|(_, entry)| entry.borrowers.contains(&borrower)).map(|(id, _)| *id).collect();
        for object_id in held {
            self.remove_borrower(object_id, borrower, effects);
        }
    }

    fn release_if_unused(&mut self, object_id: ObjectId, effects: &mut Vec<RefEffect>) {
        if !self.entries.get(&object_id).is_some_and(RefEntry::is_unused) {
            return;
        }
        let mut pending = vec![object_id];
        while let Some(object_id) = pending.pop() {
            if !self.entries.get(&object_id).is_some_and(RefEntry::is_unused) {
                continue;
            }
            let entry = self.entries.remove(&object_id).expect("checked above");
            match entry.owner {
                None => {
                    self.owned -= 1;
                    effects.push(RefEffect::Free { object_id });
                }
                Some(owner) => {
                    effects.push(RefEffect::Unregister { owner: *owner, object_id });
                    effects.push(RefEffect::Forget { object_id });
                }
            }
            for inner in entry.nested {
                if let Some(inner_entry) = self.entries.get_mut(&inner) {
                    inner_entry.local = inner_entry.local.saturating_sub(1);
                    pending.push(inner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use manta_proto::{NodeId, TaskId};
    use proptest::prelude::*;

    use super::*;

    fn address(index: usize) -> WorkerAddress {
        WorkerAddress {
            worker_id: WorkerId::random(),
            address: format!("127.0.0.1:{}", 1000 + index),
            node_id: NodeId::random(),
        }
    }

    #[test]
    fn owned_object_lives_until_local_refs_and_borrowers_are_gone() {
        let mut table = RefTable::default();
        let id = ObjectId::for_put(TaskId::random(), 0);
        let borrower = address(1).worker_id;
        assert_eq!(table.add_local(id, None), None);
        assert!(table.add_borrower(id, borrower));
        let mut effects = Vec::new();
        table.remove_local(id, &mut effects);
        assert!(effects.is_empty());
        table.remove_borrower(id, borrower, &mut effects);
        assert_eq!(effects, vec![RefEffect::Free { object_id: id }]);
        assert!(!table.add_borrower(id, borrower), "a freed object takes no borrowers");
    }

    #[test]
    fn nested_refs_are_pinned_by_their_container_and_released_with_it() {
        let mut table = RefTable::default();
        let outer = ObjectId::for_put(TaskId::random(), 0);
        let inner = ObjectId::for_put(TaskId::random(), 1);
        let other_owner = address(2);
        let borrowed = ObjectId::for_put(TaskId::random(), 2);
        table.add_local(outer, None);
        table.add_local(inner, None);
        let mut effects = Vec::new();
        assert!(table.set_nested(outer, &[(inner, None), (borrowed, Some(other_owner.clone()))], &mut effects));
        assert_eq!(effects, vec![RefEffect::Register { owner: other_owner.clone(), object_id: borrowed }]);
        effects.clear();
        table.remove_local(inner, &mut effects);
        assert!(effects.is_empty(), "the container still pins the inner object");
        table.remove_local(outer, &mut effects);
        assert!(effects.contains(&RefEffect::Free { object_id: outer }));
        assert!(effects.contains(&RefEffect::Free { object_id: inner }));
        assert!(effects.contains(&RefEffect::Unregister { owner: other_owner, object_id: borrowed }));
        assert!(table.is_empty());
    }

    /// Messages of the simulated protocol.
    #[derive(Debug, Clone)]
    enum Message {
        /// A task taking the ref as an argument, from `caller`.
        Task { caller: usize, task: u64 },
        /// The task's reply (its executor registered first, if it kept the ref).
        TaskDone,
        /// Register `borrower` (its reply is `Registered`).
        AddBorrower { borrower: usize, task: Option<(usize, u64)> },
        /// The owner's answer; the borrower may now reply to `task`.
        Registered { task: Option<(usize, u64)> },
        /// Unregister `borrower`.
        RemoveBorrower { borrower: usize },
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Process `from` (if it holds the ref) passes it to `to` in a task.
        Pass { from: usize, to: usize, keep: bool },
        /// Process `at` drops one of its user handles.
        Drop { at: usize },
        /// Deliver the head message of link `link`.
        Deliver { link: usize },
    }

    const PROCESSES: usize = 3;

    struct World {
        tables: Vec<RefTable>,
        user: Vec<u32>,
        links: Vec<VecDeque<Message>>,
        /// Tasks whose arg the executor kept as a user handle (actor state).
        next_task: u64,
        freed: bool,
        id: ObjectId,
        addresses: Vec<WorkerAddress>,
        /// Executor-side decision for each task: keep the ref after the task?
        keep: HashMap<u64, bool>,
    }

    fn link(from: usize, to: usize) -> usize {
        from * PROCESSES + to
    }

    fn index_of(addresses: &[WorkerAddress], owner: &WorkerAddress) -> usize {
        addresses.iter().position(|address| address == owner).expect("known owner")
    }

    impl World {
        fn new() -> Self {
            let addresses: Vec<_> = (0..PROCESSES).map(address).collect();
            let id = ObjectId::for_put(TaskId::random(), 0);
            let mut tables: Vec<RefTable> = (0..PROCESSES).map(|_| RefTable::default()).collect();
            tables[0].add_local(id, None);
            let mut user = vec![0; PROCESSES];
            user[0] = 1;
            Self {
                tables,
                user,
                links: vec![VecDeque::new(); PROCESSES * PROCESSES],
                next_task: 0,
                freed: false,
                id,
                addresses,
                keep: HashMap::new(),
            }
        }

        fn owner_of(&self, process: usize) -> Option<&WorkerAddress> {
            (process != 0).then(|| &self.addresses[0])
        }

        fn apply(&mut self, process: usize, effects: Vec<RefEffect>) {
            for effect in effects {
                match effect {
                    RefEffect::Free { .. } => {
                        assert_eq!(process, 0);
                        // Safety: nobody holds or will receive the ref.
                        assert!(self.user.iter().all(|&count| count == 0), "freed while a user handle lives");
                        assert!(
                            self.links.iter().flatten().all(|message| !matches!(message, Message::Task { .. })),
                            "freed while a task carrying the ref is in flight"
                        );
                        assert!(
                            (1..PROCESSES).all(|process| self.tables[process].get(&self.id).is_none()),
                            "freed while a borrower's table still holds it"
                        );
                        self.freed = true;
                    }
                    RefEffect::Unregister { owner, .. } => {
                        let owner = index_of(&self.addresses, &owner);
                        self.links[link(process, owner)].push_back(Message::RemoveBorrower { borrower: process });
                    }
                    RefEffect::Register { .. } | RefEffect::Forget { .. } => {}
                }
            }
        }

        fn step(&mut self, step: Step) {
            match step {
                Step::Pass { from, to, keep } => {
                    if self.user[from] == 0 || from == to {
                        return;
                    }
                    // The caller pins the arg until the task's reply.
                    self.tables[from].add_local(self.id, None);
                    let task = self.next_task;
                    self.next_task += 1;
                    self.keep.insert(task, keep);
                    self.links[link(from, to)].push_back(Message::Task { caller: from, task });
                }
                Step::Drop { at } => {
                    if self.user[at] == 0 {
                        return;
                    }
                    self.user[at] -= 1;
                    let mut effects = Vec::new();
                    self.tables[at].remove_local(self.id, &mut effects);
                    self.apply(at, effects);
                }
                Step::Deliver { link: index } => {
                    let Some(message) = self.links[index].pop_front() else { return };
                    let (from, to) = (index / PROCESSES, index % PROCESSES);
                    self.deliver(from, to, message);
                }
            }
        }

        fn deliver(&mut self, from: usize, to: usize, message: Message) {
            match message {
                Message::Task { caller, task } => {
                    // The executor deserializes the ref (a user handle while the task runs).
                    let owner = self.owner_of(to).cloned();
                    let register = self.tables[to].add_local(self.id, owner.as_ref());
                    self.user[to] += 1;
                    if !self.keep[&task] {
                        self.user[to] -= 1;
                        let mut effects = Vec::new();
                        self.tables[to].remove_local(self.id, &mut effects);
                        self.apply(to, effects);
                    }
                    match register {
                        Some(RefEffect::Register { .. }) if self.tables[to].get(&self.id).is_some() => {
                            // Reply only once the owner has answered the registration.
                            self.links[link(to, 0)]
                                .push_back(Message::AddBorrower { borrower: to, task: Some((caller, task)) });
                        }
                        _ => self.links[link(to, caller)].push_back(Message::TaskDone),
                    }
                }
                Message::TaskDone => {
                    let mut effects = Vec::new();
                    self.tables[to].remove_local(self.id, &mut effects);
                    self.apply(to, effects);
                }
                Message::AddBorrower { borrower, task } => {
                    assert!(
                        self.tables[0].add_borrower(self.id, self.addresses[borrower].worker_id),
                        "registered late"
                    );
                    self.links[link(0, from)].push_back(Message::Registered { task });
                }
                Message::Registered { task } => {
                    if let Some((caller, _task)) = task {
                        self.links[link(to, caller)].push_back(Message::TaskDone);
                    }
                }
                Message::RemoveBorrower { borrower } => {
                    let mut effects = Vec::new();
                    self.tables[0].remove_borrower(self.id, self.addresses[borrower].worker_id, &mut effects);
                    self.apply(0, effects);
                }
            }
        }

        fn drain(&mut self) {
            loop {
                let Some(index) = self.links.iter().position(|queue| !queue.is_empty()) else { return };
                let message = self.links[index].pop_front().expect("non-empty");
                self.deliver(index / PROCESSES, index % PROCESSES, message);
            }
        }
    }

    impl World {
        /// The steps possible now (a random choice among them drives the test).
        fn enabled(&self) -> Vec<Step> {
            let mut steps = Vec::new();
            for from in 0..PROCESSES {
                if self.user[from] == 0 {
                    continue;
                }
                steps.push(Step::Drop { at: from });
                for to in (0..PROCESSES).filter(|&to| to != from) {
                    steps.push(Step::Pass { from, to, keep: true });
                    steps.push(Step::Pass { from, to, keep: false });
                }
            }
            for (link, queue) in self.links.iter().enumerate() {
                if !queue.is_empty() {
                    // Deliveries weigh more, so queues rarely grow long.
                    steps.extend([Step::Deliver { link }, Step::Deliver { link }]);
                }
            }
            steps
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Refs passed between three processes (the owner and two borrowers that pass
        /// it on), with drops crossing sends in every order: the object is never freed
        /// while anyone holds or is about to receive it, and always freed once everyone
        /// has dropped it and the messages have landed.
        #[test]
        fn never_freed_early_and_always_freed_at_the_end(choices in proptest::collection::vec(any::<u32>(), 0..80)) {
            let mut world = World::new();
            for choice in choices {
                let steps = world.enabled();
                if steps.is_empty() {
                    break;
                }
                world.step(steps[choice as usize % steps.len()].clone());
            }
            world.drain();
            for process in 0..PROCESSES {
                while world.user[process] > 0 {
                    world.step(Step::Drop { at: process });
                    world.drain();
                }
            }
            world.drain();
            prop_assert!(world.freed, "everyone dropped the ref but the object was never freed");
            prop_assert!(world.tables.iter().all(RefTable::is_empty));
        }
    }
}
