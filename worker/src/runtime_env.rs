//! Runtime environments as users write them ([`RuntimeEnv`], Ray's
//! `runtime_env` dict and field names), and how a driver turns one into the
//! [`RuntimeEnvSpec`] that travels: local folders and files are packed,
//! content-addressed and uploaded once to the cluster; requirements files are
//! read; the result names only packages in the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use manta_proto::JobId;
use manta_proto::client::GcsClient;
use manta_proto::package::{CHUNK_BYTES, PackageKind, PutPackageRequest, UsePackageRequest};
use manta_proto::packing::{self, DEFAULT_MAX_WORKING_DIR_BYTES};
use manta_proto::runtime_env::{
    Installer, PACKAGE_SCHEME, PipSpec, RuntimeEnvConfig, RuntimeEnvSpec, check_package_name,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The variable a job supervisor (`manta job submit`) passes the job-level
/// environment in, resolved, to the driver it starts.
pub const JOB_RUNTIME_ENV_VAR: &str = "MANTA_JOB_RUNTIME_ENV";
/// Overrides the package cap of a packed `working_dir` or `py_modules` folder, in bytes.
pub const MAX_PACKAGE_BYTES_VAR: &str = "MANTA_RUNTIME_ENV_MAX_PACKAGE_BYTES";

/// A runtime environment, as Ray's `runtime_env` dict:
/// `{"env_vars": {...}, "working_dir": "./project", "excludes": [...], "py_modules": [...],
/// "pip": [...] | "requirements.txt" | {"packages": [...]}, "uv": ..., "config": {...}}`.
///
/// At job level (`Builder::runtime_env`) local folders and `.zip` files are
/// packed and uploaded once; for a task or actor (`TaskOptions::runtime_env`,
/// `ActorOptions::runtime_env`) `working_dir` and `py_modules` must already be
/// packages in the cluster (`gcs://…`), as in Ray. A task or actor inherits its
/// parent's environment: its `env_vars` are set over the parent's, key by key,
/// and every other field it gives replaces the parent's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEnv {
    /// Environment variables (`${VAR}` expands from the node's environment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// The workers' current directory: a local folder or `.zip` file (job level),
    /// or a package URI `gcs://…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Folders put on the workers' `PYTHONPATH` (local at job level, or `gcs://…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub py_modules: Option<Vec<String>>,
    /// Gitignore-style patterns left out when packing `working_dir` and `py_modules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<Vec<String>>,
    /// Python requirements for a virtualenv the workers start in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pip: Option<PipField>,
    /// Like `pip`, installed with `uv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uv: Option<PipField>,
    /// Setup options: `setup_timeout_seconds` (default 600, -1: none), `eager_install`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigField>,
}

/// The forms Ray accepts for `pip` and `uv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PipField {
    /// Requirement strings.
    List(Vec<String>),
    /// A requirements file.
    File(String),
    /// `{"packages": [...] or "file", "pip_check": false, "pip_version": "==23.3"}`
    /// (`uv_check`, `uv_version` and `uv_pip_install_options` for `uv`).
    Dict(PipDict),
}

/// The dict form of `pip` / `uv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipDict {
    /// Requirement strings, or a requirements file.
    pub packages: PackagesField,
    /// Run `pip check` after installing.
    #[serde(default, alias = "uv_check")]
    pub pip_check: bool,
    /// Pin pip itself (`"==23.3"`).
    #[serde(default, alias = "uv_version", skip_serializing_if = "Option::is_none")]
    pub pip_version: Option<String>,
    /// Accepted for Ray compatibility (uv's extra install options); not passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uv_pip_install_options: Option<Vec<String>>,
}

/// `packages` inside the dict form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PackagesField {
    /// Requirement strings.
    List(Vec<String>),
    /// A requirements file.
    File(String),
}

/// Ray's `RuntimeEnvConfig` (unknown keys are ignored, as Ray warns and ignores them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigField {
    /// Seconds the setup may take; -1: no limit (default 600).
    #[serde(default = "default_timeout")]
    pub setup_timeout_seconds: i64,
    /// Set up on every node when the job starts (default true).
    #[serde(default = "default_true")]
    pub eager_install: bool,
}

fn default_timeout() -> i64 {
    manta_proto::runtime_env::DEFAULT_SETUP_TIMEOUT_SECONDS
}

fn default_true() -> bool {
    true
}

