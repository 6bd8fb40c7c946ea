//! [`Raylet`]: the node's agent towards the cluster. It keeps the node
//! registered (re-registering after a reconnect, and under a new id when the
//! GCS has fenced the old one), reports resources, and holds the latest
//! cluster view pushed by the GCS. Leases and the worker pool join it later.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use manta_proto::gcs::{Channel, ClusterViewEvent, RegisterNodeRequest, ReportResourcesRequest, ResourceDemand};
use manta_proto::net::{CallError, PeerHandle};
use manta_proto::node::GetNodeStatsReply;
use manta_proto::placement::PrepareBundlesRequest;
use manta_proto::resources::{Quantity, ResourceSet, names};
use manta_proto::task::{ActorWorkerDiedEvent, LeaseOutcome, RegisterWorkerRequest, RequestWorkerLeaseRequest};
use manta_proto::{ErrorCode, JobId, NodeId, PlacementGroupId, WireError, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::gcs_client::GcsClient;
use crate::gpus::{GpuAllocator, GpuGrant};
use crate::leases::PolicyState;
use crate::object_store::StoreMsg;
use crate::scheduling::PolicyRng;
use crate::worker_pool::{WorkerPool, WorkerState};

mod bundles;
mod queue;

use bundles::BundleState;
use queue::{grant, pending_demand, schedule};

/// Workers started at once, at most.
const MAX_CONCURRENT_WORKER_STARTS: usize = 8;

/// The node's current id, shared by the raylet and the health-check responder.
#[derive(Clone, Debug)]
pub struct NodeIdentity(Arc<RwLock<NodeId>>);

impl NodeIdentity {
    /// Starts as `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self(Arc::new(RwLock::new(node_id)))
    }

    /// The current id.
    pub fn get(&self) -> NodeId {
        *self.0.read().expect("identity lock")
    }

    fn set(&self, node_id: NodeId) {
        *self.0.write().expect("identity lock") = node_id;
    }
}

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
    /// Timer: report resources if they changed.
    ReportTick,
    /// A cluster view pushed by the GCS.
    ClusterView(ClusterViewEvent),
    /// This node's own view.
    GetStats(RpcReplyPort<GetNodeStatsReply>),
    /// A caller (on link `u64`, reachable through the handle for warnings) asks for a worker.
    RequestLease(Box<RequestWorkerLeaseRequest>, u64, PeerHandle, RpcReplyPort<Result<LeaseOutcome, WireError>>),
    /// The link `u64` of a caller closed: its leases end (their workers are ended too,
    /// since their results have nowhere to go).
    CallerGone(u64),
    /// A caller gives a worker back.
    ReturnLease(WorkerId),
    /// A worker process announces itself.
    RegisterWorker(RegisterWorkerRequest, RpcReplyPort<Result<NodeId, WireError>>),
    /// A worker process exited, with its status.
    WorkerExited(WorkerId, String),
    /// A leased worker blocks in `get` (true) or resumes (false).
    WorkerBlocked(WorkerId, bool),
    /// End a worker (an actor kill).
    KillWorker(WorkerId, String),
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
    /// A driver on link `u64` listens at this address.
    DriverStarted(u64, WorkerId, String),
    /// Addresses of the registered workers and drivers (owners to ask for `manta list objects`).
    WorkerAddresses(RpcReplyPort<Vec<String>>),
}

/// A lease request waiting for resources or for its worker to start.
struct PendingLease {
    request: RequestWorkerLeaseRequest,
    /// The caller's link.
    caller: u64,
    reply: RpcReplyPort<Result<LeaseOutcome, WireError>>,
    /// The worker started for it; its resources are reserved meanwhile.
    worker: Option<WorkerId>,
    /// GPU devices reserved for it.
    gpus: GpuGrant,
    /// No node of the cluster can run it (it waits for one that can).
    infeasible: bool,
    /// The caller's link, for warnings.
    caller_peer: PeerHandle,
    /// When it arrived (for `manta_scheduler_latency_seconds`).
    arrived: Instant,
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
    /// The node's object store (told when owners exit).
    pub store: ActorRef<StoreMsg>,
    /// When worker log files rotate.
    pub log_rotation: crate::worker_logs::Rotation,
}

