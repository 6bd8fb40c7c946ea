//! [`NodeManager`]: registers, drains and buries nodes, and tells the other GCS actors.

use std::collections::HashMap;
use std::sync::Arc;

use manta_proto::gcs::{NodeChangeEvent, NodeResources, RegisterNodeReply, RegisterNodeRequest};
use manta_proto::message::Event;
use manta_proto::net::{LinkId, PeerHandle};
use manta_proto::node::NodeInfo;
use manta_proto::{NodeId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::health_checker::HealthMsg;
use crate::node_table::{NodeTable, RegisterOutcome};
use crate::pubsub::PubsubMsg;
use crate::resource_manager::ResourceMsg;
use crate::{GcsRefs, Shared, now_ms};

/// The node manager actor. Stateless; see [`NodeManagerState`].
#[derive(Debug, Default)]
pub struct NodeManager;

/// Messages to the [`NodeManager`].
#[derive(Debug)]
pub enum NodeManagerMsg {
    /// A node registers over `peer`; a dead id is refused (fenced).
    Register(RegisterNodeRequest, PeerHandle, RpcReplyPort<Result<RegisterNodeReply, WireError>>),
    /// A node leaves on purpose; it is marked dead with the given reason.
    /// A node leaves (asked on link `LinkId`: only the node itself may).
    Drain(NodeId, String, LinkId, RpcReplyPort<Result<(), WireError>>),
    /// The health checker gave up on a node.
    MarkDead(NodeId, String),
    /// The whole node table.
    GetAll(RpcReplyPort<Vec<NodeInfo>>),
}

/// Start-up arguments and state of the [`NodeManager`].
pub struct NodeManagerState {
    /// The node table, shared with the supervisor so it survives a restart.
    pub(crate) table: Shared<NodeTable>,
    /// Links of alive nodes, to close when a node is declared dead.
    pub(crate) links: Shared<HashMap<NodeId, PeerHandle>>,
    /// Sibling actors.
    pub(crate) refs: Arc<GcsRefs>,
    /// Health-check settings (a node's fence is derived from them).
    pub(crate) config: crate::GcsConfig,
}

impl Actor for NodeManager {
    type Msg = NodeManagerMsg;
    type State = NodeManagerState;
    type Arguments = NodeManagerState;

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeManagerMsg>,
        state: NodeManagerState,
    ) -> Result<NodeManagerState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeManagerMsg>,
        message: NodeManagerMsg,
        state: &mut NodeManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeManagerMsg::Register(request, peer, reply) => {
                let _ = reply.send(register(state, request, peer));
            }
            NodeManagerMsg::Drain(node_id, reason, from, reply) => {
                let own_link = state.links.lock().get(&node_id).is_some_and(|link| link.id() == from);
                if !own_link {
                    let _ = reply.send(Err(WireError::new(
                        manta_proto::ErrorCode::PermissionDenied,
                        format!("DrainNode for node {node_id} may come only from that node's own link"),
                    )));
                    return Ok(());
                }
                let known = state.table.lock().get(node_id).is_some();
                if !known {
                    let _ = reply.send(Err(WireError::new(
                        manta_proto::ErrorCode::NotFound,
                        format!("node {node_id} is not part of this cluster"),
                    )));
                    return Ok(());
                }
                bury(state, node_id, &reason);
                let _ = reply.send(Ok(()));
            }
            NodeManagerMsg::MarkDead(node_id, reason) => bury(state, node_id, &reason),
            NodeManagerMsg::GetAll(reply) => {
                let rows = state.table.lock().rows().to_vec();
                let _ = reply.send(rows);
            }
        }
        Ok(())
    }
}

fn register(
    state: &mut NodeManagerState,
    request: RegisterNodeRequest,
    peer: PeerHandle,
) -> Result<RegisterNodeReply, WireError> {
    let outcome = state.table.lock().register(request, now_ms())?;
    let (node, reattached) = match outcome {
        RegisterOutcome::Added(node) => {
            info!(node_id = %node.node_id, address = %node.address, is_head = node.is_head, "node joined");
            (node, false)
        }
        RegisterOutcome::Reattached(node) => {
            info!(node_id = %node.node_id, address = %node.address, "node reconnected");
            (node, true)
        }
    };
    state.links.lock().insert(node.node_id, peer.clone());
    if let Ok(health) = state.refs.health_checker() {
        let _ = health.cast(HealthMsg::Watch(node.node_id, peer));
    }
    if let Ok(resources) = state.refs.resource_manager() {
        let _ = resources.cast(ResourceMsg::NodeAdded(NodeResources {
            node_id: node.node_id,
            address: node.address.clone(),
            total: node.resources_total.clone(),
            available: node.resources_available.clone(),
            labels: node.labels.clone(),
            pending_demand: Vec::new(),
            draining: false,
        }));
    }
    if !reattached {
        publish(state, &node);
    }
    if let Ok(submissions) = state.refs.submissions() {
        let _ = submissions.cast(crate::submission_manager::SubmissionMsg::PlacePending);
    }
    let config = &state.config;
    let declared_dead_after = config.health_check_period * config.health_check_failure_threshold;
    let fence_after_ms = (declared_dead_after / 2).as_millis() as u64;
    Ok(RegisterNodeReply { node, reattached, fence_after_ms })
}

/// Marks a node dead, tells everyone, and closes its link (fencing it).
fn bury(state: &mut NodeManagerState, node_id: NodeId, reason: &str) {
    let Some(node) = state.table.lock().mark_dead(node_id, reason, now_ms()) else {
        return;
    };
    warn!(%node_id, address = %node.address, %reason, "node is DEAD");
    if let Ok(health) = state.refs.health_checker() {
        let _ = health.cast(HealthMsg::Unwatch(node_id));
    }
    if let Ok(resources) = state.refs.resource_manager() {
        let _ = resources.cast(ResourceMsg::NodeRemoved(node_id));
    }
    if let Ok(groups) = state.refs.placement_groups() {
        let _ = groups.cast(crate::placement::PlacementMsg::NodeDead(node_id));
    }
    if let Ok(directory) = state.refs.actor_directory() {
        let _ = directory.cast(crate::actor_directory::DirectoryMsg::NodeDead(node_id));
    }
    if let Ok(submissions) = state.refs.submissions() {
        let _ = submissions.cast(crate::submission_manager::SubmissionMsg::NodeDead(node_id));
    }
    publish(state, &node);
    if let Some(link) = state.links.lock().remove(&node_id) {
        link.close();
    }
}

fn publish(state: &NodeManagerState, node: &NodeInfo) {
    if let Ok(pubsub) = state.refs.pubsub() {
        let _ = pubsub.cast(PubsubMsg::Publish(Event::NodeChange(NodeChangeEvent { node: node.clone() })));
    }
}
