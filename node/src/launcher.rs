//! Worker processes: [`WorkerLauncher`] is how the raylet starts and ends them,
//! once the node's RuntimeEnvAgent has set up their environment;
//! [`ProcessLauncher`] starts the job's executable from the agent's cache (never
//! from a path that came in a message) in worker mode, in the environment's
//! working dir and variables, copies its output into rotated log files, and
//! reports its exit to the raylet as [`RayletMsg::WorkerExited`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use manta_proto::task::Language;
use manta_proto::{JobId, NodeId, WorkerId, worker_env};
use ractor::ActorRef;
use rustix::process::{Pid, Signal, kill_process};
use tracing::{info, warn};

use crate::ledger::LaunchSpec;
use crate::log_pipes::{PipeWatch, Pipes};
use crate::raylet::RayletMsg;
use manta_agents::log_monitor::LogFileName;
use manta_agents::runtime_env::EnvContext;

/// Starts and ends worker processes for the raylet.
pub trait WorkerLauncher: Send + 'static {
    /// Starts worker `worker_id` in the environment `context` describes. Its exit,
    /// whenever it comes, is reported to the raylet as [`RayletMsg::WorkerExited`];
    /// an `Err` means no process started.
    fn launch(&mut self, worker_id: WorkerId, spec: &LaunchSpec, context: &EnvContext) -> Result<(), String>;

    /// Ends a worker process (its exit is reported as any exit).
    fn kill(&mut self, worker_id: WorkerId, reason: &str);

    /// Forgets a worker that exited.
    fn exited(&mut self, worker_id: WorkerId) -> Option<u32>;

    /// The node's id changed (it was fenced): new workers are told the new one.
    fn set_node_id(&mut self, node_id: NodeId);
}

/// What a worker process is told about its node.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// The node's id.
    pub node_id: NodeId,
    /// The raylet's listener (workers register there).
    pub node_address: String,
    /// The address workers listen on.
    pub node_ip: String,
    /// The cluster token.
    pub token: String,
    /// The TLS files workers connect with, when the cluster uses TLS.
    pub tls: Option<manta_proto::net::tls::TlsFiles>,
}

/// Starts the job's executable as a child process of the node.
#[derive(Debug)]
pub struct ProcessLauncher {
    node: NodeContext,
    log_dir: PathBuf,
    log_rotation: crate::worker_logs::Rotation,
    raylet: ActorRef<RayletMsg>,
    pids: HashMap<WorkerId, u32>,
    pipes: Pipes,
}

impl ProcessLauncher {
    /// A launcher whose workers log under `log_dir` (their pipes watched in `pipes`)
    /// and report their exit to `raylet`.
    pub fn new(
        node: NodeContext,
        log_dir: PathBuf,
        log_rotation: crate::worker_logs::Rotation,
        raylet: ActorRef<RayletMsg>,
        pipes: Pipes,
    ) -> Self {
        Self { node, log_dir, log_rotation, raylet, pids: HashMap::new(), pipes }
    }
}

impl ProcessLauncher {
    /// Copies one of a worker's pipes into its log file, watched for flushes (`log_pipes`).
    fn copy_output(
        &self,
        worker_id: WorkerId,
        job_id: JobId,
        pid: u32,
        is_err: bool,
        pipe: impl tokio::io::AsyncRead + std::os::fd::AsFd + Unpin + Send + 'static,
    ) {
        let path = self.log_dir.join(LogFileName::format(worker_id, job_id, pid, is_err));
        let state = match PipeWatch::new(&pipe) {
            Ok((watch, state)) => {
                self.pipes.add(worker_id, job_id, is_err, watch);
                state
            }
            // Unwatched (no descriptor left to duplicate): flushes do not wait for it.
            Err(_) => tokio::sync::watch::channel(crate::log_pipes::CopyState::Writing).0,
        };
        let (rotation, pipes) = (self.log_rotation, self.pipes.clone());
        tokio::spawn(async move {
            let copied = crate::worker_logs::copy(pipe, path, rotation, state).await;
            pipes.close(worker_id, is_err);
            copied
        });
    }
}

