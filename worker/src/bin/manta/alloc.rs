//! The `manta` binary's allocator: mimalloc for the many small, short-lived
//! allocations of the call path (frames, specs, futures), the system allocator
//! for large buffers. glibc serves those from fresh mappings: a zeroed buffer
//! costs nothing until written, and growing one is a `mremap`, not a copy. With
//! mimalloc alone, `put gigabytes` (a zeroed 100 MiB buffer copied into the
//! store) fell by a third. With both, `manta microbenchmark`'s async lines ran 10-30% faster
//! and its placement groups 45% faster than on glibc alone (BENCHMARKS.md).

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Allocations of this many bytes or more go to the system allocator.
const LARGE_BYTES: usize = 1 << 20;

/// Routes each allocation by its size (which `dealloc` and `realloc` are given
/// again, so a block always returns to the allocator it came from).
pub struct SplitAllocator;

fn is_large(size: usize) -> bool {
    size >= LARGE_BYTES
}

// SAFETY: each call forwards to the allocator chosen by the block's size, which
// is the same on allocation and release; the move between the two in `realloc`
// copies the smaller of the old and new sizes before freeing the old block.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { if is_large(layout.size()) { System.alloc(layout) } else { MiMalloc.alloc(layout) } }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { if is_large(layout.size()) { System.alloc_zeroed(layout) } else { MiMalloc.alloc_zeroed(layout) } }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from the allocator that `layout.size()` selects.
        unsafe {
            if is_large(layout.size()) { System.dealloc(pointer, layout) } else { MiMalloc.dealloc(pointer, layout) }
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same-side moves forward the contract; a move across allocates
        // with the caller's alignment, copies what both blocks hold and frees the old one.
        unsafe {
            match (is_large(layout.size()), is_large(new_size)) {
                (true, true) => System.realloc(pointer, layout, new_size),
                (false, false) => MiMalloc.realloc(pointer, layout, new_size),
                _ => {
                    let moved = Layout::from_size_align_unchecked(new_size, layout.align());
                    let fresh = self.alloc(moved);
                    if !fresh.is_null() {
                        std::ptr::copy_nonoverlapping(pointer, fresh, layout.size().min(new_size));
                        self.dealloc(pointer, layout);
                    }
                    fresh
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_bytes_across_the_threshold() {
        let allocator = SplitAllocator;
        for (from, to) in [(64, LARGE_BYTES * 2), (LARGE_BYTES * 2, 64), (LARGE_BYTES, LARGE_BYTES * 3), (16, 4096)] {
            let layout = Layout::from_size_align(from, 16).expect("layout");
            // SAFETY: a fresh block of `from` bytes, written within its size, then grown or
            // shrunk with the layout it was made with, read within the smaller size and freed.
            unsafe {
                let block = allocator.alloc_zeroed(layout);
                assert!(!block.is_null());
                assert!((0..from).all(|index| *block.add(index) == 0), "zeroed");
                for index in 0..from {
                    *block.add(index) = (index % 251) as u8;
                }
                let moved = allocator.realloc(block, layout, to);
                assert!(!moved.is_null());
                assert_eq!(moved as usize % 16, 0, "alignment kept");
                assert!((0..from.min(to)).all(|index| *moved.add(index) == (index % 251) as u8), "{from} -> {to}");
                allocator.dealloc(moved, Layout::from_size_align(to, 16).expect("layout"));
            }
        }
    }
}
