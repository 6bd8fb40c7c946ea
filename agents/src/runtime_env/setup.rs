//! Building one environment on disk: download the packages it names from the
//! GCS (checking their digests), unpack them, build its virtualenv, and say how
//! a worker starts in it ([`EnvContext`]). Every item is made in a temporary
//! place and renamed into the cache only when complete (a virtualenv, which
//! cannot move, gets a `.ready` marker instead), so a crash or a timeout never
//! leaves a half-made item that a later worker would use.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use manta_proto::client::GcsClient;
use manta_proto::package::{CHUNK_BYTES, GetPackageChunkRequest, PackageKind, UsePackageRequest};
use manta_proto::runtime_env::{PipSpec, RuntimeEnvSpec, package_of_uri};
use tokio::io::AsyncWriteExt;
use tracing::info;

use super::cache::{Built, EnvContext, ItemId, ItemKind};

/// One lock per item, so two environments that need the same item make it once.
#[derive(Clone, Default)]
pub struct ItemLocks(Arc<Mutex<HashMap<ItemId, Arc<tokio::sync::Mutex<()>>>>>);

impl ItemLocks {
    fn of(&self, id: &ItemId) -> Arc<tokio::sync::Mutex<()>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(id.clone()).or_default().clone()
    }
}

/// Where packages come from: the GCS, and on the head the GCS's own folder
/// (whose files the GCS checked against their digest when they were uploaded),
/// linked instead of downloaded.
#[derive(Clone)]
pub struct Packages {
    /// The GCS.
    pub gcs: GcsClient,
    /// The head's package folder, on the head node only.
    pub local: Option<PathBuf>,
}

/// What a build needs.
pub struct Plan {
    /// The environment.
    pub spec: RuntimeEnvSpec,
    /// The job's executable package.
    pub executable: String,
    /// Items the cache does not have yet.
    pub missing: Vec<ItemId>,
    /// The cache's root folder.
    pub root: PathBuf,
    /// Where setup output (pip's) is written, per job.
    pub setup_log: PathBuf,
}

/// The items an environment is made of (the executable first; none for a job
/// supervisor's entrypoint, a shell command: `executable` is empty).
pub fn items_of(spec: &RuntimeEnvSpec, executable: &str) -> Result<Vec<ItemId>, String> {
    let mut items = Vec::new();
    if !executable.is_empty() {
        manta_proto::runtime_env::check_package_name(executable)?;
        items.push(ItemId { kind: ItemKind::Executable, name: executable.to_string() });
    }
    if let Some(uri) = &spec.working_dir {
        items.push(ItemId { kind: ItemKind::WorkingDir, name: package_of_uri(uri)?.to_string() });
    }
    for uri in spec.py_modules.iter().flatten() {
        items.push(ItemId { kind: ItemKind::PyModule, name: package_of_uri(uri)?.to_string() });
    }
    if let Some(pip) = &spec.pip {
        items.push(ItemId { kind: ItemKind::Venv, name: venv_name(pip) });
    }
    Ok(items)
}

/// A virtualenv's folder name: a hash of its requirement set.
pub fn venv_name(pip: &PipSpec) -> String {
    let bytes = rmp_serde::to_vec_named(pip).expect("a pip spec always encodes");
    format!("venv_{}", &blake3::hash(&bytes).to_hex()[..32])
}

/// Makes the missing items, then describes the environment.
pub async fn build(plan: Plan, packages: Packages, locks: ItemLocks) -> Built {
    let items = items_of(&plan.spec, &plan.executable)?;
    let mut sizes = Vec::new();
    for id in &items {
        let path = plan.root.join(id.relative_path());
        let lock = locks.of(id);
        let _held = lock.lock().await;
        let size = if present(id, &path) {
            // Made by another environment's build meanwhile: the cache learns its size.
            plan.missing.contains(id).then(|| disk_usage(&path))
        } else {
            Some(match id.kind {
                ItemKind::Executable => fetch_executable(&packages, &id.name, &path).await?,
                ItemKind::WorkingDir | ItemKind::PyModule => fetch_and_unpack(&packages, &id.name, &path).await?,
                ItemKind::Venv => {
                    let pip = plan.spec.pip.as_ref().expect("a venv item comes from a pip spec");
                    build_venv(pip, &path, &plan.setup_log).await?
                }
            })
        };
        sizes.extend(size.map(|size| (id.clone(), size)));
    }
    Ok((context(&plan, &items), sizes))
}

/// True when a complete item is on disk.
fn present(id: &ItemId, path: &Path) -> bool {
    match id.kind {
        ItemKind::Venv => path.join(".ready").exists(),
        _ => path.exists(),
    }
}

