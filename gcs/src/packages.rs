//! The cluster's package store: a [`PackageTable`] (what is stored, who uses
//! it, uploads in progress) behind the [`PackageStore`] actor, which keeps the
//! bytes as files under the GCS's packages folder (never in memory, never in
//! the tables: a 200 MiB debug binary costs the GCS no RAM).
//!
//! An upload comes in chunks, in order; the table checks each against the
//! announced size, and the last one against the announced blake3 digest,
//! before the package becomes visible. A package is kept while a job that uses
//! it runs (and, for an upload with no job yet, as Ray's temporary reference,
//! [`TEMPORARY_PIN`]); when its last job ends it is deleted.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manta_proto::package::{CHUNK_BYTES, MAX_PACKAGE_BYTES, PackageInfo, PackageKind, PutPackageRequest};
use manta_proto::runtime_env::check_package_name;
use manta_proto::{ErrorCode, JobId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Shared;
use crate::storage::Rows;

/// How long an upload no job uses yet is kept (Ray's 600 s temporary reference).
pub const TEMPORARY_PIN: Duration = Duration::from_secs(600);

/// A stored package, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRow {
    /// Name, size and digest.
    pub info: PackageInfo,
    /// Jobs using it.
    pub jobs: BTreeSet<JobId>,
    /// Kept at least until then (ms since the epoch), jobs or not.
    pub pinned_until_ms: u64,
}

/// An upload in progress.
#[derive(Debug)]
struct Upload {
    size: u64,
    digest: String,
    next: u64,
    hasher: blake3::Hasher,
}

/// What to do with a chunk that passed the checks.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkStep {
    /// The package is already stored: nothing to write.
    AlreadyStored,
    /// Write the chunk at its offset (creating the file when the offset is 0);
    /// `last`: the upload is complete and verified once written.
    Write {
        /// The final chunk.
        last: bool,
    },
}

/// Stored packages and uploads in progress.
#[derive(Debug, Default)]
pub struct PackageTable {
    rows: HashMap<String, PackageRow>,
    uploads: HashMap<String, Upload>,
    store: Rows,
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message.into())
}

impl PackageTable {
    /// A table holding recovered rows.
    pub fn restore(rows: Vec<PackageRow>, store: Rows) -> Self {
        let rows = rows.into_iter().map(|row| (row.info.name.clone(), row)).collect();
        Self { rows, uploads: HashMap::new(), store }
    }

    fn persist(&self, name: &str) {
        match self.rows.get(name) {
            Some(row) => self.store.put(name.as_bytes(), row),
            None => self.store.delete(name.as_bytes()),
        }
    }

    /// A stored package (with `job`, the job now uses it).
    pub fn use_package(&mut self, name: &str, job: Option<JobId>) -> Option<PackageInfo> {
        let row = self.rows.get_mut(name)?;
        let info = row.info.clone();
        if let Some(job) = job
            && row.jobs.insert(job)
        {
            self.persist(name);
        }
        Some(info)
    }

    /// A stored package's info.
    pub fn get(&self, name: &str) -> Option<&PackageInfo> {
        self.rows.get(name).map(|row| &row.info)
    }

