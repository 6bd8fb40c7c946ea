//! The DEFAULT (hybrid) policy, as Ray defines it: a node's score is its
//! critical-resource utilization, counted as 0 below the spread threshold; the
//! preferred (local) node wins ties; otherwise a random pick among the top k
//! least-loaded nodes, ordered stably by node id. Requests without GPUs try
//! GPU-less nodes first.

use manta_proto::NodeId;
use manta_proto::resources::ResourceSet;

use super::dense::{DenseRequest, DenseView};
use super::{NodeView, PolicyRng};

/// Tunables of the hybrid policy, with Ray's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HybridOptions {
    /// Utilization under which a node counts as idle (0.5).
    pub spread_threshold: f64,
    /// Minimum k (1).
    pub top_k_absolute: usize,
    /// k as a share of the cluster's nodes (0.2).
    pub top_k_fraction: f64,
    /// Keep GPU nodes for GPU work (true).
    pub avoid_gpu_nodes: bool,
}

impl Default for HybridOptions {
    fn default() -> Self {
        Self { spread_threshold: 0.5, top_k_absolute: 1, top_k_fraction: 0.2, avoid_gpu_nodes: true }
    }
}

/// One node, evaluated once per decision.
struct Candidate {
    node_id: NodeId,
    feasible: bool,
    available: bool,
    score: f64,
    has_gpus: bool,
}

/// Picks a node for `request` among `nodes` (alive ones), preferring `preferred`.
/// Returns `None` when no node could ever run it (infeasible).
pub fn choose(
    request: &ResourceSet,
    nodes: &[NodeView],
    preferred: NodeId,
    options: &HybridOptions,
    rng: &mut PolicyRng,
) -> Option<NodeId> {
    let view = DenseView::build(nodes);
    choose_in(&view.request(request), &view, preferred, options, rng)
}

/// [`choose`] over a prebuilt [`DenseView`] (the raylet builds one per cluster view).
pub fn choose_in(
    request: &DenseRequest,
    view: &DenseView,
    preferred: NodeId,
    options: &HybridOptions,
    rng: &mut PolicyRng,
) -> Option<NodeId> {
    let candidates: Vec<Candidate> = (0..view.len())
        .map(|index| {
            let feasible = view.feasible(index, request);
            let utilization = if feasible { view.utilization(index) } else { 0.0 };
            Candidate {
                node_id: view.node_id(index),
                feasible,
                available: feasible && view.available_for(index, request),
                score: if utilization < options.spread_threshold { 0.0 } else { utilization },
                has_gpus: view.has_gpus(index),
            }
        })
        .collect();
    if options.avoid_gpu_nodes && !request.wants_gpus() {
        let chosen = pick(&candidates, |candidate| !candidate.has_gpus, view.len(), preferred, options, rng, true);
        if chosen.is_some() {
            return chosen;
        }
    }
    pick(&candidates, |_| true, view.len(), preferred, options, rng, false)
}

