//! The store's bookkeeping: sizes, pins, eviction order and the store-full error.
//! Pure: no files, no messages.

use std::collections::HashMap;
use std::time::Duration;

use manta_proto::{JobId, ObjectId, WorkerId};

/// How a copy came to be here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Made on this node: pinned until its owner frees it.
    Primary,
    /// Pulled from another node: evictable once sealed.
    Copy,
}

/// Where a copy is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Room reserved, bytes being written.
    Writing,
    /// Complete and readable.
    Sealed,
}

/// One object's accounting.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Bytes.
    pub size: u64,
    /// Primary or copy.
    pub kind: Kind,
    /// Writing or sealed.
    pub phase: Phase,
    /// Its owner.
    pub owner: WorkerId,
    /// Its job.
    pub job_id: JobId,
    /// Last use (a logical clock), for eviction.
    pub last_used: u64,
}

/// Why room could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes held.
    pub used: u64,
    /// Bytes held by pinned objects (primaries and copies being written).
    pub pinned: u64,
    /// The store's capacity.
    pub capacity: u64,
}

impl NoRoom {
    /// The error a user sees.
    pub fn message(&self, waited: Duration) -> String {
        format!(
            "object store full: {} asked for, {} of {} held ({} pinned by live objects), after waiting {:.1} s; \
             drop ObjectRefs you no longer need, or start the node with a larger --object-store-memory",
            human(self.requested),
            human(self.used),
            human(self.capacity),
            human(self.pinned),
            waited.as_secs_f64()
        )
    }
}

/// `1.5 GiB`-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// The store's bookkeeping, without files or messages (unit-tested on its own).
#[derive(Debug, Default)]
pub struct StoreTable {
    capacity: u64,
    used: u64,
    clock: u64,
    entries: HashMap<ObjectId, Entry>,
}

impl StoreTable {
    /// An empty store of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self { capacity, ..Self::default() }
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The entry of `id`.
    pub fn get(&self, id: &ObjectId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectId, &Entry)> {
        self.entries.iter()
    }

    /// Marks `id` used now (eviction goes least recently used first).
    pub fn touch(&mut self, id: &ObjectId) {
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(id) {
            entry.last_used = self.clock;
        }
    }

    /// Bytes held by pinned objects (primaries and entries being written).
    pub fn pinned(&self) -> u64 {
        self.entries.values().filter(|entry| !evictable(entry)).map(|entry| entry.size).sum()
    }

    /// Reserves room for a new entry, evicting sealed copies (least recently used
    /// first) as needed. Returns the evicted ids, whose files must be removed.
    pub fn reserve(
        &mut self,
        id: ObjectId,
        size: u64,
        kind: Kind,
        owner: WorkerId,
        job_id: JobId,
    ) -> Result<Vec<ObjectId>, NoRoom> {
        let no_room = |table: &Self| NoRoom {
            requested: size,
            used: table.used,
            pinned: table.pinned(),
            capacity: table.capacity,
        };
        if self.capacity.saturating_sub(self.pinned()) < size {
            return Err(no_room(self));
        }
        let mut evicted = Vec::new();
        if self.used + size > self.capacity {
            let mut candidates: Vec<(u64, ObjectId)> = self
                .entries
                .iter()
                .filter(|(_, entry)| evictable(entry))
                .map(|(id, entry)| (entry.last_used, *id))
                .collect();
            candidates.sort_unstable();
            for (_, candidate) in candidates {
                if self.used + size <= self.capacity {
                    break;
                }
                self.remove(&candidate);
                evicted.push(candidate);
            }
        }
        self.clock += 1;
        self.used += size;
        let entry = Entry { size, kind, phase: Phase::Writing, owner, job_id, last_used: self.clock };
        self.entries.insert(id, entry);
        Ok(evicted)
    }

    /// The bytes are written.
    pub fn seal(&mut self, id: &ObjectId) -> bool {
        match self.entries.get_mut(id) {
            Some(entry) => {
                entry.phase = Phase::Sealed;
                true
            }
            None => false,
        }
    }

    /// Forgets `id`, giving its room back.
    pub fn remove(&mut self, id: &ObjectId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.used -= entry.size;
        Some(entry)
    }

    /// Ids of entries matching `filter`.
    pub fn ids_where(&self, filter: impl Fn(&Entry) -> bool) -> Vec<ObjectId> {
        self.entries.iter().filter(|(_, entry)| filter(entry)).map(|(id, _)| *id).collect()
    }
}

fn evictable(entry: &Entry) -> bool {
    entry.kind == Kind::Copy && entry.phase == Phase::Sealed
}

#[cfg(test)]
mod tests {
    use manta_proto::TaskId;

    use super::*;

    fn id() -> ObjectId {
        ObjectId::for_put(TaskId::random(), 0)
    }

    #[test]
    fn copies_are_evicted_least_recently_used_first_and_primaries_never() {
        let (owner, job) = (WorkerId::random(), JobId::from_counter(1));
        let mut table = StoreTable::new(100);
        let primary = id();
        table.reserve(primary, 40, Kind::Primary, owner, job).unwrap();
        table.seal(&primary);
        let (old, new) = (id(), id());
        table.reserve(old, 30, Kind::Copy, owner, job).unwrap();
        table.seal(&old);
        table.reserve(new, 30, Kind::Copy, owner, job).unwrap();
        table.seal(&new);
        table.touch(&old);
        // 100 used; 30 more needs one copy out: `new` was used least recently.
        let evicted = table.reserve(id(), 30, Kind::Primary, owner, job).unwrap();
        assert_eq!(evicted, vec![new]);
        assert_eq!(table.used(), 100);
        // Primaries and unsealed entries are pinned: 40 + 30 + (old 30 evictable).
        let no_room = table.reserve(id(), 70, Kind::Primary, owner, job).unwrap_err();
        assert_eq!((no_room.requested, no_room.pinned, no_room.capacity), (70, 70, 100));
        assert!(no_room.message(Duration::from_secs(1)).contains("70 B asked for"));
        table.remove(&primary);
        assert!(table.reserve(id(), 70, Kind::Copy, owner, job).is_ok());
        assert_eq!(table.used(), 100);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
