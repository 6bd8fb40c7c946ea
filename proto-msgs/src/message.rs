//! The top-level request, reply and event enums carried by frames.
//!
//! Each request variant has a reply variant; [`crate::rpc`] says which, and
//! typed calls (`PeerHandle::rpc`) turn a mismatch into an error.

use serde::{Deserialize, Serialize};

use crate::gcs::*;
use crate::logs::*;
use crate::node::*;
use crate::object::*;
use crate::package::*;
use crate::placement::*;
use crate::submission::*;
use crate::task::*;

/// Every request one process can send another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// GCS: join the cluster.
    RegisterNode(RegisterNodeRequest),
    /// GCS: leave the cluster on purpose.
    DrainNode(DrainNodeRequest),
    /// GCS: report resource availability.
    ReportResources(ReportResourcesRequest),
    /// GCS: read the node table.
    GetAllNodes(GetAllNodesRequest),
    /// GCS: internal KV put.
    KvPut(KvPutRequest),
    /// GCS: internal KV get.
    KvGet(KvGetRequest),
    /// GCS: internal KV delete.
    KvDel(KvDelRequest),
    /// GCS: internal KV key listing.
    KvKeys(KvKeysRequest),
    /// GCS: subscribe this connection to pubsub channels.
    Subscribe(SubscribeRequest),
    /// Node: health check from the GCS.
    HealthCheck(HealthCheckRequest),
    /// Node: the node's own view.
    GetNodeStats(GetNodeStatsRequest),
    /// GCS: a driver starts a job.
    RegisterJob(RegisterJobRequest),
    /// GCS: a driver ends its job.
    FinishJob(FinishJobRequest),
    /// GCS: record an actor (and claim its name).
    RegisterActor(RegisterActorRequest),
    /// GCS: look up a named actor.
    GetNamedActor(GetNamedActorRequest),
    /// GCS: forget an actor.
    UnregisterActor(UnregisterActorRequest),
    /// Where an actor is now.
    GetActor(GetActorRequest),
    /// Node: lease a worker.
    RequestWorkerLease(RequestWorkerLeaseRequest),
    /// Node: give a leased worker back.
    ReturnWorkerLease(ReturnWorkerLeaseRequest),
    /// Node: a worker process announces itself.
    RegisterWorker(RegisterWorkerRequest),
    /// Node: a worker blocks in `get` (gives its CPU back) or resumes.
    WorkerBlocked(WorkerBlockedRequest),
    /// Node: end a worker process.
    KillWorker(KillWorkerRequest),
    /// Worker: run a task.
    PushTask(PushTaskRequest),
    /// Worker: construct the actor this worker was leased for.
    CreateActor(CreateActorRequest),
    /// Worker (owner): an object's value.
    GetObject(GetObjectRequest),
    /// GCS: a state table (`manta list`).
    ListState(ListStateRequest),
    /// Node: reserve room for a new object.
    CreateObject(CreateObjectRequest),
    /// Node: an object's bytes are written.
    SealObject(SealObjectRequest),
    /// Node: bring a copy of an object to this node.
    PullObject(PullObjectRequest),
    /// Node: a reader is done with an arena copy.
    ReleaseObject(ReleaseObjectRequest),
    /// Node to node: a chunk of an object.
    ReadChunk(ReadChunkRequest),
    /// Owner: a process borrows these objects.
    AddBorrower(AddBorrowerRequest),
    /// Node or owner: the objects it holds (`manta list objects`).
    ListObjects(ListObjectsRequest),
    /// Owner or worker: cancel a task.
    CancelTask(CancelTaskRequest),
    /// GCS: create a placement group.
    CreatePlacementGroup(CreatePlacementGroupRequest),
    /// GCS: remove a placement group.
    RemovePlacementGroup(RemovePlacementGroupRequest),
    /// GCS: a placement group by id or name.
    GetPlacementGroup(GetPlacementGroupRequest),
    /// GCS: wait for a placement group to be placed.
    WaitPlacementGroup(WaitPlacementGroupRequest),
    /// Node: lock bundle resources (phase 1).
    PrepareBundles(PrepareBundlesRequest),
    /// Node: commit locked bundles (phase 2).
    CommitBundles(CommitBundlesRequest),
    /// Node: release a group's bundles.
    CancelBundles(CancelBundlesRequest),
    /// Node: stream a job's worker log lines to this link.
    SubscribeLogs(SubscribeLogsRequest),
    /// Node: its log files.
    ListLogs(ListLogsRequest),
    /// Node: send the job's worker lines printed so far, then answer.
    FlushLogs(FlushLogsRequest),
    /// Node: a piece of a log file.
    ReadLog(ReadLogRequest),
    /// GCS: is a package stored (and a job uses it)?
    UsePackage(UsePackageRequest),
    /// GCS: a chunk of a package upload.
    PutPackage(PutPackageRequest),
    /// GCS: a chunk of a stored package (answered with [`Reply::Chunk`]).
    GetPackageChunk(GetPackageChunkRequest),
    /// GCS: a driver gives its job's program and runtime environment.
    SetJobRuntimeEnv(SetJobRuntimeEnvRequest),
    /// GCS: record a submitted job and start its supervisor.
    SubmitJob(SubmitJobRequest),
    /// GCS: one submitted job.
    GetSubmission(GetSubmissionRequest),
    /// GCS: every submitted job.
    ListSubmissions(ListSubmissionsRequest),
    /// GCS: stop a submitted job.
    StopSubmission(StopSubmissionRequest),
    /// GCS: forget a terminal submitted job.
    DeleteSubmission(DeleteSubmissionRequest),
    /// GCS: a job supervisor reports a transition.
    UpdateSubmission(UpdateSubmissionRequest),
    /// Node: run a job's supervisor.
    StartSupervisor(StartSupervisorRequest),
    /// Node: stop a job's entrypoint.
    StopSupervisor(StopSupervisorRequest),
    /// GCS: the demand snapshot (the autoscaler, `manta status`).
    GetClusterDemand(crate::autoscaler::GetClusterDemandRequest),
    /// GCS: `request_resources`.
    RequestResources(crate::autoscaler::RequestResourcesRequest),
    /// GCS: drain a node before the autoscaler removes it.
    DrainForRemoval(crate::autoscaler::DrainForRemovalRequest),
    /// GCS: the autoscaler's state.
    ReportAutoscaler(crate::autoscaler::AutoscalerStatus),
}

