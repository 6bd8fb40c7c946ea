//! The raylet's side of the RuntimeEnvAgent: asking it for a worker's
//! environment before the worker starts (the answer comes back as a message,
//! so the raylet's loop never waits for a download or an install), starting the
//! worker or failing its request when it answers, and setting up a job's
//! environment early (`eager_install`).

use std::time::Instant;

use manta_agents::runtime_env::{AgentMsg, EnvContext};
use manta_proto::WorkerId;
use manta_proto::runtime_env::EnvKey;
use manta_proto::task::CancelCause;
use tracing::{info, warn};

use super::{RayletMsg, RayletState, apply};
use crate::ledger::Effect;

/// A worker whose environment is being set up.
pub(super) struct Preparing {
    pub(super) launch: crate::ledger::LaunchSpec,
    pub(super) key: EnvKey,
    /// It was ended meanwhile: when the answer comes, the environment is released.
    pub(super) ended: bool,
}

/// Sends a message to the current RuntimeEnvAgent.
pub(super) fn agent(state: &RayletState, message: AgentMsg) -> bool {
    let agent = state.agent.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    agent.cast(message).is_ok()
}

/// Asks the RuntimeEnvAgent for the worker's environment; the answer comes back
/// as [`RayletMsg::EnvReady`] (the setup never runs on this actor's loop).
pub(super) fn prepare(state: &mut RayletState, worker_id: WorkerId, launch: crate::ledger::LaunchSpec) -> Vec<Effect> {
    let key = manta_agents::runtime_env::env_key(&launch.runtime_env, launch.executable_package());
    let (reply, answer) = tokio::sync::oneshot::channel();
    let asked = AgentMsg::GetOrCreate {
        spec: launch.runtime_env.clone(),
        executable: launch.executable_package().to_string(),
        job: launch.job.job_id,
        reply,
    };
    if !agent(state, asked) {
        let reason = "the node's runtime env agent is restarting; try again".to_string();
        return state.ledger.start_failed(worker_id, reason, CancelCause::Other, Instant::now());
    }
    state.preparing.insert(worker_id, Preparing { launch, key, ended: false });
    let myself = state.myself.clone();
    tokio::spawn(async move {
        let result = answer
            .await
            .unwrap_or_else(|_| Err("the node's runtime env agent stopped during the setup; try again".into()));
        let _ = myself.cast(RayletMsg::EnvReady(worker_id, result));
    });
    Vec::new()
}

/// Sets up a job's environment before any of its workers needs it (Ray's
/// `eager_install`, for environments with packages). The agent's items then
/// count the job as a user until it ends; the environment itself is released at once.
pub(super) fn eager_install(state: &mut RayletState, env: manta_proto::task::JobRuntimeEnvEvent) {
    if !env.runtime_env.has_packages() || !env.runtime_env.config().eager_install {
        return;
    }
    let key = manta_agents::runtime_env::env_key(&env.runtime_env, &env.executable);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let asked = AgentMsg::GetOrCreate { spec: env.runtime_env, executable: env.executable, job: env.job_id, reply };
    if !agent(state, asked) {
        return;
    }
    let slot = state.agent.clone();
    let job_id = env.job_id;
    tokio::spawn(async move {
        match answer.await {
            Ok(Ok(_)) => {
                let agent = slot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                let _ = agent.cast(AgentMsg::Release(key));
                info!(%job_id, "set up the job's runtime env ahead of its workers (eager_install)");
            }
            Ok(Err(error)) => warn!(%job_id, %error, "eager runtime env setup failed; workers will report it"),
            Err(_) => {}
        }
    });
}

/// The agent answered: start the worker, or fail its request with the setup error.
pub(super) fn env_ready(state: &mut RayletState, worker_id: WorkerId, result: Result<EnvContext, String>) {
    let Some(preparing) = state.preparing.remove(&worker_id) else { return };
    let now = Instant::now();
    let effects = match result {
        Ok(context) if !preparing.ended && state.ledger.env_ready(worker_id, now) => {
            match state.launcher.launch(worker_id, &preparing.launch, &context) {
                Ok(()) => {
                    state.worker_envs.insert(worker_id, preparing.key);
                    Vec::new()
                }
                Err(reason) => {
                    warn!(%reason, "worker start failed");
                    agent(state, AgentMsg::Release(preparing.key));
                    state.ledger.start_failed(worker_id, reason, CancelCause::Other, now)
                }
            }
        }
        Ok(_) => {
            agent(state, AgentMsg::Release(preparing.key));
            Vec::new()
        }
        Err(_) if preparing.ended => Vec::new(),
        Err(error) => {
            let node = state.identity.get().short();
            let reason = format!("RuntimeEnvSetupFailed on node {node}: {error}");
            warn!(%reason, "runtime env setup failed");
            state.ledger.start_failed(worker_id, reason, CancelCause::RuntimeEnvSetupFailed, now)
        }
    };
    apply(state, effects);
}