fn pick(
    candidates: &[Candidate],
    allowed: impl Fn(&Candidate) -> bool,
    cluster_size: usize,
    preferred: NodeId,
    options: &HybridOptions,
    rng: &mut PolicyRng,
    require_available: bool,
) -> Option<NodeId> {
    let mut pool: Vec<&Candidate> =
        candidates.iter().filter(|candidate| candidate.available && allowed(candidate)).collect();
    if pool.is_empty() && !require_available {
        pool = candidates.iter().filter(|candidate| candidate.feasible && allowed(candidate)).collect();
    }
    if pool.is_empty() {
        return None;
    }
    let order = |a: &&Candidate, b: &&Candidate| a.score.total_cmp(&b.score).then(a.node_id.cmp(&b.node_id));
    let best = pool.iter().map(|candidate| candidate.score).fold(f64::INFINITY, f64::min);
    if let Some(local) = pool.iter().find(|candidate| candidate.node_id == preferred)
        && local.score <= best
    {
        return Some(local.node_id);
    }
    let k = options.top_k_absolute.max((cluster_size as f64 * options.top_k_fraction) as usize).max(1).min(pool.len());
    if k < pool.len() {
        pool.select_nth_unstable_by(k - 1, order);
        pool.truncate(k);
    }
    pool.sort_by(order);
    Some(pool[rng.below(k)].node_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::testing::{cpus, node};

    fn rng() -> PolicyRng {
        PolicyRng::new(7)
    }

    #[test]
    fn stays_local_under_the_threshold() {
        let nodes = vec![node(1, 4, 3, 0), node(2, 4, 4, 0)];
        // Local node 1 is 25 % busy: under 0.5 counts as idle, it ties with node 2 and wins.
        assert_eq!(choose(&cpus(1), &nodes, nodes[0].node_id, &Default::default(), &mut rng()), Some(nodes[0].node_id));
    }

    #[test]
    fn spreads_to_the_least_loaded_once_busy() {
        let nodes = vec![node(1, 4, 1, 0), node(2, 4, 4, 0), node(3, 4, 2, 0)];
        // Local is 75 % busy; node 2 (idle) is the only top-1 node.
        assert_eq!(choose(&cpus(1), &nodes, nodes[0].node_id, &Default::default(), &mut rng()), Some(nodes[1].node_id));
    }

    #[test]
    fn top_k_picks_among_the_best_few() {
        let nodes: Vec<_> = (1..=10).map(|index| node(index, 10, if index <= 2 { 10 } else { 1 }, 0)).collect();
        let local = nodes[9].node_id;
        let options = HybridOptions { top_k_fraction: 0.2, ..Default::default() };
        let mut rng = rng();
        let picks: std::collections::BTreeSet<_> =
            (0..50).map(|_| choose(&cpus(1), &nodes, local, &options, &mut rng).unwrap()).collect();
        // k = max(1, 10 * 0.2) = 2: only the two idle nodes are ever picked.
        assert_eq!(picks, [nodes[0].node_id, nodes[1].node_id].into_iter().collect());
    }

    #[test]
    fn waits_on_a_feasible_node_when_none_is_free() {
        let nodes = vec![node(1, 2, 0, 0), node(2, 2, 0, 0)];
        let chosen = choose(&cpus(2), &nodes, nodes[0].node_id, &Default::default(), &mut rng());
        assert_eq!(chosen, Some(nodes[0].node_id), "the local node, both being full");
        assert_eq!(choose(&cpus(3), &nodes, nodes[0].node_id, &Default::default(), &mut rng()), None, "infeasible");
    }

    #[test]
    fn keeps_gpu_nodes_for_gpu_work() {
        let nodes = vec![node(1, 4, 4, 1), node(2, 4, 4, 0)];
        assert_eq!(choose(&cpus(1), &nodes, nodes[0].node_id, &Default::default(), &mut rng()), Some(nodes[1].node_id));
        let gpu = cpus(1).with("GPU", manta_proto::resources::Quantity::from_whole(1));
        assert_eq!(choose(&gpu, &nodes, nodes[1].node_id, &Default::default(), &mut rng()), Some(nodes[0].node_id));
        // With no GPU-less node free, CPU work may still use the GPU node.
        let busy = vec![node(1, 4, 4, 1), node(2, 4, 0, 0)];
        assert_eq!(choose(&cpus(1), &busy, busy[1].node_id, &Default::default(), &mut rng()), Some(busy[0].node_id));
    }

    #[test]
    fn ties_break_by_node_id() {
        let nodes = vec![node(3, 4, 4, 0), node(1, 4, 4, 0), node(2, 4, 4, 0)];
        let stranger: NodeId = "ff".repeat(16).parse().unwrap();
        assert_eq!(choose(&cpus(1), &nodes, stranger, &Default::default(), &mut rng()), Some(nodes[1].node_id));
    }
}
