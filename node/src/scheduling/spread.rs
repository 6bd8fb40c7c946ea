//! SPREAD: round robin over nodes ordered by id, from a cursor the raylet keeps;
//! first among nodes with the resources free, then among nodes that could ever
//! run the request.

use manta_proto::NodeId;
use manta_proto::resources::ResourceSet;

use super::NodeView;
use super::dense::{DenseRequest, DenseView};

/// Picks the next node after `cursor` (and advances it). `None`: infeasible everywhere.
pub fn choose(request: &ResourceSet, nodes: &[NodeView], cursor: &mut usize) -> Option<NodeId> {
    let view = DenseView::build(nodes);
    choose_in(&view.request(request), &view, cursor)
}

/// [`choose`] over a prebuilt [`DenseView`].
pub fn choose_in(request: &DenseRequest, view: &DenseView, cursor: &mut usize) -> Option<NodeId> {
    let ordered = view.by_id();
    if ordered.is_empty() {
        return None;
    }
    for require_available in [true, false] {
        for step in 0..ordered.len() {
            let index = (*cursor + step) % ordered.len();
            let row = ordered[index];
            let fits = if require_available { view.available_for(row, request) } else { view.feasible(row, request) };
            if fits {
                *cursor = index + 1;
                return Some(view.node_id(row));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::testing::{cpus, node};

    #[test]
    fn cycles_through_every_node() {
        let nodes = vec![node(2, 2, 2, 0), node(1, 2, 2, 0), node(3, 2, 2, 0)];
        let mut cursor = 0;
        let picks: Vec<_> = (0..6).map(|_| choose(&cpus(1), &nodes, &mut cursor).unwrap()).collect();
        let ids = [nodes[1].node_id, nodes[0].node_id, nodes[2].node_id];
        assert_eq!(picks, [ids, ids].concat());
    }

    #[test]
    fn skips_busy_nodes_then_falls_back_to_feasible_ones() {
        let nodes = vec![node(1, 2, 0, 0), node(2, 2, 1, 0), node(3, 1, 1, 0)];
        let mut cursor = 0;
        assert_eq!(choose(&cpus(1), &nodes, &mut cursor), Some(nodes[1].node_id));
        assert_eq!(choose(&cpus(2), &nodes, &mut cursor), Some(nodes[0].node_id), "feasible but busy, after wrapping");
        assert_eq!(choose(&cpus(5), &nodes, &mut cursor), None);
    }
}