    /// Checks a chunk against the upload it continues (offset 0 starts one).
    pub fn chunk(&mut self, request: &PutPackageRequest) -> Result<ChunkStep, WireError> {
        check_package_name(&request.name).map_err(invalid)?;
        if self.rows.contains_key(&request.name) {
            return Ok(ChunkStep::AlreadyStored);
        }
        if request.size > MAX_PACKAGE_BYTES {
            return Err(invalid(format!(
                "package {} is {} MiB; the cluster stores packages up to {} MiB",
                request.name,
                request.size >> 20,
                MAX_PACKAGE_BYTES >> 20
            )));
        }
        if request.data.len() > CHUNK_BYTES {
            return Err(invalid(format!("a package chunk is at most {CHUNK_BYTES} bytes")));
        }
        if request.digest.len() != 64 || !request.digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(invalid("digest: expected the blake3 digest as 64 hex digits"));
        }
        if let Some(named) = PackageKind::digest_in_name(&request.name)
            && named != request.digest
        {
            return Err(invalid(format!("package {} names another digest than the one announced", request.name)));
        }
        if request.offset == 0 {
            self.uploads.insert(
                request.name.clone(),
                Upload { size: request.size, digest: request.digest.clone(), next: 0, hasher: blake3::Hasher::new() },
            );
        }
        let Some(upload) = self.uploads.get_mut(&request.name) else {
            return Err(invalid(format!("no upload of {} is in progress; start again from offset 0", request.name)));
        };
        if upload.size != request.size || upload.digest != request.digest || upload.next != request.offset {
            self.uploads.remove(&request.name);
            return Err(invalid(format!(
                "chunk at {} does not continue the upload of {} (another upload of it raced); start again from offset 0",
                request.offset, request.name
            )));
        }
        let end = request.offset + request.data.len() as u64;
        if end > upload.size {
            self.uploads.remove(&request.name);
            return Err(invalid(format!(
                "package {} is longer than its announced {} bytes",
                request.name, request.size
            )));
        }
        if request.data.is_empty() && end < upload.size {
            return Err(invalid("an empty chunk before the end of a package"));
        }
        upload.hasher.update(&request.data);
        upload.next = end;
        Ok(ChunkStep::Write { last: end == upload.size })
    }

    /// The last chunk is written: checks the digest; on success the package is stored.
    pub fn complete(&mut self, name: &str, job: Option<JobId>, now_ms: u64) -> Result<PackageInfo, WireError> {
        let upload = self.uploads.remove(name).ok_or_else(|| invalid(format!("no upload of {name} is in progress")))?;
        let digest = upload.hasher.finalize().to_hex().to_string();
        if digest != upload.digest {
            return Err(invalid(format!(
                "package {name} does not match its digest (announced {}, received {digest}); upload it again",
                upload.digest
            )));
        }
        let info = PackageInfo { name: name.to_string(), size: upload.size, digest };
        let row = PackageRow {
            info: info.clone(),
            jobs: job.into_iter().collect(),
            pinned_until_ms: now_ms + TEMPORARY_PIN.as_millis() as u64,
        };
        self.rows.insert(name.to_string(), row);
        self.persist(name);
        Ok(info)
    }

    /// An upload failed on disk: it is forgotten.
    pub fn abort(&mut self, name: &str) {
        self.uploads.remove(name);
    }

    /// A job ended (`keep`: it still has detached actors, which may need its
    /// packages to restart): returns the packages no job uses any more and whose
    /// pin has passed, now forgotten.
    pub fn job_finished(&mut self, job: JobId, keep: bool, now_ms: u64) -> Vec<String> {
        if !keep {
            let mut touched = Vec::new();
            for (name, row) in self.rows.iter_mut() {
                if row.jobs.remove(&job) {
                    touched.push(name.clone());
                }
            }
            for name in &touched {
                self.persist(name);
            }
        }
        self.expire(now_ms)
    }

    /// Forgets the packages no job uses whose pin has passed; returns their names.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let doomed: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, row)| row.jobs.is_empty() && row.pinned_until_ms <= now_ms)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &doomed {
            self.rows.remove(name);
            self.persist(name);
        }
        doomed
    }

    /// Stored packages.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Drops rows whose file is missing (a head restarted on another machine).
    pub fn keep_present(&mut self, dir: &Path) {
        let missing: Vec<String> = self.rows.keys().filter(|name| !dir.join(name).exists()).cloned().collect();
        for name in missing {
            warn!(%name, dir = %dir.display(), "a recorded package has no file here; forgetting it");
            self.rows.remove(&name);
            self.persist(&name);
        }
    }
}

/// The package actor. Stateless; its state is the shared table and the folder.
#[derive(Debug, Default)]
pub struct PackageStore;

/// Start-up arguments and state of the [`PackageStore`].
pub struct PackageStoreState {
    /// The table.
    pub table: Shared<PackageTable>,
    /// Where the files are.
    pub dir: PathBuf,
    /// The actor table (a finished job with detached actors keeps its packages).
    pub actors: Shared<crate::actor_directory::ActorTable>,
}