/// State of the [`Raylet`].
pub struct RayletState {
    identity: NodeIdentity,
    gcs: GcsClient,
    registration: RegisterNodeRequest,
    available: ResourceSet,
    last_reported: Option<ResourceSet>,
    view: Option<ClusterViewEvent>,
    ticker: JoinHandle<()>,
    pool: WorkerPool,
    pending: VecDeque<PendingLease>,
    policy: PolicyState,
    node_address: String,
    gpus: GpuAllocator,
    store: ActorRef<StoreMsg>,
    /// Drivers on this node, by link: their worker id and listener.
    drivers: std::collections::HashMap<u64, (WorkerId, String)>,
    /// The demand last reported.
    last_demand: Vec<ResourceDemand>,
    /// (caller link, shape) pairs already warned about an infeasible request.
    warned: std::collections::HashSet<(u64, String)>,
    /// Placement group bundles on this node.
    bundles: BundleState,
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
        let seed = u64::from_be_bytes(args.identity.get().as_bytes()[..8].try_into().expect("8 bytes"));
        let policy = PolicyState { spread_cursor: 0, rng: PolicyRng::new(seed) };
        let node_address = args.node_address.clone();
        let mut pool = WorkerPool::new(args.log_dir, args.identity.get(), args.node_address, args.node_ip, args.token);
        pool.log_rotation = args.log_rotation;
        let gpu_count = (args.registration.resources_total.get(names::GPU).units() / Quantity::SCALE) as usize;
        let visible = std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .map(|text| text.split(',').map(|id| id.trim().to_string()).filter(|id| !id.is_empty()).collect());
        Ok(RayletState {
            bundles: BundleState::default(),
            last_demand: Vec::new(),
            warned: Default::default(),
            drivers: Default::default(),
            store: args.store,
            gpus: GpuAllocator::new(gpu_count, visible),
            policy,
            node_address,
            pool,
            pending: VecDeque::new(),
            available: args.registration.resources_available.clone(),
            last_reported: Some(args.registration.resources_available.clone()),
            identity: args.identity,
            gcs: args.gcs,
            registration: args.registration,
            view: None,
            ticker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RayletMsg>,
        message: RayletMsg,
        state: &mut RayletState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RayletMsg::GcsReconnected => reregister(state, false).await,
            RayletMsg::GcsGone(timeout) => {
                error!(?timeout, "the GCS stayed unreachable for the reconnect timeout; stopping this node");
                return Err(format!("the GCS was unreachable for {timeout:?} (--gcs-reconnect-timeout)").into());
            }
            RayletMsg::Fenced => reregister(state, true).await,
            RayletMsg::ReportTick => {
                state.pool.reap_idle();
                record_gauges(state);
                let demand = pending_demand(&state.pending);
                if state.last_reported.as_ref() == Some(&state.available) && state.last_demand == demand {
                    return Ok(());
                }
                state.last_reported = Some(state.available.clone());
                state.last_demand = demand.clone();
                let report = ReportResourcesRequest {
                    node_id: state.identity.get(),
                    resources_total: state.registration.resources_total.clone(),
                    resources_available: state.available.clone(),
                    pending_demand: demand,
                };
                let gcs = state.gcs.clone();
                tokio::spawn(async move {
                    match gcs.report_resources(report).await {
                        Err(error) if error.code() == ErrorCode::NodeFenced => {
                            let _ = myself.cast(RayletMsg::Fenced);
                        }
                        // The GCS does not know us (it restarted): register again; it decides on fencing.
                        Err(error) if error.code() == ErrorCode::NotFound => {
                            let _ = myself.cast(RayletMsg::GcsReconnected);
                        }
                        _ => {}
                    }
                });
            }
            RayletMsg::ClusterView(view) => {
                if state.view.as_ref().is_none_or(|current| view.version > current.version) {
                    state.view = Some(view);
                    schedule(&myself, state);
                }
            }
            RayletMsg::RequestLease(request, caller, caller_peer, reply) => {
                state.pending.push_back(PendingLease {
                    request: *request,
                    caller,
                    reply,
                    worker: None,
                    gpus: GpuGrant::default(),
                    infeasible: false,
                    caller_peer,
                    arrived: Instant::now(),
                });
                schedule(&myself, state);
            }
            RayletMsg::CallerGone(caller) => {
                if let Some((driver, _)) = state.drivers.remove(&caller) {
                    // The driver owned its objects: they go with it.
                    let _ = state.store.cast(StoreMsg::OwnerGone(driver));
                }
                state.pool.kill_leased_by(caller);
                let pending = std::mem::take(&mut state.pending);
                for lease in pending {
                    if lease.caller != caller {
                        state.pending.push_back(lease);
                    } else if lease.worker.is_some() {
                        add_into(&mut state.available, &lease.request.resources);
                        state.gpus.release(&lease.gpus);
                    }
                }
                schedule(&myself, state);
            }
            RayletMsg::ReturnLease(worker_id) => {
                if let Some(worker) = state.pool.get_mut(&worker_id)
                    && let WorkerState::Leased { resources, lent, gpus, .. } = &worker.state
                {
                    let held = subtract(resources, lent);
                    let gpus = gpus.clone();
                    worker.state = WorkerState::Idle { since: Instant::now() };
                    add_into(&mut state.available, &held);
                    state.gpus.release(&gpus);
                }
                schedule(&myself, state);
            }
            RayletMsg::RegisterWorker(request, reply) => {
                register_worker(state, request, reply);
                schedule(&myself, state);
            }
            RayletMsg::WorkerExited(worker_id, status) => {
                let _ = state.store.cast(StoreMsg::OwnerGone(worker_id));
                worker_exited(state, worker_id, &status);
                schedule(&myself, state);
            }
            RayletMsg::WorkerBlocked(worker_id, blocked) => {
                set_blocked(state, worker_id, blocked);
                schedule(&myself, state);
            }
            RayletMsg::KillWorker(worker_id, reason) => state.pool.kill(&worker_id, &reason),
            RayletMsg::JobFinished(job_id) => {
                let _ = state.store.cast(StoreMsg::JobFinished(job_id));
                state.pool.kill_job(job_id);
                let pending = std::mem::take(&mut state.pending);
                for lease in pending {
                    if lease.request.job.job_id == job_id && lease.worker.is_none() {
                        let _ = lease.reply.send(Ok(LeaseOutcome::Canceled { reason: "the job finished".into() }));
                    } else {
                        state.pending.push_back(lease);
                    }
                }
            }
            RayletMsg::WorkerAddresses(reply) => {
                let mut addresses = state.pool.addresses();
                addresses.extend(state.drivers.values().map(|(_, address)| address.clone()));
                let _ = reply.send(addresses);
            }
            RayletMsg::PrepareBundles(request, reply) => {
                let result = bundles::prepare(state, request);
                if result == Ok(true) {
                    schedule(&myself, state);
                }
                let _ = reply.send(result.map(|_| ()));
            }
            RayletMsg::CommitBundles(pg_id, reply) => {
                let result = bundles::commit(state, pg_id);
                let _ = reply.send(result);
                schedule(&myself, state);
            }
            RayletMsg::CancelBundles(pg_id, reply) => {
                bundles::cancel(state, pg_id);
                let _ = reply.send(());
                schedule(&myself, state);
            }
            RayletMsg::PlacementGroupRemoved(pg_id) => {
                state.bundles.removed.insert(pg_id);
                schedule(&myself, state);
            }
            RayletMsg::WorkerOwnership(worker_id, owns) => {
                if let Some(worker) = state.pool.get_mut(&worker_id) {
                    worker.owns_objects = owns;
                }
            }
            RayletMsg::DriverStarted(link, worker_id, address) => {
                state.drivers.insert(link, (worker_id, address));
            }
            RayletMsg::GetStats(reply) => {
                let _ = reply.send(GetNodeStatsReply {
                    node_id: state.identity.get(),
                    resources_total: state.registration.resources_total.clone(),
                    resources_available: state.available.clone(),
                    cluster_view_version: state.view.as_ref().map_or(0, |view| view.version),
                    cluster_view_nodes: state.view.as_ref().map_or(0, |view| view.nodes.len()),
                });
            }
        }
        Ok(())
    }
}

