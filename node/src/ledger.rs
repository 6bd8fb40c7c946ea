//! [`LeaseLedger`]: the raylet's leases, workers, resources and placement-group
//! bundles as one pure state machine. Each event (a lease request, a worker
//! registering or exiting, a lease returned, a worker blocked, a bundle
//! prepared...) updates the ledger and returns [`Effect`]s: start a worker,
//! grant, send the caller elsewhere, cancel, warn, kill. The `Raylet` actor
//! carries them out (processes through a `WorkerLauncher`, replies through the
//! callers' ports) and reports back what happened as further events.
//!
//! Nothing here does I/O, reads a clock or spawns: times come in with the
//! events, so the property tests (`ledger/tests.rs`) can drive random event
//! sequences and check that resources add up, no worker is granted twice, and
//! every request ends in exactly one outcome.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use manta_proto::gcs::ClusterViewEvent;
use manta_proto::net::LinkId;
use manta_proto::resources::{ResourceSet, names};
use manta_proto::task::{CancelCause, RequestWorkerLeaseRequest, WorkerAddress};
use manta_proto::{ActorId, JobId, NodeId, PlacementGroupId, WorkerId};

use crate::gpus::{GpuAllocator, GpuGrant};
use crate::leases::PolicyState;
use crate::scheduling::PolicyRng;

mod bundles;
mod gcs;
mod pass;
pub mod pool;
mod starting;
mod workers;

#[cfg(test)]
mod tests;

pub use pool::ResourcePool;
pub use starting::{LaunchSpec, PoolKey, pool_key};
pub use workers::WorkerAct;

/// A lease request's id in the ledger (given by [`LeaseLedger::request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// What the raylet must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Start a worker process; report [`LeaseLedger::worker_registered`],
    /// [`LeaseLedger::start_failed`] or [`LeaseLedger::worker_exited`] later.
    StartWorker {
        /// Its id (given to the process).
        worker_id: WorkerId,
        /// How to start it.
        launch: Box<LaunchSpec>,
    },
    /// Answer the request with this worker. If the caller is gone, report
    /// [`LeaseLedger::lease_returned`].
    Grant {
        /// The request.
        request: RequestId,
        /// The worker.
        worker: WorkerAddress,
        /// How long the request waited.
        waited: Duration,
    },
    /// Answer the request: ask that node instead.
    Reschedule {
        /// The request.
        request: RequestId,
        /// The node.
        node_id: NodeId,
        /// Its address.
        address: String,
    },
    /// Answer the request: it cannot be served.
    Cancel {
        /// The request.
        request: RequestId,
        /// Why, for the caller.
        reason: String,
        /// What kind of refusal (a failed runtime env setup is not retried).
        cause: CancelCause,
    },
    /// Tell the request's caller (once per caller and shape) that it waits.
    Warn {
        /// The request.
        request: RequestId,
        /// The warning.
        message: String,
    },
    /// End a worker process; report [`LeaseLedger::worker_exited`] when it is gone.
    KillWorker {
        /// The worker.
        worker_id: WorkerId,
        /// Why, for the log.
        reason: String,
    },
    /// A cluster view delta did not fit the view held: subscribe again (it comes whole).
    NeedWholeView,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    /// Its runtime environment is being set up (no process yet). The start
    /// timeout does not run: the setup has its own (`setup_timeout_seconds`).
    Preparing {
        /// Since when.
        since: Instant,
    },
    /// Started, not registered yet.
    Starting {
        /// Since when.
        since: Instant,
    },
    /// Registered and free.
    Idle {
        /// Since when.
        since: Instant,
    },
    /// Leased to a caller.
    Leased(Lease),
}

/// What a leased worker holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The link of the caller holding it.
    pub caller: LinkId,
    /// The resources of the request.
    pub resources: ResourceSet,
    /// Part of them lent back to the node while the worker is blocked in `get`.
    pub lent: ResourceSet,
    /// GPU devices it holds.
    pub gpus: GpuGrant,
}

/// One worker process, as the ledger knows it.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    /// Its job.
    pub job_id: JobId,
    /// Which requests it may serve.
    pub key: PoolKey,
    /// Its listener, once registered.
    pub address: Option<String>,
    /// Where it is in its life.
    pub state: WorkerState,
    /// Set for a worker dedicated to an actor.
    pub actor: Option<ActorId>,
    /// The actor survives its job.
    pub detached: bool,
    /// It owns objects someone still references: not ended when idle, as in Ray.
    pub owns_objects: bool,
    /// The node ended it on purpose (its actor is not restarted).
    pub ending: bool,
    /// The link it registered on (its own link to this node).
    pub link: Option<LinkId>,
}

