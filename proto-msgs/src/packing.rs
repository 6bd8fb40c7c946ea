//! Packing a `working_dir` or `py_modules` folder into a deterministic zip
//! (same files → same bytes → same blake3 name), and unpacking a package on a
//! node. Packing honours `.gitignore` files and the env's `excludes`
//! (gitignore patterns relative to the folder) and refuses a folder over the
//! size cap before compressing anything; unpacking refuses entries that would
//! land outside the target folder and archives that inflate past a cap.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::package::PackageKind;

/// The default cap on a packed folder's file bytes (Ray's is 500 MiB).
pub const DEFAULT_MAX_WORKING_DIR_BYTES: u64 = 512 << 20;
/// The cap on what one archive unpacks to.
pub const MAX_UNPACKED_BYTES: u64 = 16 << 30;
/// Set to `1` to pack files a `.gitignore` names (Ray's `RAY_RUNTIME_ENV_IGNORE_GITIGNORE`).
pub const IGNORE_GITIGNORE_VAR: &str = "MANTA_RUNTIME_ENV_IGNORE_GITIGNORE";

/// A packed folder or file, ready to upload.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The package's name (carries the digest).
    pub name: String,
    /// The content.
    pub bytes: Vec<u8>,
    /// blake3 of `bytes`.
    pub digest: blake3::Hash,
}

impl Packed {
    fn new(kind: PackageKind, bytes: Vec<u8>) -> Self {
        let digest = blake3::hash(&bytes);
        Self { name: kind.name(&digest), bytes, digest }
    }
}

/// Packs `dir` (its files at the archive's root; with `keep_top`, inside a
/// folder named after `dir`, as `py_modules` needs). `max_bytes` caps the sum
/// of the file sizes.
pub fn pack_dir(dir: &Path, excludes: &[String], max_bytes: u64, keep_top: bool) -> Result<Packed, String> {
    let files = list_files(dir, excludes)?;
    let total: u64 = files.iter().map(|(_, _, size)| size).sum();
    if total > max_bytes {
        let mut biggest = files.clone();
        biggest.sort_by_key(|(_, _, size)| std::cmp::Reverse(*size));
        let names: Vec<String> =
            biggest.iter().take(3).map(|(relative, _, size)| format!("{relative} ({} MiB)", size >> 20)).collect();
        return Err(format!(
            "{} holds {} MiB of files, over the {} MiB package cap; leave files out with \"excludes\" (or a .gitignore); the largest: {}",
            dir.display(),
            total >> 20,
            max_bytes >> 20,
            names.join(", ")
        ));
    }
    let prefix = if keep_top {
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
            .ok_or_else(|| format!("{} has no folder name to keep", dir.display()))?;
        format!("{name}/")
    } else {
        String::new()
    };
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = |mode: u32| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(mode)
            .large_file(true)
    };
    let zip_error = |error: zip::result::ZipError| format!("cannot pack {}: {error}", dir.display());
    for (relative, path, _) in &files {
        let mode = if is_executable(path) { 0o755 } else { 0o644 };
        writer.start_file(format!("{prefix}{relative}"), options(mode)).map_err(zip_error)?;
        let mut file = std::fs::File::open(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        std::io::copy(&mut file, &mut writer).map_err(|error| format!("cannot pack {}: {error}", path.display()))?;
    }
    let bytes = writer.finish().map_err(zip_error)?.into_inner();
    Ok(Packed::new(PackageKind::PackedDir, bytes))
}

