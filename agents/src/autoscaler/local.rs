//! The `local` node provider: each node is a `manta start --block` process on
//! this machine, with its type's resources and labels, in the head's session
//! folder (so `manta stop` stops it too). The token reaches it through its
//! standard input, never its command line or environment. Nodes are stopped
//! by pid, and only a process this provider started: its pid, start time and
//! instance id are recorded in `<temp-dir>/autoscaler/instances.json`, so an
//! autoscaler that restarts finds the nodes it had.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::config::ResolvedType;
use super::provider::{Instance, InstanceState, NodeProvider, ProviderFuture, instance_id, start_arguments};

/// What the local provider needs to start nodes that join this cluster.
#[derive(Clone)]
pub struct LocalProviderArgs {
    /// The `manta` executable.
    pub executable: PathBuf,
    /// The GCS address nodes join.
    pub gcs_address: String,
    /// The cluster token (handed over a pipe).
    pub token: String,
    /// The session folder the nodes share with the head.
    pub temp_dir: PathBuf,
    /// Names instance ids.
    pub cluster_name: String,
}

impl std::fmt::Debug for LocalProviderArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProviderArgs").field("gcs_address", &self.gcs_address).finish_non_exhaustive()
    }
}

/// One started node, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    node_type: String,
    pid: u32,
    /// The process's start time (clock ticks since boot), so a reused pid is never signalled.
    start_ticks: u64,
    /// When it was sent SIGTERM (ms since the epoch); SIGKILL follows after [`STOP_GRACE`].
    #[serde(default)]
    terminating_since_ms: Option<u64>,
}

/// A node told to stop that still runs after this is killed.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn signal(record: &Record, signal: rustix::process::Signal) -> Result<(), String> {
    let pid = rustix::process::Pid::from_raw(record.pid as i32).ok_or_else(|| format!("bad pid {}", record.pid))?;
    rustix::process::kill_process(pid, signal)
        .map_err(|error| format!("cannot signal node {} (pid {}): {error}", record.id, record.pid))
}

/// The local provider.
pub struct LocalProvider {
    args: LocalProviderArgs,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    records: BTreeMap<String, Record>,
    /// Processes started by this process (waited on, so none lingers as a zombie).
    children: BTreeMap<String, Child>,
}

impl LocalProvider {
    /// A provider for the cluster at `args.gcs_address`; reads what an earlier
    /// autoscaler of this session recorded.
    pub fn new(args: LocalProviderArgs) -> LocalProvider {
        let records: Vec<Record> = std::fs::read(Self::record_path(&args))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let records = records.into_iter().map(|record| (record.id.clone(), record)).collect();
        LocalProvider { args, state: Mutex::new(State { records, children: BTreeMap::new() }) }
    }

    fn record_path(args: &LocalProviderArgs) -> PathBuf {
        args.temp_dir.join("autoscaler").join("instances.json")
    }

    fn save(&self, state: &State) {
        let path = Self::record_path(&self.args);
        let records: Vec<&Record> = state.records.values().collect();
        let written = serde_json::to_vec_pretty(&records).map_err(std::io::Error::other).and_then(|bytes| {
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, bytes)?;
            std::fs::rename(&temporary, &path)
        });
        if let Err(error) = written {
            warn!(%error, path = %path.display(), "could not record the autoscaler's nodes");
        }
    }

    fn start_one(&self, node_type: &str, spec: &ResolvedType) -> Result<(Record, Child), String> {
        let id = instance_id(&self.args.cluster_name, node_type);
        let folder = self.args.temp_dir.join("autoscaler");
        let log_path = folder.join(format!("{id}.out"));
        let log = std::fs::File::create(&log_path)
            .map_err(|error| format!("cannot create {}: {error}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|error| error.to_string())?;
        let mut command = Command::new(&self.args.executable);
        command
            .arg("start")
            .args(start_arguments(&self.args.gcs_address, node_type, &id, spec))
            .arg("--temp-dir")
            .arg(&self.args.temp_dir)
            .arg("--token-stdin")
            .env_remove("MANTA_TOKEN")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err);
        // Its own process group: a Ctrl-C meant for the head does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child =
            command.spawn().map_err(|error| format!("cannot start {}: {error}", self.args.executable.display()))?;
        let handed = child
            .stdin
            .take()
            .ok_or_else(|| "no pipe to the node's stdin".to_string())
            .and_then(|mut stdin| writeln!(stdin, "{}", self.args.token).map_err(|error| error.to_string()));
        if let Err(error) = handed {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("could not hand the token to the node: {error}"));
        }
        let pid = child.id();
        let start_ticks = start_ticks(pid).unwrap_or_default();
        info!(%id, node_type, pid, "started a node");
        Ok((Record { id, node_type: node_type.to_string(), pid, start_ticks, terminating_since_ms: None }, child))
    }
}

/// A process's start time in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32).ok()?.stat().ok().map(|stat| stat.starttime)
}