/// Messages to the [`PackageStore`].
#[derive(Debug)]
pub enum PackageMsg {
    /// Is it stored (and the job uses it)?
    Use(String, Option<JobId>, RpcReplyPort<Option<PackageInfo>>),
    /// A chunk of an upload; replies whether the package is complete.
    Put(PutPackageRequest, RpcReplyPort<Result<bool, WireError>>),
    /// The file and size of a stored package.
    Locate(String, RpcReplyPort<Option<(PathBuf, u64)>>),
    /// A job ended.
    JobFinished(JobId),
    /// Timer: forget packages whose temporary pin passed.
    Expire,
}

impl Actor for PackageStore {
    type Msg = PackageMsg;
    type State = PackageStoreState;
    type Arguments = PackageStoreState;

    async fn pre_start(
        &self,
        myself: ActorRef<PackageMsg>,
        state: PackageStoreState,
    ) -> Result<PackageStoreState, ActorProcessingErr> {
        manta_proto::private_fs::create_dir_all(&state.dir)
            .map_err(|error| format!("cannot create the package folder {}: {error}", state.dir.display()))?;
        state.table.lock().keep_present(&state.dir);
        myself.send_interval(Duration::from_secs(60), || PackageMsg::Expire);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PackageMsg>,
        message: PackageMsg,
        state: &mut PackageStoreState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PackageMsg::Use(name, job, reply) => {
                let _ = reply.send(state.table.lock().use_package(&name, job));
            }
            PackageMsg::Put(request, reply) => {
                let _ = reply.send(put(state, request));
            }
            PackageMsg::Locate(name, reply) => {
                let found = state.table.lock().get(&name).map(|info| (state.dir.join(&info.name), info.size));
                let _ = reply.send(found);
            }
            PackageMsg::JobFinished(job) => {
                let keep = state.actors.lock().has_live_detached(job);
                let doomed = state.table.lock().job_finished(job, keep, crate::now_ms());
                remove_files(&state.dir, &doomed);
            }
            PackageMsg::Expire => {
                let doomed = state.table.lock().expire(crate::now_ms());
                remove_files(&state.dir, &doomed);
            }
        }
        Ok(())
    }
}

fn partial_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.partial"))
}

/// Checks a chunk, writes it, and stores the package after its last chunk.
fn put(state: &PackageStoreState, request: PutPackageRequest) -> Result<bool, WireError> {
    let step = state.table.lock().chunk(&request)?;
    let ChunkStep::Write { last } = step else { return Ok(true) };
    let partial = partial_path(&state.dir, &request.name);
    let written = write_chunk(&partial, request.offset, &request.data);
    if let Err(error) = written {
        state.table.lock().abort(&request.name);
        let _ = std::fs::remove_file(&partial);
        return Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "the head cannot store package {}: {error}; free disk space under {}",
                request.name,
                state.dir.display()
            ),
        ));
    }
    if !last {
        return Ok(false);
    }
    let completed = state.table.lock().complete(&request.name, request.job_id, crate::now_ms());
    match completed {
        Ok(info) => {
            std::fs::rename(&partial, state.dir.join(&info.name)).map_err(|error| {
                WireError::new(ErrorCode::Unavailable, format!("cannot store package {}: {error}", info.name))
            })?;
            info!(name = %info.name, bytes = info.size, "stored package");
            metrics::counter!("manta_packages_stored_total").increment(1);
            Ok(true)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error)
        }
    }
}

fn write_chunk(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    if offset == 0 {
        options.create(true).truncate(true);
    }
    let file = options.open(path)?;
    file.write_all_at(data, offset)?;
    let mut file = file;
    file.flush()
}

fn remove_files(dir: &Path, names: &[String]) {
    for name in names {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => info!(%name, "deleted package: no running job uses it"),
            Err(error) => warn!(%name, %error, "could not delete a package file"),
        }
    }
}

