//! The ledger toward the GCS: which cluster view counts, a node the view marks
//! draining, and the demand it reports.

use super::*;

#[test]
fn a_restarted_gcs_view_replaces_the_old_one_whatever_its_version() {
    use manta_proto::gcs::ClusterViewEvent;
    let mut harness = Harness::new();
    let view = |incarnation, version| ClusterViewEvent::whole(incarnation, version, Vec::new());
    let now = harness.now;
    harness.ledger.cluster_view(view(1, 50), now);
    harness.ledger.cluster_view(view(1, 49), now);
    assert_eq!(harness.ledger.view().map(|view| view.version), Some(50), "an older version of the same GCS is ignored");
    harness.ledger.cluster_view(view(2, 1), now);
    assert_eq!(
        harness.ledger.view().map(|view| (view.incarnation, view.version)),
        Some((2, 1)),
        "a new GCS start wins"
    );
    harness.ledger.cluster_view(view(1, 99), now);
    assert_eq!(harness.ledger.view().map(|view| view.incarnation), Some(2), "the dead GCS's views are ignored");
    harness.ledger.forget_view();
    assert!(harness.ledger.view().is_none());
    harness.finish();
}

#[test]
fn deltas_apply_on_their_base_and_a_gap_asks_for_the_whole_view() {
    use manta_proto::gcs::{ClusterViewEvent, NodeResources};
    let mut harness = Harness::new();
    let now = harness.now;
    let entry = |node_id, draining| NodeResources {
        node_id,
        address: "127.0.0.1:7".into(),
        total: ResourceSet::new(),
        available: ResourceSet::new(),
        labels: Default::default(),
        pending_demand: Vec::new(),
        draining,
    };
    let own = harness.ledger.node_id();
    let delta = |base, version, nodes| ClusterViewEvent {
        base_version: Some(base),
        ..ClusterViewEvent::whole(1, version, nodes)
    };
    let effects = harness.ledger.cluster_view(delta(0, 1, vec![]), now);
    assert!(matches!(effects[..], [Effect::NeedWholeView]), "a delta with no view to apply it to");
    assert!(harness.ledger.view().is_none());
    harness.ledger.cluster_view(ClusterViewEvent::whole(1, 3, vec![entry(own, false)]), now);
    harness.ledger.cluster_view(delta(3, 4, vec![entry(own, true)]), now);
    assert!(harness.ledger.draining(), "the delta marked this node draining");
    let effects = harness.ledger.cluster_view(delta(6, 7, vec![entry(own, false)]), now);
    assert!(matches!(effects[..], [Effect::NeedWholeView]), "a delta past a missing one");
    assert!(harness.ledger.draining(), "the view held stays as it was");
    harness.finish();
}

#[test]
fn a_draining_node_grants_nothing_new_and_sends_work_elsewhere() {
    use manta_proto::gcs::{ClusterViewEvent, NodeResources};
    let mut harness = Harness::new();
    let now = harness.now;
    assert!(harness.ledger.is_idle(), "nothing held yet");
    let cpus = ResourceSet::new().with(names::CPU, Quantity::from_whole(4));
    let entry = |node_id, draining| NodeResources {
        node_id,
        address: "127.0.0.1:7".into(),
        total: cpus.clone(),
        available: cpus.clone(),
        labels: Default::default(),
        pending_demand: Vec::new(),
        draining,
    };
    let (own, other) = (harness.ledger.node_id(), NodeId::random());
    let view = ClusterViewEvent::whole(1, 1, vec![entry(own, true), entry(other, false)]);
    harness.ledger.cluster_view(view, now);
    assert!(harness.ledger.draining());
    let mut request =
        lease_request(harness.jobs[0].clone(), ResourceSet::new().with(names::CPU, Quantity::from_whole(1)));
    request.allow_spill = true;
    let (_, effects) = harness.ledger.request(request, LinkId::for_test(1), now);
    assert!(
        effects.iter().any(|effect| matches!(effect, Effect::Reschedule { node_id, .. } if *node_id == other)),
        "sent to the node that does not drain: {effects:?}"
    );
    assert!(harness.ledger.is_idle(), "it took nothing on");

    // The other node drains too: nowhere to go, the request waits (and the node is not idle).
    let view = ClusterViewEvent::whole(1, 2, vec![entry(own, true), entry(other, true)]);
    harness.ledger.cluster_view(view, now);
    let request = lease_request(harness.jobs[0].clone(), ResourceSet::new().with(names::CPU, Quantity::from_whole(1)));
    let (_, effects) = harness.ledger.request(request, LinkId::for_test(2), now);
    assert!(
        !effects.iter().any(|effect| matches!(effect, Effect::StartWorker { .. })),
        "no worker started: {effects:?}"
    );
    assert!(!harness.ledger.is_idle());
}

#[test]
fn demand_counts_each_request_and_each_caller_s_backlog_once() {
    let mut harness = Harness::new();
    let now = harness.now;
    // A shape no node has (it waits): two requests from one caller, one from another.
    let shape = ResourceSet::new().with("beta", Quantity::from_whole(1));
    let asking =
        |backlog| RequestWorkerLeaseRequest { backlog, ..lease_request(harness.jobs[0].clone(), shape.clone()) };
    let (first, second, other) = (asking(10), asking(8), asking(3));
    harness.ledger.request(first, LinkId::for_test(1), now);
    harness.ledger.request(second, LinkId::for_test(1), now);
    harness.ledger.request(other, LinkId::for_test(2), now);
    let demand = harness.ledger.pending_demand();
    assert_eq!(demand.len(), 1, "{demand:?}");
    assert_eq!(demand[0].count, 3 + 10 + 3, "three requests, the first caller's backlog once, the other's");
}
