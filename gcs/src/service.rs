//! [`GcsService`]: requests on the GCS port, turned into messages for the GCS actors.

use std::sync::Arc;

use manta_proto::gcs::*;
use manta_proto::message::{Reply, Request};
use manta_proto::net::{BoxFuture, PeerHandle, Service};
use manta_proto::node::NodeState;
use manta_proto::{ErrorCode, WireError};

use manta_proto::task::{GetNamedActorReply, ListStateReply, RegisterActorReply, StateTable};

use crate::actor_directory::DirectoryMsg;
use crate::job_manager::JobMsg;
use crate::kv::KvMsg;
use crate::node_manager::NodeManagerMsg;
use crate::pubsub::PubsubMsg;
use crate::resource_manager::ResourceMsg;
use crate::task_events::TaskEventsMsg;
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

    fn event(&self, _peer: &PeerHandle, event: manta_proto::message::Event) {
        if let manta_proto::message::Event::TaskEvents(batch) = event
            && let Ok(tasks) = self.refs.task_events()
        {
            let _ = tasks.cast(TaskEventsMsg::Report(batch));
        }
    }

    fn disconnected(&self, peer: &PeerHandle, _reason: &str) {
        if let Ok(pubsub) = self.refs.pubsub() {
            let _ = pubsub.cast(PubsubMsg::LinkClosed(peer.id()));
        }
        if let Ok(jobs) = self.refs.job_manager() {
            let _ = jobs.cast(JobMsg::LinkClosed(peer.id()));
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
                    node.pending_demand = current.pending_demand.clone();
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
        Request::RegisterJob(request) => {
            let link_id = peer.id();
            let reply = ask(&refs.job_manager()?, |port| JobMsg::Register(request, link_id, port)).await?;
            Ok(Reply::RegisterJob(reply))
        }
        Request::FinishJob(request) => {
            refs.job_manager()?
                .cast(JobMsg::Finish(request.job_id))
                .map_err(|_| WireError::internal("job manager stopped"))?;
            Ok(Reply::Ack)
        }
        Request::RegisterActor(request) => {
            let existing = ask(&refs.actor_directory()?, |port| DirectoryMsg::Register(request.info, port)).await?;
            Ok(Reply::RegisterActor(RegisterActorReply { existing }))
        }
        Request::GetNamedActor(request) => {
            let info = ask(&refs.actor_directory()?, |port| DirectoryMsg::Named(request.namespace, request.name, port))
                .await?;
            Ok(Reply::GetNamedActor(GetNamedActorReply { info }))
        }
        Request::UnregisterActor(request) => {
            let _ = refs.actor_directory()?.cast(DirectoryMsg::Remove(request.actor_id));
            Ok(Reply::Ack)
        }
        Request::ListState(request) => {
            let limit = request.limit;
            let reply = match request.table {
                StateTable::Jobs => {
                    ListStateReply::Jobs(ask(&refs.job_manager()?, |port| JobMsg::List(limit, port)).await?)
                }
                StateTable::Actors => {
                    ListStateReply::Actors(ask(&refs.actor_directory()?, |port| DirectoryMsg::List(limit, port)).await?)
                }
                StateTable::Tasks => {
                    let (tasks, dropped) = ask(&refs.task_events()?, |port| TaskEventsMsg::List(limit, port)).await?;
                    ListStateReply::Tasks { tasks, dropped }
                }
            };
            Ok(Reply::ListState(reply))
        }
        other => Err(WireError::new(
            ErrorCode::Unimplemented,
            format!("{} is not a GCS request; send it to a node or worker address", other.name()),
        )),
    }
}
