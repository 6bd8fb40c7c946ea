//! The store's bookkeeping: sizes, pins, eviction and spilling order, and the
//! store-full error. Pure: no files, no messages.

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
    /// Complete and readable, in memory.
    Sealed,
    /// Readable in memory while its bytes are copied to spill file number `file`.
    Spilling {
        /// The spill file's number (a file name is never reused).
        file: u64,
    },
    /// Readable from spill file number `file` on disk; no memory held.
    Spilled {
        /// The spill file's number.
        file: u64,
    },
}

impl Phase {
    /// True once the bytes can be read (in memory or on disk).
    pub fn readable(self) -> bool {
        self != Phase::Writing
    }

    /// True while the bytes take room in memory.
    fn in_memory(self) -> bool {
        !matches!(self, Phase::Spilled { .. })
    }
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
    /// Bytes spilled to disk, and the spill budget (`None`: spilling is off).
    pub spill: Option<(u64, u64)>,
}

impl NoRoom {
    /// The error a user sees.
    pub fn message(&self, waited: Duration) -> String {
        let spill = match self.spill {
            None => "spilling to disk is off".to_string(),
            Some((spilled, budget)) => {
                format!("{} spilled to disk of a {} spill budget", human(spilled), human(budget))
            }
        };
        format!(
            "object store full: {} asked for, {} of {} held ({} pinned by live objects), {spill}, after waiting \
             {:.1} s; drop ObjectRefs you no longer need, or start the node with a larger --object-store-memory \
             (or --object-spilling-max-bytes, on a disk with room)",
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
    /// Bytes in memory (entries being spilled included).
    used: u64,
    /// Bytes of entries being copied to disk.
    spilling: u64,
    /// Bytes of entries on disk.
    spilled: u64,
    clock: u64,
    next_file: u64,
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

    /// Bytes on disk.
    pub fn spilled(&self) -> u64 {
        self.spilled
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

    /// Bytes in memory held by pinned objects (primaries and entries being written).
    pub fn pinned(&self) -> u64 {
        self.entries.values().filter(|entry| entry.phase.in_memory() && !evictable(entry)).map(|entry| entry.size).sum()
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
            spill: None,
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
                if entry.phase == Phase::Writing {
                    entry.phase = Phase::Sealed;
                }
                true
            }
            None => false,
        }
    }

    /// Chooses sealed primaries to copy to disk, least recently used first, so
    /// that a reservation of `size` bytes fits once they are out (counting what is
    /// already on its way out and the copies that eviction would drop). Marks them
    /// [`Phase::Spilling`] and returns `(id, size, file number)` each. Chooses
    /// nothing when `size` already fits, or when even spilling every candidate
    /// within `budget` bytes on disk would not make room.
    pub fn plan_spill(&mut self, size: u64, budget: u64) -> Vec<(ObjectId, u64, u64)> {
        let evictable: u64 = self.entries.values().filter(|entry| evictable(entry)).map(|entry| entry.size).sum();
        let freeing = evictable + self.spilling;
        let shortfall = (self.used + size).saturating_sub(self.capacity).saturating_sub(freeing);
        if shortfall == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(u64, ObjectId, u64)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.kind == Kind::Primary && entry.phase == Phase::Sealed)
            .map(|(id, entry)| (entry.last_used, *id, entry.size))
            .collect();
        candidates.sort_unstable();
        let room_on_disk = budget.saturating_sub(self.spilled + self.spilling);
        let (mut chosen, mut bytes) = (Vec::new(), 0u64);
        for (_, id, entry_size) in candidates {
            if bytes >= shortfall {
                break;
            }
            if bytes + entry_size <= room_on_disk {
                chosen.push((id, entry_size));
                bytes += entry_size;
            }
        }
        if bytes < shortfall {
            return Vec::new();
        }
        chosen
            .into_iter()
            .map(|(id, entry_size)| {
                self.next_file += 1;
                let file = self.next_file;
                if let Some(entry) = self.entries.get_mut(&id) {
                    entry.phase = Phase::Spilling { file };
                }
                self.spilling += entry_size;
                (id, entry_size, file)
            })
            .collect()
    }

