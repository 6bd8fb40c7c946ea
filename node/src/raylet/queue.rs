//! The raylet's lease queue: each pass decides, in order, where every waiting
//! request goes (grant here, send on, wait, or cancel) with the scheduling
//! policies over a dense view of the cluster built once per pass.

use std::collections::VecDeque;
use std::time::Instant;

use manta_proto::WorkerId;
use manta_proto::gcs::ResourceDemand;
use manta_proto::message::Event;
use manta_proto::node::WarningEvent;
use manta_proto::resources::{ResourceSet, names};
use manta_proto::task::{LeaseOutcome, SchedulingStrategy, WorkerAddress};
use ractor::ActorRef;
use tracing::warn;

use super::{MAX_CONCURRENT_WORKER_STARTS, PendingLease, RayletMsg, RayletState, add_into, subtract_from};
use crate::gpus::GpuAllocator;
use crate::leases::{LeaseDecision, decide_in};
use crate::scheduling::NodeView;
use crate::scheduling::dense::DenseView;
use crate::worker_pool::{WorkerState, env_key};

/// This node (first) and the others of the cluster view, with their dense view.
fn cluster_nodes(state: &RayletState) -> (Vec<NodeView>, DenseView) {
    let local = NodeView {
        node_id: state.identity.get(),
        address: state.node_address.clone(),
        total: state.registration.resources_total.clone(),
        available: state.available.clone(),
    };
    let mut nodes = vec![local];
    let others = state.view.iter().flat_map(|view| view.nodes.iter()).filter(|node| node.node_id != nodes[0].node_id);
    let others: Vec<NodeView> = others
        .map(|node| NodeView {
            node_id: node.node_id,
            address: node.address.clone(),
            total: node.total.clone(),
            available: node.available.clone(),
        })
        .collect();
    nodes.extend(others);
    let view = DenseView::build(&nodes);
    (nodes, view)
}

/// Serves queued lease requests in order, as far as resources allow.
pub(super) fn schedule(myself: &ActorRef<RayletMsg>, state: &mut RayletState) {
    let mut waiting = VecDeque::new();
    let mut cluster: Option<(Vec<NodeView>, DenseView)> = None;
    while let Some(mut lease) = state.pending.pop_front() {
        if lease.reply.is_closed() {
            // The caller gave up; free what was reserved for it.
            if lease.worker.is_some() {
                add_into(&mut state.available, &lease.request.resources);
                state.gpus.release(&lease.gpus);
            }
            continue;
        }
        if lease.worker.is_some() {
            waiting.push_back(lease);
            continue;
        }
        if let SchedulingStrategy::PlacementGroup { pg_id, .. } = &lease.request.strategy
            && state.bundles.removed.contains(pg_id)
        {
            let reason = format!("placement group {pg_id} was removed");
            metrics::counter!("manta_lease_outcomes_total", "Outcome" => "canceled").increment(1);
            let _ = lease.reply.send(Ok(LeaseOutcome::Canceled { reason }));
            continue;
        }
        if let Err(reason) = GpuAllocator::validate(lease.request.resources.get(names::GPU)) {
            metrics::counter!("manta_lease_outcomes_total", "Outcome" => "canceled").increment(1);
            let _ = lease.reply.send(Ok(LeaseOutcome::Canceled { reason }));
            continue;
        }
        // The nodes and their dense view are built once per pass; only the local
        // node's free resources change between its decisions.
        let (nodes, view) = match &mut cluster {
            Some(built) => built,
            None => cluster.insert(cluster_nodes(state)),
        };
        nodes[0].available = state.available.clone();
        view.update_available(0, &state.available);
        let decision = decide_in(
            lease.request.placement_resources(),
            &lease.request.strategy,
            nodes,
            view,
            lease.request.allow_spill,
            &mut state.policy,
        );
        lease.infeasible = decision == LeaseDecision::Infeasible;
        match decision {
            LeaseDecision::GrantHere => {
                let wanted_gpus = lease.request.resources.get(names::GPU);
                let Some(gpus) = state.gpus.allocate(wanted_gpus) else {
                    // Enough GPU in total, but split over devices: wait for a whole one.
                    waiting.push_back(lease);
                    continue;
                };
                let mut env_vars = lease.request.env_vars.clone();
                if !gpus.slots.is_empty() {
                    let visible = state.gpus.visible_devices(&gpus);
                    env_vars.insert("CUDA_VISIBLE_DEVICES".into(), visible.clone());
                    env_vars.insert(crate::worker_pool::env::GPU_IDS.into(), visible);
                }
                let key = env_key(&lease.request.job, &env_vars);
                let idle = if lease.request.actor.is_none() { state.pool.idle_worker(&key) } else { None };
                if let Some(worker_id) = idle {
                    subtract_from(&mut state.available, &lease.request.resources);
                    lease.gpus = gpus;
                    grant(state, worker_id, lease);
                    continue;
                }
                if state.pool.starting() >= MAX_CONCURRENT_WORKER_STARTS {
                    state.gpus.release(&gpus);
                    waiting.push_back(lease);
                    continue;
                }
                let request = &lease.request;
                match state.pool.start(&request.job, &env_vars, request.actor, request.detached, myself) {
                    Ok(worker_id) => {
                        subtract_from(&mut state.available, &lease.request.resources);
                        lease.worker = Some(worker_id);
                        lease.gpus = gpus;
                        waiting.push_back(lease);
                    }
                    Err(reason) => {
                        state.gpus.release(&gpus);
                        warn!(%reason, "worker start failed");
                        metrics::counter!("manta_lease_outcomes_total", "Outcome" => "canceled").increment(1);
                        let _ = lease.reply.send(Ok(LeaseOutcome::Canceled { reason }));
                    }
                }
            }
            LeaseDecision::Reschedule { node_id, address } => {
                // Count the work we send there until that node's next report says otherwise,
                // so a burst of requests spreads instead of piling onto one node.
                if let Some(view) = state.view.as_mut()
                    && let Some(node) = view.nodes.iter_mut().find(|node| node.node_id == node_id)
                {
                    subtract_from(&mut node.available, &lease.request.resources);
                }
                if let Some((nodes, view)) = cluster.as_mut()
                    && let Some(index) = nodes.iter().position(|node| node.node_id == node_id)
                {
                    subtract_from(&mut nodes[index].available, &lease.request.resources);
                    view.update_available(index, &nodes[index].available);
                }
                metrics::counter!("manta_lease_outcomes_total", "Outcome" => "reschedule").increment(1);
                let _ = lease.reply.send(Ok(LeaseOutcome::Reschedule { node_id, node_address: address }));
            }
            LeaseDecision::Wait => waiting.push_back(lease),
            LeaseDecision::Unschedulable(reason) => {
                metrics::counter!("manta_lease_outcomes_total", "Outcome" => "canceled").increment(1);
                let _ = lease.reply.send(Ok(LeaseOutcome::Canceled { reason }));
            }
            LeaseDecision::Infeasible => {
                // As in Ray: wait for a node that can run it (an autoscaler may add one),
                // reported as demand, with one warning per caller and shape.
                lease.infeasible = true;
                let shape = format!("{:?}", lease.request.placement_resources().to_f64_map());
                if state.warned.insert((lease.caller, shape.clone())) {
                    let message = format!(
                        "no node in the cluster can run a task or actor asking for {shape}; it waits until one can \
                         (add a node with `manta start --resources ...`, or ask for less). Pending requests show \
                         as pending_demand in `manta status --format json`."
                    );
                    warn!(%message, "infeasible lease request");
                    let _ = lease.caller_peer.send_event(Event::Warning(WarningEvent { message }));
                }
                waiting.push_back(lease);
            }
        }
    }
    state.pending = waiting;
}

