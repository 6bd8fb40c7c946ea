//! [`GcsService`]: requests on the GCS port, turned into messages for the GCS actors.

use std::sync::Arc;

use manta_proto::gcs::*;
use manta_proto::message::{Reply, Request};
use manta_proto::net::{BoxFuture, PeerHandle, Service};
use manta_proto::node::NodeState;
use manta_proto::{ErrorCode, WireError};

use crate::kv::KvMsg;
use crate::node_manager::NodeManagerMsg;
use crate::pubsub::PubsubMsg;
use crate::resource_manager::ResourceMsg;
use crate::{GcsRefs, ask};

/// The GCS's request handler, shared by every link to the GCS port.
pub struct GcsService {
    refs: Arc<GcsRefs>,
}

impl GcsService {
    pub(crate) fn new(refs: Arc<GcsRefs>) -> Self {
        Self { refs }
    }

    /// The GCS actors, for in-process callers (the head's own node, tests).
    pub fn refs(&self) -> &Arc<GcsRefs> {
        &self.refs
    }
}

impl Service for GcsService {
    fn request(&self, peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let refs = self.refs.clone();
        let peer = peer.clone();
        Box::pin(async move { handle(&refs, peer, request).await })
    }

    fn disconnected(&self, peer: &PeerHandle, _reason: &str) {
        if let Ok(pubsub) = self.refs.pubsub() {
            let _ = pubsub.cast(PubsubMsg::LinkClosed(peer.id()));
        }
    }
}

async fn handle(refs: &GcsRefs, peer: PeerHandle, request: Request) -> Result<Reply, WireError> {
    match request {
        Request::RegisterNode(request) => {
            let reply = ask(&refs.node_manager()?, |port| NodeManagerMsg::Register(request, peer, port)).await??;
            Ok(Reply::RegisterNode(reply))
        }
        Request::DrainNode(request) => {
            ask(&refs.node_manager()?, |port| NodeManagerMsg::Drain(request.node_id, request.reason, port)).await??;
            Ok(Reply::Ack)
        }
        Request::ReportResources(request) => {
            ask(&refs.resource_manager()?, |port| ResourceMsg::Report(request, port)).await??;
            Ok(Reply::Ack)
        }
        Request::GetAllNodes(_) => {
            let mut nodes = ask(&refs.node_manager()?, NodeManagerMsg::GetAll).await?;
            let view = ask(&refs.resource_manager()?, ResourceMsg::Snapshot).await?;
            for node in nodes.iter_mut().filter(|node| node.state == NodeState::Alive) {
                if let Some(current) = view.nodes.iter().find(|entry| entry.node_id == node.node_id) {
                    node.resources_total = current.total.clone();
                    node.resources_available = current.available.clone();
                }
            }
            Ok(Reply::GetAllNodes(GetAllNodesReply { nodes }))
        }
        Request::KvPut(request) => {
            let added = ask(&refs.kv()?, |port| KvMsg::Put(request, port)).await?;
            Ok(Reply::KvPut(KvPutReply { added }))
        }
        Request::KvGet(request) => {
            let value = ask(&refs.kv()?, |port| KvMsg::Get(request, port)).await?;
            Ok(Reply::KvGet(KvGetReply { value }))
        }
        Request::KvDel(request) => {
            let deleted = ask(&refs.kv()?, |port| KvMsg::Del(request, port)).await?;
            Ok(Reply::KvDel(KvDelReply { deleted }))
        }
        Request::KvKeys(request) => {
            let keys = ask(&refs.kv()?, |port| KvMsg::Keys(request, port)).await?;
            Ok(Reply::KvKeys(KvKeysReply { keys }))
        }
        Request::Subscribe(request) => {
            let wants_view = request.channels.contains(&Channel::ClusterView);
            ask(&refs.pubsub()?, |port| PubsubMsg::Subscribe(peer, request.channels, port)).await?;
            if wants_view {
                let _ = refs.resource_manager()?.cast(ResourceMsg::Republish);
            }
            Ok(Reply::Ack)
        }
        other @ (Request::HealthCheck(_) | Request::GetNodeStats(_)) => Err(WireError::new(
            ErrorCode::Unimplemented,
            format!("{} is a node request; send it to a node's address, not the GCS port", other.name()),
        )),
    }
}
