//! How a driver turns a [`RuntimeEnv`] (Ray's `runtime_env` dict, parsed in
//! `manta_proto::runtime_env::user`) into the [`RuntimeEnvSpec`] that
//! travels: local folders and files are packed,
//! content-addressed and uploaded once to the cluster; requirements files are
//! read; the result names only packages in the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use manta_proto::JobId;
use manta_proto::client::GcsClient;
use manta_proto::package::{CHUNK_BYTES, PackageKind, PutPackageRequest, UsePackageRequest};
use manta_proto::packing::{self, DEFAULT_MAX_WORKING_DIR_BYTES};
pub use manta_proto::runtime_env::JOB_RUNTIME_ENV_VAR;
pub use manta_proto::runtime_env::user::RuntimeEnv;
use manta_proto::runtime_env::user::{checked_uri, config_of};
use manta_proto::runtime_env::{PACKAGE_SCHEME, RuntimeEnvSpec, check_package_name};

use crate::error::{Error, Result};
/// Overrides the package cap of a packed `working_dir` or `py_modules` folder, in bytes.
pub const MAX_PACKAGE_BYTES_VAR: &str = "MANTA_RUNTIME_ENV_MAX_PACKAGE_BYTES";

/// The job's environment: local folders and `.zip` files packed and uploaded
/// (used by `job_id`, so the cluster keeps them while the job runs).
pub(crate) async fn resolve_job(env: &RuntimeEnv, gcs: &GcsClient, job_id: JobId) -> Result<RuntimeEnvSpec> {
    env.validate().map_err(Error::InvalidArgument)?;
    let excludes = env.excludes.clone().unwrap_or_default();
    let cap = max_package_bytes();
    let working_dir = match &env.working_dir {
        Some(dir) if dir.starts_with(PACKAGE_SCHEME) => Some(checked_uri(dir).map_err(Error::InvalidArgument)?),
        Some(dir) => Some(upload_local(gcs, job_id, Path::new(dir), &excludes, cap, false).await?),
        None => None,
    };
    let mut py_modules = None;
    if let Some(modules) = &env.py_modules {
        let mut uris = Vec::new();
        for module in modules {
            uris.push(if module.starts_with(PACKAGE_SCHEME) {
                checked_uri(module).map_err(Error::InvalidArgument)?
            } else {
                upload_local(gcs, job_id, Path::new(module), &excludes, cap, true).await?
            });
        }
        py_modules = Some(uris);
    }
    Ok(RuntimeEnvSpec {
        env_vars: env.env_vars.clone(),
        working_dir,
        py_modules,
        pip: env.pip_spec().map_err(Error::InvalidArgument)?,
        config: env.config.as_ref().map(config_of),
    })
}

/// The environment a task or actor runs in: its own (`runtime_env` and
/// `env_var` options) over this process's.
pub(crate) fn effective(
    core: &crate::core::Core,
    own: Option<&RuntimeEnv>,
    vars: &BTreeMap<String, String>,
) -> Result<RuntimeEnvSpec> {
    if own.is_none() && vars.is_empty() {
        return Ok(core.runtime_env.clone());
    }
    let mut child = match own {
        Some(env) => env.resolve_child().map_err(Error::InvalidArgument)?,
        None => RuntimeEnvSpec::default(),
    };
    child.env_vars.extend(vars.iter().map(|(key, value)| (key.clone(), value.clone())));
    Ok(core.runtime_env.inherit(&child))
}

fn max_package_bytes() -> u64 {
    std::env::var(MAX_PACKAGE_BYTES_VAR)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_MAX_WORKING_DIR_BYTES)
}

/// Packs a local folder (or takes a `.zip`) and uploads it; returns its URI.
async fn upload_local(
    gcs: &GcsClient,
    job_id: JobId,
    path: &Path,
    excludes: &[String],
    cap: u64,
    keep_top: bool,
) -> Result<String> {
    let field = if keep_top { "py_modules" } else { "working_dir" };
    let refuse = |message: String| Error::InvalidArgument(format!("runtime_env {field}: {message}"));
    let metadata = std::fs::metadata(path)
        .map_err(|error| refuse(format!("{} does not exist or cannot be read ({error})", path.display())))?;
    let (path, excludes) = (path.to_path_buf(), excludes.to_vec());
    let packed = tokio::task::spawn_blocking(move || {
        if metadata.is_dir() {
            packing::pack_dir(&path, &excludes, cap, keep_top)
        } else if path.extension().is_some_and(|extension| extension == "zip") {
            packing::pack_zip_file(&path, cap)
        } else {
            Err(format!("{} is neither a folder nor a .zip file", path.display()))
        }
    })
    .await
    .map_err(|_| refuse("packing stopped".into()))?
    .map_err(refuse)?;
    upload(gcs, job_id, &packed.name, &packed.digest, Source::Bytes(&packed.bytes)).await?;
    Ok(format!("{PACKAGE_SCHEME}{}", packed.name))
}

