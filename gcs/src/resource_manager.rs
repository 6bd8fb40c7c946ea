//! [`ResourceManager`]: the cluster resource view, pushed to every subscriber.
//!
//! Nodes report their totals and availability; the view is versioned and, when
//! it changed, published to the [`ViewFeed`] that the `ClusterView` channel's
//! links follow: at most once per broadcast interval (coalescing bursts of
//! reports), as a delta, and no faster than the fan-out budget allows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use manta_proto::autoscaler::{AutoscalerStatus, DemandChangedEvent};
use manta_proto::gcs::{Channel, ClusterViewEvent, NodeResources, ReportResourcesRequest};
use manta_proto::message::Event;
use manta_proto::resources::ResourceSet;
use manta_proto::{NodeId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::pubsub::PubsubMsg;
use crate::view_feed::{ViewFeed, pause_after};
use crate::{GcsConfig, GcsRefs, Shared};

/// The versioned resource view of alive nodes.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    nodes: BTreeMap<NodeId, NodeResources>,
    /// Since when each node has held no work, by its reports.
    idle_since: HashMap<NodeId, Instant>,
    /// Draining nodes that confirmed it in a report.
    drain_confirmed: HashSet<NodeId>,
    incarnation: u64,
    version: u64,
    dirty: bool,
    /// The version last published, if any.
    published: Option<u64>,
    /// Nodes that joined or changed since then.
    changed: BTreeSet<NodeId>,
    /// Nodes gone since then.
    removed: BTreeSet<NodeId>,
}

impl ClusterView {
    /// An empty view of the GCS start `incarnation`.
    pub fn new(incarnation: u64) -> Self {
        Self { incarnation, ..Self::default() }
    }

    /// Adds or replaces a node.
    pub fn upsert(&mut self, node: NodeResources) {
        self.drain_confirmed.remove(&node.node_id);
        self.changed(node.node_id);
        self.nodes.insert(node.node_id, node);
        self.touch();
    }

    /// Removes a node (it died).
    pub fn remove(&mut self, node_id: NodeId) {
        self.idle_since.remove(&node_id);
        self.drain_confirmed.remove(&node_id);
        if self.nodes.remove(&node_id).is_some() {
            self.changed.remove(&node_id);
            self.removed.insert(node_id);
            self.touch();
        }
    }

    /// Marks a node draining: the next view tells every raylet (its own
    /// included) to send it no new work.
    pub fn drain(&mut self, node_id: NodeId) -> Result<(), WireError> {
        let node = self.nodes.get_mut(&node_id).ok_or_else(|| {
            WireError::new(manta_proto::ErrorCode::NotFound, format!("node {node_id} is not alive; nothing to drain"))
        })?;
        if !node.draining {
            node.draining = true;
            self.changed(node_id);
            self.touch();
        }
        Ok(())
    }

    /// For how long `node_id` has held no work (zero while it holds any).
    pub fn idle_for(&self, node_id: &NodeId, now: Instant) -> std::time::Duration {
        self.idle_since.get(node_id).map(|since| now.saturating_duration_since(*since)).unwrap_or_default()
    }

    /// True when the node drains, said so, and holds no work.
    pub fn drained(&self, node_id: &NodeId) -> bool {
        self.drain_confirmed.contains(node_id) && self.idle_since.contains_key(node_id)
    }

    /// Applies a report. A node not in the view must register (again) first: the
    /// node table then decides whether it is fenced (a GCS that just restarted
    /// has an empty view, and its nodes are not dead).
    pub fn report(&mut self, report: ReportResourcesRequest) -> Result<(), WireError> {
        self.report_at(report, Instant::now())
    }

