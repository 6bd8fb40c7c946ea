//! [`GcsService`]: requests on the GCS port, turned into messages for the GCS actors.

use std::sync::Arc;

use manta_proto::gcs::*;
use manta_proto::message::{Reply, Request};
use manta_proto::net::{BoxFuture, PeerHandle, Service};
use manta_proto::node::NodeState;
use manta_proto::{ErrorCode, WireError};

use std::time::Duration;

use manta_proto::placement::PlacementGroupReply;
use manta_proto::task::{GetNamedActorReply, RegisterActorReply, StateTable};
use ractor::RpcReplyPort;

use crate::actor_directory::DirectoryMsg;
use crate::job_manager::JobMsg;
use crate::kv::KvMsg;
use crate::node_manager::NodeManagerMsg;
use crate::packages::PackageMsg;
use crate::placement::PlacementMsg;
use crate::pubsub::PubsubMsg;
use crate::resource_manager::ResourceMsg;
use crate::submission_manager::SubmissionMsg;
use crate::task_events::TaskEventsMsg;
use crate::{GcsRefs, ask};
use manta_proto::submission::{GetSubmissionReply, ListSubmissionsReply, StopSubmissionReply};

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
        // A change is acknowledged only once it is durable (its group commit is done);
        // which requests change durable tables is said once, in `manta_proto::rpc`.
        let durable = request.spec().durable;
        let method = request.name();
        let answer = self.answer(peer, request);
        let started = std::time::Instant::now();
        Box::pin(async move {
            let mut reply = answer.await;
            if durable && let Err(error) = refs.storage().flush().await {
                // Not durable: never a false success.
                reply = Err(WireError::new(ErrorCode::Unavailable, error.to_string()));
            }
            metrics::histogram!("manta_gcs_request_latency_seconds", "Method" => method)
                .record(started.elapsed().as_secs_f64());
            reply
        })
    }

    fn event(&self, _peer: &PeerHandle, event: manta_proto::message::Event) {
        match event {
            manta_proto::message::Event::TaskEvents(batch) => {
                if let Ok(tasks) = self.refs.task_events() {
                    let _ = tasks.cast(TaskEventsMsg::Report(batch));
                }
            }
            manta_proto::message::Event::ActorPanicked(panicked) => {
                if let Ok(directory) = self.refs.actor_directory() {
                    let _ = directory.cast(DirectoryMsg::Panicked(panicked));
                }
            }
            manta_proto::message::Event::DriverLog(chunk) => {
                if let Ok(pubsub) = self.refs.pubsub() {
                    let _ = pubsub.cast(PubsubMsg::Publish(manta_proto::message::Event::DriverLog(chunk)));
                }
            }
            manta_proto::message::Event::ActorWorkerDied(died) => {
                if let Ok(directory) = self.refs.actor_directory() {
                    let _ = directory.cast(DirectoryMsg::WorkerDied(died));
                }
            }
            _ => {}
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

impl GcsService {
    fn answer(&self, peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let refs = self.refs.clone();
        // Placement group requests reach their manager in the order they came on a link
        // (a create sent without waiting, then a wait for it), so they are queued here.
        if matches!(
            request,
            Request::CreatePlacementGroup(_)
                | Request::RemovePlacementGroup(_)
                | Request::GetPlacementGroup(_)
                | Request::WaitPlacementGroup(_)
        ) {
            return placement_request(&refs, request);
        }
        let peer = peer.clone();
        Box::pin(async move { handle(&refs, peer, request).await })
    }
}

/// Queues a placement group request with its manager now.
fn placement_request(refs: &GcsRefs, request: Request) -> BoxFuture<Result<Reply, WireError>> {
    fn queued<T: Send + 'static>(
        refs: &GcsRefs,
        build: impl FnOnce(RpcReplyPort<T>) -> PlacementMsg,
        answer: impl FnOnce(T) -> Result<Reply, WireError> + Send + 'static,
    ) -> BoxFuture<Result<Reply, WireError>> {
        let (sender, receiver) = ractor::concurrency::oneshot();
        let sent = refs.placement_groups().and_then(|groups| {
            groups.cast(build(sender.into())).map_err(|_| WireError::internal("the placement group manager stopped"))
        });
        Box::pin(async move {
            sent?;
            let value =
                receiver.await.map_err(|_| WireError::internal("the placement group manager stopped; retry"))?;
            answer(value)
        })
    }
    fn found(info: Option<manta_proto::placement::PlacementGroupInfo>) -> Result<Reply, WireError> {
        Ok(Reply::PlacementGroup(PlacementGroupReply { info }))
    }
    fn acked(result: Result<(), WireError>) -> Result<Reply, WireError> {
        result.map(|()| Reply::Ack)
    }
    match request {
        Request::CreatePlacementGroup(request) => queued(refs, |port| PlacementMsg::Create(request.spec, port), acked),
        Request::RemovePlacementGroup(request) => queued(refs, |port| PlacementMsg::Remove(request.pg_id, port), acked),
        Request::GetPlacementGroup(request) => {
            let name = request.name.map(|name| (request.namespace, name));
            queued(refs, |port| PlacementMsg::Get(request.pg_id, name, port), found)
        }
        Request::WaitPlacementGroup(request) => {
            let timeout = Duration::from_millis(request.timeout_ms);
            queued(refs, |port| PlacementMsg::Wait(request.pg_id, timeout, port), found)
        }
        other => {
            let name = other.name();
            Box::pin(async move { Err(WireError::internal(format!("{name} is not a placement group request"))) })
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
            let from = peer.id();
            ask(&refs.node_manager()?, |port| NodeManagerMsg::Drain(request.node_id, request.reason, from, port))
                .await??;
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
        Request::GetClusterDemand(_) => Ok(Reply::ClusterDemand(cluster_demand(refs).await?)),
        Request::RequestResources(request) => {
            let limit = manta_proto::autoscaler::MAX_REQUESTED_BUNDLES;
            if request.bundles.len() > limit {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("request_resources holds {} bundles; at most {limit}", request.bundles.len()),
                ));
            }
            refs.resource_manager()?
                .cast(ResourceMsg::RequestResources(request.bundles))
                .map_err(|_| WireError::internal("the resource manager stopped; retry"))?;
            Ok(Reply::Ack)
        }
        Request::DrainForRemoval(request) => {
            ask(&refs.resource_manager()?, |port| ResourceMsg::Drain(request.node_id, port)).await??;
            Ok(Reply::Ack)
        }
        Request::ReportAutoscaler(status) => {
            refs.resource_manager()?
                .cast(ResourceMsg::AutoscalerStatus(status))
                .map_err(|_| WireError::internal("the resource manager stopped; retry"))?;
            Ok(Reply::Ack)
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
        Request::SetJobRuntimeEnv(request) => {
            let from = peer.id();
            ask(&refs.job_manager()?, |port| JobMsg::SetRuntimeEnv(request, from, port)).await??;
            Ok(Reply::Ack)
        }
        Request::SubmitJob(request) => {
            let submission = request.submission;
            ask(&refs.submissions()?, |port| SubmissionMsg::Submit(submission, port)).await??;
            Ok(Reply::Ack)
        }
        Request::GetSubmission(request) => {
            let submission = ask(&refs.submissions()?, |port| SubmissionMsg::Get(request.id, port)).await?;
            Ok(Reply::GetSubmission(GetSubmissionReply { submission: submission.map(Box::new) }))
        }
        Request::ListSubmissions(_) => {
            let submissions = ask(&refs.submissions()?, SubmissionMsg::List).await?;
            Ok(Reply::ListSubmissions(ListSubmissionsReply { submissions }))
        }
        Request::StopSubmission(request) => {
            let stopped = ask(&refs.submissions()?, |port| SubmissionMsg::Stop(request.id, port)).await??;
            Ok(Reply::StopSubmission(StopSubmissionReply { stopped }))
        }
        Request::DeleteSubmission(request) => {
            ask(&refs.submissions()?, |port| SubmissionMsg::Delete(request.id, port)).await??;
            Ok(Reply::Ack)
        }
        Request::UpdateSubmission(request) => {
            let link_id = peer.id();
            ask(&refs.submissions()?, |port| SubmissionMsg::Update(request, link_id, port)).await??;
            Ok(Reply::Ack)
        }
        Request::UsePackage(request) => {
            let info = ask(&refs.packages()?, |port| PackageMsg::Use(request.name, request.job_id, port)).await?;
            Ok(Reply::UsePackage(manta_proto::package::UsePackageReply { info }))
        }
        Request::PutPackage(request) => {
            let complete = ask(&refs.packages()?, |port| PackageMsg::Put(request, port)).await??;
            Ok(Reply::PutPackage(manta_proto::package::PutPackageReply { complete }))
        }
        Request::GetPackageChunk(request) => {
            let name = request.name.clone();
            let (path, size) =
                ask(&refs.packages()?, |port| PackageMsg::Locate(request.name, port)).await?.ok_or_else(|| {
                    WireError::new(
                        ErrorCode::NotFound,
                        format!("the cluster has no package {name} (was its job's upload deleted?)"),
                    )
                })?;
            let bytes = crate::packages::read_chunk(path, size, request.offset, request.len).await?;
            Ok(Reply::Chunk(bytes))
        }
        Request::KvKeys(request) => {
            let keys = ask(&refs.kv()?, |port| KvMsg::Keys(request, port)).await?;
            Ok(Reply::KvKeys(KvKeysReply { keys }))
        }
        Request::Subscribe(request) => {
            ask(&refs.pubsub()?, |port| PubsubMsg::Subscribe(peer, request.channels, port)).await?;
            Ok(Reply::Ack)
        }
        Request::RegisterJob(request) => {
            let link_id = peer.id();
            let reply = ask(&refs.job_manager()?, |port| JobMsg::Register(request, link_id, port)).await??;
            Ok(Reply::RegisterJob(reply))
        }
        Request::FinishJob(request) => {
            let from = peer.id();
            ask(&refs.job_manager()?, |port| JobMsg::Finish(request.job_id, from, port)).await??;
            Ok(Reply::Ack)
        }
        Request::RegisterActor(request) => {
            let existing =
                ask(&refs.actor_directory()?, |port| DirectoryMsg::Register(request.info, request.restart, port))
                    .await??;
            Ok(Reply::RegisterActor(RegisterActorReply { existing }))
        }
        Request::GetNamedActor(request) => {
            let info = ask(&refs.actor_directory()?, |port| DirectoryMsg::Named(request.namespace, request.name, port))
                .await?;
            Ok(Reply::GetNamedActor(GetNamedActorReply { info }))
        }
        Request::GetActor(request) => {
            let record = ask(&refs.actor_directory()?, |port| DirectoryMsg::Get(request.actor_id, port)).await?;
            Ok(Reply::GetActor(manta_proto::task::GetActorReply { record }))
        }
        Request::UnregisterActor(request) => {
            ask(&refs.actor_directory()?, |port| DirectoryMsg::Remove(request.actor_id, port)).await?;
            Ok(Reply::Ack)
        }
        Request::ListState(request) => {
            let query = request.query();
            let checked = match request.table {
                StateTable::Jobs => query.check::<manta_proto::job::JobRecord>(),
                StateTable::Actors => query.check::<manta_proto::task::ActorRecord>(),
                StateTable::Tasks => query.check::<manta_proto::task::TaskRecord>(),
                StateTable::PlacementGroups => query.check::<manta_proto::placement::PlacementGroupInfo>(),
            };
            checked.map_err(|message| WireError::new(ErrorCode::InvalidArgument, message))?;
            let reply = match request.table {
                StateTable::Jobs => ask(&refs.job_manager()?, |port| JobMsg::Query(query, port)).await?,
                StateTable::Actors => ask(&refs.actor_directory()?, |port| DirectoryMsg::Query(query, port)).await?,
                StateTable::Tasks => ask(&refs.task_events()?, |port| TaskEventsMsg::Query(query, port)).await?,
                StateTable::PlacementGroups => {
                    ask(&refs.placement_groups()?, |port| PlacementMsg::Query(query, port)).await?
                }
            };
            Ok(Reply::ListState(reply))
        }
        Request::CreatePlacementGroup(_)
        | Request::RemovePlacementGroup(_)
        | Request::GetPlacementGroup(_)
        | Request::WaitPlacementGroup(_) => Err(WireError::internal("placement group requests are queued on arrival")),
        other => Err(WireError::new(
            ErrorCode::Unimplemented,
            format!("{} is not a GCS request; send it to a node or worker address", other.name()),
        )),
    }
}

/// The autoscaler's demand snapshot: alive nodes with their load, queued lease
/// requests summed by shape, waiting placement groups, `request_resources`.
async fn cluster_demand(refs: &GcsRefs) -> Result<manta_proto::autoscaler::ClusterDemandReply, WireError> {
    use manta_proto::autoscaler::{ClusterDemandReply, NodeLoad};
    let table = ask(&refs.node_manager()?, NodeManagerMsg::GetAll).await?;
    let view = ask(&refs.resource_manager()?, ResourceMsg::Demand).await?;
    let groups = {
        let (sender, receiver) = ractor::concurrency::oneshot();
        refs.placement_groups()?
            .cast(PlacementMsg::Pending(sender.into()))
            .map_err(|_| WireError::internal("the placement group manager stopped; retry"))?;
        receiver.await.map_err(|_| WireError::internal("the placement group manager stopped; retry"))?
    };
    let mut shapes: Vec<ResourceDemand> = Vec::new();
    let heads: std::collections::HashSet<_> = table.iter().filter(|row| row.is_head).map(|row| row.node_id).collect();
    let mut nodes = Vec::with_capacity(view.nodes.len());
    for (node, idle_ms, drained) in view.nodes {
        for demand in &node.pending_demand {
            match shapes
                .iter_mut()
                .find(|entry| entry.resources == demand.resources && entry.infeasible == demand.infeasible)
            {
                Some(entry) => entry.count = entry.count.saturating_add(demand.count),
                None => shapes.push(demand.clone()),
            }
        }
        let is_head = heads.contains(&node.node_id);
        nodes.push(NodeLoad {
            node_id: node.node_id,
            address: node.address,
            is_head,
            labels: node.labels,
            total: node.total,
            available: node.available,
            idle_ms,
            draining: node.draining,
            drained,
        });
    }
    Ok(ClusterDemandReply { nodes, shapes, groups, requested: view.requested, autoscaler: view.autoscaler })
}
