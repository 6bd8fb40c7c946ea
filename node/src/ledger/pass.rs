//! The ledger's scheduling pass: each waiting request, in order, is granted
//! here (an idle worker, or a new one), sent on, left waiting, or cancelled,
//! with the scheduling policies over a dense view built once per pass.

use std::collections::VecDeque;
use std::time::Instant;

use manta_proto::resources::{ResourceSet, names};
use manta_proto::task::{CancelCause, SchedulingStrategy, WorkerAddress};
use manta_proto::{WorkerId, worker_env};

use super::{
    Effect, LaunchSpec, Lease, LeaseLedger, PendingRequest, PoolKey, WorkerRecord, WorkerState, pool, pool_key,
};
use crate::gpus::{GpuAllocator, GpuGrant};
use crate::leases::{LeaseDecision, decide_in};
use crate::scheduling::NodeView;
use crate::scheduling::dense::DenseView;

impl LeaseLedger {
    /// Serves waiting requests in order, as far as resources allow.
    pub(super) fn schedule(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut waiting = VecDeque::new();
        // The nodes and their dense view are built once per pass; only the local
        // node's free resources change between its decisions.
        let mut cluster: Option<(Vec<NodeView>, DenseView)> = None;
        while let Some(mut pending) = self.pending.pop_front() {
            if pending.starting.is_some() {
                waiting.push_back(pending);
                continue;
            }
            if let SchedulingStrategy::PlacementGroup { pg_id, .. } = &pending.request.strategy
                && self.bundles.removed.contains(pg_id)
            {
                let reason = format!("placement group {pg_id} was removed");
                effects.push(Effect::Cancel { request: pending.id, reason, cause: CancelCause::Other });
                continue;
            }
            if let Err(reason) = GpuAllocator::validate(pending.request.resources.get(names::GPU)) {
                effects.push(Effect::Cancel { request: pending.id, reason, cause: CancelCause::Other });
                continue;
            }
            let (nodes, view) = match &mut cluster {
                Some(built) => built,
                None => cluster.insert(self.cluster_nodes()),
            };
            nodes[0].available = self.local_available();
            view.update_available(0, &nodes[0].available);
            let decision = decide_in(
                pending.request.placement_resources(),
                &pending.request.strategy,
                nodes,
                view,
                pending.request.allow_spill,
                &mut self.policy,
            );
            pending.infeasible = decision == LeaseDecision::Infeasible;
            match decision {
                LeaseDecision::GrantHere => {
                    let (effect, still_pending) = self.grant_here(pending, now);
                    effects.extend(effect);
                    waiting.extend(still_pending);
                }
                LeaseDecision::Reschedule { node_id, address } => {
                    // Count the work sent there until that node's next report says otherwise,
                    // so a burst of requests spreads instead of piling onto one node.
                    let amount = &pending.request.resources;
                    if let Some(node) =
                        self.view.iter_mut().flat_map(|view| view.nodes.iter_mut()).find(|node| node.node_id == node_id)
                    {
                        node.available = pool::difference(&node.available, amount);
                    }
                    if let Some((nodes, view)) = cluster.as_mut()
                        && let Some(index) = nodes.iter().position(|node| node.node_id == node_id)
                    {
                        nodes[index].available = pool::difference(&nodes[index].available, amount);
                        view.update_available(index, &nodes[index].available);
                    }
                    effects.push(Effect::Reschedule { request: pending.id, node_id, address });
                }
                LeaseDecision::Wait => waiting.push_back(pending),
                LeaseDecision::Unschedulable(reason) => {
                    effects.push(Effect::Cancel { request: pending.id, reason, cause: CancelCause::Other })
                }
                LeaseDecision::Infeasible => {
                    // As in Ray: wait for a node that can run it (an autoscaler may add one),
                    // reported as demand, with one warning per caller and shape.
                    let shape = pending.request.placement_resources().clone();
                    if self.warned.insert((pending.caller, shape.clone())) {
                        let message = format!(
                            "no node in the cluster can run a task or actor asking for {:?}; it waits until one can \
                             (add a node with `manta start --resources ...`, or ask for less). Pending requests show \
                             as pending_demand in `manta status --format json`.",
                            shape.to_f64_map()
                        );
                        effects.push(Effect::Warn { request: pending.id, message });
                    }
                    waiting.push_back(pending);
                }
            }
        }
        self.pending = waiting;
        effects
    }

