//! Files only their owner can read: every file a manta process writes (logs,
//! pidfiles, records, the GCS store, objects) is created mode 0600, in folders
//! created 0700, and opened without following a symbolic link, so another user
//! who plants a link where manta writes cannot redirect the write.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Mode of every file manta creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder manta creates.
pub const DIR_MODE: u32 = 0o700;

fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    options
}

/// Creates `path` for writing; fails if anything (a file or a link) is already there.
pub fn create_new(path: &Path) -> std::io::Result<File> {
    options().write(true).create_new(true).open(path)
}

/// Opens `path` for appending, creating it when missing; refuses a symbolic link.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    options().create(true).append(true).open(path)
}

/// Opens `path` for reading and writing, created empty or truncated; refuses a symbolic link.
pub fn create_truncate(path: &Path) -> std::io::Result<File> {
    options().read(true).write(true).create(true).truncate(true).open(path)
}

/// Creates `dir` and any missing parents, mode 0700 (existing ones are left as they are).
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Replaces `path` with `contents` in one step: written to a new temporary file
/// beside it (create-new, no-follow, 0600), synced, then renamed over it.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = temporary_beside(path);
    let written = (|| {
        let mut file = create_new(&temporary)?;
        file.write_all(contents)?;
        file.sync_data()
    })();
    let renamed = written.and_then(|()| std::fs::rename(&temporary, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    renamed
}

/// A fresh, unguessable name beside `path`.
fn temporary_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix: u64 = rand::random();
    path.with_file_name(format!(".{name}.tmp-{}-{suffix:016x}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_private_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
        assert_eq!(mode(&nested), DIR_MODE);

        let record = nested.join("node.json");
        write_atomically(&record, b"{}").unwrap();
        write_atomically(&record, b"{\"again\": 1}").unwrap();
        assert_eq!(mode(&record), FILE_MODE);
        assert_eq!(std::fs::read(&record).unwrap(), b"{\"again\": 1}");
        assert_eq!(std::fs::read_dir(&nested).unwrap().count(), 1, "no temporary file is left behind");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let planted = nested.join("node.log");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(open_append(&planted).is_err(), "a planted link is refused");
        assert!(create_truncate(&planted).is_err());
        assert!(create_new(&planted).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

        let log = nested.join("worker.out");
        open_append(&log).unwrap().write_all(b"line\n").unwrap();
        assert_eq!(mode(&log), FILE_MODE);
    }
}