    /// [`ClusterView::report`] at `now`.
    pub fn report_at(&mut self, report: ReportResourcesRequest, now: Instant) -> Result<(), WireError> {
        let node = self.nodes.get_mut(&report.node_id).ok_or_else(|| {
            WireError::new(
                manta_proto::ErrorCode::NotFound,
                format!("node {} is not registered with this GCS; register first", report.node_id),
            )
        })?;
        let mut changed = false;
        if node.total != report.resources_total
            || node.available != report.resources_available
            || node.pending_demand != report.pending_demand
        {
            node.total = report.resources_total;
            node.available = report.resources_available;
            node.pending_demand = report.pending_demand;
            changed = true;
            self.changed.insert(report.node_id);
        }
        let confirmed = report.draining && node.draining;
        let was_idle = self.idle_since.contains_key(&report.node_id);
        if report.idle && !was_idle {
            self.idle_since.insert(report.node_id, now);
        } else if !report.idle {
            self.idle_since.remove(&report.node_id);
        }
        let was_confirmed = self.drain_confirmed.contains(&report.node_id);
        if confirmed != was_confirmed {
            if confirmed {
                self.drain_confirmed.insert(report.node_id);
            } else {
                self.drain_confirmed.remove(&report.node_id);
            }
        }
        if changed || report.idle != was_idle || confirmed != was_confirmed {
            // The autoscaler follows the view: an idle or drained node is news to it.
            self.touch();
        }
        Ok(())
    }

    /// What to publish, clearing the dirty flag: the whole view, and the delta
    /// from the previous publication to it (none before the first).
    pub fn take_publication(&mut self) -> (ClusterViewEvent, Option<ClusterViewEvent>) {
        self.dirty = false;
        let delta = self.published.map(|base| ClusterViewEvent {
            incarnation: self.incarnation,
            version: self.version,
            nodes: self.changed.iter().filter_map(|node_id| self.nodes.get(node_id).cloned()).collect(),
            base_version: Some(base),
            removed: self.removed.iter().copied().collect(),
        });
        self.published = Some(self.version);
        self.changed.clear();
        self.removed.clear();
        (self.snapshot(), delta)
    }

    /// The whole view as an event.
    pub fn snapshot(&self) -> ClusterViewEvent {
        ClusterViewEvent::whole(self.incarnation, self.version, self.nodes.values().cloned().collect())
    }

    /// True when the view changed since the last `take_snapshot`.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn changed(&mut self, node_id: NodeId) {
        self.removed.remove(&node_id);
        self.changed.insert(node_id);
    }

    fn touch(&mut self) {
        self.version += 1;
        self.dirty = true;
    }
}

/// The resource manager actor. Stateless; see [`ResourceState`].
#[derive(Debug, Default)]
pub struct ResourceManager;

/// Messages to the [`ResourceManager`].
#[derive(Debug)]
pub enum ResourceMsg {
    /// A node joined (or re-registered).
    NodeAdded(NodeResources),
    /// A node died.
    NodeRemoved(NodeId),
    /// A node reports its resources.
    Report(ReportResourcesRequest, RpcReplyPort<Result<(), WireError>>),
    /// The current view.
    Snapshot(RpcReplyPort<ClusterViewEvent>),
    /// Drain a node for removal.
    Drain(NodeId, RpcReplyPort<Result<(), WireError>>),
    /// `request_resources`: replaces the previous request.
    RequestResources(Vec<ResourceSet>),
    /// The autoscaler's latest state.
    AutoscalerStatus(AutoscalerStatus),
    /// The view with each node's idle time and drain state, the requested
    /// bundles and the autoscaler's state.
    Demand(RpcReplyPort<DemandView>),
    /// Timer: publish the view if it changed.
    Tick,
}

/// Start-up arguments of the [`ResourceManager`].
pub struct ResourceArgs {
    pub(crate) config: GcsConfig,
    pub(crate) view: Shared<ClusterView>,
    pub(crate) feed: Arc<ViewFeed>,
    pub(crate) refs: Arc<GcsRefs>,
}

/// What [`ResourceMsg::Demand`] answers.
#[derive(Debug, Clone)]
pub struct DemandView {
    /// Alive nodes, each with its idle time (ms) and whether it is drained.
    pub nodes: Vec<(NodeResources, u64, bool)>,
    /// The latest `request_resources` bundles.
    pub requested: Vec<ResourceSet>,
    /// The autoscaler's latest state.
    pub autoscaler: Option<AutoscalerStatus>,
}