    /// Serves a request this node decided to take: with an idle worker of its pool
    /// (a grant), or a new worker (started, the request waiting for it with its
    /// resources reserved), or not yet (no whole GPU free, or too many workers
    /// starting: the request waits).
    fn grant_here(&mut self, mut pending: PendingRequest, now: Instant) -> (Option<Effect>, Option<PendingRequest>) {
        let Some(gpus) = self.gpus.allocate(pending.request.resources.get(names::GPU)) else {
            // Enough GPU in total, but split over devices: wait for a whole one.
            return (None, Some(pending));
        };
        let mut env_vars = std::collections::BTreeMap::new();
        if !gpus.slots.is_empty() {
            let visible = self.gpus.visible_devices(&gpus);
            env_vars.insert("CUDA_VISIBLE_DEVICES".into(), visible.clone());
            env_vars.insert(worker_env::GPU_IDS.into(), visible);
        }
        let key = pool_key(&pending.request, &env_vars);
        let idle = if pending.request.actor.is_none() { self.idle_worker(&key) } else { None };
        if let Some(worker_id) = idle {
            self.resources.acquire(&pending.request.resources);
            return (Some(self.lease_to(worker_id, pending, gpus, now)), None);
        }
        let starting =
            self.workers.values().filter(|worker| matches!(worker.state, WorkerState::Starting { .. })).count();
        if starting >= self.config.max_concurrent_starts {
            self.gpus.release(&gpus);
            return (None, Some(pending));
        }
        if self.workers.len() >= self.config.max_workers {
            // At the cap: the request waits; the longest-idle worker (of another pool,
            // or this one would have been used) ends to make room, one at a time.
            self.gpus.release(&gpus);
            let making_room = self.workers.values().any(|worker| worker.ending);
            let victim = self
                .workers
                .iter()
                .filter_map(|(id, worker)| match worker.state {
                    WorkerState::Idle { since } if !worker.owns_objects => Some((since, *id)),
                    _ => None,
                })
                .min();
            let effect = match (making_room, victim) {
                (false, Some((_, worker_id))) => {
                    let worker = self.workers.get_mut(&worker_id).expect("found above");
                    worker.ending = true;
                    let reason = format!("this node is at --max-workers {}: making room", self.config.max_workers);
                    Some(Effect::KillWorker { worker_id, reason })
                }
                _ => None,
            };
            return (effect, Some(pending));
        }
        self.resources.acquire(&pending.request.resources);
        let worker_id = WorkerId::random();
        let request = &pending.request;
        self.workers.insert(
            worker_id,
            WorkerRecord {
                job_id: request.job.job_id,
                key,
                address: None,
                state: WorkerState::Preparing { since: now },
                actor: request.actor,
                detached: request.detached,
                owns_objects: false,
                ending: false,
                link: None,
            },
        );
        let launch = LaunchSpec {
            job: request.job.clone(),
            language: request.language,
            runtime_env: request.runtime_env.clone(),
            env_vars,
            actor: request.actor,
            detached: request.detached,
        };
        pending.starting = Some((worker_id, gpus));
        (Some(Effect::StartWorker { worker_id, launch: Box::new(launch) }), Some(pending))
    }

    /// Leases a registered worker to a request whose resources are already taken.
    pub(super) fn lease_to(
        &mut self,
        worker_id: WorkerId,
        pending: PendingRequest,
        gpus: GpuGrant,
        now: Instant,
    ) -> Effect {
        let worker = self.workers.get_mut(&worker_id).expect("the worker being leased exists");
        let address = worker.address.clone().expect("a leased worker has registered");
        worker.state = WorkerState::Leased(Lease {
            caller: pending.caller,
            resources: pending.request.resources.clone(),
            lent: ResourceSet::new(),
            gpus,
        });
        Effect::Grant {
            request: pending.id,
            worker: WorkerAddress { worker_id, address, node_id: self.node_id },
            waited: now.saturating_duration_since(pending.arrived),
        }
    }

    /// An idle, registered, non-actor worker with this key.
    fn idle_worker(&self, key: &PoolKey) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, worker)| worker.actor.is_none() && !worker.ending && worker.key == *key)
            .find(|(_, worker)| matches!(worker.state, WorkerState::Idle { .. }))
            .map(|(worker_id, _)| *worker_id)
    }

    /// What this node offers new work: nothing while it drains.
    fn local_available(&self) -> ResourceSet {
        if self.draining { ResourceSet::new() } else { self.resources.available().clone() }
    }

    /// This node (first) and the others of the cluster view, with their dense view.
    fn cluster_nodes(&self) -> (Vec<NodeView>, DenseView) {
        let local = NodeView {
            node_id: self.node_id,
            address: self.node_address.clone(),
            total: self.resources.total().clone(),
            available: self.local_available(),
        };
        let mut nodes = vec![local];
        // A draining node takes no new work: it is about to be removed.
        let others = self
            .view
            .iter()
            .flat_map(|view| view.nodes.iter())
            .filter(|node| node.node_id != self.node_id && !node.draining);
        nodes.extend(others.map(|node| NodeView {
            node_id: node.node_id,
            address: node.address.clone(),
            total: node.total.clone(),
            available: node.available.clone(),
        }));
        let view = DenseView::build(&nodes);
        (nodes, view)
    }
}