/// Uploads this program (content-addressed) so every node can fetch and start it;
/// returns its package name.
pub(crate) async fn upload_executable(gcs: &GcsClient, job_id: JobId) -> Result<String> {
    let path = std::env::current_exe()
        .map_err(|error| Error::Init(format!("cannot find this program's executable: {error}")))?;
    let hashed = path.clone();
    let (digest, size) = tokio::task::spawn_blocking(move || digest_of_program(&hashed))
        .await
        .map_err(|_| Error::Init("hashing this program stopped".into()))?
        .map_err(|error| Error::Init(format!("cannot read this program ({}): {error}", path.display())))?;
    let name = PackageKind::Executable.name(&digest);
    upload(gcs, job_id, &name, &digest, Source::File(&path, size)).await?;
    Ok(name)
}

/// The blake3 digest of a program, remembered per file identity (device, inode,
/// change time, size) under the user's cache folder, so running the same build
/// again does not hash it again. Any write to the file changes its change time.
fn digest_of_program(path: &Path) -> std::io::Result<(blake3::Hash, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    let identity = format!(
        "{:x}-{:x}-{}.{}-{}",
        metadata.dev(),
        metadata.ino(),
        metadata.ctime(),
        metadata.ctime_nsec(),
        metadata.len()
    );
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("manta").join("program-digests"));
    if let Some(cache) = &cache
        && let Ok(text) = std::fs::read_to_string(cache.join(&identity))
        && let Ok(digest) = blake3::Hash::from_hex(text.trim())
    {
        return Ok((digest, metadata.len()));
    }
    let (digest, size) = packing::hash_file(path)?;
    if let Some(cache) = cache
        && manta_proto::private_fs::create_dir_all(&cache).is_ok()
    {
        let _ = manta_proto::private_fs::write_atomically(&cache.join(identity), digest.to_hex().as_bytes());
    }
    Ok((digest, size))
}

enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a PathBuf, u64),
}

/// Uploads a package unless the cluster has it (either way, the job now uses it).
async fn upload(gcs: &GcsClient, job_id: JobId, name: &str, digest: &blake3::Hash, source: Source<'_>) -> Result<()> {
    check_package_name(name).map_err(Error::InvalidArgument)?;
    let used = gcs.call(UsePackageRequest { name: name.to_string(), job_id: Some(job_id) }).await?;
    if used.info.is_some() {
        return Ok(());
    }
    let size = match &source {
        Source::Bytes(bytes) => bytes.len() as u64,
        Source::File(_, size) => *size,
    };
    let mut file = match &source {
        Source::File(path, _) => Some(
            std::fs::File::open(path)
                .map_err(|error| Error::Init(format!("cannot read {}: {error}", path.display())))?,
        ),
        Source::Bytes(_) => None,
    };
    let mut offset = 0u64;
    loop {
        let len = (size - offset).min(CHUNK_BYTES as u64) as usize;
        let data = match (&source, file.as_mut()) {
            (Source::Bytes(bytes), _) => bytes::Bytes::copy_from_slice(&bytes[offset as usize..offset as usize + len]),
            (Source::File(path, _), Some(file)) => {
                let mut buffer = vec![0u8; len];
                std::io::Read::read_exact(file, &mut buffer)
                    .map_err(|error| Error::Init(format!("cannot read {}: {error}", path.display())))?;
                bytes::Bytes::from(buffer)
            }
            (Source::File(..), None) => unreachable!("a file source has its file open"),
        };
        let request = PutPackageRequest {
            name: name.to_string(),
            size,
            digest: digest.to_hex().to_string(),
            offset,
            data,
            job_id: Some(job_id),
        };
        let reply = gcs.call(request).await?;
        offset += len as u64;
        if reply.complete {
            return Ok(());
        }
        if offset >= size {
            return Err(Error::Cluster(format!("the GCS did not complete package {name} after its last chunk")));
        }
    }
}
