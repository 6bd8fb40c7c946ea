//! Spilling primary copies to local disk when the store is full, as Ray does:
//! least recently used first, one file per object, read back from that file
//! (mapped, so the page cache serves repeated reads) on this node or by another
//! node's pull.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use manta_proto::ObjectId;
use ractor::ActorRef;
use tracing::{debug, warn};

use super::StoreMsg;

/// Ray's `local_fs_capacity_threshold`: spilling stops while the spill disk is
/// fuller than this.
const DISK_FULL_FRACTION: f64 = 0.95;

/// Where and how much to spill.
#[derive(Debug, Clone)]
pub struct SpillConfig {
    /// The folder for spill files (created on first use; removed with the store).
    pub dir: PathBuf,
    /// Most bytes on disk at once; 0 turns spilling off. `u64::MAX`: until the
    /// disk is 95 % full.
    pub max_bytes: u64,
}

impl SpillConfig {
    /// True when spilling may happen at all.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// The path of spill file number `file` of `id`.
    pub fn path(&self, id: &ObjectId, file: u64) -> PathBuf {
        self.dir.join(format!("{}-{file}", id.hex()))
    }

    /// The bytes that may be on disk now: the configured maximum, capped by the
    /// disk's room above the 95 % mark (plus what this store already holds there).
    pub fn budget(&self, on_disk: u64) -> u64 {
        if !self.enabled() {
            return 0;
        }
        let headroom = rustix::fs::statvfs(existing_ancestor(&self.dir))
            .map(|stat| {
                let size = stat.f_blocks.saturating_mul(stat.f_frsize);
                let free = stat.f_bavail.saturating_mul(stat.f_frsize);
                free.saturating_sub(((1.0 - DISK_FULL_FRACTION) * size as f64) as u64)
            })
            .unwrap_or(0);
        self.max_bytes.min(on_disk.saturating_add(headroom))
    }
}

fn existing_ancestor(dir: &Path) -> &Path {
    dir.ancestors().find(|path| path.exists()).unwrap_or(Path::new("/"))
}

/// Where a spilled object's bytes come from.
pub(super) enum Source {
    /// `len` bytes of the arena from an offset.
    Arena(Arc<File>, u64, u64),
    /// The object's own memory file.
    File(PathBuf),
}

/// Copies `from` to `to` on a blocking thread, then tells the store:
/// [`StoreMsg::SpillDone`].
pub(super) fn start_spill(store: &ActorRef<StoreMsg>, id: ObjectId, file: u64, from: Source, to: PathBuf) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let result = copy(&from, &to);
        match &result {
            Ok(()) => debug!(object_id = %id, to = %to.display(), "spilled"),
            Err(reason) => {
                warn!(object_id = %id, %reason, "spilling failed; the object stays in memory");
                let _ = std::fs::remove_file(&to);
            }
        }
        let _ = store.cast(StoreMsg::SpillDone(id, file, result));
    });
}

fn copy(from: &Source, to: &Path) -> Result<(), String> {
    if let Some(dir) = to.parent() {
        manta_proto::private_fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create the spill folder {}: {error}", dir.display()))?;
    }
    let failed = |error: std::io::Error| format!("cannot write {} (is the disk full?): {error}", to.display());
    match from {
        Source::File(path) => std::fs::copy(path, to).map(|_| ()).map_err(failed),
        Source::Arena(arena, offset, len) => {
            let mut out = manta_proto::private_fs::create_truncate(to).map_err(failed)?;
            let mut buffer = vec![0u8; (*len).min(8 << 20) as usize];
            let mut done = 0;
            while done < *len {
                let part = (*len - done).min(buffer.len() as u64) as usize;
                arena.read_exact_at(&mut buffer[..part], offset + done).map_err(failed)?;
                out.write_all(&buffer[..part]).map_err(failed)?;
                done += part as u64;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::TaskId;

    use super::*;

    #[test]
    fn budgets_follow_the_setting_and_the_disk() {
        let dir = std::env::temp_dir().join("no-such-manta-spill-dir").join("spill");
        let off = SpillConfig { dir: dir.clone(), max_bytes: 0 };
        assert!(!off.enabled());
        assert_eq!(off.budget(0), 0);
        let small = SpillConfig { dir: dir.clone(), max_bytes: 1000 };
        assert_eq!(small.budget(0), 1000, "a disk with 1000 bytes to spare");
        let unlimited = SpillConfig { dir, max_bytes: u64::MAX };
        let budget = unlimited.budget(0);
        assert!(budget > 0 && budget < u64::MAX, "bounded by the disk: {budget}");
        let id = ObjectId::for_put(TaskId::random(), 0);
        assert!(small.path(&id, 7).to_string_lossy().ends_with(&format!("{}-7", id.hex())));
    }
}