/// What the raylet learns when a worker exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitedWorker {
    /// The actor it hosted.
    pub actor: Option<ActorId>,
    /// True when the node ended it (a kill, its job ending, its caller gone).
    pub on_purpose: bool,
}

/// Refusals of [`LeaseLedger::worker_registered`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The node did not start this worker (or it already exited).
    #[error("worker {0} was not started by this node")]
    Unknown(WorkerId),
    /// It registered before: a worker registers once.
    #[error("worker {0} has already registered")]
    AlreadyRegistered(WorkerId),
}

/// A request waiting for a decision, resources, or its worker to start.
#[derive(Debug)]
struct PendingRequest {
    id: RequestId,
    request: RequestWorkerLeaseRequest,
    caller: LinkId,
    arrived: Instant,
    /// No node of the cluster can run it (it waits for one that can).
    infeasible: bool,
    /// The worker started for it; the request's resources and GPUs are reserved meanwhile.
    starting: Option<(WorkerId, GpuGrant)>,
}

/// Placement group bundles on this node.
#[derive(Debug, Default)]
struct Bundles {
    /// Locked, not yet committed: (index, resources).
    prepared: HashMap<PlacementGroupId, Vec<(u32, ResourceSet)>>,
    /// Committed: offered as bundle resources.
    committed: HashMap<PlacementGroupId, Vec<(u32, ResourceSet)>>,
    /// Groups removed in the cluster.
    removed: HashSet<PlacementGroupId>,
}

/// Limits of the ledger.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Workers started at once, at most.
    pub max_concurrent_starts: usize,
    /// Idle workers are ended after this.
    pub idle_timeout: Duration,
    /// A started worker that has not registered after this is ended (Ray's
    /// `worker_register_timeout_seconds`, 60 s).
    pub start_timeout: Duration,
    /// Worker processes on this node, at most (`--max-workers`); requests beyond
    /// it wait, and the longest-idle worker of another pool is ended to make room.
    pub max_workers: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_starts: 8,
            idle_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            max_workers: 128,
        }
    }
}

/// The raylet's leases and workers (see the module docs).
#[derive(Debug)]
pub struct LeaseLedger {
    config: LedgerConfig,
    node_id: NodeId,
    node_address: String,
    resources: ResourcePool,
    gpus: GpuAllocator,
    workers: HashMap<WorkerId, WorkerRecord>,
    pending: VecDeque<PendingRequest>,
    next_request: u64,
    bundles: Bundles,
    view: Option<ClusterViewEvent>,
    policy: PolicyState,
    /// (caller, shape) pairs already warned about an infeasible request.
    warned: HashSet<(LinkId, ResourceSet)>,
    /// The latest view marks this node draining (read once per view, not per decision).
    draining: bool,
}

impl LeaseLedger {
    /// A ledger for a node with `total` resources and `gpus` devices (their
    /// physical ids from the node's `CUDA_VISIBLE_DEVICES`, else `0..N`).
    pub fn new(
        config: LedgerConfig,
        node_id: NodeId,
        node_address: String,
        total: ResourceSet,
        gpus: GpuAllocator,
    ) -> Self {
        let seed = u64::from_be_bytes(node_id.as_bytes()[..8].try_into().expect("8 bytes"));
        Self {
            config,
            node_id,
            node_address,
            resources: ResourcePool::new(total),
            gpus,
            workers: HashMap::new(),
            pending: VecDeque::new(),
            next_request: 0,
            bundles: Bundles::default(),
            view: None,
            policy: PolicyState { spread_cursor: 0, rng: PolicyRng::new(seed) },
            warned: HashSet::new(),
            draining: false,
        }
    }

    // ---- events ----

    /// A caller on link `caller` asks for a worker.
    pub fn request(
        &mut self,
        request: RequestWorkerLeaseRequest,
        caller: LinkId,
        now: Instant,
    ) -> (RequestId, Vec<Effect>) {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        self.pending.push_back(PendingRequest { id, request, caller, arrived: now, infeasible: false, starting: None });
        (id, self.schedule(now))
    }

    /// The caller of `id` stopped waiting: the request ends without an answer.
    pub fn abandon(&mut self, id: RequestId, now: Instant) -> Vec<Effect> {
        if let Some(position) = self.pending.iter().position(|pending| pending.id == id) {
            let pending = self.pending.remove(position).expect("position is valid");
            self.unreserve(&pending);
        }
        self.schedule(now)
    }

