//! The node's shared-memory arena: one file, mapped by every process on the node,
//! in which objects take page-aligned ranges. Freed ranges are reused, so their
//! pages are already in memory (a put copies at memory speed instead of faulting
//! in fresh pages); free ranges go back to the OS after the store has been idle
//! a while ([`Arena::punch_free`]). A range that a reader still maps is not reused
//! until the reader releases it or exits. Objects that do not fit in one free
//! range get a file of their own, as Ray's fallback allocation does.
//!
//! The bookkeeping is pure; [`punch`] is the one file operation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;

use manta_proto::{ObjectId, WorkerId};

/// Ranges start and end on page boundaries (so freed pages can be punched out).
pub const ALIGN: u64 = 4096;

fn aligned(len: u64) -> u64 {
    len.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Best-fit allocation of ranges in `[0, size)`, merging neighbours on free.
#[derive(Debug)]
pub struct RangeAllocator {
    by_offset: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
}

impl RangeAllocator {
    /// One free range covering `size` bytes (rounded down to pages).
    pub fn new(size: u64) -> Self {
        let mut allocator = Self { by_offset: BTreeMap::new(), by_len: BTreeSet::new() };
        let size = size / ALIGN * ALIGN;
        if size > 0 {
            allocator.insert(0, size);
        }
        allocator
    }

    fn insert(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_len.insert((len, offset));
    }

    fn take(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_len.remove(&(len, offset));
    }

    /// The offset of a free range of `len` bytes (rounded up to pages), or `None`.
    pub fn allocate(&mut self, len: u64) -> Option<u64> {
        let len = aligned(len.max(1));
        let &(free_len, offset) = self.by_len.range((len, 0)..).next()?;
        self.take(offset, free_len);
        if free_len > len {
            self.insert(offset + len, free_len - len);
        }
        Some(offset)
    }

    /// Gives back the range at `offset` of `len` bytes (as allocated).
    pub fn free(&mut self, offset: u64, len: u64) {
        let (mut start, mut len) = (offset, aligned(len.max(1)));
        if let Some((&before, &before_len)) = self.by_offset.range(..start).next_back()
            && before + before_len == start
        {
            self.take(before, before_len);
            start = before;
            len += before_len;
        }
        if let Some(&after_len) = self.by_offset.get(&(start + len)) {
            self.take(start + len, after_len);
            len += after_len;
        }
        self.insert(start, len);
    }

    /// Every free range, `(offset, len)`, in address order.
    pub fn free_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_offset.iter().map(|(offset, len)| (*offset, *len))
    }

    /// Free bytes in all.
    pub fn free_bytes(&self) -> u64 {
        self.by_offset.values().sum()
    }
}

/// One object's range and who maps it.
#[derive(Debug)]
struct Range {
    offset: u64,
    len: u64,
    /// Readers that were given the range and have not released it (one per read).
    readers: Vec<Option<WorkerId>>,
    /// The object no longer needs the range: it is freed when the last reader goes.
    retired: bool,
}

/// Which object holds which range, and the pins on each.
#[derive(Debug)]
pub struct Arena {
    allocator: RangeAllocator,
    /// Live objects' ranges, and retired ranges that readers still map (after the
    /// live one, if the object was made again).
    ranges: HashMap<ObjectId, Vec<Range>>,
    /// Free ranges not yet returned to the OS.
    unpunched: bool,
}

