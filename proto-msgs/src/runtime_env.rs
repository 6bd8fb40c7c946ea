//! Runtime environments as they travel: [`RuntimeEnvSpec`] is a job's, task's or
//! actor's environment with every local path already packed and uploaded, so
//! it names only packages in the cluster (`gcs://<name>`). Its [`EnvKey`] (a
//! hash of everything but `config`) keys worker pools and the node's
//! RuntimeEnvAgent cache.
//!
//! Scopes follow Ray: a task or actor inherits its parent's environment
//! ([`RuntimeEnvSpec::inherit`]: `env_vars` merge key by key, the child's other
//! fields replace the parent's), and two job-level environments for one job
//! (`manta job submit` and `init`) must agree ([`RuntimeEnvSpec::combine`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod user;
pub use user::{ConfigField, PackagesField, PipDict, PipField, RuntimeEnv};

/// Ray's default `setup_timeout_seconds`.
pub const DEFAULT_SETUP_TIMEOUT_SECONDS: i64 = 600;
/// The variable a job supervisor (`manta job submit`) passes the job-level
/// environment in, resolved (JSON), to the driver it starts.
pub const JOB_RUNTIME_ENV_VAR: &str = "MANTA_JOB_RUNTIME_ENV";
/// The scheme of a package stored in the cluster.
pub const PACKAGE_SCHEME: &str = "gcs://";

/// A runtime environment with local paths resolved to cluster packages. A field
/// that is `None` was not given (a child inherits it from its parent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuntimeEnvSpec {
    /// Variables set in the worker's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// The worker's current directory: a package URI (`gcs://_manta_pkg_<hash>.zip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Packages put on `PYTHONPATH`, as package URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub py_modules: Option<Vec<String>>,
    /// Python requirements installed into a virtualenv for the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pip: Option<PipSpec>,
    /// Setup options (not part of the environment's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RuntimeEnvConfig>,
}

/// Which installer builds a virtualenv (`pip` or `uv` in Ray's dict).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Installer {
    /// `python3 -m venv` + `pip install` (or `uv` when the node has it).
    #[default]
    Pip,
    /// `uv venv` + `uv pip install` (falls back to pip when the node has no `uv`).
    Uv,
}

/// Python requirements, as requirement strings (a requirements file is read by the client).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PipSpec {
    /// The field it came from.
    #[serde(default)]
    pub installer: Installer,
    /// Requirement lines (`requests==2.31`, `./wheels/x.whl`, ...).
    pub packages: Vec<String>,
    /// Run `pip check` after installing.
    #[serde(default)]
    pub pip_check: bool,
    /// A version of pip itself to install first (`==23.3`), as Ray's `pip_version`.
    #[serde(default)]
    pub pip_version: Option<String>,
}

/// Ray's `RuntimeEnvConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuntimeEnvConfig {
    /// Seconds the setup may take; `-1`: no limit.
    pub setup_timeout_seconds: i64,
    /// Build the environment on every node when the job starts (job level only).
    pub eager_install: bool,
}

impl Default for RuntimeEnvConfig {
    fn default() -> Self {
        Self { setup_timeout_seconds: DEFAULT_SETUP_TIMEOUT_SECONDS, eager_install: true }
    }
}

impl RuntimeEnvConfig {
    /// The setup deadline, `None` for no limit.
    pub fn setup_timeout(&self) -> Option<std::time::Duration> {
        u64::try_from(self.setup_timeout_seconds).ok().map(std::time::Duration::from_secs)
    }

    /// Checks Ray's rule: positive, or -1.
    pub fn validate(&self) -> Result<(), String> {
        if self.setup_timeout_seconds > 0 || self.setup_timeout_seconds == -1 {
            Ok(())
        } else {
            Err(format!(
                "runtime_env config.setup_timeout_seconds must be a positive number of seconds or -1 (no limit), not {}",
                self.setup_timeout_seconds
            ))
        }
    }
}

/// The identity of an environment: a hash of everything but `config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EnvKey(pub [u8; 16]);

impl std::fmt::Display for EnvKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl RuntimeEnvSpec {
    /// The environment's identity (its variables, packages and requirements).
    pub fn key(&self) -> EnvKey {
        let identity = RuntimeEnvSpec { config: None, ..self.clone() };
        let bytes = rmp_serde::to_vec_named(&identity).expect("a runtime env always encodes");
        let digest = blake3::hash(&bytes);
        EnvKey(digest.as_bytes()[..16].try_into().expect("16 bytes"))
    }

    /// True for the empty environment (left out of the frames that carry one).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// True when something beyond variables needs setting up.
    pub fn has_packages(&self) -> bool {
        self.working_dir.is_some()
            || self.py_modules.as_ref().is_some_and(|modules| !modules.is_empty())
            || self.pip.is_some()
    }

    /// The setup options in force.
    pub fn config(&self) -> RuntimeEnvConfig {
        self.config.unwrap_or_default()
    }

    /// This environment as the parent of `child` (Ray's inheritance): the
    /// child's variables are set over the parent's, key by key; every other
    /// field the child gives replaces the parent's.
    pub fn inherit(&self, child: &RuntimeEnvSpec) -> RuntimeEnvSpec {
        let mut env_vars = self.env_vars.clone();
        env_vars.extend(child.env_vars.iter().map(|(key, value)| (key.clone(), value.clone())));
        RuntimeEnvSpec {
            env_vars,
            working_dir: child.working_dir.clone().or_else(|| self.working_dir.clone()),
            py_modules: child.py_modules.clone().or_else(|| self.py_modules.clone()),
            pip: child.pip.clone().or_else(|| self.pip.clone()),
            config: child.config.or(self.config),
        }
    }

