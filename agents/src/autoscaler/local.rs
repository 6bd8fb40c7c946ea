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
    terminating: bool,
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
        Ok((Record { id, node_type: node_type.to_string(), pid, start_ticks, terminating: false }, child))
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
            if running(record) {
                let pid = rustix::process::Pid::from_raw(record.pid as i32)
                    .ok_or_else(|| format!("bad pid {}", record.pid))?;
                // SIGTERM: the node leaves the cluster on purpose, then exits.
                rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                    .map_err(|error| format!("cannot stop node {instance_id} (pid {}): {error}", record.pid))?;
                info!(instance_id, pid = record.pid, "stopping a node");
            }
            record.terminating = true;
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
            if records.len() != before {
                self.save(&state);
            }
            Ok(state
                .records
                .values()
                .map(|record| Instance {
                    id: record.id.clone(),
                    node_type: record.node_type.clone(),
                    state: if record.terminating { InstanceState::Terminating } else { InstanceState::Running },
                })
                .collect())
        })
    }
}
