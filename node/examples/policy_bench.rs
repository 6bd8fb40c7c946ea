//! One scheduling decision over many simulated nodes, per policy.
//!
//! `cargo run --release -p manta-node --example policy_bench`

use std::time::Instant;

use manta_node::scheduling::dense::DenseView;
use manta_node::scheduling::hybrid::{self, HybridOptions};
use manta_node::scheduling::{NodeView, PolicyRng, spread};
use manta_proto::NodeId;
use manta_proto::resources::{Quantity, ResourceSet};

fn cluster(count: usize, rng: &mut PolicyRng) -> Vec<NodeView> {
    (0..count)
        .map(|_| {
            let total = ResourceSet::new()
                .with("CPU", Quantity::from_whole(16))
                .with("memory", Quantity::from_whole(64 << 30))
                .with("object_store_memory", Quantity::from_whole(16 << 30));
            let mut available = total.clone();
            available.set("CPU", Quantity::from_whole(rng.below(17) as u64));
            NodeView { node_id: NodeId::random(), address: String::new(), total, available }
        })
        .collect()
}

fn main() {
    let mut rng = PolicyRng::new(42);
    let request = ResourceSet::new().with("CPU", Quantity::from_whole(1));
    for count in [1_000, 10_000] {
        let nodes = cluster(count, &mut rng);
        let local = nodes[0].node_id;
        let iterations = if count <= 1_000 { 20_000 } else { 2_000 };
        // The view is built when the cluster view changes (every 100 ms at most), not per decision.
        let started = Instant::now();
        let view = DenseView::build(&nodes);
        let build_time = started.elapsed();
        let started = Instant::now();
        for _ in 0..iterations {
            let dense = view.request(&request);
            std::hint::black_box(hybrid::choose_in(&dense, &view, local, &HybridOptions::default(), &mut rng));
        }
        let hybrid_time = started.elapsed() / iterations;
        let mut cursor = 0;
        let started = Instant::now();
        for _ in 0..iterations {
            let dense = view.request(&request);
            std::hint::black_box(spread::choose_in(&dense, &view, &mut cursor));
        }
        let spread_time = started.elapsed() / iterations;
        println!(
            "{count:>6} nodes: hybrid {hybrid_time:?} per decision, spread {spread_time:?} per decision \
             (building the view: {build_time:?})"
        );
    }
}
