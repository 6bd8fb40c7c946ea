//! [`Raylet`]: the node's agent towards the cluster. It keeps the node
//! registered (re-registering after a reconnect, and under a new id when the
//! GCS has fenced the old one), reports resources, and holds the latest
//! cluster view pushed by the GCS. Leases, workers, resources and bundles are
//! decided by the pure [`LeaseLedger`]; this actor turns messages into ledger
//! events and carries out the [`Effect`]s it returns: worker processes through
//! a [`WorkerLauncher`], answers through the callers' reply ports.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use manta_agents::runtime_env::{AgentMsg, AgentSlot, EnvContext};
use manta_proto::gcs::{Channel, ClusterViewEvent, RegisterNodeRequest, ResourceDemand};
use manta_proto::message::Event;
use manta_proto::net::{LinkId, PeerHandle};
use manta_proto::node::{GetNodeStatsReply, ServeCallsEvent, WarningEvent};
use manta_proto::placement::PrepareBundlesRequest;
use manta_proto::resources::{Quantity, ResourceSet, names};
use manta_proto::runtime_env::EnvKey;
use manta_proto::task::{ActorWorkerDiedEvent, LeaseOutcome, RegisterWorkerRequest, RequestWorkerLeaseRequest};
use manta_proto::{ErrorCode, JobId, NodeId, PlacementGroupId, WireError, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::gpus::GpuAllocator;
use crate::launcher::{NodeContext, ProcessLauncher, WorkerLauncher};
use crate::ledger::{Effect, LeaseLedger, LedgerConfig, RegisterError, RequestId, WorkerAct};
use crate::object_store::StoreMsg;

mod env;
mod register;
mod report;
use env::{Preparing, agent, eager_install, env_ready, prepare};
use manta_proto::client::GcsClient;
pub use register::NodeIdentity;
use register::reregister;
pub use report::fence_window;
use report::{gate_changed, report};

/// The raylet actor. Stateless; see [`RayletState`].
#[derive(Debug, Default)]
pub struct Raylet;

/// Messages to the [`Raylet`].
#[derive(Debug)]
pub enum RayletMsg {
    /// The GCS link is up again: register (fenced → new id) and resubscribe.
    GcsReconnected,
    /// The GCS link stayed down for the reconnect timeout: the node exits.
    GcsGone(Duration),
    /// The GCS no longer knows this node as alive: register as a new node.
    Fenced,
    /// Timer: report resources if they changed; end idle workers.
    ReportTick,
    /// A cluster view pushed by the GCS.
    ClusterView(ClusterViewEvent),
    /// This node's own view.
    GetStats(RpcReplyPort<GetNodeStatsReply>),
    /// A caller (on this link, reachable through the handle for warnings) asks for a worker.
    RequestLease(Box<RequestWorkerLeaseRequest>, LinkId, PeerHandle, RpcReplyPort<Result<LeaseOutcome, WireError>>),
    /// The link of a caller closed: its leases end (their workers are ended too,
    /// since their results have nowhere to go).
    CallerGone(LinkId),
    /// A caller gives a worker back.
    ReturnLease(WorkerId, Requester, RpcReplyPort<Result<(), WireError>>),
    /// A worker process announces itself on its link.
    RegisterWorker(RegisterWorkerRequest, PeerHandle, RpcReplyPort<Result<NodeId, WireError>>),
    /// The GCS answered a request this node sent at that time (the fence stays open).
    GcsAnswered(std::time::Instant),
    /// A worker process exited, with its status.
    WorkerExited(WorkerId, String),
    /// A leased worker blocks in `get` (true) or resumes (false).
    WorkerBlocked(WorkerId, bool, Requester, RpcReplyPort<Result<(), WireError>>),
    /// End a worker (an actor kill).
    KillWorker(WorkerId, String, Requester, RpcReplyPort<Result<(), WireError>>),
    /// A job ended: end its workers.
    JobFinished(JobId),
    /// GCS: lock resources for a placement group's bundles (phase 1).
    PrepareBundles(PrepareBundlesRequest, RpcReplyPort<Result<(), WireError>>),
    /// GCS: commit a group's locked bundles (phase 2).
    CommitBundles(PlacementGroupId, RpcReplyPort<Result<(), WireError>>),
    /// GCS: release a group's bundles (rollback or removal).
    CancelBundles(PlacementGroupId, RpcReplyPort<()>),
    /// A placement group was removed: requests for it are cancelled.
    PlacementGroupRemoved(PlacementGroupId),
    /// A worker owns referenced objects (true) or no longer does.
    WorkerOwnership(WorkerId, bool),
    /// A driver on this link listens at this address.
    DriverStarted(LinkId, WorkerId, String),
    /// Addresses of the registered workers and drivers (owners to ask for `manta list objects`).
    WorkerAddresses(RpcReplyPort<Vec<String>>),
    /// A job started with this program and environment: set it up now when it
    /// asks for `eager_install` (kept for the job by the agent until it ends).
    JobRuntimeEnv(Box<manta_proto::task::JobRuntimeEnvEvent>),
    /// The RuntimeEnvAgent answered for a worker waiting for its environment.
    EnvReady(WorkerId, Result<EnvContext, String>),
}

/// A lease request's caller, waiting for the answer.
struct Waiting {
    reply: RpcReplyPort<Result<LeaseOutcome, WireError>>,
    /// The caller's link, for warnings.
    caller: PeerHandle,
}

/// Start-up arguments of the [`Raylet`].
pub struct RayletArgs {
    /// The node's id, shared with the health-check responder.
    pub identity: NodeIdentity,
    /// The GCS.
    pub gcs: GcsClient,
    /// What the node registers with (the id is taken from `identity`).
    pub registration: RegisterNodeRequest,
    /// Resource report period.
    pub report_interval: Duration,
    /// This node's listener (workers register there).
    pub node_address: String,
    /// The address workers listen on.
    pub node_ip: String,
    /// Where worker logs go.
    pub log_dir: PathBuf,
    /// The cluster token, for workers.
    pub token: String,
    /// The TLS files workers connect with, when the cluster uses TLS.
    pub tls: Option<manta_proto::net::tls::TlsFiles>,
    /// Worker processes at most (`None`: the default for the node's CPUs).
    pub max_workers: Option<usize>,
    /// The fence window the GCS gave at registration (`None`: no fence).
    pub fence_after: Option<Duration>,
    /// The node's object store (told when owners exit).
    pub store: ActorRef<StoreMsg>,
    /// When worker log files rotate.
    pub log_rotation: crate::worker_logs::Rotation,
    /// The node's RuntimeEnvAgent.
    pub agent: AgentSlot,
    /// The workers' output pipes, watched for log flushes.
    pub pipes: crate::log_pipes::Pipes,
}

/// State of the [`Raylet`].
pub struct RayletState {
    identity: NodeIdentity,
    gcs: GcsClient,
    registration: RegisterNodeRequest,
    last_reported: Option<ResourceSet>,
    ticker: JoinHandle<()>,
    /// Leases, workers, resources and bundles.
    ledger: LeaseLedger,
    /// Starts and ends worker processes.
    launcher: Box<dyn WorkerLauncher>,
    /// Callers waiting for an answer, by request.
    replies: HashMap<RequestId, Waiting>,
    store: ActorRef<StoreMsg>,
    /// Drivers on this node, by link: their worker id and listener.
    drivers: HashMap<LinkId, (WorkerId, String)>,
    /// The demand last reported.
    last_demand: Vec<ResourceDemand>,
    /// (idle, draining) as last reported.
    last_load: (bool, bool),
    /// When actor calls may run (see `crate::fence`).
    fence: crate::fence::Fence,
    /// Each registered worker's link (the fence's state goes to it).
    worker_links: HashMap<WorkerId, PeerHandle>,
    /// The node's RuntimeEnvAgent.
    agent: AgentSlot,
    /// Workers waiting for their environment.
    preparing: HashMap<WorkerId, Preparing>,
    /// The environment each started worker holds (released when it exits).
    worker_envs: HashMap<WorkerId, EnvKey>,
    /// This actor, for answers that come back from spawned tasks.
    myself: ActorRef<RayletMsg>,
}

impl Drop for RayletState {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// The channels a raylet listens to.
pub const RAYLET_CHANNELS: [Channel; 3] = [Channel::ClusterView, Channel::NodeChanges, Channel::Jobs];

impl Actor for Raylet {
    type Msg = RayletMsg;
    type State = RayletState;
    type Arguments = RayletArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RayletMsg>,
        args: RayletArgs,
    ) -> Result<RayletState, ActorProcessingErr> {
        let ticker = myself.send_interval(args.report_interval, || RayletMsg::ReportTick);
        let node_id = args.identity.get();
        let gpu_count = (args.registration.resources_total.get(names::GPU).units() / Quantity::SCALE) as usize;
        let visible = std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .map(|text| text.split(',').map(|id| id.trim().to_string()).filter(|id| !id.is_empty()).collect());
        let cpus = (args.registration.resources_total.get(names::CPU).units() / Quantity::SCALE) as usize;
        let config = LedgerConfig {
            max_workers: args.max_workers.unwrap_or_else(|| (8 * cpus).max(128)),
            ..LedgerConfig::default()
        };
        let ledger = LeaseLedger::new(
            config,
            node_id,
            args.node_address.clone(),
            args.registration.resources_total.clone(),
            GpuAllocator::new(gpu_count, visible),
        );
        let node = NodeContext {
            node_id,
            node_address: args.node_address,
            node_ip: args.node_ip,
            token: args.token,
            tls: args.tls,
        };
        let launcher = ProcessLauncher::new(node, args.log_dir, args.log_rotation, myself.clone(), args.pipes);
        Ok(RayletState {
            agent: args.agent,
            preparing: HashMap::new(),
            worker_envs: HashMap::new(),
            myself: myself.clone(),
            fence: crate::fence::Fence::new(args.fence_after, std::time::Instant::now()),
            worker_links: HashMap::new(),
            last_demand: Vec::new(),
            last_load: (false, false),
            drivers: HashMap::new(),
            store: args.store,
            ledger,
            launcher: Box::new(launcher),
            replies: HashMap::new(),
            last_reported: Some(args.registration.resources_total.clone()),
            identity: args.identity,
            gcs: args.gcs,
            registration: args.registration,
            ticker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RayletMsg>,
        message: RayletMsg,
        state: &mut RayletState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match message {
            RayletMsg::GcsReconnected => reregister(state, false).await,
            RayletMsg::GcsGone(timeout) => {
                error!(?timeout, "the GCS stayed unreachable for the reconnect timeout; stopping this node");
                return Err(format!("the GCS was unreachable for {timeout:?} (--gcs-reconnect-timeout)").into());
            }
            RayletMsg::Fenced => reregister(state, true).await,
            RayletMsg::ReportTick => {
                let reaped = state.ledger.reap_idle(now);
                apply(state, reaped);
                record_gauges(state);
                let probe = state.fence.probe_due(now);
                report(&myself, state, probe);
                if let Some(open) = state.fence.check(now) {
                    gate_changed(state, open);
                }
            }
            RayletMsg::GcsAnswered(sent_at) => {
                state.fence.answered(sent_at);
                if let Some(open) = state.fence.check(now) {
                    gate_changed(state, open);
                }
            }
            RayletMsg::ClusterView(view) => {
                let effects = state.ledger.cluster_view(view, now);
                apply(state, effects);
            }
            RayletMsg::RequestLease(request, caller, caller_peer, reply) => {
                let (request_id, effects) = state.ledger.request(*request, caller, now);
                state.replies.insert(request_id, Waiting { reply, caller: caller_peer });
                apply(state, effects);
            }
            RayletMsg::CallerGone(caller) => {
                if let Some((driver, _)) = state.drivers.remove(&caller) {
                    // The driver owned its objects: they go with it.
                    let _ = state.store.cast(StoreMsg::OwnerGone(driver));
                }
                let effects = state.ledger.caller_gone(caller, now);
                apply(state, effects);
            }
            RayletMsg::ReturnLease(worker_id, from, reply) => {
                if let Some(reply) = refused(state, worker_id, WorkerAct::ReturnLease, from, reply) {
                    let _ = reply.send(Ok(()));
                    let effects = state.ledger.lease_returned(worker_id, now);
                    apply(state, effects);
                }
            }
            RayletMsg::RegisterWorker(request, link, reply) => {
                let worker_id = request.worker_id;
                match state.ledger.worker_registered(worker_id, request.address, link.id(), now) {
                    Ok(effects) => {
                        if !state.fence.is_open() {
                            let _ = link.send_event(Event::ServeCalls(ServeCallsEvent { open: false }));
                        }
                        state.worker_links.insert(worker_id, link);
                        let _ = reply.send(Ok(state.ledger.node_id()));
                        apply(state, effects);
                    }
                    Err(refused) => {
                        let code = match refused {
                            RegisterError::Unknown(_) => ErrorCode::NotFound,
                            RegisterError::AlreadyRegistered(_) => ErrorCode::InvalidArgument,
                        };
                        let _ = reply.send(Err(WireError::new(code, refused.to_string())));
                    }
                }
            }
            RayletMsg::EnvReady(worker_id, result) => env_ready(state, worker_id, result),
            RayletMsg::JobRuntimeEnv(env) => eager_install(state, *env),
            RayletMsg::WorkerExited(worker_id, status) => {
                state.worker_links.remove(&worker_id);
                if let Some(key) = state.worker_envs.remove(&worker_id) {
                    agent(state, AgentMsg::Release(key));
                }
                let _ = state.store.cast(StoreMsg::OwnerGone(worker_id));
                worker_exited(state, worker_id, &status);
            }
            RayletMsg::WorkerBlocked(worker_id, blocked, from, reply) => {
                if let Some(reply) = refused(state, worker_id, WorkerAct::Block, from, reply) {
                    let _ = reply.send(Ok(()));
                    let effects = state.ledger.worker_blocked(worker_id, blocked, now);
                    apply(state, effects);
                }
            }
            RayletMsg::KillWorker(worker_id, reason, from, reply) => {
                if let Some(reply) = refused(state, worker_id, WorkerAct::Kill, from, reply) {
                    let _ = reply.send(Ok(()));
                    let effects = state.ledger.kill_worker(worker_id, &reason);
                    apply(state, effects);
                }
            }
            RayletMsg::JobFinished(job_id) => {
                let _ = state.store.cast(StoreMsg::JobFinished(job_id));
                agent(state, AgentMsg::JobFinished(job_id));
                let effects = state.ledger.job_finished(job_id, now);
                apply(state, effects);
            }
            RayletMsg::WorkerAddresses(reply) => {
                let mut addresses: Vec<String> =
                    state.ledger.workers().filter_map(|(_, worker)| worker.address.clone()).collect();
                addresses.extend(state.drivers.values().map(|(_, address)| address.clone()));
                let _ = reply.send(addresses);
            }
            RayletMsg::PrepareBundles(request, reply) => {
                let outcome = state.ledger.prepare_bundles(request, now);
                answer_then_apply(state, reply, outcome);
            }
            RayletMsg::CommitBundles(pg_id, reply) => {
                let outcome = state.ledger.commit_bundles(pg_id, now);
                answer_then_apply(state, reply, outcome);
            }
            RayletMsg::CancelBundles(pg_id, reply) => {
                let effects = state.ledger.cancel_bundles(pg_id, now);
                let _ = reply.send(());
                apply(state, effects);
            }
            RayletMsg::PlacementGroupRemoved(pg_id) => {
                let effects = state.ledger.placement_group_removed(pg_id, now);
                apply(state, effects);
            }
            RayletMsg::WorkerOwnership(worker_id, owns) => state.ledger.set_owns_objects(worker_id, owns),
            RayletMsg::DriverStarted(link, worker_id, address) => {
                state.drivers.insert(link, (worker_id, address));
            }
            RayletMsg::GetStats(reply) => {
                let view = state.ledger.view();
                let _ = reply.send(GetNodeStatsReply {
                    node_id: state.identity.get(),
                    resources_total: state.ledger.resources().total().clone(),
                    resources_available: state.ledger.resources().available().clone(),
                    cluster_view_version: view.map_or(0, |view| view.version),
                    cluster_view_nodes: view.map_or(0, |view| view.nodes.len()),
                });
            }
        }
        Ok(())
    }
}

/// Answers the GCS with the outcome of a bundle step, then carries out its effects.
fn answer_then_apply(
    state: &mut RayletState,
    reply: RpcReplyPort<Result<(), WireError>>,
    outcome: Result<Vec<Effect>, WireError>,
) {
    match outcome {
        Ok(effects) => {
            let _ = reply.send(Ok(()));
            apply(state, effects);
        }
        Err(error) => {
            let _ = reply.send(Err(error));
        }
    }
}

/// Reports resources and demand to the GCS when they changed.
/// Who sent a request about a worker: the link, and whether it is the GCS's.
#[derive(Debug, Clone, Copy)]
pub struct Requester {
    /// The link it came on.
    pub link: LinkId,
    /// True on the node's link to the GCS (which may act on any worker).
    pub gcs: bool,
}

/// Answers a refused act with `PermissionDenied` and returns `None`; hands the
/// reply port back when `from` may do `act` to `worker_id`.
fn refused(
    state: &RayletState,
    worker_id: WorkerId,
    act: WorkerAct,
    from: Requester,
    reply: RpcReplyPort<Result<(), WireError>>,
) -> Option<RpcReplyPort<Result<(), WireError>>> {
    if from.gcs {
        return Some(reply);
    }
    match state.ledger.permits(worker_id, act, from.link) {
        Ok(()) => Some(reply),
        Err(rule) => {
            warn!(%worker_id, %rule, "refused");
            let _ = reply.send(Err(WireError::new(ErrorCode::PermissionDenied, rule)));
            None
        }
    }
}

/// Carries out the ledger's effects (and those they lead to), then ends the
/// requests whose callers stopped waiting.
fn apply(state: &mut RayletState, effects: Vec<Effect>) {
    let mut queue: VecDeque<Effect> = effects.into();
    loop {
        while let Some(effect) = queue.pop_front() {
            queue.extend(apply_one(state, effect));
        }
        let abandoned: Vec<RequestId> =
            state.replies.iter().filter(|(_, waiting)| waiting.reply.is_closed()).map(|(id, _)| *id).collect();
        if abandoned.is_empty() {
            return;
        }
        for request in abandoned {
            state.replies.remove(&request);
            queue.extend(state.ledger.abandon(request, Instant::now()));
        }
    }
}

/// Carries out one effect; returns what the ledger says after hearing how it went.
fn apply_one(state: &mut RayletState, effect: Effect) -> Vec<Effect> {
    let outcome = |name: &'static str| metrics::counter!("manta_lease_outcomes_total", "Outcome" => name).increment(1);
    match effect {
        Effect::StartWorker { worker_id, launch } => return prepare(state, worker_id, *launch),
        Effect::Grant { request, worker, waited } => {
            let worker_id = worker.worker_id;
            let granted = LeaseOutcome::Granted { worker };
            let delivered =
                state.replies.remove(&request).is_some_and(|waiting| waiting.reply.send(Ok(granted)).is_ok());
            if !delivered {
                // The caller stopped waiting: the worker goes back to the pool.
                return state.ledger.lease_returned(worker_id, Instant::now());
            }
            outcome("granted");
            metrics::histogram!("manta_scheduler_latency_seconds").record(waited.as_secs_f64());
        }
        Effect::Reschedule { request, node_id, address } => {
            outcome("reschedule");
            if let Some(waiting) = state.replies.remove(&request) {
                let _ = waiting.reply.send(Ok(LeaseOutcome::Reschedule { node_id, node_address: address }));
            }
        }
        Effect::Cancel { request, reason, cause } => {
            outcome("canceled");
            if let Some(waiting) = state.replies.remove(&request) {
                let _ = waiting.reply.send(Ok(LeaseOutcome::Canceled { reason, cause }));
            }
        }
        Effect::Warn { request, message } => {
            warn!(%message, "infeasible lease request");
            if let Some(waiting) = state.replies.get(&request) {
                let _ = waiting.caller.send_event(Event::Warning(WarningEvent { message }));
            }
        }
        Effect::KillWorker { worker_id, reason } => {
            if let Some(preparing) = state.preparing.get_mut(&worker_id) {
                // No process yet: it ends now; its environment is released when the answer comes.
                preparing.ended = true;
                return state.ledger.worker_exited(worker_id, &reason, Instant::now()).1;
            }
            state.launcher.kill(worker_id, &reason)
        }
        Effect::NeedWholeView => {
            warn!("a cluster view delta did not fit the view held; asking the GCS for the whole view");
            let gcs = state.gcs.clone();
            tokio::spawn(async move {
                if let Err(error) = gcs.subscribe(vec![Channel::ClusterView]).await {
                    warn!(%error, "could not ask the GCS for the whole cluster view");
                }
            });
        }
    }
    Vec::new()
}

/// The node's resources (`manta_resources` by `Name` and `State`), workers and queued leases.
fn record_gauges(state: &RayletState) {
    let resources = state.ledger.resources();
    for (name, total) in resources.total().iter() {
        let available = resources.available().get(name);
        let used = total.saturating_sub(available);
        let name = name.to_string();
        metrics::gauge!("manta_resources", "Name" => name.clone(), "State" => "AVAILABLE").set(available.as_f64());
        metrics::gauge!("manta_resources", "Name" => name, "State" => "USED").set(used.as_f64());
    }
    metrics::gauge!("manta_workers", "Component" => "raylet").set(state.ledger.workers().count() as f64);
    metrics::gauge!("manta_pending_leases", "Component" => "raylet").set(state.ledger.pending_count() as f64);
}

fn worker_exited(state: &mut RayletState, worker_id: WorkerId, status: &str) {
    let pid = state.launcher.exited(worker_id);
    let (exited, effects) = state.ledger.worker_exited(worker_id, status, Instant::now());
    if let Some(exited) = exited {
        info!(%worker_id, ?pid, %status, "worker exited");
        if let Some(actor_id) = exited.actor
            && !exited.on_purpose
        {
            // The GCS restarts the actor elsewhere when it has restarts left.
            let reason = format!("its worker process exited ({status})");
            let event = ActorWorkerDiedEvent { actor_id, worker_id, reason };
            let _ = state.gcs.peer().send_event(Event::ActorWorkerDied(event));
        }
    }
    apply(state, effects);
}