/// Replies, one variant per request variant (plus `Ack` for requests with no payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done, nothing to return.
    Ack,
    /// Reply to [`Request::RegisterNode`].
    RegisterNode(RegisterNodeReply),
    /// Reply to [`Request::GetAllNodes`].
    GetAllNodes(GetAllNodesReply),
    /// Reply to [`Request::KvPut`].
    KvPut(KvPutReply),
    /// Reply to [`Request::KvGet`].
    KvGet(KvGetReply),
    /// Reply to [`Request::KvDel`].
    KvDel(KvDelReply),
    /// Reply to [`Request::KvKeys`].
    KvKeys(KvKeysReply),
    /// Reply to [`Request::HealthCheck`].
    HealthCheck(HealthCheckReply),
    /// Reply to [`Request::GetNodeStats`].
    GetNodeStats(GetNodeStatsReply),
    /// Reply to [`Request::RegisterJob`].
    RegisterJob(RegisterJobReply),
    /// Reply to [`Request::RegisterActor`].
    RegisterActor(RegisterActorReply),
    /// Reply to [`Request::GetNamedActor`].
    GetNamedActor(GetNamedActorReply),
    /// Reply to [`Request::GetActor`].
    GetActor(GetActorReply),
    /// Reply to [`Request::RequestWorkerLease`].
    RequestWorkerLease(LeaseOutcome),
    /// Reply to [`Request::RegisterWorker`]: the node the worker runs on.
    RegisterWorker(crate::ids::NodeId),
    /// Reply to [`Request::PushTask`] and [`Request::CreateActor`].
    Task(TaskOutcome),
    /// Reply to [`Request::GetObject`].
    GetObject(GetObjectReply),
    /// Reply to [`Request::ListState`].
    ListState(ListStateReply),
    /// Reply to [`Request::CreateObject`].
    CreateObject(CreateObjectReply),
    /// Reply to [`Request::PullObject`].
    PullObject(PullObjectReply),
    /// Reply to [`Request::ReadChunk`].
    Chunk(bytes::Bytes),
    /// Reply to [`Request::AddBorrower`].
    AddBorrower(AddBorrowerReply),
    /// Reply to [`Request::ListObjects`].
    ListObjects(ListObjectsReply),
    /// Reply to [`Request::GetPlacementGroup`] and [`Request::WaitPlacementGroup`].
    PlacementGroup(PlacementGroupReply),
    /// Reply to [`Request::ListLogs`].
    ListLogs(ListLogsReply),
    /// Reply to [`Request::ReadLog`].
    ReadLog(ReadLogReply),
    /// Reply to [`Request::UsePackage`].
    UsePackage(UsePackageReply),
    /// Reply to [`Request::PutPackage`].
    PutPackage(PutPackageReply),
    /// Reply to [`Request::GetSubmission`].
    GetSubmission(GetSubmissionReply),
    /// Reply to [`Request::ListSubmissions`].
    ListSubmissions(ListSubmissionsReply),
    /// Reply to [`Request::StopSubmission`] and [`Request::StopSupervisor`].
    StopSubmission(StopSubmissionReply),
    /// Reply to [`Request::GetClusterDemand`].
    ClusterDemand(crate::autoscaler::ClusterDemandReply),
}