    /// Two job-level environments of one job (the one `manta job submit` gave,
    /// and the one the program passes to `init`): their union, or every
    /// conflict (a variable or field both set, differently), as Ray reports them.
    pub fn combine(&self, other: &RuntimeEnvSpec) -> Result<RuntimeEnvSpec, Vec<String>> {
        let mut conflicts = Vec::new();
        for (key, value) in &other.env_vars {
            if let Some(mine) = self.env_vars.get(key)
                && mine != value
            {
                conflicts.push(format!("env_vars.{key} ({mine:?} vs {value:?})"));
            }
        }
        fn field<T: PartialEq + Clone>(
            name: &str,
            a: &Option<T>,
            b: &Option<T>,
            conflicts: &mut Vec<String>,
        ) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) if a != b => {
                    conflicts.push(name.to_string());
                    Some(a.clone())
                }
                _ => a.clone().or_else(|| b.clone()),
            }
        }
        let combined = RuntimeEnvSpec {
            env_vars: self.env_vars.iter().chain(&other.env_vars).map(|(k, v)| (k.clone(), v.clone())).collect(),
            working_dir: field("working_dir", &self.working_dir, &other.working_dir, &mut conflicts),
            py_modules: field("py_modules", &self.py_modules, &other.py_modules, &mut conflicts),
            pip: field("pip", &self.pip, &other.pip, &mut conflicts),
            config: field("config", &self.config, &other.config, &mut conflicts),
        };
        if conflicts.is_empty() { Ok(combined) } else { Err(conflicts) }
    }

    /// Every package this environment names (working dir first).
    pub fn packages(&self) -> impl Iterator<Item = &str> {
        self.working_dir.iter().chain(self.py_modules.iter().flatten()).map(String::as_str)
    }
}

/// The package a `gcs://<name>` URI names, checked to be a plain file name.
pub fn package_of_uri(uri: &str) -> Result<&str, String> {
    let name = uri.strip_prefix(PACKAGE_SCHEME).ok_or_else(|| {
        format!("{uri:?} is not a package in the cluster; expected {PACKAGE_SCHEME}<name> (a local path is packed and uploaded by the driver)")
    })?;
    check_package_name(name)?;
    Ok(name)
}

/// Package names are plain file names: letters, digits, `.`, `_`, `-`, at most
/// 200 characters, not starting with a dot (they become file names on nodes).
pub fn check_package_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if plain { Ok(()) } else { Err(format!("{name:?} is not a valid package name (letters, digits, '.', '_', '-')")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_child_merges_variables_and_replaces_other_fields() {
        let parent = RuntimeEnvSpec {
            env_vars: vars(&[("A", "1"), ("B", "2")]),
            working_dir: Some("gcs://p.zip".into()),
            pip: Some(PipSpec { packages: vec!["x".into()], ..Default::default() }),
            ..Default::default()
        };
        let child = RuntimeEnvSpec {
            env_vars: vars(&[("B", "3")]),
            working_dir: Some("gcs://c.zip".into()),
            ..Default::default()
        };
        let merged = parent.inherit(&child);
        assert_eq!(merged.env_vars, vars(&[("A", "1"), ("B", "3")]));
        assert_eq!(merged.working_dir.as_deref(), Some("gcs://c.zip"));
        assert_eq!(merged.pip, parent.pip);
        assert_eq!(parent.inherit(&RuntimeEnvSpec::default()), parent);
    }

    #[test]
    fn job_level_environments_must_agree() {
        let submit = RuntimeEnvSpec {
            env_vars: vars(&[("A", "1")]),
            working_dir: Some("gcs://a.zip".into()),
            ..Default::default()
        };
        let init = RuntimeEnvSpec { env_vars: vars(&[("A", "1"), ("B", "2")]), ..Default::default() };
        let combined = submit.combine(&init).unwrap();
        assert_eq!(combined.env_vars, vars(&[("A", "1"), ("B", "2")]));
        assert_eq!(combined.working_dir.as_deref(), Some("gcs://a.zip"));
        let clash = RuntimeEnvSpec {
            env_vars: vars(&[("A", "9")]),
            working_dir: Some("gcs://b.zip".into()),
            ..Default::default()
        };
        let conflicts = submit.combine(&clash).unwrap_err();
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert!(conflicts[0].contains("env_vars.A"), "{conflicts:?}");
        assert_eq!(conflicts[1], "working_dir");
    }

    #[test]
    fn the_key_ignores_config_and_sees_everything_else() {
        let env = RuntimeEnvSpec { env_vars: vars(&[("A", "1")]), ..Default::default() };
        let configured = RuntimeEnvSpec {
            config: Some(RuntimeEnvConfig { setup_timeout_seconds: 5, eager_install: false }),
            ..env.clone()
        };
        assert_eq!(env.key(), configured.key());
        let other = RuntimeEnvSpec { env_vars: vars(&[("A", "2")]), ..Default::default() };
        assert_ne!(env.key(), other.key());
        assert_eq!(env.key().to_string().len(), 32);
    }

    #[test]
    fn package_uris_name_plain_files_only() {
        assert_eq!(package_of_uri("gcs://_manta_pkg_ab.zip").unwrap(), "_manta_pkg_ab.zip");
        assert!(package_of_uri("/home/me/dir").is_err());
        assert!(package_of_uri("gcs://../etc/passwd").is_err());
        assert!(package_of_uri("gcs://a/b").is_err());
        assert!(package_of_uri("gcs://.hidden").is_err());
        assert!(RuntimeEnvConfig { setup_timeout_seconds: 0, eager_install: true }.validate().is_err());
        assert!(RuntimeEnvConfig { setup_timeout_seconds: -1, eager_install: true }.validate().is_ok());
    }
}