fn register_worker(
    state: &mut RayletState,
    request: RegisterWorkerRequest,
    reply: RpcReplyPort<Result<NodeId, WireError>>,
) {
    let Some(worker) = state.pool.get_mut(&request.worker_id) else {
        let _ = reply.send(Err(WireError::new(
            ErrorCode::NotFound,
            format!("worker {} was not started by this node", request.worker_id),
        )));
        return;
    };
    worker.address = Some(request.address);
    worker.state = WorkerState::Idle { since: Instant::now() };
    let _ = reply.send(Ok(state.identity.get()));
    let position = state.pending.iter().position(|lease| lease.worker == Some(request.worker_id));
    if let Some(position) = position {
        let lease = state.pending.remove(position).expect("position is valid");
        grant(state, request.worker_id, lease);
    }
}

/// The node's resources (`manta_resources` by `Name` and `State`), workers and queued leases.
fn record_gauges(state: &RayletState) {
    for (name, total) in state.registration.resources_total.iter() {
        let available = state.available.get(name);
        let used = total.saturating_sub(available);
        let name = name.to_string();
        metrics::gauge!("manta_resources", "Name" => name.clone(), "State" => "AVAILABLE").set(available.as_f64());
        metrics::gauge!("manta_resources", "Name" => name, "State" => "USED").set(used.as_f64());
    }
    metrics::gauge!("manta_workers", "Component" => "raylet").set(state.pool.len() as f64);
    metrics::gauge!("manta_pending_leases", "Component" => "raylet").set(state.pending.len() as f64);
}