/// State of the [`ResourceManager`].
pub struct ResourceState {
    view: Shared<ClusterView>,
    feed: Arc<ViewFeed>,
    /// Fan-out budget of the view, bytes a second (see [`GcsConfig::view_fanout_budget`]).
    budget: u64,
    /// No publication before this (the fan-out budget's pause).
    next_publication: Instant,
    /// The feed's bytes served at the last publication.
    served_then: u64,
    refs: Arc<GcsRefs>,
    ticker: JoinHandle<()>,
    requested: Vec<ResourceSet>,
    autoscaler: Option<AutoscalerStatus>,
}

impl Drop for ResourceState {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

impl Actor for ResourceManager {
    type Msg = ResourceMsg;
    type State = ResourceState;
    type Arguments = ResourceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ResourceMsg>,
        args: ResourceArgs,
    ) -> Result<ResourceState, ActorProcessingErr> {
        let ticker = myself.send_interval(args.config.view_broadcast_interval, || ResourceMsg::Tick);
        Ok(ResourceState {
            view: args.view,
            feed: args.feed,
            budget: args.config.view_fanout_budget,
            next_publication: Instant::now(),
            served_then: 0,
            refs: args.refs,
            ticker,
            requested: Vec::new(),
            autoscaler: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ResourceMsg>,
        message: ResourceMsg,
        state: &mut ResourceState,
    ) -> Result<(), ActorProcessingErr> {
        let mut view = state.view.lock();
        match message {
            ResourceMsg::NodeAdded(node) => view.upsert(node),
            ResourceMsg::NodeRemoved(node_id) => view.remove(node_id),
            ResourceMsg::Report(report, reply) => {
                let _ = reply.send(view.report(report));
            }
            ResourceMsg::Snapshot(reply) => {
                let _ = reply.send(view.snapshot());
            }
            ResourceMsg::Drain(node_id, reply) => {
                let _ = reply.send(view.drain(node_id));
            }
            ResourceMsg::RequestResources(bundles) => {
                if state.requested != bundles {
                    state.requested = bundles;
                    if let Ok(pubsub) = state.refs.pubsub() {
                        let _ = pubsub.cast(PubsubMsg::Publish(Event::DemandChanged(DemandChangedEvent {})));
                    }
                }
            }
            ResourceMsg::AutoscalerStatus(status) => state.autoscaler = Some(status),
            ResourceMsg::Demand(reply) => {
                let now = Instant::now();
                let nodes = view
                    .nodes
                    .values()
                    .map(|node| {
                        let idle_ms = view.idle_for(&node.node_id, now).as_millis() as u64;
                        (node.clone(), idle_ms, view.drained(&node.node_id))
                    })
                    .collect();
                let _ = reply.send(DemandView {
                    nodes,
                    requested: state.requested.clone(),
                    autoscaler: state.autoscaler.clone(),
                });
            }
            ResourceMsg::Tick => {
                let now = Instant::now();
                if view.is_dirty()
                    && now >= state.next_publication
                    && let Ok(pubsub) = state.refs.pubsub()
                {
                    // What the last publication cost, every link's copy (and new links' whole views).
                    let served = state.feed.served_bytes();
                    let fanout = served - state.served_then;
                    state.served_then = served;
                    state.next_publication = now + pause_after(fanout, state.budget);
                    let (whole, delta) = view.take_publication();
                    state.feed.publish(whole, delta);
                    let _ = pubsub.cast(PubsubMsg::FeedChanged(Channel::ClusterView));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::ErrorCode;
    use manta_proto::resources::{Quantity, ResourceSet};

    use super::*;

    fn node(node_id: NodeId, cpus: u64) -> NodeResources {
        let set = ResourceSet::new().with("CPU", Quantity::from_whole(cpus));
        NodeResources {
            node_id,
            address: "a".into(),
            total: set.clone(),
            available: set,
            labels: Default::default(),
            pending_demand: Vec::new(),
            draining: false,
        }
    }

    #[test]
    fn versions_and_dirty_flag() {
        let mut view = ClusterView::default();
        let id = NodeId::random();
        view.upsert(node(id, 2));
        assert!(view.is_dirty());
        let first = view.take_publication().0;
        assert!(!view.is_dirty());
        let unchanged = ReportResourcesRequest {
            node_id: id,
            resources_total: first.nodes[0].total.clone(),
            resources_available: first.nodes[0].available.clone(),
            pending_demand: Vec::new(),
            idle: false,
            draining: false,
        };
        view.report(unchanged).unwrap();
        assert!(!view.is_dirty(), "an identical report is not a change");
        let busy = ReportResourcesRequest {
            node_id: id,
            resources_total: first.nodes[0].total.clone(),
            resources_available: ResourceSet::new(),
            pending_demand: Vec::new(),
            idle: false,
            draining: false,
        };
        view.report(busy).unwrap();
        assert!(view.take_publication().0.version > first.version);
    }

    #[test]
    fn each_publication_carries_the_delta_from_the_one_before() {
        let mut view = ClusterView::default();
        let (a, b, c) = (NodeId::random(), NodeId::random(), NodeId::random());
        view.upsert(node(a, 1));
        view.upsert(node(b, 1));
        let (mut follower, none) = view.take_publication();
        assert!(none.is_none(), "the first publication is whole only");
        let report = ReportResourcesRequest {
            node_id: a,
            resources_total: ResourceSet::new().with("CPU", Quantity::from_whole(1)),
            resources_available: ResourceSet::new(),
            pending_demand: Vec::new(),
            idle: false,
            draining: false,
        };
        view.report(report).unwrap();
        view.upsert(node(c, 4));
        view.remove(b);
        view.drain(c).unwrap();
        let (whole, delta) = view.take_publication();
        let delta = delta.expect("a delta");
        assert_eq!(delta.nodes.iter().map(|node| node.node_id).collect::<BTreeSet<_>>(), BTreeSet::from([a, c]));
        assert_eq!(delta.removed, vec![b]);
        assert_eq!(follower.apply(delta), manta_proto::gcs::ViewUpdate::Applied);
        assert_eq!(follower, whole, "a follower applying the delta has the whole view");
    }

    #[test]
    fn unknown_reporter_must_register() {
        let mut view = ClusterView::default();
        let report = ReportResourcesRequest {
            node_id: NodeId::random(),
            resources_total: ResourceSet::new(),
            resources_available: ResourceSet::new(),
            pending_demand: Vec::new(),
            idle: false,
            draining: false,
        };
        assert_eq!(view.report(report).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn removed_nodes_leave_the_view() {
        let mut view = ClusterView::default();
        let (a, b) = (NodeId::random(), NodeId::random());
        view.upsert(node(a, 1));
        view.upsert(node(b, 1));
        view.remove(a);
        let snapshot = view.take_publication().0;
        assert_eq!(snapshot.nodes.len(), 1);
        assert_eq!(snapshot.nodes[0].node_id, b);
    }

    #[test]
    fn idle_time_and_drain_follow_the_reports() {
        let mut view = ClusterView::default();
        let id = NodeId::random();
        view.upsert(node(id, 1));
        let t0 = Instant::now();
        let report = |idle: bool, draining: bool| ReportResourcesRequest {
            node_id: id,
            resources_total: ResourceSet::new().with("CPU", Quantity::from_whole(1)),
            resources_available: ResourceSet::new().with("CPU", Quantity::from_whole(1)),
            pending_demand: Vec::new(),
            idle,
            draining,
        };
        view.report_at(report(true, false), t0).unwrap();
        view.report_at(report(true, false), t0 + std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(view.idle_for(&id, t0 + std::time::Duration::from_secs(7)).as_secs(), 7, "idle since the first");
        view.report_at(report(false, false), t0).unwrap();
        assert_eq!(view.idle_for(&id, t0 + std::time::Duration::from_secs(9)).as_secs(), 0, "busy again");

        assert!(!view.drained(&id));
        view.take_publication();
        view.drain(id).unwrap();
        let snapshot = view.take_publication().0;
        assert!(snapshot.nodes[0].draining, "the raylets learn it from the view");
        view.report_at(report(false, true), t0).unwrap();
        assert!(!view.drained(&id), "draining but still busy");
        view.report_at(report(true, true), t0).unwrap();
        assert!(view.drained(&id));
        assert!(view.is_dirty(), "a drained node is news for the autoscaler");
        assert_eq!(view.drain(NodeId::random()).unwrap_err().code, ErrorCode::NotFound);
    }
}
