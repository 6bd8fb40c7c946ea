//! Starting and ending the runtime: `manta::init()` (driver), worker mode,
//! the embedded cluster, and `manta::shutdown()`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use manta_proto::client::GcsClient;
use manta_proto::cluster::{ClusterTarget, default_temp_dir};
use manta_proto::frame::PeerRole;
use manta_proto::message::Request;
use manta_proto::net::tls::TlsConfig;
use manta_proto::net::{self, NetConfig};
use manta_proto::node::NodeState;
use manta_proto::object::DriverStartedEvent;
use manta_proto::runtime_env::RuntimeEnvSpec;
use manta_proto::task::{
    FinishJobRequest, JobConfig, JobRuntimeEnvEvent, RegisterJobRequest, RegisterWorkerRequest,
    SetJobRuntimeEnvRequest, WorkerAddress,
};
use manta_proto::worker_env as env;
use manta_proto::{JobId, NodeId, WorkerId};

use crate::core::{Core, Mode, block_on, install, uninstall};
use crate::error::{Error, Result};
use crate::service::{RayletLinkService, WorkerService};

/// Options of [`init`], as a builder: `manta::Builder::new().namespace("x").init()`.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    address: Option<String>,
    token: Option<String>,
    temp_dir: Option<PathBuf>,
    namespace: Option<String>,
    runtime_env: Option<crate::RuntimeEnv>,
    embedded: crate::embedded::EmbeddedResources,
    log_to_driver: Option<bool>,
}

impl Builder {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cluster's GCS address (else `MANTA_ADDRESS`, else the session under the temp dir).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The cluster token (else `MANTA_TOKEN`, else `<temp-dir>/token`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The session folder to look for a running cluster in (else `MANTA_TEMP_DIR`, else the per-user default:
    /// `$XDG_RUNTIME_DIR/manta` or `/tmp/manta-<uid>`).
    pub fn temp_dir(mut self, temp_dir: impl Into<PathBuf>) -> Self {
        self.temp_dir = Some(temp_dir.into());
        self
    }

    /// The job's namespace for named actors (default: a fresh anonymous one).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The job's runtime environment, inherited by every task and actor: its
    /// local `working_dir` and `py_modules` are packed and uploaded once by `init`.
    /// Variables set with [`Builder::env_var`] are kept.
    pub fn runtime_env(mut self, runtime_env: crate::RuntimeEnv) -> Self {
        let mut runtime_env = runtime_env;
        if let Some(existing) = self.runtime_env.take() {
            for (key, value) in existing.env_vars {
                runtime_env.env_vars.entry(key).or_insert(value);
            }
        }
        self.runtime_env = Some(runtime_env);
        self
    }

    /// One environment variable of the job's runtime environment.
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.runtime_env.get_or_insert_with(Default::default).env_vars.insert(key.into(), value.into());
        self
    }

    /// CPUs of the embedded cluster (when one is started).
    pub fn num_cpus(mut self, cpus: impl Into<f64>) -> Self {
        self.embedded.num_cpus = Some(cpus.into());
        self
    }

    /// GPUs of the embedded cluster (when one is started), as Ray's `ray.init(num_gpus=2)`:
    /// declared, like `manta start --num-gpus`, whether or not the machine has them.
    pub fn num_gpus(mut self, gpus: impl Into<f64>) -> Self {
        self.embedded.num_gpus = Some(gpus.into());
        self
    }

    /// A custom resource of the embedded cluster (when one is started), as Ray's
    /// `ray.init(resources={...})`.
    pub fn resource(mut self, name: impl Into<String>, amount: impl Into<f64>) -> Self {
        self.embedded.resources.insert(name.into(), amount.into());
        self
    }

    /// Whether workers' output is printed by this driver (default true, as Ray's `log_to_driver`).
    pub fn log_to_driver(mut self, enabled: bool) -> Self {
        self.log_to_driver = Some(enabled);
        self
    }

    /// Connects to the cluster (or starts an embedded one) and starts the job.
    pub fn init(self) -> Result<InitGuard> {
        serve_if_worker();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("manta-runtime")
            .enable_all()
            .build()
            .map_err(|error| Error::Init(format!("cannot start the async runtime: {error}")))?;
        let handle = runtime.handle().clone();
        let started = block_on(&handle, connect_driver(self, handle.clone()));
        let (core, embedded) = started?;
        install(core)?;
        *RUNTIME.lock().expect("runtime lock") = Some(Process { runtime, embedded });
        Ok(InitGuard { _private: () })
    }
}

struct Process {
    runtime: tokio::runtime::Runtime,
    embedded: Option<crate::embedded::Embedded>,
}

static RUNTIME: std::sync::Mutex<Option<Process>> = std::sync::Mutex::new(None);

