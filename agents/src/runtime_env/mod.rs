//! The RuntimeEnvAgent: one per node, asked by the raylet for an environment
//! before it starts a worker ([`AgentMsg::GetOrCreate`]) and told when the
//! worker ends ([`AgentMsg::Release`]) and when a job ends.
//!
//! Decisions (who shares which build, what is in use, what to delete) are the
//! pure [`cache::EnvCache`]; [`setup`] does the downloads, unpacking and
//! virtualenvs in spawned tasks, off the agent's and the raylet's message
//! loops, each under the environment's `setup_timeout_seconds`. The cache
//! state lives in a shared [`AgentShared`], so an agent restarted by the node
//! supervisor keeps the reference counts of the workers already running.

pub mod cache;
pub mod setup;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use manta_proto::JobId;
use manta_proto::client::GcsClient;
use manta_proto::runtime_env::{EnvKey, RuntimeEnvSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tracing::{info, warn};

use cache::{Built, Effect, EnvCache};
pub use cache::{EnvContext, ItemId, ItemKind};

/// The default `--runtime-env-cache-bytes` (Ray's 10 GB per plugin).
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;

/// Where a setup's answer goes.
pub type Waiter = oneshot::Sender<Result<EnvContext, String>>;

/// The agent's current ref (the node restarts the agent when it fails).
pub type AgentSlot = Arc<RwLock<ActorRef<AgentMsg>>>;

/// The key of an environment for a job's program: its [`RuntimeEnvSpec::key`]
/// and the executable package together.
pub fn env_key(spec: &RuntimeEnvSpec, executable: &str) -> EnvKey {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&spec.key().0);
    hasher.update(executable.as_bytes());
    EnvKey(hasher.finalize().as_bytes()[..16].try_into().expect("16 bytes"))
}

/// State shared by every incarnation of the agent.
pub struct AgentShared {
    cache: Mutex<EnvCache<Waiter>>,
    locks: setup::ItemLocks,
    /// Environments being built: what their builds need.
    plans: Mutex<std::collections::HashMap<EnvKey, (RuntimeEnvSpec, String, JobId)>>,
}

impl AgentShared {
    /// Fresh state for a cache of at most `limit` unused bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { cache: Mutex::new(EnvCache::new(limit)), locks: Default::default(), plans: Default::default() })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, EnvCache<Waiter>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Start-up arguments of the [`RuntimeEnvAgent`].
#[derive(Clone)]
pub struct AgentArgs {
    /// The cache folder (`<node dir>/runtime_resources`).
    pub root: PathBuf,
    /// Where per-job setup logs go (the node's log folder).
    pub log_dir: PathBuf,
    /// The GCS, to download packages from.
    pub gcs: GcsClient,
    /// On the head: the GCS's package folder, linked from instead of downloading.
    pub local_packages: Option<PathBuf>,
    /// State kept across restarts.
    pub shared: Arc<AgentShared>,
    /// The agent's current ref, for build tasks to report to.
    pub slot: Arc<std::sync::OnceLock<AgentSlot>>,
}

/// How full the cache is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheUsage {
    /// Bytes of items on disk.
    pub bytes: u64,
    /// Items on disk.
    pub items: Vec<ItemId>,
}

/// Messages to the [`RuntimeEnvAgent`].
pub enum AgentMsg {
    /// A worker of `job` running `executable` needs environment `spec`.
    GetOrCreate {
        /// The environment.
        spec: RuntimeEnvSpec,
        /// The job's program (a package name).
        executable: String,
        /// The job.
        job: JobId,
        /// The answer.
        reply: Waiter,
    },
    /// A worker given the environment with this key ended.
    Release(EnvKey),
    /// A job ended.
    JobFinished(JobId),
    /// A build ended.
    Built(EnvKey, Built),
    /// How full the cache is.
    Usage(RpcReplyPort<CacheUsage>),
}

impl std::fmt::Debug for AgentMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentMsg::GetOrCreate { job, executable, .. } => write!(f, "GetOrCreate({job}, {executable})"),
            AgentMsg::Release(key) => write!(f, "Release({key})"),
            AgentMsg::JobFinished(job) => write!(f, "JobFinished({job})"),
            AgentMsg::Built(key, result) => write!(f, "Built({key}, ok: {})", result.is_ok()),
            AgentMsg::Usage(_) => f.write_str("Usage"),
        }
    }
}

/// The agent actor. Stateless; its state is [`AgentArgs`].
#[derive(Debug, Default)]
pub struct RuntimeEnvAgent;

impl Actor for RuntimeEnvAgent {
    type Msg = AgentMsg;
    type State = AgentArgs;
    type Arguments = AgentArgs;