/// How a worker starts in the environment.
fn context(plan: &Plan, items: &[ItemId]) -> EnvContext {
    let mut env_vars = expand_all(&plan.spec.env_vars);
    let mut python_path: Vec<String> = Vec::new();
    let mut cwd = None;
    let mut python = None;
    for id in items {
        let path = plan.root.join(id.relative_path());
        match id.kind {
            ItemKind::Executable => {}
            ItemKind::WorkingDir => {
                python_path.push(path.display().to_string());
                cwd = Some(path);
            }
            ItemKind::PyModule => python_path.push(path.display().to_string()),
            ItemKind::Venv => {
                let bin = path.join("bin");
                let node_path = std::env::var("PATH").unwrap_or_default();
                env_vars.insert("PATH".into(), format!("{}:{node_path}", bin.display()));
                env_vars.insert("VIRTUAL_ENV".into(), path.display().to_string());
                python = Some(bin.join("python"));
            }
        }
    }
    if !python_path.is_empty() {
        if let Some(existing) = env_vars.get("PYTHONPATH").filter(|value| !value.is_empty()) {
            python_path.push(existing.clone());
        }
        env_vars.insert("PYTHONPATH".into(), python_path.join(":"));
    }
    EnvContext {
        executable: if plan.executable.is_empty() {
            PathBuf::new()
        } else {
            plan.root.join(ItemId { kind: ItemKind::Executable, name: plan.executable.clone() }.relative_path())
        },
        cwd,
        env_vars,
        python,
    }
}

/// Expands `${NAME}` in the values from the node's environment (a missing one is
/// empty), as Ray does.
fn expand_all(vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    vars.iter().map(|(key, value)| (key.clone(), expand(value, |name| std::env::var(name).ok()))).collect()
}

/// `${NAME}` → `lookup(NAME)` (empty when unset); anything else is kept as written.
pub fn expand(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&lookup(&after[..end]).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A unique sibling path to build into.
fn temporary(path: &Path) -> PathBuf {
    let suffix: u64 = rand::random();
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix:016x}.tmp"))
}

/// Downloads a package into `into` (a new file), checking its size and digest;
/// returns its size.
async fn download(packages: &Packages, name: &str, into: &Path) -> Result<u64, String> {
    if let Some(local) = &packages.local
        && let Ok(metadata) = std::fs::metadata(local.join(name))
    {
        // The head's own store: a link, no copy (or a copy across file systems).
        let source = local.join(name);
        if std::fs::hard_link(&source, into).is_ok() || std::fs::copy(&source, into).is_ok() {
            metrics::counter!("manta_runtime_env_downloads_total").increment(1);
            return Ok(metadata.len());
        }
    }
    let gcs = &packages.gcs;
    let info = gcs
        .call(UsePackageRequest { name: name.to_string(), job_id: None })
        .await
        .map_err(|error| format!("cannot reach the GCS for package {name}: {error}"))?
        .info
        .ok_or_else(|| {
            format!("the cluster has no package {name}: it was never uploaded, or deleted when its last job ended")
        })?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(into)
        .await
        .map_err(|error| format!("cannot create {}: {error}", into.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0u64;
    while offset < info.size {
        let len = (info.size - offset).min(CHUNK_BYTES as u64) as u32;
        let chunk = gcs
            .call(GetPackageChunkRequest { name: name.to_string(), offset, len })
            .await
            .map_err(|error| format!("downloading package {name} failed at byte {offset}: {error}"))?;
        if chunk.is_empty() {
            return Err(format!("package {name} ended at byte {offset} of {}", info.size));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|error| format!("cannot write {}: {error}", into.display()))?;
        offset += chunk.len() as u64;
    }
    file.flush().await.map_err(|error| format!("cannot write {}: {error}", into.display()))?;
    let digest = hasher.finalize();
    let expected = PackageKind::digest_in_name(name).unwrap_or(&info.digest);
    if digest.to_hex().as_str() != expected {
        return Err(format!(
            "package {name} does not match its digest ({} received); refusing to use it",
            digest.to_hex()
        ));
    }
    metrics::counter!("manta_runtime_env_downloads_total").increment(1);
    Ok(offset)
}

async fn fetch_executable(gcs: &Packages, name: &str, path: &Path) -> Result<u64, String> {
    create_parent(path)?;
    let temporary = temporary(path);
    let result = async {
        let size = download(gcs, name, &temporary).await?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o700))
            .map_err(|error| format!("cannot make {} executable: {error}", temporary.display()))?;
        std::fs::rename(&temporary, path).map_err(|error| format!("cannot store {}: {error}", path.display()))?;
        Ok(size)
    }
    .await;
    let _ = std::fs::remove_file(&temporary);
    if result.is_ok() {
        info!(package = %name, "fetched executable");
    }
    result
}