fn worker_exited(state: &mut RayletState, worker_id: WorkerId, status: &str) {
    let Some(worker) = state.pool.remove(&worker_id) else {
        return;
    };
    info!(%worker_id, pid = worker.pid, %status, "worker exited");
    let on_purpose = state.pool.take_ended(&worker_id);
    if let Some(actor_id) = worker.actor
        && !on_purpose
    {
        // The GCS restarts the actor elsewhere when it has restarts left.
        let event =
            ActorWorkerDiedEvent { actor_id, worker_id, reason: format!("its worker process exited ({status})") };
        let _ = state.gcs.peer().send_event(manta_proto::message::Event::ActorWorkerDied(event));
    }
    if let WorkerState::Leased { resources, lent, gpus, .. } = &worker.state {
        add_into(&mut state.available, &subtract(resources, lent));
        state.gpus.release(gpus);
        // Bundle resources of a removed group are gone: do not give them back.
        let total = &state.registration.resources_total;
        state.available.retain(|name| total.get(name) > Quantity::ZERO);
    }
    if let Some(position) = state.pending.iter().position(|lease| lease.worker == Some(worker_id)) {
        let lease = state.pending.remove(position).expect("position is valid");
        add_into(&mut state.available, &lease.request.resources);
        state.gpus.release(&lease.gpus);
        let reason = format!(
            "the worker process exited while starting ({status}); is {} built with #[manta::main] or manta::init() first?",
            lease.request.job.executable
        );
        let _ = lease.reply.send(Ok(LeaseOutcome::Canceled { reason }));
    }
}

fn set_blocked(state: &mut RayletState, worker_id: WorkerId, blocked: bool) {
    let Some(worker) = state.pool.get_mut(&worker_id) else {
        return;
    };
    let WorkerState::Leased { resources, lent, .. } = &mut worker.state else {
        return;
    };
    if blocked && lent.is_empty() {
        let cpu = resources.get(names::CPU);
        *lent = ResourceSet::new().with(names::CPU, cpu);
        add_into(&mut state.available, lent);
    } else if !blocked && !lent.is_empty() {
        subtract_from(&mut state.available, lent);
        *lent = ResourceSet::new();
    }
}

fn add_into(target: &mut ResourceSet, amount: &ResourceSet) {
    for (name, quantity) in amount.iter() {
        target.set(name, target.get(name).saturating_add(quantity));
    }
}

fn subtract_from(target: &mut ResourceSet, amount: &ResourceSet) {
    for (name, quantity) in amount.iter() {
        target.set(name, target.get(name).saturating_sub(quantity));
    }
}

fn subtract(from: &ResourceSet, amount: &ResourceSet) -> ResourceSet {
    let mut result = from.clone();
    subtract_from(&mut result, amount);
    result
}

/// Registers again after a reconnect. A fenced node takes a fresh id, so no
/// work ever runs under an identity the cluster has declared dead.
async fn reregister(state: &mut RayletState, known_fenced: bool) {
    let mut fenced = known_fenced;
    for _attempt in 0..2 {
        if fenced {
            let old = state.identity.get();
            // Its actors may already run elsewhere: end them all, so none runs twice.
            state.pool.kill_all("this node was declared dead; its work was moved elsewhere");
            let new = NodeId::random();
            state.identity.set(new);
            warn!(%old, %new, "the GCS declared this node dead; rejoining as a new node");
            state.pool.set_node_id(new);
        }
        let mut request = state.registration.clone();
        request.node_id = state.identity.get();
        request.resources_available = state.available.clone();
        match state.gcs.register_node(request).await {
            Ok(reply) => {
                info!(node_id = %reply.node.node_id, reattached = reply.reattached, "registered with the GCS");
                state.last_reported = Some(state.available.clone());
                if let Err(error) = state.gcs.subscribe(RAYLET_CHANNELS.to_vec()).await {
                    warn!(%error, "could not resubscribe to the GCS");
                }
                return;
            }
            Err(error) if error.code() == ErrorCode::NodeFenced => fenced = true,
            Err(error) => {
                log_registration_error(&error);
                return;
            }
        }
    }
}

fn log_registration_error(error: &CallError) {
    warn!(%error, "could not register with the GCS; will retry on the next reconnect");
}
