//! The planner's decisions, case by case and as properties.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn shape(pairs: &[(&str, f64)]) -> Shape {
    pairs.iter().map(|(name, amount)| (name.to_string(), *amount)).collect()
}

fn config(extra: &str) -> ClusterConfig {
    let text = format!(
        "max_workers: 10\nidle_timeout_minutes: 1\nhead_node_type: head\nprovider: {{type: local}}\n\
         available_node_types:\n  head: {{resources: {{CPU: 0}}, max_workers: 0}}\n  \
         small: {{resources: {{CPU: 1}}, max_workers: 4}}\n  \
         special: {{resources: {{CPU: 2, special: 1}}}}\n{extra}"
    );
    ClusterConfig::from_yaml(&text).unwrap()
}

fn node(id: &str, node_type: &str, total: Shape, available: Shape, idle_secs: u64) -> NodeView {
    NodeView {
        id: id.into(),
        node_type: node_type.into(),
        is_head: node_type == "head",
        pending: false,
        total,
        available,
        idle_for: Duration::from_secs(idle_secs),
    }
}

fn head() -> NodeView {
    node("head", "head", shape(&[("CPU", 0.0)]), shape(&[("CPU", 0.0)]), 0)
}

fn tasks(pairs: &[(&str, f64)], count: u64) -> Demand {
    Demand { shapes: vec![ShapeDemand { shape: shape(pairs), count }], ..Demand::default() }
}

#[test]
fn a_custom_resource_only_one_type_has_launches_that_type() {
    let plan = plan(&config(""), &[head()], &tasks(&[("CPU", 1.0), ("special", 1.0)], 3));
    assert_eq!(plan.count("special"), 3, "{plan:?}");
    assert_eq!(plan.count("small"), 0);
    assert!(plan.infeasible.is_empty());
}

#[test]
fn plain_cpu_work_takes_the_type_it_fills_without_waste() {
    let plan = plan(&config(""), &[head()], &tasks(&[("CPU", 1.0)], 2));
    assert_eq!((plan.count("small"), plan.count("special")), (2, 0), "{plan:?}");
}

#[test]
fn free_space_is_used_before_launching() {
    let busy = node("a", "small", shape(&[("CPU", 1.0)]), shape(&[("CPU", 1.0)]), 0);
    let plan = plan(&config(""), &[head(), busy], &tasks(&[("CPU", 1.0)], 1));
    assert_eq!(plan.launches(), 0, "{plan:?}");
}

#[test]
fn demand_no_type_can_meet_is_infeasible_and_launches_nothing() {
    let plan = plan(&config(""), &[head()], &tasks(&[("GPU", 1.0)], 7));
    assert_eq!(plan.launches(), 0);
    assert_eq!(plan.infeasible, vec![ShapeDemand { shape: shape(&[("GPU", 1.0)]), count: 7 }]);
}

#[test]
fn strict_spread_takes_distinct_nodes() {
    let group = GroupDemand { bundles: vec![shape(&[("CPU", 1.0)]); 3], strategy: PlacementStrategy::StrictSpread };
    let demand = Demand { groups: vec![group], ..Demand::default() };
    let plan = plan(&config(""), &[head()], &demand);
    assert_eq!(plan.launches(), 3, "three bundles, three nodes: {plan:?}");
    let one_free =
        node("a", "special", shape(&[("CPU", 2.0), ("special", 1.0)]), shape(&[("CPU", 2.0), ("special", 1.0)]), 0);
    let plan2 = super::plan(&config(""), &[head(), one_free], &demand);
    assert_eq!(plan2.launches(), 2, "a free node takes one bundle, not two: {plan2:?}");
}

#[test]
fn a_strict_spread_group_that_cannot_fit_whole_launches_nothing() {
    let group = GroupDemand { bundles: vec![shape(&[("CPU", 1.0)]); 12], strategy: PlacementStrategy::StrictSpread };
    let plan = plan(&config(""), &[head()], &Demand { groups: vec![group], ..Demand::default() });
    assert_eq!(plan.launches(), 0, "12 distinct nodes over max_workers 10: {plan:?}");
    assert_eq!(plan.held_back, 12);
}

#[test]
fn strict_pack_sums_its_bundles() {
    let group = GroupDemand { bundles: vec![shape(&[("CPU", 1.0)]); 2], strategy: PlacementStrategy::StrictPack };
    let plan = plan(&config(""), &[head()], &Demand { groups: vec![group], ..Demand::default() });
    assert_eq!((plan.count("special"), plan.count("small")), (1, 0), "both bundles on one 2-CPU node: {plan:?}");
}

