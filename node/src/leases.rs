//! Where a lease request goes: a pure decision over the local node's resources
//! and the cluster view the GCS pushed.
//!
//! First cut of the scheduling policy (the full hybrid / spread / affinity
//! policies come with the scheduling issue): run here when the request fits
//! what is free here; otherwise send the caller to a node where it fits now;
//! otherwise wait here if this node could ever run it; otherwise send it to a
//! node that could ever run it; otherwise it is infeasible.

use manta_proto::NodeId;
use manta_proto::gcs::ClusterViewEvent;
use manta_proto::resources::ResourceSet;

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
}

/// Decides where a request for `request` goes.
pub fn decide(
    request: &ResourceSet,
    local_id: NodeId,
    total: &ResourceSet,
    available: &ResourceSet,
    view: Option<&ClusterViewEvent>,
    allow_spill: bool,
) -> LeaseDecision {
    if available.contains(request) {
        return LeaseDecision::GrantHere;
    }
    let others = view.map(|view| view.nodes.iter().filter(|node| node.node_id != local_id)).into_iter().flatten();
    let others: Vec<_> = others.collect();
    if allow_spill && let Some(node) = others.iter().find(|node| node.available.contains(request)) {
        return LeaseDecision::Reschedule { node_id: node.node_id, address: node.address.clone() };
    }
    if total.contains(request) {
        return LeaseDecision::Wait;
    }
    if allow_spill && let Some(node) = others.iter().find(|node| node.total.contains(request)) {
        return LeaseDecision::Reschedule { node_id: node.node_id, address: node.address.clone() };
    }
    LeaseDecision::Infeasible
}

#[cfg(test)]
mod tests {
    use manta_proto::gcs::NodeResources;
    use manta_proto::resources::Quantity;

    use super::*;

    fn cpus(count: u64) -> ResourceSet {
        ResourceSet::new().with("CPU", Quantity::from_whole(count))
    }

    fn view(nodes: &[(NodeId, u64, u64)]) -> ClusterViewEvent {
        ClusterViewEvent {
            version: 1,
            nodes: nodes
                .iter()
                .map(|(node_id, total, available)| NodeResources {
                    node_id: *node_id,
                    address: format!("addr-{}", node_id.short()),
                    total: cpus(*total),
                    available: cpus(*available),
                    labels: Default::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn local_first_then_spill_then_wait() {
        let (here, there) = (NodeId::random(), NodeId::random());
        let view = view(&[(here, 2, 0), (there, 2, 1)]);
        assert_eq!(decide(&cpus(1), here, &cpus(2), &cpus(1), Some(&view), true), LeaseDecision::GrantHere);
        assert!(matches!(
            decide(&cpus(1), here, &cpus(2), &cpus(0), Some(&view), true),
            LeaseDecision::Reschedule { node_id, .. } if node_id == there
        ));
        assert_eq!(decide(&cpus(1), here, &cpus(2), &cpus(0), Some(&view), false), LeaseDecision::Wait);
        assert_eq!(decide(&cpus(2), here, &cpus(2), &cpus(0), Some(&view), true), LeaseDecision::Wait);
    }

    #[test]
    fn resources_only_elsewhere_and_nowhere() {
        let (here, there) = (NodeId::random(), NodeId::random());
        let mut view = view(&[(here, 1, 1), (there, 1, 0)]);
        view.nodes[1].total = view.nodes[1].total.clone().with("disk", Quantity::from_whole(1));
        let disk = ResourceSet::new().with("disk", Quantity::from_whole(1));
        assert!(matches!(
            decide(&disk, here, &cpus(1), &cpus(1), Some(&view), true),
            LeaseDecision::Reschedule { node_id, .. } if node_id == there
        ));
        let gpu = ResourceSet::new().with("GPU", Quantity::from_whole(1));
        assert_eq!(decide(&gpu, here, &cpus(1), &cpus(1), Some(&view), true), LeaseDecision::Infeasible);
        assert_eq!(decide(&gpu, here, &cpus(1), &cpus(1), None, true), LeaseDecision::Infeasible);
    }

    #[test]
    fn empty_request_always_fits() {
        let here = NodeId::random();
        assert_eq!(decide(&ResourceSet::new(), here, &cpus(0), &cpus(0), None, true), LeaseDecision::GrantHere);
    }
}