/// Reads `len` bytes at `offset` of a stored package file (off the actor: many nodes may download at once).
pub async fn read_chunk(path: PathBuf, size: u64, offset: u64, len: u32) -> Result<bytes::Bytes, WireError> {
    if offset > size {
        return Err(invalid(format!("offset {offset} is past the package's {size} bytes")));
    }
    let len = (len as u64).min(CHUNK_BYTES as u64).min(size - offset) as usize;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path)?;
        let mut buffer = vec![0u8; len];
        file.read_exact_at(&mut buffer, offset)?;
        Ok::<_, std::io::Error>(bytes::Bytes::from(buffer))
    })
    .await
    .map_err(|_| WireError::internal("a package read stopped"))?
    .map_err(|error| WireError::new(ErrorCode::Unavailable, format!("cannot read the package: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(name: &str, content: &[u8], offset: usize, len: usize) -> PutPackageRequest {
        PutPackageRequest {
            name: name.into(),
            size: content.len() as u64,
            digest: blake3::hash(content).to_hex().to_string(),
            offset: offset as u64,
            data: bytes::Bytes::copy_from_slice(&content[offset..offset + len]),
            job_id: None,
        }
    }

    #[test]
    fn an_upload_in_order_is_stored_once_and_checked_against_its_digest() {
        let mut table = PackageTable::default();
        let content = b"0123456789";
        assert_eq!(table.chunk(&chunk("p.zip", content, 0, 4)).unwrap(), ChunkStep::Write { last: false });
        assert!(table.chunk(&chunk("p.zip", content, 8, 2)).is_err(), "a gap is refused");
        assert!(table.chunk(&chunk("p.zip", content, 4, 6)).is_err(), "the upload was dropped after the gap");
        assert_eq!(table.chunk(&chunk("p.zip", content, 0, 4)).unwrap(), ChunkStep::Write { last: false });
        assert_eq!(table.chunk(&chunk("p.zip", content, 4, 6)).unwrap(), ChunkStep::Write { last: true });
        let info = table.complete("p.zip", Some(JobId::from_counter(1)), 0).unwrap();
        assert_eq!(info.size, 10);
        assert_eq!(table.chunk(&chunk("p.zip", content, 0, 4)).unwrap(), ChunkStep::AlreadyStored);

        let mut lying = chunk("q.zip", content, 0, 10);
        lying.digest = blake3::hash(b"other").to_hex().to_string();
        assert_eq!(table.chunk(&lying).unwrap(), ChunkStep::Write { last: true });
        let error = table.complete("q.zip", None, 0).unwrap_err();
        assert!(error.message.contains("does not match its digest"), "{error:?}");
        assert!(table.get("q.zip").is_none());
        assert!(table.chunk(&chunk("../x", content, 0, 10)).is_err());
        let claimed = format!("_manta_exe_{}", blake3::hash(b"something else").to_hex());
        let error = table.chunk(&chunk(&claimed, content, 0, 10)).unwrap_err();
        assert!(error.message.contains("names another digest"), "{error:?}");
    }

    #[test]
    fn a_package_goes_when_its_last_job_ends_and_its_pin_has_passed() {
        let mut table = PackageTable::default();
        let content = b"abc";
        table.chunk(&chunk("p.zip", content, 0, 3)).unwrap();
        let (one, two) = (JobId::from_counter(1), JobId::from_counter(2));
        table.complete("p.zip", Some(one), 0).unwrap();
        assert!(table.use_package("p.zip", Some(two)).is_some());
        let after_pin = TEMPORARY_PIN.as_millis() as u64 + 1;
        assert!(table.job_finished(one, false, after_pin).is_empty(), "job two still uses it");
        assert!(table.job_finished(two, true, after_pin).is_empty(), "kept for job two's detached actors");
        assert_eq!(table.job_finished(two, false, after_pin), vec!["p.zip".to_string()]);
        assert!(table.is_empty());

        table.chunk(&chunk("r.zip", content, 0, 3)).unwrap();
        table.complete("r.zip", None, 0).unwrap();
        assert!(table.expire(1).is_empty(), "pinned for a job about to start");
        assert_eq!(table.expire(after_pin), vec!["r.zip".to_string()]);
    }
}
