//! Runtime environments as users write them ([`RuntimeEnv`]: Ray's
//! `runtime_env` dict, field names and JSON forms), shared by the Rust API,
//! `manta job submit` and the head's Jobs REST API. Turning one into the
//! [`RuntimeEnvSpec`] that travels needs local folders packed and uploaded
//! first: [`RuntimeEnv::resolve_child`] takes an environment that names only
//! packages (`gcs://…`), as a task, an actor or a REST submission must.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Installer, PACKAGE_SCHEME, PipSpec, RuntimeEnvConfig, RuntimeEnvSpec};

/// A runtime env that cannot be used; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRuntimeEnv(pub String);

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
    super::DEFAULT_SETUP_TIMEOUT_SECONDS
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
    pub fn from_json(json: &str) -> Result<Self, InvalidRuntimeEnv> {
        let env: Self = serde_json::from_str(json).map_err(|error| {
            let text = error.to_string();
            let hint = if text.contains("PipField") || text.contains("PackagesField") {
                "pip / uv: expected a list of requirements, a requirements file, or {\"packages\": [...]}".to_string()
            } else {
                text
            };
            InvalidRuntimeEnv(format!(
                "runtime_env is not valid: {hint}; manta supports env_vars, working_dir, py_modules, excludes, pip, uv and config"
            ))
        })?;
        env.validate().map_err(InvalidRuntimeEnv)?;
        Ok(env)
    }

    /// Checks the fields agree (at most one of pip and uv; a sane config).
    pub fn validate(&self) -> Result<(), String> {
        if self.pip.is_some() && self.uv.is_some() {
            return Err("runtime_env: give at most one of pip and uv".into());
        }
        if let Some(config) = &self.config {
            config_of(config).validate()?;
        }
        Ok(())
    }

    /// The environment of a task or actor: no local folders (they are packed
    /// only at job level), requirements files read here.
    pub fn resolve_child(&self) -> Result<RuntimeEnvSpec, String> {
        self.validate()?;
        let package = |field: &str, value: &str| -> Result<String, String> {
            if value.starts_with(PACKAGE_SCHEME) {
                super::package_of_uri(value)?;
                return Ok(value.to_string());
            }
            Err(format!(
                "runtime_env {field} {value:?}: a task or actor names a package in the cluster (gcs://…); \
                 local folders are packed only at job level (Builder::runtime_env or manta job submit), as in Ray"
            ))
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

    pub fn pip_spec(&self) -> Result<Option<PipSpec>, String> {
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

pub fn config_of(config: &ConfigField) -> RuntimeEnvConfig {
    RuntimeEnvConfig { setup_timeout_seconds: config.setup_timeout_seconds, eager_install: config.eager_install }
}

pub fn checked_uri(uri: &str) -> Result<String, String> {
    super::package_of_uri(uri)?;
    Ok(uri.to_string())
}

/// The requirement lines of a requirements file (comments and blank lines dropped).
pub fn read_requirements(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("runtime_env pip: cannot read {}: {error}", path.display()))?;
    Ok(text
        .lines()
        .map(|line| line.split(" #").next().unwrap_or("").trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
