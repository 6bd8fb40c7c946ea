//! What starting a worker involves: the pool it will serve ([`PoolKey`]), what
//! its process needs ([`LaunchSpec`]), and how a start ends before the worker
//! registers — its runtime environment ready ([`LeaseLedger::env_ready`]) or a
//! failed setup or launch ([`LeaseLedger::start_failed`]).

use std::collections::BTreeMap;
use std::time::Instant;

use manta_proto::runtime_env::{EnvKey, RuntimeEnvSpec};
use manta_proto::task::{CancelCause, JobConfig, Language, RequestWorkerLeaseRequest};
use manta_proto::{ActorId, JobId, WorkerId};

use super::{Effect, LeaseLedger, WorkerState};

/// Which workers may serve which requests: the same program, job and environment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The job.
    pub job_id: JobId,
    /// The worker kind (a Python worker never serves a Rust lease).
    pub language: Language,
    /// The program the worker runs (a content-addressed package: a program
    /// rebuilt in place is another package, so it never gets this one's workers).
    pub executable: String,
    /// The runtime environment's identity.
    pub env: EnvKey,
    /// Variables the node adds (`CUDA_VISIBLE_DEVICES` for the GPUs granted).
    pub node_vars: BTreeMap<String, String>,
}

/// What a new worker process needs.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchSpec {
    /// The job (executable package, GCS address, namespace).
    pub job: JobConfig,
    /// The worker kind: which command starts it.
    pub language: Language,
    /// The runtime environment, set up by the node's RuntimeEnvAgent first.
    pub runtime_env: RuntimeEnvSpec,
    /// Variables the node sets over the environment's (`CUDA_VISIBLE_DEVICES`).
    pub env_vars: BTreeMap<String, String>,
    /// The worker is dedicated to this actor.
    pub actor: Option<ActorId>,
    /// The actor survives its job.
    pub detached: bool,
}

impl LeaseLedger {
    /// The worker's runtime environment is ready: it starts (and its start
    /// timeout runs). False when the worker was ended meanwhile.
    pub fn env_ready(&mut self, worker_id: WorkerId, now: Instant) -> bool {
        match self.workers.get_mut(&worker_id) {
            Some(worker) if matches!(worker.state, WorkerState::Preparing { .. }) && !worker.ending => {
                worker.state = WorkerState::Starting { since: now };
                true
            }
            _ => false,
        }
    }

    /// A worker could not be started (`cause` says whether its runtime env
    /// failed): the request it was for is cancelled with the reason.
    pub fn start_failed(
        &mut self,
        worker_id: WorkerId,
        reason: String,
        cause: CancelCause,
        now: Instant,
    ) -> Vec<Effect> {
        self.workers.remove(&worker_id);
        let mut effects = Vec::new();
        if let Some(position) = self.pending.iter().position(|pending| pending.starting_worker() == Some(worker_id)) {
            let pending = self.pending.remove(position).expect("position is valid");
            self.unreserve(&pending);
            effects.push(Effect::Cancel { request: pending.id, reason, cause });
        }
        effects.extend(self.schedule(now));
        effects
    }
}

impl LaunchSpec {
    /// The executable package the worker needs from the cluster: the job's Rust
    /// program for Rust workers, none for Python workers (they run the node's Python).
    pub fn executable_package(&self) -> &str {
        match self.language {
            Language::Rust => &self.job.executable,
            Language::Python => "",
        }
    }
}

/// The pool key of a request's job and environment, plus the node's variables.
pub fn pool_key(request: &RequestWorkerLeaseRequest, node_vars: &BTreeMap<String, String>) -> PoolKey {
    PoolKey {
        job_id: request.job.job_id,
        language: request.language,
        executable: request.job.executable.clone(),
        env: request.runtime_env.key(),
        node_vars: node_vars.clone(),
    }
}