impl RuntimeEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one variable.
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env_vars.insert(key.into(), value.into());
        self
    }

    /// The workers' current directory (a local folder or `.zip` at job level, or `gcs://…`).
    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Patterns left out of packed folders.
    pub fn excludes<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Self {
        self.excludes = Some(patterns.into_iter().map(Into::into).collect());
        self
    }

    /// Folders put on `PYTHONPATH`.
    pub fn py_modules<S: Into<String>>(mut self, modules: impl IntoIterator<Item = S>) -> Self {
        self.py_modules = Some(modules.into_iter().map(Into::into).collect());
        self
    }

    /// Python requirements for the workers' virtualenv.
    pub fn pip<S: Into<String>>(mut self, requirements: impl IntoIterator<Item = S>) -> Self {
        self.pip = Some(PipField::List(requirements.into_iter().map(Into::into).collect()));
        self
    }

    /// Seconds the setup may take on a node (-1: no limit).
    pub fn setup_timeout_seconds(mut self, seconds: i64) -> Self {
        let config =
            self.config.get_or_insert(ConfigField { setup_timeout_seconds: default_timeout(), eager_install: true });
        config.setup_timeout_seconds = seconds;
        self
    }

    /// Parses the JSON form, e.g. `{"env_vars": {"counter_name": "test_counter"}}`;
    /// an unknown or unsupported field is an error naming it.
    pub fn from_json(json: &str) -> Result<Self> {
        let env: Self = serde_json::from_str(json).map_err(|error| {
            let text = error.to_string();
            let hint = if text.contains("PipField") || text.contains("PackagesField") {
                "pip / uv: expected a list of requirements, a requirements file, or {\"packages\": [...]}".to_string()
            } else {
                text
            };
            Error::InvalidArgument(format!(
                "runtime_env is not valid: {hint}; manta supports env_vars, working_dir, py_modules, excludes, pip, uv and config"
            ))
        })?;
        env.validate()?;
        Ok(env)
    }

    fn validate(&self) -> Result<()> {
        if self.pip.is_some() && self.uv.is_some() {
            return Err(Error::InvalidArgument("runtime_env: give at most one of pip and uv".into()));
        }
        if let Some(config) = &self.config {
            config_of(config).validate().map_err(Error::InvalidArgument)?;
        }
        Ok(())
    }

    /// The environment of a task or actor: no local folders (they are packed
    /// only at job level), requirements files read here.
    pub(crate) fn resolve_child(&self) -> Result<RuntimeEnvSpec> {
        self.validate()?;
        let package = |field: &str, value: &str| -> Result<String> {
            if value.starts_with(PACKAGE_SCHEME) {
                manta_proto::runtime_env::package_of_uri(value).map_err(Error::InvalidArgument)?;
                return Ok(value.to_string());
            }
            Err(Error::InvalidArgument(format!(
                "runtime_env {field} {value:?}: a task or actor names a package in the cluster (gcs://…); \
                 local folders are packed only at job level (Builder::runtime_env or manta job submit), as in Ray"
            )))
        };
        Ok(RuntimeEnvSpec {
            env_vars: self.env_vars.clone(),
            working_dir: self.working_dir.as_deref().map(|dir| package("working_dir", dir)).transpose()?,
            py_modules: self
                .py_modules
                .as_ref()
                .map(|modules| modules.iter().map(|module| package("py_modules", module)).collect())
                .transpose()?,
            pip: self.pip_spec()?,
            config: self.config.as_ref().map(config_of),
        })
    }

    /// The job's environment: local folders and `.zip` files packed and uploaded
    /// (used by `job_id`, so the cluster keeps them while the job runs).
    pub(crate) async fn resolve_job(&self, gcs: &GcsClient, job_id: JobId) -> Result<RuntimeEnvSpec> {
        self.validate()?;
        let excludes = self.excludes.clone().unwrap_or_default();
        let cap = max_package_bytes();
        let working_dir = match &self.working_dir {
            Some(dir) if dir.starts_with(PACKAGE_SCHEME) => Some(checked_uri(dir)?),
            Some(dir) => Some(upload_local(gcs, job_id, Path::new(dir), &excludes, cap, false).await?),
            None => None,
        };
        let mut py_modules = None;
        if let Some(modules) = &self.py_modules {
            let mut uris = Vec::new();
            for module in modules {
                uris.push(if module.starts_with(PACKAGE_SCHEME) {
                    checked_uri(module)?
                } else {
                    upload_local(gcs, job_id, Path::new(module), &excludes, cap, true).await?
                });
            }
            py_modules = Some(uris);
        }
        Ok(RuntimeEnvSpec {
            env_vars: self.env_vars.clone(),
            working_dir,
            py_modules,
            pip: self.pip_spec()?,
            config: self.config.as_ref().map(config_of),
        })
    }

    fn pip_spec(&self) -> Result<Option<PipSpec>> {
        let (field, installer) = match (&self.pip, &self.uv) {
            (Some(field), _) => (field, Installer::Pip),
            (None, Some(field)) => (field, Installer::Uv),
            (None, None) => return Ok(None),
        };
        let spec = match field {
            PipField::List(packages) => PipSpec { installer, packages: packages.clone(), ..Default::default() },
            PipField::File(path) => {
                PipSpec { installer, packages: read_requirements(Path::new(path))?, ..Default::default() }
            }
            PipField::Dict(dict) => PipSpec {
                installer,
                packages: match &dict.packages {
                    PackagesField::List(packages) => packages.clone(),
                    PackagesField::File(path) => read_requirements(Path::new(path))?,
                },
                pip_check: dict.pip_check,
                pip_version: dict.pip_version.clone(),
            },
        };
        Ok(Some(spec))
    }
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
        Some(env) => env.resolve_child()?,
        None => RuntimeEnvSpec::default(),
    };
    child.env_vars.extend(vars.iter().map(|(key, value)| (key.clone(), value.clone())));
    Ok(core.runtime_env.inherit(&child))
}