    /// Spill file `file` of `id` is complete: its memory is free. False when the
    /// entry is gone or was respilled (then the file is stale).
    pub fn spilled_out(&mut self, id: &ObjectId, file: u64) -> bool {
        match self.entries.get_mut(id) {
            Some(entry) if entry.phase == (Phase::Spilling { file }) => {
                entry.phase = Phase::Spilled { file };
                self.spilling -= entry.size;
                self.used -= entry.size;
                self.spilled += entry.size;
                true
            }
            _ => false,
        }
    }

    /// Writing spill file `file` of `id` failed: it stays in memory.
    pub fn spill_failed(&mut self, id: &ObjectId, file: u64) {
        if let Some(entry) = self.entries.get_mut(id)
            && entry.phase == (Phase::Spilling { file })
        {
            entry.phase = Phase::Sealed;
            self.spilling -= entry.size;
        }
    }

    /// Forgets `id`, giving its room (in memory or on disk) back.
    pub fn remove(&mut self, id: &ObjectId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        match entry.phase {
            Phase::Spilled { .. } => self.spilled -= entry.size,
            Phase::Spilling { .. } => {
                self.spilling -= entry.size;
                self.used -= entry.size;
            }
            Phase::Writing | Phase::Sealed => self.used -= entry.size,
        }
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
    fn primaries_spill_least_recently_used_first_within_the_budget() {
        let (owner, job) = (WorkerId::random(), JobId::from_counter(1));
        let mut table = StoreTable::new(100);
        let (a, b, c) = (id(), id(), id());
        for primary in [a, b, c] {
            table.reserve(primary, 30, Kind::Primary, owner, job).unwrap();
            table.seal(&primary);
        }
        table.touch(&a);
        // 90 held; 50 more needs 40 out: b then c (a was used last), both 30.
        assert!(table.reserve(id(), 50, Kind::Primary, owner, job).is_err());
        let plan = table.plan_spill(50, 1000);
        assert_eq!(plan.iter().map(|(id, size, _)| (*id, *size)).collect::<Vec<_>>(), vec![(b, 30), (c, 30)]);
        assert_eq!(table.get(&b).unwrap().phase, Phase::Spilling { file: plan[0].2 });
        // Asking again spills nothing more: 60 are on their way out.
        assert!(table.plan_spill(50, 1000).is_empty());
        // A failed spill keeps the object in memory; a done one frees its memory.
        table.spill_failed(&c, plan[1].2);
        assert_eq!(table.get(&c).unwrap().phase, Phase::Sealed);
        assert!(table.spilled_out(&b, plan[0].2));
        assert!(!table.spilled_out(&b, plan[0].2), "only once");
        assert_eq!((table.used(), table.spilled()), (60, 30));
        assert_eq!(table.get(&b).unwrap().phase, Phase::Spilled { file: plan[0].2 });
        assert!(table.get(&b).unwrap().phase.readable());
        // 60 + 50 > 100 still: c goes now. Then the reservation fits.
        let again = table.plan_spill(50, 1000);
        assert_eq!(again.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), vec![c]);
        assert!(table.spilled_out(&c, again[0].2));
        assert!(table.reserve(id(), 50, Kind::Primary, owner, job).is_ok());
        assert_eq!((table.used(), table.spilled()), (80, 60));
        // Removing spilled and spilling entries gives their bytes back.
        table.remove(&b);
        assert_eq!((table.used(), table.spilled()), (80, 30));
        let last = table.plan_spill(40, 1000);
        assert_eq!(last.len(), 1);
        table.remove(&last[0].0);
        assert_eq!(table.plan_spill(0, 1000), Vec::new());
    }

    #[test]
    fn nothing_spills_when_the_budget_cannot_make_room() {
        let (owner, job) = (WorkerId::random(), JobId::from_counter(1));
        let mut table = StoreTable::new(100);
        for _ in 0..3 {
            let primary = id();
            table.reserve(primary, 30, Kind::Primary, owner, job).unwrap();
            table.seal(&primary);
        }
        // A writing entry is never spilled.
        table.reserve(id(), 10, Kind::Primary, owner, job).unwrap();
        assert!(table.plan_spill(60, 59).is_empty(), "two of 30 needed, budget 59");
        assert!(table.plan_spill(200, 1000).is_empty(), "more than every sealed primary");
        assert_eq!(table.plan_spill(60, 60).len(), 2);
        let no_room = NoRoom { requested: 60, used: 100, pinned: 100, capacity: 100, spill: Some((60, 60)) };
        let message = no_room.message(Duration::from_secs(1));
        assert!(message.contains("60 B spilled to disk of a 60 B spill budget"), "{message}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
