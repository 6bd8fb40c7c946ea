//! The worker pool: worker processes of this node, started as the job's own
//! executable in worker mode, reused for tasks of the same job and
//! environment, ended when idle too long, when their job ends, or on request.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use manta_proto::resources::ResourceSet;
use manta_proto::task::JobConfig;
use manta_proto::{ActorId, JobId, NodeId, WorkerId};
use ractor::ActorRef;
use rustix::process::{Pid, Signal, kill_process};
use tracing::{info, warn};

use crate::raylet::RayletMsg;
use manta_agents::log_monitor::LogFileName;

/// Environment variables that put a binary in worker mode.
pub mod env {
    /// Set to `1` in every worker process.
    pub const WORKER_MODE: &str = "MANTA_WORKER_MODE";
    /// The worker's id.
    pub const WORKER_ID: &str = "MANTA_WORKER_ID";
    /// The raylet's address.
    pub const NODE_ADDRESS: &str = "MANTA_NODE_ADDRESS";
    /// The node's id.
    pub const NODE_ID: &str = "MANTA_NODE_ID";
    /// The GCS address.
    pub const GCS_ADDRESS: &str = "MANTA_GCS_ADDRESS";
    /// The cluster token.
    pub const TOKEN: &str = "MANTA_TOKEN";
    /// The job.
    pub const JOB_ID: &str = "MANTA_JOB_ID";
    /// The job's namespace.
    pub const NAMESPACE: &str = "MANTA_NAMESPACE";
    /// The address workers listen on.
    pub const NODE_IP: &str = "MANTA_NODE_IP";
    /// The job's runtime-env variables, as a JSON object (for the tasks workers submit).
    pub const JOB_ENV: &str = "MANTA_JOB_ENV";
    /// GPU ids assigned to the worker (also in `CUDA_VISIBLE_DEVICES`).
    pub const GPU_IDS: &str = "MANTA_GPU_IDS";
}

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    /// Started, not registered yet.
    Starting,
    /// Registered and free.
    Idle {
        /// Since when.
        since: Instant,
    },
    /// Leased to a caller, holding `resources`.
    Leased {
        /// What the lease holds.
        resources: ResourceSet,
        /// Part of it given back while the worker is blocked in `get`.
        lent: ResourceSet,
        /// The link of the caller holding the lease.
        caller: u64,
        /// GPU devices the lease holds.
        gpus: crate::gpus::GpuGrant,
    },
}

/// One worker process.
#[derive(Debug)]
pub struct Worker {
    /// Its job.
    pub job_id: JobId,
    /// Pool key: job plus environment.
    pub env_key: String,
    /// Its pid.
    pub pid: u32,
    /// Its listener, once registered.
    pub address: Option<String>,
    /// Where it is in its life.
    pub state: WorkerState,
    /// Set for a worker dedicated to an actor.
    pub actor: Option<ActorId>,
    /// The actor survives its job.
    pub detached: bool,
    /// It owns objects someone still references: not ended when idle (its
    /// objects would be lost), as in Ray.
    pub owns_objects: bool,
}

/// Every worker of this node.
#[derive(Debug)]
pub struct WorkerPool {
    workers: HashMap<WorkerId, Worker>,
    log_dir: PathBuf,
    node_id: NodeId,
    node_address: String,
    node_ip: String,
    token: String,
    /// Workers idle longer than this are ended.
    pub idle_timeout: Duration,
    /// When worker log files rotate.
    pub log_rotation: crate::worker_logs::Rotation,
    /// Workers this node ended on purpose (kill, job end, owner gone): their
    /// actors are not restarted.
    ended: std::sync::Mutex<std::collections::HashSet<WorkerId>>,
}

/// The pool key of a job plus extra environment variables.
pub fn env_key(job: &JobConfig, extra: &BTreeMap<String, String>) -> String {
    format!("{}|{:?}|{:?}", job.job_id, job.env_vars, extra)
}

impl WorkerPool {
    /// An empty pool whose workers log under `log_dir`.
    pub fn new(log_dir: PathBuf, node_id: NodeId, node_address: String, node_ip: String, token: String) -> Self {
        Self {
            workers: HashMap::new(),
            log_dir,
            node_id,
            node_address,
            node_ip,
            token,
            idle_timeout: Duration::from_secs(10),
            log_rotation: Default::default(),
            ended: Default::default(),
        }
    }

    /// The node id workers are told (it changes when the node is fenced).
    pub fn set_node_id(&mut self, node_id: NodeId) {
        self.node_id = node_id;
    }

    /// A worker by id.
    pub fn get_mut(&mut self, worker_id: &WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut(worker_id)
    }

    /// Listeners of the registered workers.
    pub fn addresses(&self) -> Vec<String> {
        self.workers.values().filter_map(|worker| worker.address.clone()).collect()
    }

    /// Removes a worker that exited.
    pub fn remove(&mut self, worker_id: &WorkerId) -> Option<Worker> {
        self.workers.remove(worker_id)
    }

    /// True (once) when this node ended `worker_id` itself.
    pub fn take_ended(&self, worker_id: &WorkerId) -> bool {
        self.ended.lock().expect("ended lock").remove(worker_id)
    }

    /// Ends every worker (the node stops, or was fenced: its work belongs to a dead node).
    pub fn kill_all(&self, reason: &str) {
        for worker_id in self.workers.keys() {
            self.kill(worker_id, reason);
        }
    }