impl Arena {
    /// An empty arena of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self { allocator: RangeAllocator::new(size), ranges: HashMap::new(), unpunched: false }
    }

    /// Places `id` (`len` bytes) in a free range: its offset, or `None` when no
    /// free range is large enough (the object gets a file of its own).
    pub fn place(&mut self, id: ObjectId, len: u64) -> Option<u64> {
        let offset = self.allocator.allocate(len)?;
        let range = Range { offset, len, readers: Vec::new(), retired: false };
        self.ranges.entry(id).or_default().push(range);
        Some(offset)
    }

    fn live(&self, id: &ObjectId) -> Option<&Range> {
        self.ranges.get(id)?.iter().find(|range| !range.retired)
    }

    /// The live range's offset of `id`, if it lives in the arena.
    pub fn offset(&self, id: &ObjectId) -> Option<u64> {
        self.live(id).map(|range| range.offset)
    }

    /// `reader` was given `id`'s live range: keep it until [`Arena::unpin`].
    pub fn pin(&mut self, id: &ObjectId, reader: Option<WorkerId>) {
        if let Some(range) = self.ranges.get_mut(id).and_then(|ranges| ranges.iter_mut().find(|range| !range.retired)) {
            range.readers.push(reader);
        }
    }

    /// `reader` is done with one read of `id` (the live range or a retired one).
    pub fn unpin(&mut self, id: &ObjectId, reader: Option<WorkerId>) {
        let Some(ranges) = self.ranges.get_mut(id) else { return };
        // Retired ranges first: a reader's oldest read ends first.
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|index| !ranges[*index].retired);
        if let Some(index) = order.into_iter().find(|index| ranges[*index].readers.contains(&reader)) {
            let range = &mut ranges[index];
            let at = range.readers.iter().position(|held| *held == reader).expect("found above");
            range.readers.swap_remove(at);
        }
        self.sweep(id);
    }

    /// `id` no longer needs its range (freed, spilled or evicted): it goes back
    /// to the free ranges now, or when its last reader releases it.
    pub fn release(&mut self, id: &ObjectId) {
        if let Some(range) = self.ranges.get_mut(id).and_then(|ranges| ranges.iter_mut().find(|range| !range.retired)) {
            range.retired = true;
        }
        self.sweep(id);
    }

    /// A process exited: its pins go.
    pub fn reader_gone(&mut self, worker: WorkerId) {
        let ids: Vec<ObjectId> = self
            .ranges
            .iter()
            .filter(|(_, ranges)| ranges.iter().any(|range| range.readers.contains(&Some(worker))))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            for range in self.ranges.get_mut(&id).into_iter().flatten() {
                range.readers.retain(|reader| *reader != Some(worker));
            }
            self.sweep(&id);
        }
    }

    fn sweep(&mut self, id: &ObjectId) {
        let Some(ranges) = self.ranges.get_mut(id) else { return };
        let allocator = &mut self.allocator;
        ranges.retain(|range| {
            let done = range.retired && range.readers.is_empty();
            if done {
                allocator.free(range.offset, range.len);
                self.unpunched = true;
            }
            !done
        });
        if ranges.is_empty() {
            self.ranges.remove(id);
        }
    }

    /// Free ranges to return to the OS, once after each change (empty otherwise).
    pub fn punch_free(&mut self) -> Vec<(u64, u64)> {
        if !std::mem::take(&mut self.unpunched) {
            return Vec::new();
        }
        self.allocator.free_ranges().collect()
    }

    /// Free bytes in the arena.
    pub fn free_bytes(&self) -> u64 {
        self.allocator.free_bytes()
    }
}