/// A `.zip` file the user gave, as a package (checked to be a readable zip).
pub fn pack_zip_file(path: &Path, max_bytes: u64) -> Result<Packed, String> {
    let size = std::fs::metadata(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?.len();
    if size > max_bytes {
        return Err(format!("{} is {} MiB, over the {} MiB package cap", path.display(), size >> 20, max_bytes >> 20));
    }
    let bytes = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    zip::ZipArchive::new(std::io::Cursor::new(&bytes))
        .map_err(|error| format!("{} is not a zip file: {error}", path.display()))?;
    Ok(Packed::new(PackageKind::Zip, bytes))
}

/// The files to pack, sorted: (path in the archive, path on disk, size).
fn list_files(dir: &Path, excludes: &[String]) -> Result<Vec<(String, PathBuf, u64)>, String> {
    let metadata = std::fs::metadata(dir).map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
    if !metadata.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let mut patterns = ignore::gitignore::GitignoreBuilder::new(dir);
    for pattern in excludes {
        patterns
            .add_line(None, pattern)
            .map_err(|error| format!("excludes: {pattern:?} is not a valid pattern: {error}"))?;
    }
    let patterns = patterns.build().map_err(|error| format!("excludes: {error}"))?;
    let honour_gitignore = std::env::var(IGNORE_GITIGNORE_VAR).map_or(true, |value| value != "1");
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .parents(false)
        .ignore(false)
        .git_global(false)
        .git_exclude(false)
        .git_ignore(honour_gitignore)
        .require_git(false)
        .follow_links(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    let mut files = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
        let Some(file_type) = entry.file_type() else { continue };
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        if relative.as_os_str().is_empty()
            || patterns.matched_path_or_any_parents(relative, file_type.is_dir()).is_ignore()
        {
            continue;
        }
        if !file_type.is_file() {
            continue;
        }
        let relative =
            relative.to_str().ok_or_else(|| format!("{} is not a UTF-8 path", entry.path().display()))?.to_string();
        let size = entry.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        files.push((relative, entry.path().to_path_buf(), size));
    }
    files.sort();
    Ok(files)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().mode() & 0o111 != 0)
}

/// Unpacks a zip package into `target` (which must not exist; its parent
/// must). A [`PackageKind::Zip`] with a single top-level folder (`__MACOSX`
/// aside) is unwrapped, as Ray does. Returns the bytes written.
pub fn unpack(archive: impl Read + Seek, kind: PackageKind, target: &Path) -> Result<u64, String> {
    let mut archive =
        zip::ZipArchive::new(archive).map_err(|error| format!("the package is not a zip file: {error}"))?;
    let names: Vec<PathBuf> = (0..archive.len())
        .filter_map(|index| archive.by_index_raw(index).ok().and_then(|entry| entry.enclosed_name()))
        .collect();
    let strip = if kind == PackageKind::Zip { single_top_folder(&names) } else { None };
    crate::private_fs::create_dir_all(target)
        .map_err(|error| format!("cannot create {}: {error}", target.display()))?;
    let mut written = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|error| format!("cannot read the package: {error}"))?;
        let Some(name) = entry.enclosed_name() else {
            return Err(format!("the package holds an unsafe path {:?}", entry.name()));
        };
        if name.starts_with("__MACOSX") {
            continue;
        }
        let relative = match &strip {
            Some(top) => match name.strip_prefix(top) {
                Ok(rest) => rest.to_path_buf(),
                Err(_) => continue,
            },
            None => name,
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let path = target.join(&relative);
        if entry.is_dir() {
            crate::private_fs::create_dir_all(&path)
                .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
            continue;
        }
        if entry.is_symlink() {
            continue;
        }
        if let Some(parent) = path.parent() {
            crate::private_fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        }
        let executable = entry.unix_mode().is_some_and(|mode| mode & 0o100 != 0);
        let mut file = create_private(&path, executable)?;
        let budget = MAX_UNPACKED_BYTES.saturating_sub(written);
        let copied = std::io::copy(&mut (&mut entry).take(budget + 1), &mut file)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        written += copied;
        if written > MAX_UNPACKED_BYTES {
            return Err(format!("the package unpacks to more than {} GiB; refused", MAX_UNPACKED_BYTES >> 30));
        }
    }
    Ok(written)
}

/// The one folder every entry sits in, when there is exactly one.
fn single_top_folder(names: &[PathBuf]) -> Option<PathBuf> {
    let mut top: Option<PathBuf> = None;
    let mut nested = false;
    for name in names.iter().filter(|name| !name.starts_with("__MACOSX")) {
        let first = PathBuf::from(name.components().next()?.as_os_str());
        match &top {
            None => top = Some(first),
            Some(existing) if *existing != first => return None,
            Some(_) => {}
        }
        nested |= name.components().count() > 1;
    }
    top.filter(|_| nested)
}