/// Ends the job when dropped (as `manta::shutdown()` does).
#[derive(Debug)]
#[must_use = "the job ends when the guard is dropped"]
pub struct InitGuard {
    _private: (),
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        shutdown();
    }
}

/// Connects to a running cluster, or starts one in this process.
pub fn init() -> Result<InitGuard> {
    Builder::new().init()
}

/// Ends the job: its non-detached actors and workers stop; an embedded cluster stops.
pub fn shutdown() {
    let Some(core) = uninstall() else { return };
    let Some(process) = RUNTIME.lock().expect("runtime lock").take() else { return };
    core.flush_task_events();
    crate::metrics::push(&core);
    // The workers' last lines: each node sends what they printed so far and says
    // so (an older node: wait until none came for 300 ms, 2 s at most); then print
    // what deduplication still holds.
    if core.mode == Mode::Driver && crate::logs::printer().expecting() {
        let flushing = core.clone();
        block_on(&process.runtime.handle().clone(), async move {
            if !crate::logs::flush_nodes(&flushing).await {
                crate::logs::printer().settle(Duration::from_millis(300), Duration::from_secs(2)).await;
            }
        });
        crate::logs::printer().flush(true);
    }
    let job_id = core.job.job_id;
    let gcs = core.gcs.clone();
    let finish = block_on(&process.runtime.handle().clone(), async move {
        let request = Request::FinishJob(FinishJobRequest { job_id });
        gcs.peer().call(request, Duration::from_secs(5)).await
    });
    if let Err(error) = finish {
        eprintln!("manta: could not tell the cluster the job ended: {error}");
    }
    if let Some(embedded) = process.embedded {
        embedded.stop(&process.runtime.handle().clone());
    }
    drop(core);
    process.runtime.shutdown_timeout(Duration::from_secs(2));
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

async fn connect_driver(
    builder: Builder,
    handle: tokio::runtime::Handle,
) -> Result<(Arc<Core>, Option<crate::embedded::Embedded>)> {
    let temp_dir = builder
        .temp_dir
        .clone()
        .or_else(|| env_var("MANTA_TEMP_DIR").map(PathBuf::from))
        .unwrap_or_else(default_temp_dir);
    let explicit = builder.address.clone().or_else(|| env_var("MANTA_ADDRESS"));
    let token = builder.token.clone().or_else(|| env_var("MANTA_TOKEN"));

    let mut embedded = None;
    let gcs_link = Arc::new(crate::service::DriverGcsLink::default());
    let (gcs, token, tls, local_node) = match explicit.clone().or_else(|| manta_proto::cluster::read_address(&temp_dir))
    {
        Some(address) => {
            let target = ClusterTarget {
                address: Some(address.clone()),
                token: token.clone(),
                temp_dir: temp_dir.clone(),
                tls: None,
            };
            match target.connect_gcs("manta driver", PeerRole::Worker, gcs_link.clone()).await {
                Ok(gcs) => (
                    gcs,
                    target.resolve().map_err(Error::Cluster)?.1,
                    target.tls_config().map_err(Error::Cluster)?,
                    None,
                ),
                Err(error) if explicit.is_some() => return Err(Error::Cluster(error)),
                // A stale session file (its head is gone): start our own cluster.
                Err(_) => start_embedded(&builder, &mut embedded).await?,
            }
        }
        None => start_embedded(&builder, &mut embedded).await?,
    };

    let nodes = gcs.get_all_nodes().await?;
    let alive: Vec<_> = nodes.iter().filter(|node| node.state == NodeState::Alive).collect();
    // MANTA_NODE_ADDRESS picks the node this driver runs its work through (the
    // node on its own machine, when several share an address).
    let chosen = env_var(manta_proto::worker_env::NODE_ADDRESS);
    let local = match (local_node, chosen) {
        (Some(node_id), _) => alive.iter().find(|node| node.node_id == node_id),
        (None, Some(address)) => alive.iter().find(|node| node.address == address),
        (None, None) => alive
            .iter()
            .find(|node| node.is_head && node.address.starts_with("127.0.0.1:"))
            .or_else(|| alive.iter().find(|node| node.address.starts_with("127.0.0.1:")))
            .or_else(|| alive.first()),
    }
    .ok_or_else(|| Error::Cluster("the cluster has no alive node to run work on".into()))?;
    let node_id = local.node_id;
    let raylet_address = local.address.clone();
    let node_ip = raylet_address.rsplit_once(':').map(|(ip, _)| ip.to_string()).unwrap_or_else(|| "127.0.0.1".into());

    let job = gcs
        .call(RegisterJobRequest {
            namespace: builder.namespace.clone().unwrap_or_default(),
            driver_pid: std::process::id(),
            reattach: None,
            // Set by a job supervisor for the entrypoint it starts (`manta job submit`).
            submission_id: env_var(manta_proto::submission::SUBMISSION_ID_VAR),
        })
        .await?;
    // A GCS that restarts gets this job claimed again when the link comes back.
    gcs_link.job.get_or_init(|| job.job_id);
    // Nodes start workers from this program's bytes, fetched from the cluster.
    let executable = crate::runtime_env::upload_executable(&gcs, job.job_id).await?;
    let runtime_env = job_runtime_env(&builder, &gcs, job.job_id).await?;
    let env =
        JobRuntimeEnvEvent { job_id: job.job_id, executable: executable.clone(), runtime_env: runtime_env.clone() };
    gcs.call(SetJobRuntimeEnvRequest { job_id: job.job_id, env }).await?;
    let job = JobConfig {
        job_id: job.job_id,
        namespace: job.namespace,
        executable,
        gcs_address: gcs.peer().remote_address(),
    };
    let core = start_core(
        Mode::Driver,
        WorkerId::random(),
        node_id,
        &node_ip,
        job,
        runtime_env,
        &raylet_address,
        gcs,
        &token,
        tls,
        handle,
        Arc::new(crate::service::DriverLinkService),
    )
    .await?;
    // The node lists this driver's objects and frees its store copies when it goes.
    let started = DriverStartedEvent { worker_id: core.worker.worker_id, address: core.worker.address.clone() };
    let started = manta_proto::message::Event::DriverStarted(started);
    let _ = core.raylet.send_event_when_up(started, crate::core::EVENT_TIMEOUT).await;
    if builder.log_to_driver != Some(false) {
        crate::logs::spawn_subscriber(&core);
    }
    Ok((core, embedded))
}

/// The job's runtime environment: the one given to `init` (packed and uploaded),
/// combined with the one `manta job submit` gave (a conflict is an error, as in Ray).
async fn job_runtime_env(builder: &Builder, gcs: &GcsClient, job_id: JobId) -> Result<RuntimeEnvSpec> {
    let own = match &builder.runtime_env {
        Some(env) => crate::runtime_env::resolve_job(env, gcs, job_id).await?,
        None => RuntimeEnvSpec::default(),
    };
    let Some(json) = env_var(crate::runtime_env::JOB_RUNTIME_ENV_VAR) else { return Ok(own) };
    let submitted: RuntimeEnvSpec = serde_json::from_str(&json).map_err(|error| {
        Error::Init(format!("{} is not a runtime env: {error}", crate::runtime_env::JOB_RUNTIME_ENV_VAR))
    })?;
    submitted.combine(&own).map_err(|conflicts| {
        Error::InvalidArgument(format!(
            "the runtime_env given to init conflicts with the job's (from manta job submit) on: {}; make them agree or drop one",
            conflicts.join(", ")
        ))
    })
}

async fn start_embedded(
    builder: &Builder,
    slot: &mut Option<crate::embedded::Embedded>,
) -> Result<(GcsClient, String, Option<Arc<TlsConfig>>, Option<NodeId>)> {
    let started = crate::embedded::start(&builder.embedded).await?;
    *slot = Some(started.embedded);
    Ok((started.gcs, started.token, started.tls, Some(started.node_id)))
}

/// Starts this process's listener and links, and builds its [`Core`].
#[allow(clippy::too_many_arguments)]
async fn start_core(
    mode: Mode,
    worker_id: WorkerId,
    node_id: NodeId,
    node_ip: &str,
    job: JobConfig,
    runtime_env: RuntimeEnvSpec,
    raylet_address: &str,
    gcs: GcsClient,
    token: &str,
    tls: Option<Arc<TlsConfig>>,
    handle: tokio::runtime::Handle,
    raylet_service: Arc<dyn net::Service>,
) -> Result<Arc<Core>> {
    let label = match mode {
        Mode::Driver => format!("driver {}", worker_id.short()),
        Mode::Worker => format!("worker {}", worker_id.short()),
    };
    let mut net_config = NetConfig::new(token, PeerRole::Worker, label);
    net_config.reconnect = false;
    net_config.tls = tls;
    let net_config = Arc::new(net_config);
    let raylet = net::connect(raylet_address, net_config.clone(), raylet_service, None, Duration::from_secs(10))
        .await
        .map_err(|error| Error::Cluster(format!("cannot reach the local node at {raylet_address}: {error}")))?;
    let socket = net::bind(&format!("{node_ip}:0")).await.map_err(|error| Error::Init(error.to_string()))?;
    let service = Arc::new(WorkerService::new());
    let (_, address) = net::spawn_listener(socket, net_config.clone(), service, None)
        .await
        .map_err(|error| Error::Init(format!("cannot start this process's listener: {error}")))?;
    let worker = WorkerAddress { worker_id, address: address.to_string(), node_id };
    let core = Arc::new(Core::new(mode, worker, job, runtime_env, raylet, gcs, net_config, handle));
    crate::core::spawn_event_flusher(&core);
    crate::metrics::spawn_pusher(&core);
    crate::core::spawn_borrow_sender(&core);
    Ok(core)
}

/// In a worker process (started by a raylet), serves tasks and never returns;
/// elsewhere, returns at once. `#[manta::main]` and `init()` call it first.
pub fn serve_if_worker() {
    if std::env::var(env::WORKER_MODE).as_deref() != Ok("1") {
        return;
    }
    let contract = WorkerEnv::take();
    match run_worker(contract) {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("manta worker: {error}");
            std::process::exit(1);
        }
    }
}

