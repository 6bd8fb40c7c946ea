//! Packages in the cluster: content-addressed files (a job's executable, a
//! packed `working_dir`, a `py_modules` folder) that a client uploads once to
//! the GCS in chunks and every node's RuntimeEnvAgent downloads once, checking
//! the digest. Names are plain file names ([`crate::runtime_env::check_package_name`]);
//! the ones manta makes carry the blake3 digest of the content.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::JobId;

/// Bytes per upload or download chunk (well under the 64 MiB frame cap).
pub const CHUNK_BYTES: usize = 4 << 20;
/// The largest package the GCS stores (a big debug binary fits; a `working_dir`
/// has its own, smaller cap on the client: `packing::DEFAULT_MAX_WORKING_DIR_BYTES`).
pub const MAX_PACKAGE_BYTES: u64 = 4 << 30;

/// Which kind of content a package name announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackageKind {
    /// A program (`_manta_exe_<digest>`), started by nodes from their cache.
    Executable,
    /// A folder packed by manta (`_manta_pkg_<digest>.zip`): its files at the root.
    PackedDir,
    /// A `.zip` file as the user gave it (`_manta_zip_<digest>.zip`, or any other
    /// name): a single top-level folder is unwrapped, as Ray does.
    Zip,
}

impl PackageKind {
    /// The kind a name announces.
    pub fn of(name: &str) -> Self {
        if name.starts_with("_manta_exe_") {
            PackageKind::Executable
        } else if name.starts_with("_manta_pkg_") || name.starts_with("_ray_pkg_") {
            PackageKind::PackedDir
        } else {
            PackageKind::Zip
        }
    }

    /// The digest a name manta made carries (hex), `None` for other names.
    pub fn digest_in_name(name: &str) -> Option<&str> {
        ["_manta_exe_", "_manta_pkg_", "_manta_zip_"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .map(|rest| rest.trim_end_matches(".zip"))
    }

    /// The name manta gives content with this digest.
    pub fn name(self, digest: &blake3::Hash) -> String {
        match self {
            PackageKind::Executable => format!("_manta_exe_{}", digest.to_hex()),
            PackageKind::PackedDir => format!("_manta_pkg_{}.zip", digest.to_hex()),
            PackageKind::Zip => format!("_manta_zip_{}.zip", digest.to_hex()),
        }
    }
}

/// What the GCS knows of a stored package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    /// Its name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// blake3 of the content, hex.
    pub digest: String,
}

/// GCS: is this package stored? With `job_id`, the job also starts using it
/// (the package is kept while a job that uses it runs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsePackageRequest {
    /// The package.
    pub name: String,
    /// The job that will use it.
    #[serde(default)]
    pub job_id: Option<JobId>,
}

/// Reply to [`UsePackageRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsePackageReply {
    /// `None` when the cluster does not have it (upload it).
    pub info: Option<PackageInfo>,
}

/// GCS: one chunk of an upload, sent in order from offset 0. The last chunk
/// completes it: the GCS checks size and digest and then stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutPackageRequest {
    /// The package.
    pub name: String,
    /// Its total size.
    pub size: u64,
    /// blake3 of the whole content, hex.
    pub digest: String,
    /// Where this chunk starts.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// The job that uses it (`None`: kept for a while for a job about to start).
    #[serde(default)]
    pub job_id: Option<JobId>,
}

/// Reply to [`PutPackageRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutPackageReply {
    /// True once the last chunk is in and checked.
    pub complete: bool,
}

/// GCS: bytes `offset..offset+len` of a stored package (answered with a chunk).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetPackageChunkRequest {
    /// The package.
    pub name: String,
    /// Where to start.
    pub offset: u64,
    /// How many bytes (at most [`CHUNK_BYTES`]).
    pub len: u32,
}