    /// A worker announces itself at `address`.
    pub fn worker_registered(
        &mut self,
        worker_id: WorkerId,
        address: String,
        link: LinkId,
        now: Instant,
    ) -> Result<Vec<Effect>, RegisterError> {
        let worker = self.workers.get_mut(&worker_id).ok_or(RegisterError::Unknown(worker_id))?;
        if !matches!(worker.state, WorkerState::Starting { .. }) {
            return Err(RegisterError::AlreadyRegistered(worker_id));
        }
        worker.address = Some(address);
        worker.link = Some(link);
        worker.state = WorkerState::Idle { since: now };
        let mut effects = Vec::new();
        if let Some(position) = self.pending.iter().position(|pending| pending.starting_worker() == Some(worker_id)) {
            let pending = self.pending.remove(position).expect("position is valid");
            let gpus = pending.starting.clone().map(|(_, gpus)| gpus).unwrap_or_default();
            effects.push(self.lease_to(worker_id, pending, gpus, now));
        }
        effects.extend(self.schedule(now));
        Ok(effects)
    }

    /// A worker process exited with `status`. `None` when the ledger did not know it.
    pub fn worker_exited(
        &mut self,
        worker_id: WorkerId,
        status: &str,
        now: Instant,
    ) -> (Option<ExitedWorker>, Vec<Effect>) {
        let Some(worker) = self.workers.remove(&worker_id) else {
            return (None, Vec::new());
        };
        if let WorkerState::Leased(lease) = &worker.state {
            self.resources.release(&pool::difference(&lease.resources, &lease.lent));
            self.gpus.release(&lease.gpus);
        }
        let mut effects = Vec::new();
        if let Some(position) = self.pending.iter().position(|pending| pending.starting_worker() == Some(worker_id)) {
            let pending = self.pending.remove(position).expect("position is valid");
            self.unreserve(&pending);
            let reason = match &worker.state {
                WorkerState::Preparing { .. } => {
                    format!("the worker was ended while its runtime env was set up ({status})")
                }
                _ if worker.key.language == manta_proto::task::Language::Python => format!(
                    "the Python worker exited while starting ({status}); install the `manta` Python package \
                     (pip install ./python) for the node's interpreter (MANTA_PYTHON when the node started, else \
                     python3) or in the runtime env's pip list; its output is in the node's worker logs"
                ),
                _ => format!(
                    "the worker process exited while starting ({status}); does the program call manta::init() (or use #[manta::main]) first?"
                ),
            };
            effects.push(Effect::Cancel { request: pending.id, reason, cause: CancelCause::Other });
        }
        effects.extend(self.schedule(now));
        (Some(ExitedWorker { actor: worker.actor, on_purpose: worker.ending }), effects)
    }

    /// The caller gives a leased worker back (it stays, idle, for the next request).
    pub fn lease_returned(&mut self, worker_id: WorkerId, now: Instant) -> Vec<Effect> {
        if let Some(worker) = self.workers.get_mut(&worker_id)
            && let WorkerState::Leased(lease) = std::mem::replace(&mut worker.state, WorkerState::Idle { since: now })
        {
            self.resources.release(&pool::difference(&lease.resources, &lease.lent));
            self.gpus.release(&lease.gpus);
        }
        self.schedule(now)
    }

    /// A leased worker blocks in `get` (its CPU is lent to the node) or resumes
    /// (it takes back what is free of it).
    pub fn worker_blocked(&mut self, worker_id: WorkerId, blocked: bool, now: Instant) -> Vec<Effect> {
        let Some(WorkerRecord { state: WorkerState::Leased(lease), .. }) = self.workers.get_mut(&worker_id) else {
            return Vec::new();
        };
        if blocked && lease.lent.is_empty() {
            lease.lent = ResourceSet::new().with(names::CPU, lease.resources.get(names::CPU));
            self.resources.release(&lease.lent);
        } else if !blocked && !lease.lent.is_empty() {
            // What another lease took meanwhile stays lent: the worker runs over its share
            // until its lease ends, as in Ray.
            let taken = self.resources.acquire_up_to(&lease.lent);
            lease.lent = pool::difference(&lease.lent, &taken);
        }
        self.schedule(now)
    }