/// The variables the node started this worker with, read once and removed from
/// the process environment before anything else runs (no thread has started yet).
struct WorkerEnv(BTreeMap<&'static str, String>);

impl WorkerEnv {
    fn take() -> Self {
        let values = env::ALL.iter().filter_map(|name| env_var(name).map(|value| (*name, value))).collect();
        for name in env::ALL {
            // SAFETY: called first thing in worker mode, before this process starts any
            // thread (the runtime is built afterwards), so nothing reads the environment concurrently.
            unsafe { std::env::remove_var(name) };
        }
        Self(values)
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn required(&self, name: &str) -> Result<String> {
        self.get(name).ok_or_else(|| Error::Init(format!("worker mode needs the {name} environment variable")))
    }
}

fn run_worker(contract: WorkerEnv) -> Result<()> {
    let parse_error = |error: manta_proto::ids::ParseIdError| Error::Init(format!("{error}"));
    let worker_id: WorkerId = contract.required(env::WORKER_ID)?.parse().map_err(parse_error)?;
    let node_id: NodeId = contract.required(env::NODE_ID)?.parse().map_err(parse_error)?;
    let job_id: JobId = contract.required(env::JOB_ID)?.parse().map_err(parse_error)?;
    let raylet_address = contract.required(env::NODE_ADDRESS)?;
    let gcs_address = contract.required(env::GCS_ADDRESS)?;
    let token = contract.required(env::TOKEN)?;
    let node_ip = contract.get(env::NODE_IP).unwrap_or_else(|| "127.0.0.1".into());
    let tls = manta_proto::net::tls::TlsFiles::from_parts(
        contract.get(env::TLS_CERT).map(PathBuf::from),
        contract.get(env::TLS_KEY).map(PathBuf::from),
        contract.get(env::TLS_CA).map(PathBuf::from),
        [env::TLS_CERT, env::TLS_KEY, env::TLS_CA],
    )
    .map_err(Error::Init)?;
    let namespace = contract.get(env::NAMESPACE).unwrap_or_default();
    let runtime_env: RuntimeEnvSpec = match contract.get(env::RUNTIME_ENV) {
        Some(json) => serde_json::from_str(&json)
            .map_err(|error| Error::Init(format!("{} is not a runtime env: {error}", env::RUNTIME_ENV)))?,
        None => RuntimeEnvSpec::default(),
    };
    let executable = contract.required(env::EXECUTABLE)?;
    crate::context::set_gpu_ids(contract.get(env::GPU_IDS).as_deref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("manta-runtime")
        .enable_all()
        .build()
        .map_err(|error| Error::Init(format!("cannot start the async runtime: {error}")))?;
    let handle = runtime.handle().clone();
    let core = block_on(&handle, {
        let handle = handle.clone();
        async move {
            let target = ClusterTarget {
                address: Some(gcs_address.clone()),
                token: Some(token.clone()),
                temp_dir: PathBuf::new(),
                tls,
            };
            let tls = target.tls_config().map_err(Error::Cluster)?;
            let gcs = target
                .connect_gcs("manta worker", PeerRole::Worker, Arc::new(net::NoService))
                .await
                .map_err(Error::Cluster)?;
            let job = JobConfig { job_id, namespace, executable, gcs_address };
            let core = start_core(
                Mode::Worker,
                worker_id,
                node_id,
                &node_ip,
                job,
                runtime_env,
                &raylet_address,
                gcs,
                &token,
                tls,
                handle,
                Arc::new(RayletLinkService),
            )
            .await?;
            // Install before registering: a task can arrive as soon as the raylet knows us.
            install(core.clone())?;
            let request = Request::RegisterWorker(RegisterWorkerRequest {
                worker_id,
                address: core.worker.address.clone(),
                pid: std::process::id(),
            });
            core.raylet.call(request, Duration::from_secs(10)).await?;
            Ok::<_, Error>(core)
        }
    })?;
    drop(core);
    // Serve until the raylet link drops (RayletLinkService exits) or we are killed.
    loop {
        std::thread::park();
    }
}