/// Queued lease requests by shape, for the GCS (and so the autoscaler).
pub(super) fn pending_demand(pending: &VecDeque<PendingLease>) -> Vec<ResourceDemand> {
    let mut demand: Vec<ResourceDemand> = Vec::new();
    for lease in pending.iter().filter(|lease| lease.worker.is_none()) {
        let shape = lease.request.placement_resources();
        match demand.iter_mut().find(|entry| entry.resources == *shape && entry.infeasible == lease.infeasible) {
            Some(entry) => entry.count += 1,
            None => demand.push(ResourceDemand { resources: shape.clone(), count: 1, infeasible: lease.infeasible }),
        }
    }
    demand
}

/// Hands a registered worker to a waiting lease (its resources already reserved).
pub(super) fn grant(state: &mut RayletState, worker_id: WorkerId, lease: PendingLease) {
    let node_id = state.identity.get();
    let Some(worker) = state.pool.get_mut(&worker_id) else {
        add_into(&mut state.available, &lease.request.resources);
        state.gpus.release(&lease.gpus);
        return;
    };
    let Some(address) = worker.address.clone() else {
        return;
    };
    worker.state = WorkerState::Leased {
        resources: lease.request.resources.clone(),
        lent: ResourceSet::new(),
        caller: lease.caller,
        gpus: lease.gpus.clone(),
    };
    let granted = LeaseOutcome::Granted { worker: WorkerAddress { worker_id, address, node_id } };
    metrics::counter!("manta_lease_outcomes_total", "Outcome" => "granted").increment(1);
    metrics::histogram!("manta_scheduler_latency_seconds").record(lease.arrived.elapsed().as_secs_f64());
    if lease.reply.send(Ok(granted)).is_err() {
        worker.state = WorkerState::Idle { since: Instant::now() };
        add_into(&mut state.available, &lease.request.resources);
        state.gpus.release(&lease.gpus);
    }
}