    /// An idle, registered, non-actor worker with this key.
    pub fn idle_worker(&self, key: &str) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, worker)| worker.actor.is_none() && worker.env_key == key)
            .find(|(_, worker)| matches!(worker.state, WorkerState::Idle { .. }))
            .map(|(worker_id, _)| *worker_id)
    }

    /// Workers still starting.
    pub fn starting(&self) -> usize {
        self.workers.values().filter(|worker| worker.state == WorkerState::Starting).count()
    }

    /// Number of worker processes.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// True when there is no worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Starts a worker process for `job` and watches it; the raylet hears of
    /// its exit as [`RayletMsg::WorkerExited`].
    pub fn start(
        &mut self,
        job: &JobConfig,
        extra_env: &BTreeMap<String, String>,
        actor: Option<ActorId>,
        detached: bool,
        raylet: &ActorRef<RayletMsg>,
    ) -> Result<WorkerId, String> {
        let worker_id = WorkerId::random();
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|error| format!("cannot create the worker log folder {}: {error}", self.log_dir.display()))?;
        let mut command = tokio::process::Command::new(&job.executable);
        command
            .envs(&job.env_vars)
            .envs(extra_env)
            .env(env::WORKER_MODE, "1")
            .env(env::WORKER_ID, worker_id.to_string())
            .env(env::NODE_ADDRESS, &self.node_address)
            .env(env::NODE_ID, self.node_id.to_string())
            .env(env::NODE_IP, &self.node_ip)
            .env(env::GCS_ADDRESS, &job.gcs_address)
            .env(env::TOKEN, &self.token)
            .env(env::JOB_ID, job.job_id.to_string())
            .env(env::NAMESPACE, &job.namespace)
            .env(env::JOB_ENV, serde_json::to_string(&job.env_vars).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        // SAFETY: only a syscall runs between fork and exec. The worker dies with
        // this node process; it also exits when its link to the raylet drops.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(std::io::Error::from)
            });
        }
        let mut child =
            command.spawn().map_err(|error| format!("cannot start worker executable {}: {error}", job.executable))?;
        let pid = child.id().unwrap_or(0);
        // The node copies the output into `worker-<id>-<job>-<pid>.out|err` (rotated by
        // size); reading the pipes here means nothing a dying worker printed is lost.
        let path = |is_err| self.log_dir.join(LogFileName::format(worker_id, job.job_id, pid, is_err));
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(crate::worker_logs::copy(stdout, path(false), self.log_rotation));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(crate::worker_logs::copy(stderr, path(true), self.log_rotation));
        }
        let raylet = raylet.clone();
        tokio::spawn(async move {
            let status = child.wait().await.map(|status| status.to_string()).unwrap_or_else(|e| e.to_string());
            let _ = raylet.cast(RayletMsg::WorkerExited(worker_id, status));
        });
        info!(%worker_id, pid, job_id = %job.job_id, ?actor, "started worker");
        self.workers.insert(
            worker_id,
            Worker {
                job_id: job.job_id,
                env_key: env_key(job, extra_env),
                pid,
                address: None,
                state: WorkerState::Starting,
                actor,
                detached,
                owns_objects: false,
            },
        );
        Ok(worker_id)
    }

    /// Sends SIGKILL to a worker (its exit is reported by its watcher).
    pub fn kill(&self, worker_id: &WorkerId, reason: &str) {
        if let Some(worker) = self.workers.get(worker_id) {
            info!(%worker_id, pid = worker.pid, %reason, "ending worker");
            self.ended.lock().expect("ended lock").insert(*worker_id);
            if let Some(pid) = Pid::from_raw(worker.pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }

    /// Ends the workers leased by the caller on link `caller` (it went away),
    /// except those hosting detached actors, which have no owner to share fate with.
    pub fn kill_leased_by(&self, caller: u64) {
        for (worker_id, worker) in &self.workers {
            if !worker.detached
                && matches!(worker.state, WorkerState::Leased { caller: holder, .. } if holder == caller)
            {
                self.kill(worker_id, "the caller holding its lease went away");
            }
        }
    }

    /// Ends the leased workers holding a resource whose name passes `uses`.
    pub fn kill_using(&self, uses: impl Fn(&str) -> bool, reason: &str) {
        for (worker_id, worker) in &self.workers {
            if let WorkerState::Leased { resources, .. } = &worker.state
                && resources.iter().any(|(name, _)| uses(name))
            {
                self.kill(worker_id, reason);
            }
        }
    }

    /// Ends every worker of `job_id` except those hosting detached actors.
    pub fn kill_job(&self, job_id: JobId) {
        for (worker_id, worker) in &self.workers {
            if worker.job_id == job_id && !worker.detached {
                self.kill(worker_id, "its job finished");
            }
        }
    }

    /// Ends idle workers past the idle timeout.
    pub fn reap_idle(&self) {
        for (worker_id, worker) in &self.workers {
            if let WorkerState::Idle { since } = worker.state
                && since.elapsed() > self.idle_timeout
                && !worker.owns_objects
            {
                self.kill(worker_id, "idle too long");
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            warn!(count = self.workers.len(), "node stopping: ending its workers");
        }
        self.kill_all("the node is stopping");
    }
}
