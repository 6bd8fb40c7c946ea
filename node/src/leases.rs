//! Where a lease request goes: the scheduling policy picks a node over the local
//! node's resources and the cluster view the GCS pushed; the raylet then grants
//! here, waits here, or sends the caller on.

use manta_proto::NodeId;
use manta_proto::resources::ResourceSet;
use manta_proto::task::SchedulingStrategy;

use crate::scheduling::dense::DenseView;
use crate::scheduling::hybrid::{self, HybridOptions};
use crate::scheduling::node_affinity::{self, Affinity};
use crate::scheduling::{NodeView, PolicyRng, spread};

/// What to do with one lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Reserve the resources here and grant a worker.
    GrantHere,
    /// Send the caller to this node.
    Reschedule {
        /// The node.
        node_id: NodeId,
        /// Its address.
        address: String,
    },
    /// Keep the request queued here until resources free up.
    Wait,
    /// No node of the cluster has these resources at all.
    Infeasible,
    /// The strategy forbids every node (hard affinity to a dead or too small node).
    Unschedulable(String),
}

/// Per-raylet policy state: the SPREAD cursor and the random source.
#[derive(Debug, Clone)]
pub struct PolicyState {
    /// Where SPREAD continues.
    pub spread_cursor: usize,
    /// Random picks among the top k.
    pub rng: PolicyRng,
}

/// Decides where a request goes. `others` are the other alive nodes.
/// A request that already moved once (`allow_spill = false`) stays here.
pub fn decide(
    request: &ResourceSet,
    strategy: &SchedulingStrategy,
    local: &NodeView,
    others: &[NodeView],
    allow_spill: bool,
    policy: &mut PolicyState,
) -> LeaseDecision {
    let mut nodes = Vec::with_capacity(others.len() + 1);
    nodes.push(local.clone());
    nodes.extend(others.iter().filter(|node| node.node_id != local.node_id).cloned());
    let view = DenseView::build(&nodes);
    decide_in(request, strategy, &nodes, &view, allow_spill, policy)
}

/// [`decide`] over prebuilt `nodes` (the local node first, then the others) and
/// their [`DenseView`], as the raylet keeps them between decisions.
pub fn decide_in(
    request: &ResourceSet,
    strategy: &SchedulingStrategy,
    nodes: &[NodeView],
    view: &DenseView,
    allow_spill: bool,
    policy: &mut PolicyState,
) -> LeaseDecision {
    let local = &nodes[0];
    let here = || {
        if local.available_for(request) {
            LeaseDecision::GrantHere
        } else if local.feasible(request) {
            LeaseDecision::Wait
        } else {
            LeaseDecision::Infeasible
        }
    };
    if !allow_spill {
        return here();
    }
    let dense = view.request(request);
    let hybrid = |policy: &mut PolicyState| {
        hybrid::choose_in(&dense, view, local.node_id, &HybridOptions::default(), &mut policy.rng)
    };
    let target = match strategy {
        // Bundle resources (rewritten by the caller) make only the group's nodes feasible.
        SchedulingStrategy::Default | SchedulingStrategy::PlacementGroup { .. } => hybrid(policy),
        SchedulingStrategy::Spread => spread::choose_in(&dense, view, &mut policy.spread_cursor),
        SchedulingStrategy::NodeAffinity { node_id, soft } => {
            match node_affinity::choose(request, nodes, *node_id, *soft) {
                Affinity::Node(node_id) => Some(node_id),
                Affinity::FallBack => hybrid(policy),
                Affinity::Unschedulable(reason) => return LeaseDecision::Unschedulable(reason),
            }
        }
    };
    match target {
        None => LeaseDecision::Infeasible,
        Some(node_id) if node_id == local.node_id => here(),
        Some(node_id) => {
            let address = nodes.iter().find(|node| node.node_id == node_id).map(|node| node.address.clone());
            LeaseDecision::Reschedule { node_id, address: address.unwrap_or_default() }
        }
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::resources::Quantity;

    use super::*;
    use crate::scheduling::testing::{cpus, node};

    fn policy() -> PolicyState {
        PolicyState { spread_cursor: 0, rng: PolicyRng::new(3) }
    }

    #[test]
    fn local_first_then_spill_then_wait() {
        let (here, there) = (node(1, 2, 2, 0), node(2, 2, 2, 0));
        let others = [there.clone()];
        assert_eq!(
            decide(&cpus(1), &Default::default(), &here, &others, true, &mut policy()),
            LeaseDecision::GrantHere
        );
        let busy = node(1, 2, 0, 0);
        assert!(matches!(
            decide(&cpus(1), &Default::default(), &busy, &others, true, &mut policy()),
            LeaseDecision::Reschedule { node_id, .. } if node_id == there.node_id
        ));
        assert_eq!(decide(&cpus(1), &Default::default(), &busy, &others, false, &mut policy()), LeaseDecision::Wait);
        let full = [node(2, 2, 0, 0)];
        assert_eq!(decide(&cpus(2), &Default::default(), &busy, &full, true, &mut policy()), LeaseDecision::Wait);
    }

    #[test]
    fn resources_only_elsewhere_and_nowhere() {
        let here = node(1, 1, 1, 0);
        let mut there = node(2, 1, 0, 0);
        there.total = there.total.clone().with("disk", Quantity::from_whole(1));
        let disk = ResourceSet::new().with("disk", Quantity::from_whole(1));
        assert!(matches!(
            decide(&disk, &Default::default(), &here, std::slice::from_ref(&there), true, &mut policy()),
            LeaseDecision::Reschedule { node_id, .. } if node_id == there.node_id
        ));
        let gpu = ResourceSet::new().with("GPU", Quantity::from_whole(1));
        assert_eq!(decide(&gpu, &Default::default(), &here, &[there], true, &mut policy()), LeaseDecision::Infeasible);
    }

    #[test]
    fn spread_and_affinity() {
        let (here, a, b) = (node(1, 4, 4, 0), node(2, 4, 4, 0), node(3, 4, 4, 0));
        let others = [a.clone(), b.clone()];
        let mut state = policy();
        let picks: Vec<_> = (0..3)
            .map(|_| match decide(&cpus(1), &SchedulingStrategy::Spread, &here, &others, true, &mut state) {
                LeaseDecision::GrantHere => here.node_id,
                LeaseDecision::Reschedule { node_id, .. } => node_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(picks, vec![here.node_id, a.node_id, b.node_id]);
        let pinned = SchedulingStrategy::NodeAffinity { node_id: b.node_id, soft: false };
        assert!(
            matches!(decide(&cpus(1), &pinned, &here, &others, true, &mut policy()), LeaseDecision::Reschedule { node_id, .. } if node_id == b.node_id)
        );
        let gone: NodeId = "ee".repeat(16).parse().unwrap();
        let hard = SchedulingStrategy::NodeAffinity { node_id: gone, soft: false };
        assert!(matches!(
            decide(&cpus(1), &hard, &here, &others, true, &mut policy()),
            LeaseDecision::Unschedulable(_)
        ));
        let soft = SchedulingStrategy::NodeAffinity { node_id: gone, soft: true };
        assert_eq!(decide(&cpus(1), &soft, &here, &others, true, &mut policy()), LeaseDecision::GrantHere);
    }

    #[test]
    fn empty_request_always_fits() {
        let here = node(1, 0, 0, 0);
        assert_eq!(
            decide(&ResourceSet::new(), &Default::default(), &here, &[], true, &mut policy()),
            LeaseDecision::GrantHere
        );
    }
}