async fn fetch_and_unpack(gcs: &Packages, name: &str, path: &Path) -> Result<u64, String> {
    create_parent(path)?;
    let archive = temporary(path);
    let unpacked = temporary(path);
    let result = async {
        download(gcs, name, &archive).await?;
        let (archive_path, unpacked_path) = (archive.clone(), unpacked.clone());
        let kind = PackageKind::of(name);
        let size = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&archive_path).map_err(|error| error.to_string())?;
            manta_proto::packing::unpack(std::io::BufReader::new(file), kind, &unpacked_path)
        })
        .await
        .map_err(|_| "unpacking stopped".to_string())?
        .map_err(|error| format!("package {name}: {error}"))?;
        std::fs::rename(&unpacked, path).map_err(|error| format!("cannot store {}: {error}", path.display()))?;
        Ok(size)
    }
    .await;
    let _ = std::fs::remove_file(&archive);
    let _ = std::fs::remove_dir_all(&unpacked);
    if result.is_ok() {
        info!(package = %name, path = %path.display(), "unpacked package");
    }
    result
}

fn create_parent(path: &Path) -> Result<(), String> {
    let parent = path.parent().expect("items live in a folder");
    manta_proto::private_fs::create_dir_all(parent)
        .map_err(|error| format!("cannot create {}: {error}", parent.display()))
}

/// The node's Python: `MANTA_PYTHON` when the node started, else `python3`. Python
/// workers run it when their environment has no virtualenv; virtualenvs are made from it.
pub fn node_python() -> String {
    std::env::var("MANTA_PYTHON").ok().filter(|value| !value.is_empty()).unwrap_or_else(|| "python3".into())
}

/// Run by the node's Python with the venv's interpreter as its argument: writes
/// `_manta_node_site.pth`, naming the node's site-packages, into the venv's.
const NODE_SITE_PTH: &str = "import os, subprocess, sys, sysconfig\n\
own = sysconfig.get_paths()['purelib']\n\
venv = subprocess.check_output([sys.argv[1], '-c', 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'], text=True).strip()\n\
open(os.path.join(venv, '_manta_node_site.pth'), 'w').write(own + '\\n')\n";

/// Builds a virtualenv at `path` (with `uv` when the node has it) and installs
/// the requirements; the last lines of a failing install are the error.
async fn build_venv(pip: &PipSpec, path: &Path, setup_log: &Path) -> Result<u64, String> {
    create_parent(path)?;
    let _ = std::fs::remove_dir_all(path);
    let uv = which("uv");
    let python = node_python();
    let bin_python = path.join("bin").join("python");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    let path_text = path.display().to_string();
    // The venv sees the node's own site-packages (where the `manta` Python package
    // is installed), as Ray's does.
    match (&uv, base_pip(&python).await) {
        (Some(uv), _) => {
            let uv = uv.display().to_string();
            steps.push((
                uv.clone(),
                vec![
                    "venv".into(),
                    "--system-site-packages".into(),
                    "--python".into(),
                    python.clone(),
                    path_text.clone(),
                ],
            ));
            let mut install = vec!["pip".into(), "install".into(), "--python".into(), bin_python.display().to_string()];
            install.extend(pip.packages.iter().cloned());
            if !pip.packages.is_empty() {
                steps.push((uv, install));
            }
        }
        (None, true) => {
            // No pip copied into the venv (3 s saved): the node's pip installs into it.
            steps.push((
                python.clone(),
                vec![
                    "-m".into(),
                    "venv".into(),
                    "--without-pip".into(),
                    "--system-site-packages".into(),
                    path_text.clone(),
                ],
            ));
            let base = vec![
                "-m".to_string(),
                "pip".into(),
                "--python".into(),
                bin_python.display().to_string(),
                "install".into(),
                "--disable-pip-version-check".into(),
            ];
            if let Some(version) = &pip.pip_version {
                let mut upgrade = base.clone();
                upgrade.push(format!("pip{version}"));
                steps.push((python.clone(), upgrade));
            }
            let mut install = base;
            install.extend(pip.packages.iter().cloned());
            if !pip.packages.is_empty() {
                steps.push((python.clone(), install));
            }
        }
        (None, false) => {
            steps.push((
                python.clone(),
                vec!["-m".into(), "venv".into(), "--system-site-packages".into(), path_text.clone()],
            ));
            let base = vec!["-m".to_string(), "pip".into(), "install".into(), "--disable-pip-version-check".into()];
            if let Some(version) = &pip.pip_version {
                let mut upgrade = base.clone();
                upgrade.push(format!("pip{version}"));
                steps.push((bin_python.display().to_string(), upgrade));
            }
            let mut install = base;
            install.extend(pip.packages.iter().cloned());
            if !pip.packages.is_empty() {
                steps.push((bin_python.display().to_string(), install));
            }
        }
    }
    // A node whose Python is itself a virtualenv (where `manta` was pip-installed)
    // is not what `--system-site-packages` reaches: a `.pth` file adds its
    // site-packages to the new venv, after the venv's own.
    steps.insert(1, (python.clone(), vec!["-c".into(), NODE_SITE_PTH.into(), bin_python.display().to_string()]));
    if pip.pip_check {
        steps.push((bin_python.display().to_string(), vec!["-m".into(), "pip".into(), "check".into()]));
    }
    let result = run_steps(&steps, setup_log).await;
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(path);
        return Err(error);
    }
    std::fs::write(path.join(".ready"), b"")
        .map_err(|error| format!("cannot mark {} ready: {error}", path.display()))?;
    info!(venv = %path.display(), "built virtualenv");
    Ok(disk_usage(path))
}

