//! This process's view of its node's arena: the file mapped once (read and
//! write, shared), writers filling the range the store gave them, readers
//! holding a range until they drop it (then the store may reuse it).

use std::io::Write;
use std::sync::{Arc, Mutex};

use manta_proto::ObjectId;
use manta_proto::client::NodeClient;
use manta_proto::net::PeerHandle;
use manta_proto::object::ReleaseObjectRequest;
use memmap2::MmapRaw;

use crate::core::Core;

/// Values at least this large are copied by several threads.
const PARALLEL_COPY_BYTES: usize = 8 << 20;
/// At most this many copying threads.
const COPY_THREADS: usize = 4;

/// The arenas mapped so far, by path (one per node; a driver sees one).
static MAPPED: Mutex<Vec<(String, Arc<MmapRaw>)>> = Mutex::new(Vec::new());

/// The mapping of the arena at `path` (mapped on first use).
pub(crate) fn open(path: &str) -> std::io::Result<Arc<Mapped>> {
    let mut mapped = MAPPED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, map)) = mapped.iter().find(|(known, _)| known == path) {
        return Ok(Arc::new(Mapped(map.clone())));
    }
    // A node that stopped (an embedded cluster started again) leaves its arena
    // behind: unmap it, so its memory goes back.
    mapped.retain(|(known, _)| std::path::Path::new(known).exists());
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let map = Arc::new(MmapRaw::map_raw(&file)?);
    mapped.push((path.to_string(), map.clone()));
    Ok(Arc::new(Mapped(map)))
}

/// A mapped arena.
pub(crate) struct Mapped(Arc<MmapRaw>);

impl Mapped {
    fn check(&self, offset: u64, len: u64) -> std::io::Result<(usize, usize)> {
        match offset.checked_add(len) {
            Some(end) if end <= self.0.len() as u64 => Ok((offset as usize, len as usize)),
            _ => Err(std::io::Error::other(format!(
                "range {offset}+{len} is outside the node's arena of {} bytes",
                self.0.len()
            ))),
        }
    }

    /// The range `[offset, offset + len)` to write.
    ///
    /// # Safety
    /// The store must have given this range to the caller alone (a create not yet
    /// sealed), so nothing else reads or writes it meanwhile.
    #[allow(clippy::mut_from_ref, reason = "a shared mapping: exclusivity comes from the store, per the contract")]
    pub(crate) unsafe fn range_mut(&self, offset: u64, len: u64) -> std::io::Result<&mut [u8]> {
        let (offset, len) = self.check(offset, len)?;
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().add(offset), len) })
    }
}

/// Writes into a range, refusing to go past its end; large writes are split
/// over several threads.
pub(crate) struct SliceWriter<'a> {
    range: &'a mut [u8],
    written: usize,
}

impl<'a> SliceWriter<'a> {
    pub(crate) fn new(range: &'a mut [u8]) -> Self {
        Self { range, written: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> usize {
        self.written
    }
}

impl Write for SliceWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let count = buf.len().min(self.range.len() - self.written);
        copy_parallel(&mut self.range[self.written..self.written + count], &buf[..count]);
        self.written += count;
        Ok(count)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copies `source` into `target` (same length), with several threads when large.
pub(crate) fn copy_parallel(target: &mut [u8], source: &[u8]) {
    let threads = std::thread::available_parallelism().map_or(1, |count| count.get()).min(COPY_THREADS);
    if source.len() < PARALLEL_COPY_BYTES || threads < 2 {
        target.copy_from_slice(source);
        return;
    }
    let part = source.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (target, source) in target.chunks_mut(part).zip(source.chunks(part)) {
            scope.spawn(move || target.copy_from_slice(source));
        }
    });
}

/// Tells the node, when dropped, that this process is done with a range.
pub(crate) struct Release {
    handle: tokio::runtime::Handle,
    raylet: PeerHandle,
    request: Option<ReleaseObjectRequest>,
}

impl Release {
    pub(crate) fn new(core: &Core, object_id: ObjectId) -> Self {
        let request = ReleaseObjectRequest { object_id, reader: core.worker.worker_id };
        Self { handle: core.handle.clone(), raylet: core.raylet.clone(), request: Some(request) }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            let raylet = self.raylet.clone();
            self.handle.spawn(async move {
                let _ = NodeClient::new(raylet, std::time::Duration::from_secs(30)).call(request).await;
            });
        }
    }
}

/// A pinned range of the arena, read in place.
pub(crate) struct View {
    arena: Arc<Mapped>,
    offset: usize,
    len: usize,
    _release: Release,
}

impl View {
    pub(crate) fn new(arena: Arc<Mapped>, offset: u64, len: u64, release: Release) -> std::io::Result<Self> {
        let (offset, len) = arena.check(offset, len)?;
        Ok(Self { arena, offset, len, _release: release })
    }
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: in bounds (checked in `new`); the range is sealed and pinned for
        // this reader, so the store does not reuse it while this view lives.
        unsafe { std::slice::from_raw_parts(self.arena.0.as_ptr().add(self.offset), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_stop_at_the_end_of_their_range_and_large_copies_are_whole() {
        let mut range = vec![0u8; 10];
        let mut writer = SliceWriter::new(&mut range);
        writer.write_all(b"0123456789").unwrap();
        assert_eq!(writer.written(), 10);
        assert!(writer.write_all(b"x").is_err(), "past the end");
        let source: Vec<u8> = (0..(PARALLEL_COPY_BYTES * 2 + 7)).map(|index| (index % 251) as u8).collect();
        let mut target = vec![0u8; source.len()];
        copy_parallel(&mut target, &source);
        assert!(target == source);
    }
}