#[test]
fn min_workers_are_kept_and_limits_hold() {
    let config = config("  kept: {resources: {CPU: 1, kept: 1}, min_workers: 2, max_workers: 3}\n");
    let plan = plan(&config, &[head()], &Demand::default());
    assert_eq!(plan.count("kept"), 2);
    assert!(plan.launch["kept"].iter().all(|reason| *reason == LaunchReason::MinWorkers));
    let many = super::plan(&config, &[head()], &tasks(&[("CPU", 1.0), ("kept", 1.0)], 50));
    assert_eq!(many.count("kept"), 3, "its max_workers: {many:?}");
    assert!(many.held_back > 0);
}

#[test]
fn upscaling_speed_caps_launches_per_round() {
    let config = config("  wide: {resources: {CPU: 1, wide: 1}, max_workers: 100}\n");
    let mut config = config;
    config.max_workers = 100;
    let plan = plan(&config, &[head()], &tasks(&[("CPU", 1.0), ("wide", 1.0)], 100));
    assert_eq!(plan.count("wide"), 5, "max(5, 1 × running): {plan:?}");
    config.upscaling_speed = 1000.0;
    assert_eq!(super::plan(&config, &[head()], &tasks(&[("CPU", 1.0), ("wide", 1.0)], 100)).count("wide"), 100);
}

#[test]
fn request_resources_counts_busy_capacity() {
    let busy = node("a", "small", shape(&[("CPU", 1.0)]), shape(&[("CPU", 0.0)]), 0);
    let demand = Demand { requested: vec![shape(&[("CPU", 1.0)]); 3], ..Demand::default() };
    let plan = plan(&config(""), &[head(), busy], &demand);
    assert_eq!(plan.count("small"), 2, "3 CPUs asked, 1 exists (busy or not): {plan:?}");
}

#[test]
fn an_idle_node_a_requested_bundle_lands_on_is_kept() {
    let idle = |id: &str| node(id, "small", shape(&[("CPU", 1.0)]), shape(&[("CPU", 1.0)]), 600);
    let demand = Demand { requested: vec![shape(&[("CPU", 1.0)])], ..Demand::default() };
    let plan = plan(&config(""), &[head(), idle("a"), idle("b")], &demand);
    assert_eq!(plan.terminate.len(), 1, "one node holds the request, the other goes: {plan:?}");
    assert_eq!(plan.launches(), 0);
}

#[test]
fn only_idle_nodes_past_the_timeout_go_and_min_workers_stay() {
    let config = config("  kept: {resources: {CPU: 1, kept: 1}, min_workers: 1}\n");
    let full = |id: &str, kind: &str, idle| node(id, kind, shape(&[("CPU", 1.0)]), shape(&[("CPU", 1.0)]), idle);
    let nodes = vec![
        head(),
        full("idle-long", "small", 600),
        full("idle-short", "small", 10),
        node("busy", "small", shape(&[("CPU", 1.0)]), shape(&[("CPU", 0.0)]), 0),
        full("kept-1", "kept", 600),
    ];
    let plan = plan(&config, &nodes, &Demand::default());
    assert_eq!(plan.terminate, vec!["idle-long".to_string()], "{plan:?}");
    let wanted = super::plan(&config, &nodes, &tasks(&[("CPU", 1.0)], 2));
    assert!(!wanted.terminate.contains(&"idle-long".to_string()), "an idle node demand lands on stays: {wanted:?}");
}

#[test]
#[ignore = "a benchmark: cargo test --release -p manta-agents planning_10k -- --ignored --nocapture"]
fn planning_10k_shapes_over_50_types() {
    let mut text = String::from(
        "max_workers: 1000\nupscaling_speed: 1000\nhead_node_type: t0\nprovider: {type: local}\navailable_node_types:\n",
    );
    for index in 0..50 {
        text.push_str(&format!(
            "  t{index}: {{resources: {{CPU: {}, r{}: 4, memory: {}}}}}\n",
            1 + index % 8,
            index % 10,
            (index + 1) * 1000
        ));
    }
    let config = ClusterConfig::from_yaml(&text).unwrap();
    // 10,000 distinct shapes (no two alike, so none merge), 1-3 requests each.
    let shapes = (0..10_000)
        .map(|index| {
            let custom = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"][index % 10];
            let cpu = 0.5 + (index % 4) as f64 * 0.25 + index as f64 * 1e-6;
            ShapeDemand {
                shape: shape(&[("CPU", cpu), (custom, 0.01 * (1 + index % 7) as f64)]),
                count: 1 + (index % 3) as u64,
            }
        })
        .collect();
    let started = Instant::now();
    let plan = plan(&config, &[], &Demand { shapes, ..Demand::default() });
    println!("planned 10,000 shapes over 50 types in {:?}: {} launches", started.elapsed(), plan.launches());
}

