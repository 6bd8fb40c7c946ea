//! NodeAffinity: run on one given node. Hard: fail when that node is dead or can
//! never fit the request. Soft: fall back to the DEFAULT policy then.

use manta_proto::NodeId;
use manta_proto::resources::ResourceSet;

use super::NodeView;

/// What affinity decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    /// Run on this node (waiting there if it is busy).
    Node(NodeId),
    /// Use the DEFAULT policy instead (soft affinity to an unusable node).
    FallBack,
    /// Refuse: hard affinity to a node that is gone or can never fit.
    Unschedulable(String),
}

/// Decides for `target` among the alive `nodes`.
pub fn choose(request: &ResourceSet, nodes: &[NodeView], target: NodeId, soft: bool) -> Affinity {
    match nodes.iter().find(|node| node.node_id == target) {
        Some(node) if node.feasible(request) => Affinity::Node(target),
        _ if soft => Affinity::FallBack,
        Some(_) => Affinity::Unschedulable(format!(
            "node {target} can never fit {request:?} and the affinity is hard (soft = false)"
        )),
        None => Affinity::Unschedulable(format!(
            "node {target} is dead or not part of the cluster and the affinity is hard (soft = false)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::testing::{cpus, node};

    #[test]
    fn hard_and_soft() {
        let nodes = vec![node(1, 2, 0, 0), node(2, 2, 2, 0)];
        assert_eq!(
            choose(&cpus(1), &nodes, nodes[0].node_id, false),
            Affinity::Node(nodes[0].node_id),
            "busy: wait there"
        );
        let gone: NodeId = "ee".repeat(16).parse().unwrap();
        assert!(
            matches!(choose(&cpus(1), &nodes, gone, false), Affinity::Unschedulable(message) if message.contains("dead"))
        );
        assert_eq!(choose(&cpus(1), &nodes, gone, true), Affinity::FallBack);
        assert!(matches!(choose(&cpus(9), &nodes, nodes[1].node_id, false), Affinity::Unschedulable(_)));
        assert_eq!(choose(&cpus(9), &nodes, nodes[1].node_id, true), Affinity::FallBack);
    }
}