    /// Ends a worker (an actor kill).
    pub fn kill_worker(&mut self, worker_id: WorkerId, reason: &str) -> Vec<Effect> {
        self.end(|id, _| *id == worker_id, reason)
    }

    /// The caller on `link` went away: its leased workers end (their results have
    /// nowhere to go; detached actors excepted) and its requests are dropped.
    pub fn caller_gone(&mut self, link: LinkId, now: Instant) -> Vec<Effect> {
        let mut effects = self.end(
            |_, worker| !worker.detached && matches!(&worker.state, WorkerState::Leased(lease) if lease.caller == link),
            "the caller holding its lease went away",
        );
        let (gone, kept): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|pending| pending.caller == link);
        self.pending = kept;
        for pending in gone {
            self.unreserve(&pending);
            effects.push(Effect::Cancel {
                request: pending.id,
                reason: "the caller went away".into(),
                cause: CancelCause::Other,
            });
        }
        self.warned.retain(|(caller, _)| *caller != link);
        effects.extend(self.schedule(now));
        effects
    }

    /// A job ended: its workers end (detached actors excepted) and its requests
    /// still waiting for a decision are cancelled.
    pub fn job_finished(&mut self, job_id: JobId, now: Instant) -> Vec<Effect> {
        let mut effects = self.end(|_, worker| worker.job_id == job_id && !worker.detached, "its job finished");
        let (finished, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|pending| pending.request.job.job_id == job_id && pending.starting.is_none());
        self.pending = kept;
        for pending in finished {
            effects.push(Effect::Cancel {
                request: pending.id,
                reason: "the job finished".into(),
                cause: CancelCause::Other,
            });
        }
        effects.extend(self.schedule(now));
        effects
    }

    /// Ends idle workers past the idle timeout (unless they own referenced objects).
    pub fn reap_idle(&mut self, now: Instant) -> Vec<Effect> {
        let (timeout, start_timeout) = (self.config.idle_timeout, self.config.start_timeout);
        let mut effects = self.end(
            |_, worker| {
                !worker.owns_objects
                    && matches!(worker.state, WorkerState::Idle { since } if now.saturating_duration_since(since) > timeout)
            },
            "idle too long",
        );
        // Its exit then cancels the request it was started for, with this reason.
        effects.extend(self.end(
            |_, worker| {
                !worker.ending
                    && matches!(worker.state, WorkerState::Starting { since } if now.saturating_duration_since(since) > start_timeout)
            },
            &format!("it did not register within {start_timeout:?} of its start"),
        ));
        effects
    }

    /// A worker owns referenced objects (true) or no longer does.
    pub fn set_owns_objects(&mut self, worker_id: WorkerId, owns: bool) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.owns_objects = owns;
        }
    }

    /// The node was declared dead and rejoins as `node_id`: every worker ends
    /// (its actors may already run elsewhere).
    pub fn fenced(&mut self, node_id: NodeId) -> Vec<Effect> {
        self.node_id = node_id;
        self.draining = false;
        self.end(|_, _| true, "this node was declared dead; its work was moved elsewhere")
    }

    // ---- queries ----

    /// The node's id (it changes when the node is fenced).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's resources: total (with committed bundles) and free.
    pub fn resources(&self) -> &ResourcePool {
        &self.resources
    }

    /// A worker by id.
    pub fn worker(&self, worker_id: &WorkerId) -> Option<&WorkerRecord> {
        self.workers.get(worker_id)
    }

    /// Every worker.
    pub fn workers(&self) -> impl Iterator<Item = (&WorkerId, &WorkerRecord)> {
        self.workers.iter()
    }

    /// Requests waiting here.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Frees what a request reserved for its starting worker (the worker stays, and
    /// becomes idle when it registers).
    fn unreserve(&mut self, pending: &PendingRequest) {
        if let Some((_, gpus)) = &pending.starting {
            self.resources.release(&pending.request.resources);
            self.gpus.release(gpus);
        }
    }

    /// Marks the matching workers as ended on purpose and says to kill them.
    fn end(&mut self, matches: impl Fn(&WorkerId, &WorkerRecord) -> bool, reason: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (worker_id, worker) in self.workers.iter_mut() {
            if matches(worker_id, worker) {
                worker.ending = true;
                effects.push(Effect::KillWorker { worker_id: *worker_id, reason: reason.to_string() });
            }
        }
        effects
    }
}

impl PendingRequest {
    fn starting_worker(&self) -> Option<WorkerId> {
        self.starting.as_ref().map(|(worker_id, _)| *worker_id)
    }
}