impl WorkerLauncher for ProcessLauncher {
    fn launch(&mut self, worker_id: WorkerId, spec: &LaunchSpec, context: &EnvContext) -> Result<(), String> {
        let job = &spec.job;
        manta_proto::private_fs::create_dir_all(&self.log_dir)
            .map_err(|error| format!("cannot create the worker log folder {}: {error}", self.log_dir.display()))?;
        let program = worker_program(spec.language, context);
        let mut command = tokio::process::Command::new(&program);
        if spec.language == Language::Python {
            command.args(["-m", "manta.worker"]);
        }
        if let Some(cwd) = &context.cwd {
            command.current_dir(cwd);
        }
        command
            .envs(&context.env_vars)
            .envs(&spec.env_vars)
            .env(worker_env::WORKER_MODE, "1")
            .env(worker_env::WORKER_ID, worker_id.to_string())
            .env(worker_env::NODE_ADDRESS, &self.node.node_address)
            .env(worker_env::NODE_ID, self.node.node_id.to_string())
            .env(worker_env::NODE_IP, &self.node.node_ip)
            .env(worker_env::GCS_ADDRESS, &job.gcs_address)
            .env(worker_env::TOKEN, &self.node.token)
            .env(worker_env::JOB_ID, job.job_id.to_string())
            .env(worker_env::NAMESPACE, &job.namespace)
            .env(worker_env::RUNTIME_ENV, serde_json::to_string(&spec.runtime_env).unwrap_or_default())
            .env(worker_env::EXECUTABLE, &job.executable)
            .envs(self.node.tls.iter().flat_map(|files| files.env()))
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
        let mut child = command.spawn().map_err(|error| match spec.language {
            Language::Rust => format!("cannot start worker executable {}: {error}", program.display()),
            Language::Python => format!(
                "cannot start a Python worker with {}: {error}; install Python 3 on the node, or name the \
                     interpreter (with the `manta` package installed) in MANTA_PYTHON when starting the node",
                program.display()
            ),
        })?;
        let pid = child.id().unwrap_or(0);
        // The node copies the output into `worker-<id>-<job>-<pid>.out|err` (rotated by
        // size); reading the pipes here means nothing a dying worker printed is lost.
        if let Some(stdout) = child.stdout.take() {
            self.copy_output(worker_id, job.job_id, pid, false, stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            self.copy_output(worker_id, job.job_id, pid, true, stderr);
        }
        let raylet = self.raylet.clone();
        tokio::spawn(async move {
            let status = child.wait().await.map(|status| status.to_string()).unwrap_or_else(|e| e.to_string());
            let _ = raylet.cast(RayletMsg::WorkerExited(worker_id, status));
        });
        info!(%worker_id, pid, job_id = %job.job_id, actor = ?spec.actor, "started worker");
        self.pids.insert(worker_id, pid);
        Ok(())
    }

    fn kill(&mut self, worker_id: WorkerId, reason: &str) {
        if let Some(pid) = self.pids.get(&worker_id) {
            info!(%worker_id, pid, %reason, "ending worker");
            if let Some(pid) = Pid::from_raw(*pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }

    fn exited(&mut self, worker_id: WorkerId) -> Option<u32> {
        self.pids.remove(&worker_id)
    }

    fn set_node_id(&mut self, node_id: NodeId) {
        self.node.node_id = node_id;
    }
}

/// What a worker of `language` runs: the job's program from the node's cache for
/// Rust; for Python the runtime env's virtualenv interpreter, else the node's
/// (`MANTA_PYTHON`, default `python3`), with `-m manta.worker`.
pub fn worker_program(language: Language, context: &EnvContext) -> PathBuf {
    match language {
        Language::Rust => context.executable.clone(),
        Language::Python => {
            context.python.clone().unwrap_or_else(|| PathBuf::from(manta_agents::runtime_env::setup::node_python()))
        }
    }
}

impl Drop for ProcessLauncher {
    fn drop(&mut self) {
        if !self.pids.is_empty() {
            warn!(count = self.pids.len(), "node stopping: ending its workers");
        }
        for worker_id in self.pids.keys().copied().collect::<Vec<_>>() {
            self.kill(worker_id, "the node is stopping");
        }
    }
}