fn create_private(path: &Path, executable: bool) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o700 } else { 0o600 })
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))
}

/// blake3 of a file's content, read in 1 MiB steps.
pub fn hash_file(path: &Path) -> std::io::Result<(blake3::Hash, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((hasher.finalize(), size));
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
}

/// Writes `bytes` as a new file (for tests and small tools).
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, files: &[(&str, &str)]) {
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in ignore::WalkBuilder::new(dir).hidden(false).ignore(false).git_ignore(false).build().flatten() {
            if entry.file_type().is_some_and(|kind| kind.is_file()) {
                out.push(entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn packing_honours_gitignore_and_excludes_and_is_deterministic() {
        let source = tempfile::tempdir().unwrap();
        tree(
            source.path(),
            &[
                ("data.txt", "hello"),
                ("sub/keep.csv", "1,2"),
                ("sub/skip.log", "noise"),
                ("build/out.bin", "x"),
                (".gitignore", "*.log\n"),
                (".git/HEAD", "ref"),
            ],
        );
        let packed = pack_dir(source.path(), &["/build".into()], 1 << 20, false).unwrap();
        let again = pack_dir(source.path(), &["/build".into()], 1 << 20, false).unwrap();
        assert_eq!(packed.name, again.name, "same files, same package");
        assert!(packed.name.starts_with("_manta_pkg_") && packed.name.ends_with(".zip"));
        let target = tempfile::tempdir().unwrap();
        let into = target.path().join("wd");
        unpack(std::io::Cursor::new(&packed.bytes), PackageKind::PackedDir, &into).unwrap();
        assert_eq!(listing(&into), vec![".gitignore", "data.txt", "sub/keep.csv"]);
        assert_eq!(std::fs::read_to_string(into.join("data.txt")).unwrap(), "hello");

        std::fs::write(source.path().join("data.txt"), "changed").unwrap();
        assert_ne!(pack_dir(source.path(), &["/build".into()], 1 << 20, false).unwrap().name, packed.name);
    }

    #[test]
    fn a_folder_over_the_cap_is_refused_with_its_largest_files() {
        let source = tempfile::tempdir().unwrap();
        tree(source.path(), &[("big.bin", &"x".repeat(4096)), ("small.txt", "y")]);
        let error = pack_dir(source.path(), &[], 1024, false).unwrap_err();
        assert!(error.contains("over the 0 MiB package cap") && error.contains("big.bin"), "{error}");
        assert!(pack_dir(&source.path().join("missing"), &[], 1024, false).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn a_user_zip_with_one_top_folder_is_unwrapped_and_unsafe_paths_are_refused() {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        writer.start_file("project/main.py", options).unwrap();
        writer.write_all(b"print(1)").unwrap();
        writer.start_file("__MACOSX/junk", options).unwrap();
        let bytes = writer.finish().unwrap().into_inner();
        let target = tempfile::tempdir().unwrap();
        unpack(std::io::Cursor::new(&bytes), PackageKind::Zip, &target.path().join("a")).unwrap();
        assert_eq!(listing(&target.path().join("a")), vec!["main.py"]);

        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        writer.start_file("../escape.txt", options).unwrap();
        writer.write_all(b"x").unwrap();
        let bytes = writer.finish().unwrap().into_inner();
        let error = unpack(std::io::Cursor::new(&bytes), PackageKind::Zip, &target.path().join("b")).unwrap_err();
        assert!(error.contains("unsafe path"), "{error}");
        assert!(!target.path().join("escape.txt").exists());
    }

    #[test]
    fn py_modules_keep_their_folder() {
        let source = tempfile::tempdir().unwrap();
        let module = source.path().join("mymod");
        tree(&module, &[("__init__.py", "X = 1")]);
        let packed = pack_dir(&module, &[], 1 << 20, true).unwrap();
        let target = tempfile::tempdir().unwrap();
        unpack(std::io::Cursor::new(&packed.bytes), PackageKind::PackedDir, &target.path().join("m")).unwrap();
        assert_eq!(listing(&target.path().join("m")), vec!["mymod/__init__.py"]);
    }
}