/// True while the recorded process runs (same pid, same start time, not a zombie).
fn running(record: &Record) -> bool {
    procfs::process::Process::new(record.pid as i32)
        .ok()
        .and_then(|process| process.stat().ok())
        .is_some_and(|stat| stat.starttime == record.start_ticks && stat.state != 'Z')
}

impl NodeProvider for LocalProvider {
    fn create<'a>(
        &'a self,
        node_type: &'a str,
        spec: &'a ResolvedType,
        count: usize,
    ) -> ProviderFuture<'a, Vec<String>> {
        Box::pin(async move {
            let folder = self.args.temp_dir.join("autoscaler");
            std::fs::create_dir_all(&folder).map_err(|error| format!("cannot create {}: {error}", folder.display()))?;
            let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut ids = Vec::with_capacity(count);
            let mut failure = None;
            for _ in 0..count {
                match self.start_one(node_type, spec) {
                    Ok((record, child)) => {
                        ids.push(record.id.clone());
                        state.children.insert(record.id.clone(), child);
                        state.records.insert(record.id.clone(), record);
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            self.save(&state);
            match failure {
                Some(error) if ids.is_empty() => Err(error),
                Some(error) => {
                    warn!(%error, started = ids.len(), "some nodes did not start");
                    Ok(ids)
                }
                None => Ok(ids),
            }
        })
    }

    fn terminate<'a>(&'a self, instance_id: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(record) = state.records.get_mut(instance_id) else {
                return Err(format!("no node {instance_id} was started by this provider"));
            };
            if running(record) && record.terminating_since_ms.is_none() {
                // SIGTERM: the node leaves the cluster on purpose, then exits.
                signal(record, rustix::process::Signal::TERM)?;
                info!(instance_id, pid = record.pid, "stopping a node");
            }
            record.terminating_since_ms.get_or_insert_with(now_ms);
            self.save(&state);
            Ok(())
        })
    }

    fn list(&self) -> ProviderFuture<'_, Vec<Instance>> {
        Box::pin(async move {
            let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let State { records, children } = &mut *state;
            // Reap what exited, then forget every record whose process is gone.
            children.retain(|_, child| !matches!(child.try_wait(), Ok(Some(_))));
            let before = records.len();
            records.retain(|_, record| running(record));
            // A node that ignored SIGTERM past the grace is killed.
            let now = now_ms();
            for record in records.values() {
                if record
                    .terminating_since_ms
                    .is_some_and(|since| now.saturating_sub(since) > STOP_GRACE.as_millis() as u64)
                {
                    warn!(id = %record.id, pid = record.pid, "a node did not stop within 30 s of SIGTERM; killing it");
                    let _ = signal(record, rustix::process::Signal::KILL);
                }
            }
            if records.len() != before {
                self.save(&state);
            }
            Ok(state
                .records
                .values()
                .map(|record| Instance {
                    id: record.id.clone(),
                    node_type: record.node_type.clone(),
                    state: if record.terminating_since_ms.is_some() {
                        InstanceState::Terminating
                    } else {
                        InstanceState::Running
                    },
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    use super::*;

    /// A stand-in `manta` that records its token (from stdin) and arguments, then waits.
    fn fake_manta(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("fake-manta");
        let script = format!("#!/bin/sh\nread token\necho \"$token|$*\" > {}/seen\nexec sleep 60\n", dir.display());
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn nodes_start_with_the_token_on_stdin_survive_a_restart_and_stop_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let args = LocalProviderArgs {
            executable: fake_manta(dir.path()),
            gcs_address: "127.0.0.1:1".into(),
            token: "s3cret-token".into(),
            temp_dir: dir.path().to_path_buf(),
            cluster_name: "t".into(),
        };
        let provider = LocalProvider::new(args.clone());
        let spec = super::super::config::ResolvedType {
            resources: [("CPU".to_string(), 1.0)].into_iter().collect(),
            labels: Default::default(),
            min_workers: 0,
            max_workers: 1,
            node_config: serde_json::Value::Null,
        };
        let ids = block_on(provider.create("small", &spec, 1)).unwrap();
        let seen = dir.path().join("seen");
        wait_until("the node read its token", || std::fs::read_to_string(&seen).is_ok_and(|text| text.contains('|')));
        let seen = std::fs::read_to_string(&seen).unwrap();
        assert!(seen.starts_with("s3cret-token|start --address 127.0.0.1:1 --block"), "{seen}");
        assert!(seen.contains(&format!("--autoscaled-as small/{}", ids[0])), "{seen}");
        let pid = provider.state.lock().unwrap().records[&ids[0]].pid;
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.contains("s3cret"), "the token is not in the command line");

        // A restarted autoscaler finds the node from the record.
        let again = LocalProvider::new(args);
        let listed = block_on(again.list()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].id.as_str(), listed[0].state), (ids[0].as_str(), InstanceState::Running));

        block_on(provider.terminate(&ids[0])).unwrap();
        wait_until("the node exited and is forgotten", || block_on(provider.list()).unwrap().is_empty());
        assert!(block_on(provider.terminate("nope")).is_err(), "only its own nodes");
    }
}