fn config_of(config: &ConfigField) -> RuntimeEnvConfig {
    RuntimeEnvConfig { setup_timeout_seconds: config.setup_timeout_seconds, eager_install: config.eager_install }
}

fn checked_uri(uri: &str) -> Result<String> {
    manta_proto::runtime_env::package_of_uri(uri).map_err(Error::InvalidArgument)?;
    Ok(uri.to_string())
}

fn max_package_bytes() -> u64 {
    std::env::var(MAX_PACKAGE_BYTES_VAR)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_MAX_WORKING_DIR_BYTES)
}

/// The requirement lines of a requirements file (comments and blank lines dropped).
fn read_requirements(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Error::InvalidArgument(format!("runtime_env pip: cannot read {}: {error}", path.display())))?;
    Ok(text
        .lines()
        .map(|line| line.split(" #").next().unwrap_or("").trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ray_s_forms_and_names_what_it_refuses() {
        let env = RuntimeEnv::from_json(r#"{"env_vars": {"counter_name": "test_counter"}}"#).unwrap();
        assert_eq!(env.env_vars["counter_name"], "test_counter");
        let full = RuntimeEnv::from_json(
            r#"{"working_dir": "./w", "excludes": ["*.log"], "py_modules": ["gcs://_manta_pkg_a.zip"],
                "pip": {"packages": ["requests==2.31"], "pip_check": false}, "config": {"setup_timeout_seconds": 30, "eager_install": false}}"#,
        )
        .unwrap();
        assert_eq!(full.config.unwrap().setup_timeout_seconds, 30);
        assert!(matches!(full.pip, Some(PipField::Dict(_))));
        assert!(matches!(RuntimeEnv::from_json(r#"{"uv": ["x"]}"#).unwrap().uv, Some(PipField::List(_))));
        let conda = RuntimeEnv::from_json(r#"{"conda": {"dependencies": []}}"#).unwrap_err().to_string();
        assert!(conda.contains("conda"), "{conda}");
        let pip = RuntimeEnv::from_json(r#"{"pip": 3}"#).unwrap_err().to_string();
        assert!(pip.contains("pip / uv"), "{pip}");
        assert!(RuntimeEnv::from_json(r#"{"env_vars": {"n": 1}}"#).is_err());
        assert!(
            RuntimeEnv::from_json(r#"{"pip": ["a"], "uv": ["b"]}"#).unwrap_err().to_string().contains("at most one")
        );
        let timeout = RuntimeEnv::from_json(r#"{"config": {"setup_timeout_seconds": 0}}"#).unwrap_err().to_string();
        assert!(timeout.contains("setup_timeout_seconds"), "{timeout}");
        assert!(RuntimeEnv::from_json("not json").is_err());
    }

    #[test]
    fn a_task_names_packages_and_reads_its_requirements_file() {
        let dir = tempfile_dir();
        let requirements = dir.join("requirements.txt");
        std::fs::write(&requirements, "# pinned\nrequests==2.31  # http\n\nnumpy\n").unwrap();
        let env = RuntimeEnv::new().env_var("A", "1").working_dir("gcs://_manta_pkg_x.zip");
        let env = RuntimeEnv { pip: Some(PipField::File(requirements.display().to_string())), ..env };
        let spec = env.resolve_child().unwrap();
        assert_eq!(spec.working_dir.as_deref(), Some("gcs://_manta_pkg_x.zip"));
        assert_eq!(spec.pip.unwrap().packages, vec!["requests==2.31", "numpy"]);
        let local = RuntimeEnv::new().working_dir("./project").resolve_child().unwrap_err().to_string();
        assert!(local.contains("only at job level"), "{local}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "manta-runtime-env-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