/// One-way messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Pubsub: a node joined or died.
    NodeChange(NodeChangeEvent),
    /// Pubsub: the cluster resource view changed.
    ClusterView(ClusterViewEvent),
    /// Pubsub: a job ended.
    JobFinished(JobFinishedEvent),
    /// To the GCS: task state changes, in a batch.
    TaskEvents(TaskEventsBatch),
    /// Owner to node: objects with no references left.
    FreeObjects(FreeObjectsEvent),
    /// Borrower to owner: refs dropped.
    RemoveBorrower(RemoveBorrowerEvent),
    /// Reader to owner: a new copy of an object.
    ObjectLocation(ObjectLocationEvent),
    /// Caller to executor: return refs registered.
    ReleaseReturns(ReleaseReturnsEvent),
    /// Driver to its node: where it listens (an owner to ask about objects).
    DriverStarted(DriverStartedEvent),
    /// Worker to its node: it owns referenced objects (or no longer does).
    WorkerOwnership(WorkerOwnershipEvent),
    /// Node to a caller: something the user should know (an infeasible request).
    Warning(WarningEvent),
    /// Pubsub (Jobs channel): a placement group was removed.
    PlacementGroupRemoved(PlacementGroupRemovedEvent),
    /// Node to a subscribed driver: worker log lines.
    LogBatch(LogBatchEvent),
    /// Node to GCS: an actor's worker process exited.
    ActorWorkerDied(ActorWorkerDiedEvent),
    /// Worker to GCS: its actor panicked (restarted in place, or dead).
    ActorPanicked(ActorPanickedEvent),
    /// Worker or driver to its node: its user metrics.
    MetricsReport(crate::metrics::MetricsReportEvent),
    /// Node to its workers: hold or run actor calls (the node's fence).
    ServeCalls(crate::node::ServeCallsEvent),
    /// Pubsub: a job's program and runtime environment (nodes with `eager_install` set it up).
    JobRuntimeEnv(JobRuntimeEnvEvent),
    /// Pubsub: a submitted job's record changed.
    SubmissionChanged(SubmissionChangedEvent),
    /// Node to GCS, then pubsub: output of a submitted job's entrypoint.
    DriverLog(DriverLogEvent),
    /// Pubsub (Autoscaler channel): demand outside the cluster view changed.
    DemandChanged(crate::autoscaler::DemandChangedEvent),
}

impl Event {
    /// The pubsub channel this event belongs to (`None`: point to point only).
    pub fn channel(&self) -> Option<Channel> {
        match self {
            Event::NodeChange(_) => Some(Channel::NodeChanges),
            Event::ClusterView(_) => Some(Channel::ClusterView),
            Event::JobFinished(_) | Event::PlacementGroupRemoved(_) | Event::JobRuntimeEnv(_) => Some(Channel::Jobs),
            Event::TaskEvents(_) => Some(Channel::TaskEvents),
            Event::SubmissionChanged(_) | Event::DriverLog(_) => Some(Channel::Submissions),
            Event::DemandChanged(_) => Some(Channel::Autoscaler),
            _ => None,
        }
    }
}