/// Returns the pages of `ranges` in the arena file to the OS (they read as
/// zeros afterwards and are faulted in again when reused).
pub fn punch(file: &File, ranges: Vec<(u64, u64)>) {
    use rustix::fs::{FallocateFlags, fallocate};
    for (offset, len) in ranges {
        if let Err(error) = fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len) {
            tracing::debug!(%error, offset, len, "cannot return free arena pages to the OS");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::TaskId;
    use proptest::prelude::*;

    use super::*;

    fn id() -> ObjectId {
        ObjectId::for_put(TaskId::random(), 0)
    }

    #[test]
    fn ranges_are_reused_and_merged() {
        let mut allocator = RangeAllocator::new(10 * ALIGN);
        let a = allocator.allocate(3 * ALIGN).unwrap();
        let b = allocator.allocate(ALIGN + 1).unwrap();
        let c = allocator.allocate(5 * ALIGN).unwrap();
        assert_eq!((a, b, c), (0, 3 * ALIGN, 5 * ALIGN));
        assert_eq!(allocator.allocate(1), None, "full");
        allocator.free(b, ALIGN + 1);
        assert_eq!(allocator.allocate(2 * ALIGN), Some(3 * ALIGN), "the freed range is reused");
        allocator.free(3 * ALIGN, 2 * ALIGN);
        allocator.free(a, 3 * ALIGN);
        assert_eq!(allocator.free_ranges().collect::<Vec<_>>(), vec![(0, 5 * ALIGN)], "neighbours merge");
        allocator.free(c, 5 * ALIGN);
        assert_eq!(allocator.free_ranges().collect::<Vec<_>>(), vec![(0, 10 * ALIGN)]);
    }

    #[test]
    fn a_pinned_range_is_reused_only_after_its_last_reader() {
        let mut arena = Arena::new(2 * ALIGN);
        let (object, reader) = (id(), WorkerId::random());
        let offset = arena.place(object, ALIGN).unwrap();
        arena.pin(&object, Some(reader));
        arena.pin(&object, None);
        arena.release(&object);
        assert_eq!(arena.offset(&object), None, "released: no live range");
        assert!(arena.place(id(), 2 * ALIGN).is_none(), "still mapped by two readers");
        arena.unpin(&object, None);
        assert!(arena.place(id(), 2 * ALIGN).is_none(), "still mapped by one");
        arena.unpin(&object, Some(reader));
        assert_eq!(arena.punch_free(), vec![(0, 2 * ALIGN)], "merged with the free page after it");
        assert!(arena.punch_free().is_empty(), "once per change");
        assert_eq!(arena.place(id(), ALIGN), Some(offset), "reused after the last reader");
    }

    #[test]
    fn an_exiting_reader_drops_its_pins_and_a_remade_object_keeps_its_new_range() {
        let mut arena = Arena::new(4 * ALIGN);
        let (object, reader) = (id(), WorkerId::random());
        let first = arena.place(object, ALIGN).unwrap();
        arena.pin(&object, Some(reader));
        arena.release(&object);
        let second = arena.place(object, ALIGN).unwrap();
        assert_ne!(first, second);
        assert_eq!(arena.offset(&object), Some(second));
        arena.reader_gone(reader);
        assert_eq!(arena.offset(&object), Some(second), "the live range stays");
        assert_eq!(arena.free_bytes(), 3 * ALIGN, "the retired one is free");
    }

    #[test]
    fn punched_pages_go_back_to_the_os() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("arena")).unwrap();
        file.write_all(&vec![7u8; 64 * ALIGN as usize]).unwrap();
        file.sync_all().unwrap();
        let blocks = |file: &File| rustix::fs::fstat(file).unwrap().st_blocks;
        let before = blocks(&file);
        punch(&file, vec![(0, 32 * ALIGN)]);
        let after = blocks(&file);
        // Filesystems without hole punching keep the blocks; those that have it free half.
        assert!(after == before || after <= before / 2 + 8, "{before} -> {after}");
        assert_eq!(file.metadata().unwrap().len(), 64 * ALIGN, "the arena keeps its size");
    }

    proptest! {
        /// Any sequence of allocations and frees keeps ranges disjoint and every
        /// byte accounted for (free + allocated = size).
        #[test]
        fn ranges_never_overlap(ops in proptest::collection::vec((1u64..5 * ALIGN, any::<bool>()), 1..200)) {
            let size = 64 * ALIGN;
            let mut allocator = RangeAllocator::new(size);
            let mut held: Vec<(u64, u64)> = Vec::new();
            for (len, free) in ops {
                if free && !held.is_empty() {
                    let (offset, len) = held.remove(len as usize % held.len());
                    allocator.free(offset, len);
                } else if let Some(offset) = allocator.allocate(len) {
                    held.push((offset, aligned(len)));
                }
                let mut all: Vec<(u64, u64)> = held.iter().copied().chain(allocator.free_ranges()).collect();
                all.sort_unstable();
                prop_assert!(all.windows(2).all(|pair| pair[0].0 + pair[0].1 <= pair[1].0));
                prop_assert_eq!(all.iter().map(|(_, len)| len).sum::<u64>(), size);
            }
        }
    }
}
