//! [`ResourceManager`]: the cluster resource view, pushed to every subscriber.
//!
//! Nodes report their totals and availability; the view is versioned and, when
//! it changed, published on the `ClusterView` channel at most once per
//! broadcast interval (coalescing bursts of reports).

use std::collections::BTreeMap;
use std::sync::Arc;

use manta_proto::gcs::{ClusterViewEvent, NodeResources, ReportResourcesRequest};
use manta_proto::message::Event;
use manta_proto::{NodeId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::pubsub::PubsubMsg;
use crate::{GcsConfig, GcsRefs, Shared};

/// The versioned resource view of alive nodes.
#[derive(Debug, Default, Clone)]
pub struct ClusterView {
    nodes: BTreeMap<NodeId, NodeResources>,
    incarnation: u64,
    version: u64,
    dirty: bool,
}

impl ClusterView {
    /// An empty view of the GCS start `incarnation`.
    pub fn new(incarnation: u64) -> Self {
        Self { incarnation, ..Self::default() }
    }

    /// Adds or replaces a node.
    pub fn upsert(&mut self, node: NodeResources) {
        self.nodes.insert(node.node_id, node);
        self.touch();
    }

    /// Removes a node (it died).
    pub fn remove(&mut self, node_id: NodeId) {
        if self.nodes.remove(&node_id).is_some() {
            self.touch();
        }
    }

    /// Applies a report. A node not in the view must register (again) first: the
    /// node table then decides whether it is fenced (a GCS that just restarted
    /// has an empty view, and its nodes are not dead).
    pub fn report(&mut self, report: ReportResourcesRequest) -> Result<(), WireError> {
        let node = self.nodes.get_mut(&report.node_id).ok_or_else(|| {
            WireError::new(
                manta_proto::ErrorCode::NotFound,
                format!("node {} is not registered with this GCS; register first", report.node_id),
            )
        })?;
        if node.total != report.resources_total
            || node.available != report.resources_available
            || node.pending_demand != report.pending_demand
        {
            node.total = report.resources_total;
            node.available = report.resources_available;
            node.pending_demand = report.pending_demand;
            self.touch();
        }
        Ok(())
    }

    /// The view as an event, clearing the dirty flag.
    pub fn take_snapshot(&mut self) -> ClusterViewEvent {
        self.dirty = false;
        self.snapshot()
    }

    /// The view as an event.
    pub fn snapshot(&self) -> ClusterViewEvent {
        ClusterViewEvent {
            incarnation: self.incarnation,
            version: self.version,
            nodes: self.nodes.values().cloned().collect(),
        }
    }

    /// True when the view changed since the last `take_snapshot`.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Marks the view for publication even if nothing changed (a new subscriber).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
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
    /// Publish the view at the next tick even if unchanged (a new subscriber).
    Republish,
    /// Timer: publish the view if it changed.
    Tick,
}

/// Start-up arguments of the [`ResourceManager`].
pub struct ResourceArgs {
    pub(crate) config: GcsConfig,
    pub(crate) view: Shared<ClusterView>,
    pub(crate) refs: Arc<GcsRefs>,
}

/// State of the [`ResourceManager`].
pub struct ResourceState {
    view: Shared<ClusterView>,
    refs: Arc<GcsRefs>,
    ticker: JoinHandle<()>,
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
        Ok(ResourceState { view: args.view, refs: args.refs, ticker })
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
            ResourceMsg::Republish => view.mark_dirty(),
            ResourceMsg::Tick => {
                if view.is_dirty()
                    && let Ok(pubsub) = state.refs.pubsub()
                {
                    let _ = pubsub.cast(PubsubMsg::Publish(Event::ClusterView(view.take_snapshot())));
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
        }
    }

    #[test]
    fn versions_and_dirty_flag() {
        let mut view = ClusterView::default();
        let id = NodeId::random();
        view.upsert(node(id, 2));
        assert!(view.is_dirty());
        let first = view.take_snapshot();
        assert!(!view.is_dirty());
        let unchanged = ReportResourcesRequest {
            node_id: id,
            resources_total: first.nodes[0].total.clone(),
            resources_available: first.nodes[0].available.clone(),
            pending_demand: Vec::new(),
        };
        view.report(unchanged).unwrap();
        assert!(!view.is_dirty(), "an identical report is not a change");
        let busy = ReportResourcesRequest {
            node_id: id,
            resources_total: first.nodes[0].total.clone(),
            resources_available: ResourceSet::new(),
            pending_demand: Vec::new(),
        };
        view.report(busy).unwrap();
        assert!(view.take_snapshot().version > first.version);
    }

    #[test]
    fn unknown_reporter_must_register() {
        let mut view = ClusterView::default();
        let report = ReportResourcesRequest {
            node_id: NodeId::random(),
            resources_total: ResourceSet::new(),
            resources_available: ResourceSet::new(),
            pending_demand: Vec::new(),
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
        let snapshot = view.take_snapshot();
        assert_eq!(snapshot.nodes.len(), 1);
        assert_eq!(snapshot.nodes[0].node_id, b);
    }
}