    async fn pre_start(&self, _myself: ActorRef<AgentMsg>, args: AgentArgs) -> Result<AgentArgs, ActorProcessingErr> {
        manta_proto::private_fs::create_dir_all(&args.root)
            .map_err(|error| format!("cannot create the runtime env cache {}: {error}", args.root.display()))?;
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AgentMsg>,
        message: AgentMsg,
        state: &mut AgentArgs,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let effects = match message {
            AgentMsg::GetOrCreate { spec, executable, job, reply } => {
                let items = match setup::items_of(&spec, &executable) {
                    Ok(items) => items,
                    Err(error) => {
                        let _ = reply.send(Err(error));
                        return Ok(());
                    }
                };
                let key = env_key(&spec, &executable);
                state
                    .shared
                    .plans
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, (spec, executable, job));
                state.shared.cache().acquire(key, items, job, reply, now)
            }
            AgentMsg::Release(key) => state.shared.cache().release(key),
            AgentMsg::JobFinished(job) => state.shared.cache().job_finished(job),
            AgentMsg::Built(key, result) => {
                match &result {
                    Ok(_) => info!(%key, "runtime env ready"),
                    Err(error) => {
                        warn!(%key, %error, "runtime env setup failed");
                        metrics::counter!("manta_runtime_env_setup_failures_total").increment(1);
                    }
                }
                state.shared.cache().built(key, result, now)
            }
            AgentMsg::Usage(reply) => {
                let cache = state.shared.cache();
                let _ = reply.send(CacheUsage { bytes: cache.used_bytes(), items: cache.present() });
                return Ok(());
            }
        };
        carry_out(state, effects);
        let bytes = state.shared.cache().used_bytes();
        metrics::gauge!("manta_runtime_env_cache_bytes").set(bytes as f64);
        Ok(())
    }
}

fn carry_out(state: &AgentArgs, effects: Vec<Effect<Waiter>>) {
    for effect in effects {
        match effect {
            Effect::Answer { waiter, result } => {
                let _ = waiter.send(result);
            }
            Effect::Delete(id) => {
                let path = state.root.join(id.relative_path());
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                match removed {
                    Ok(()) => info!(path = %path.display(), "deleted an unused runtime env item"),
                    Err(error) => warn!(path = %path.display(), %error, "could not delete a runtime env item"),
                }
            }
            Effect::Build { key, missing } => {
                let plan =
                    state.shared.plans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).cloned();
                let Some((spec, executable, job)) = plan else { continue };
                spawn_build(state, key, spec, executable, job, missing);
            }
        }
    }
}

/// Runs a setup under its timeout (`None`: no limit); dropping it on timeout
/// kills what it started (its commands are `kill_on_drop`).
async fn within(
    timeout: Option<std::time::Duration>,
    seconds: i64,
    work: impl std::future::Future<Output = Built>,
) -> Built {
    match timeout {
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(format!(
                "the runtime env setup did not finish within {seconds} s; raise config.setup_timeout_seconds if the install is slow"
            ))
        }),
        None => work.await,
    }
}

/// Builds off the message loop, under the setup timeout; reports to the current agent.
fn spawn_build(
    state: &AgentArgs,
    key: EnvKey,
    spec: RuntimeEnvSpec,
    executable: String,
    job: JobId,
    missing: Vec<ItemId>,
) {
    let timeout = spec.config().setup_timeout();
    let seconds = spec.config().setup_timeout_seconds;
    let plan = setup::Plan {
        spec,
        executable,
        missing,
        root: state.root.clone(),
        setup_log: state.log_dir.join(format!("runtime_env_setup-{job}.log")),
    };
    let packages = setup::Packages { gcs: state.gcs.clone(), local: state.local_packages.clone() };
    let (locks, slot) = (state.shared.locks.clone(), state.slot.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let result = within(timeout, seconds, setup::build(plan, packages, locks)).await;
        metrics::histogram!("manta_runtime_env_setup_seconds").record(started.elapsed().as_secs_f64());
        if let Some(slot) = slot.get() {
            let agent = slot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let _ = agent.cast(AgentMsg::Built(key, result));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_setup_past_its_timeout_fails_with_a_hint_and_stops() {
        let stuck = std::future::pending::<Built>();
        let error = within(Some(std::time::Duration::from_millis(50)), 2, stuck).await.unwrap_err();
        assert!(error.contains("within 2 s") && error.contains("setup_timeout_seconds"), "{error}");
        let quick = async { Ok((EnvContext::default(), Vec::new())) };
        assert!(within(None, -1, quick).await.is_ok());
    }

    #[test]
    fn the_key_covers_the_environment_and_the_program() {
        let spec = RuntimeEnvSpec::default();
        assert_ne!(env_key(&spec, "_manta_exe_a"), env_key(&spec, "_manta_exe_b"));
        let other = RuntimeEnvSpec { working_dir: Some("gcs://p.zip".into()), ..Default::default() };
        assert_ne!(env_key(&spec, "_manta_exe_a"), env_key(&other, "_manta_exe_a"));
    }
}