/// True when the node's Python has a pip that can install into another
/// interpreter (`pip --python`, pip 22.3 and later).
async fn base_pip(python: &str) -> bool {
    let output = tokio::process::Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let Ok(output) = output else { return false };
    let text = String::from_utf8_lossy(&output.stdout);
    let version: Vec<u32> =
        text.split_whitespace().nth(1).unwrap_or("").split('.').take(2).filter_map(|part| part.parse().ok()).collect();
    output.status.success() && version.len() == 2 && (version[0], version[1]) >= (22, 3)
}

async fn run_steps(steps: &[(String, Vec<String>)], setup_log: &Path) -> Result<(), String> {
    for (program, args) in steps {
        let output = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| {
                format!("cannot run {program}: {error} (is Python 3 with venv installed on this node?)")
            })?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        append_log(setup_log, &format!("$ {program} {}\n{text}\n", args.join(" ")));
        if !output.status.success() {
            let tail: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
            let tail = tail[tail.len().saturating_sub(12)..].join("\n");
            return Err(format!("`{} {}` failed ({}):\n{tail}", program, args.join(" "), output.status));
        }
    }
    Ok(())
}

fn append_log(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        let _ = manta_proto::private_fs::create_dir_all(parent);
    }
    if let Ok(mut file) = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|path| path.is_file())
}

/// Bytes of the files under `path` (a file's own size for a file).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else { return 0 };
    if !metadata.is_dir() {
        return metadata.len();
    }
    std::fs::read_dir(path).map(|entries| entries.flatten().map(|entry| disk_usage(&entry.path())).sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use manta_proto::runtime_env::Installer;

    #[test]
    fn variables_expand_from_the_node_environment() {
        let lookup = |name: &str| (name == "HOME").then(|| "/home/me".to_string());
        assert_eq!(expand("${HOME}/data", lookup), "/home/me/data");
        assert_eq!(expand("a${MISSING}b", lookup), "ab");
        assert_eq!(expand("no vars", lookup), "no vars");
        assert_eq!(expand("${UNCLOSED", lookup), "${UNCLOSED");
    }

    #[test]
    fn an_environment_is_its_executable_packages_and_venv() {
        let spec = RuntimeEnvSpec {
            working_dir: Some("gcs://_manta_pkg_a.zip".into()),
            py_modules: Some(vec!["gcs://_manta_pkg_b.zip".into()]),
            pip: Some(PipSpec { installer: Installer::Pip, packages: vec!["x".into()], ..Default::default() }),
            ..Default::default()
        };
        let items = items_of(&spec, "_manta_exe_e").unwrap();
        let kinds: Vec<ItemKind> = items.iter().map(|item| item.kind).collect();
        assert_eq!(kinds, vec![ItemKind::Executable, ItemKind::WorkingDir, ItemKind::PyModule, ItemKind::Venv]);
        assert!(items_of(&spec, "../bin/sh").is_err(), "an executable is a package name, never a path");
        let bad = RuntimeEnvSpec { working_dir: Some("/etc".into()), ..Default::default() };
        assert!(items_of(&bad, "_manta_exe_e").is_err());
        let plan = Plan {
            spec,
            executable: "_manta_exe_e".into(),
            missing: vec![],
            root: "/c".into(),
            setup_log: "/l".into(),
        };
        let context = context(&plan, &items);
        assert_eq!(context.executable, PathBuf::from("/c/exe/_manta_exe_e"));
        assert_eq!(context.cwd, Some(PathBuf::from("/c/working_dir/_manta_pkg_a.zip")));
        assert_eq!(context.env_vars["PYTHONPATH"], "/c/working_dir/_manta_pkg_a.zip:/c/py_modules/_manta_pkg_b.zip");
        assert!(context.python.unwrap().ends_with("bin/python"));
    }
}