fn arb_shape() -> impl Strategy<Value = Shape> {
    proptest::collection::btree_map(prop::sample::select(vec!["CPU", "GPU", "a", "b"]), 0.25f64..3.0, 1..3).prop_map(
        |map| map.into_iter().map(|(name, amount)| (name.to_string(), (amount * 4.0).round() / 4.0)).collect(),
    )
}

fn arb_config() -> impl Strategy<Value = ClusterConfig> {
    (proptest::collection::vec((arb_shape(), 0u32..2, 0u32..5), 1..5), 1u32..12).prop_map(|(types, max_workers)| {
        let mut text = format!("max_workers: {max_workers}\nhead_node_type: head\nprovider: {{type: local}}\navailable_node_types:\n  head: {{resources: {{CPU: 0}}, max_workers: 0}}\n");
        for (index, (resources, min, max)) in types.into_iter().enumerate() {
            let resources: Vec<String> = resources.iter().map(|(name, amount)| format!("{name}: {amount}")).collect();
            text.push_str(&format!("  t{index}: {{resources: {{{}}}, min_workers: {}, max_workers: {}}}\n", resources.join(", "), min.min(max), max));
        }
        ClusterConfig::from_yaml(&text).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn plans_keep_their_promises(
        config in arb_config(),
        shapes in proptest::collection::vec((arb_shape(), 1u64..20), 0..6),
        groups in proptest::collection::vec((proptest::collection::vec(arb_shape(), 1..4), 0usize..4), 0..3),
        nodes in proptest::collection::vec((0usize..5, any::<bool>(), any::<bool>(), 0u64..200), 0..6),
    ) {
        let types: Vec<String> = config.available_node_types.keys().filter(|name| *name != "head").cloned().collect();
        let nodes: Vec<NodeView> = nodes.into_iter().enumerate().map(|(index, (kind, busy, pending, idle))| {
            let node_type = types[kind % types.len()].clone();
            let total = config.available_node_types[&node_type].resources.clone();
            let available = if busy { total.keys().map(|name| (name.clone(), 0.0)).collect() } else { total.clone() };
            NodeView { id: format!("n{index}"), node_type, is_head: false, pending, total, available,
                       idle_for: Duration::from_secs(if busy { 0 } else { idle }) }
        }).collect();
        let strategies = [PlacementStrategy::Pack, PlacementStrategy::Spread, PlacementStrategy::StrictPack, PlacementStrategy::StrictSpread];
        let demand = Demand {
            shapes: shapes.iter().map(|(shape, count)| ShapeDemand { shape: shape.clone(), count: *count }).collect(),
            groups: groups.iter().map(|(bundles, strategy)| GroupDemand { bundles: bundles.clone(), strategy: strategies[*strategy] }).collect(),
            requested: Vec::new(),
        };
        let plan = plan(&config, &nodes, &demand);

        // Every launched node is usable by some demand (or kept by min_workers).
        for (node_type, reasons) in &plan.launch {
            let resources = &config.available_node_types[node_type].resources;
            for reason in reasons {
                let usable = match reason {
                    LaunchReason::MinWorkers => config.available_node_types[node_type].min_workers > 0,
                    LaunchReason::Tasks => demand.shapes.iter().any(|demand| fits(resources, &demand.shape) > 0),
                    LaunchReason::PlacementGroup => demand.groups.iter().any(|group| {
                        group.bundles.iter().any(|bundle| fits(resources, bundle) > 0)
                            || fits(resources, &sum(&group.bundles)) > 0
                    }),
                    LaunchReason::Requested => false,
                };
                prop_assert!(usable, "{node_type} launched for {reason:?} fits none of {demand:?}");
            }
        }
        // Limits hold.
        prop_assert!(plan.launches() == 0 || nodes.len() + plan.launches() <= config.max_workers as usize);
        for (node_type, kind) in &config.available_node_types {
            let had = nodes.iter().filter(|node| &node.node_type == node_type).count();
            prop_assert!(plan.count(node_type) == 0 || had + plan.count(node_type) <= kind.max_workers as usize);
        }
        // Nothing that holds work, is launching, or is the head is terminated.
        for id in &plan.terminate {
            let node = nodes.iter().find(|node| &node.id == id).unwrap();
            prop_assert!(node.is_idle() && !node.is_head && node.idle_for >= config.idle_timeout());
        }
        // Infeasible demand fits no type.
        for demand in &plan.infeasible {
            prop_assert!(config.available_node_types.values().all(|kind| kind.max_workers == 0 || fits(&kind.resources, &demand.shape) == 0));
        }
    }
}
