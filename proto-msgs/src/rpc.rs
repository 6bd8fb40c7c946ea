//! The typed RPC layer: one table says, for every request type, its reply
//! type, which service answers it, who may send it, and whether the GCS must
//! make it durable before replying. From that table come the [`Rpc`] impls
//! (so `peer.rpc(request)` returns the typed reply, and a mismatched reply is
//! one error written once) and [`Request::spec`], whose exhaustive match means
//! a new request cannot be added without saying all of the above.

use crate::autoscaler::*;
use crate::gcs::*;
use crate::logs::*;
use crate::message::{Reply, Request};
use crate::node::*;
use crate::object::*;
use crate::package::*;
use crate::placement::*;
use crate::submission::*;
use crate::task::*;

/// Which process answers a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// The GCS on the head.
    Gcs,
    /// A node (its raylet, object store, log monitor).
    Node,
    /// A worker or driver process (tasks, actors, owned objects).
    Worker,
}

/// Who sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// The GCS (to nodes and workers, over their links).
    Gcs,
    /// A node (raylet, object store).
    Node,
    /// A driver or worker process.
    Worker,
    /// A command-line or other inspecting client (`manta status`, `manta list`).
    Cli,
}

/// What the table says about one request type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcSpec {
    /// The request's name, for logs and errors.
    pub name: &'static str,
    /// Who answers it.
    pub service: Service,
    /// Who may send it.
    pub senders: &'static [Sender],
    /// The GCS answers only once the change it made is durable.
    pub durable: bool,
}

impl Sender {
    /// Who a peer is, by the role it claimed in its (authenticated) handshake;
    /// `None` for test peers, which are not restricted.
    pub fn from_role(role: crate::frame::PeerRole) -> Option<Self> {
        use crate::frame::PeerRole;
        match role {
            PeerRole::Node => Some(Sender::Node),
            PeerRole::Cli => Some(Sender::Cli),
            PeerRole::Worker => Some(Sender::Worker),
            PeerRole::Gcs => Some(Sender::Gcs),
            PeerRole::Test => None,
        }
    }
}

impl crate::message::Event {
    /// True when `sender` may send this event: what the GCS publishes (cluster
    /// views, node changes, finished jobs, removed groups) comes only from the GCS.
    pub fn allowed_from(&self, sender: Sender) -> bool {
        use crate::message::Event;
        match self {
            Event::NodeChange(_)
            | Event::ClusterView(_)
            | Event::JobFinished(_)
            | Event::PlacementGroupRemoved(_)
            | Event::JobRuntimeEnv(_)
            | Event::SubmissionChanged(_)
            | Event::DemandChanged(_) => sender == Sender::Gcs,
            Event::DriverLog(_) => matches!(sender, Sender::Node | Sender::Gcs),
            Event::ServeCalls(_) => sender == Sender::Node,
            _ => true,
        }
    }
}

impl RpcSpec {
    /// True when `sender` may send this request.
    pub fn allows(&self, sender: Sender) -> bool {
        self.senders.contains(&sender)
    }
}

/// A request type with its reply type.
pub trait Rpc: Sized + Send + 'static {
    /// The typed reply.
    type Reply: Send + 'static;
    /// The table's entry.
    const SPEC: RpcSpec;
    /// The request on the wire.
    fn into_request(self) -> Request;
    /// The typed reply, or the kind of the reply when it is of another kind.
    fn typed_reply(reply: Reply) -> Result<Self::Reply, &'static str>;
}

/// Who may send what, in short.
mod senders {
    use super::Sender::{self, *};
    pub const GCS: &[Sender] = &[Gcs];
    pub const NODE: &[Sender] = &[Node];
    pub const WORKER: &[Sender] = &[Worker];
    pub const WORKER_OR_GCS: &[Sender] = &[Worker, Gcs];
    pub const CLIENTS: &[Sender] = &[Worker, Cli];
    pub const CLI: &[Sender] = &[Cli];
    pub const ANYONE: &[Sender] = &[Gcs, Node, Worker, Cli];
}

macro_rules! rpc_table {
    ($(
        $variant:ident($request:ty) -> $reply:ty = $reply_pattern:pat => $reply_value:expr,
        $service:ident, $senders:ident, durable: $durable:literal;
    )*) => {
        $(
            impl Rpc for $request {
                type Reply = $reply;
                const SPEC: RpcSpec = RpcSpec {
                    name: stringify!($variant),
                    service: Service::$service,
                    senders: senders::$senders,
                    durable: $durable,
                };
                fn into_request(self) -> Request {
                    Request::$variant(self)
                }
                #[allow(unreachable_patterns)]
                fn typed_reply(reply: Reply) -> Result<$reply, &'static str> {
                    match reply {
                        $reply_pattern => Ok($reply_value),
                        other => Err(other.kind()),
                    }
                }
            }
        )*

        impl Request {
            /// The table's entry for this request.
            pub fn spec(&self) -> RpcSpec {
                match self {
                    $(Request::$variant(_) => <$request as Rpc>::SPEC,)*
                }
            }
        }
    };
}

rpc_table! {
    RegisterNode(RegisterNodeRequest) -> RegisterNodeReply = Reply::RegisterNode(reply) => reply, Gcs, NODE, durable: true;
    DrainNode(DrainNodeRequest) -> () = Reply::Ack => (), Gcs, NODE, durable: true;
    ReportResources(ReportResourcesRequest) -> () = Reply::Ack => (), Gcs, NODE, durable: false;
    GetAllNodes(GetAllNodesRequest) -> GetAllNodesReply = Reply::GetAllNodes(reply) => reply, Gcs, ANYONE, durable: false;
    KvPut(KvPutRequest) -> KvPutReply = Reply::KvPut(reply) => reply, Gcs, ANYONE, durable: true;
    KvGet(KvGetRequest) -> KvGetReply = Reply::KvGet(reply) => reply, Gcs, ANYONE, durable: false;
    KvDel(KvDelRequest) -> KvDelReply = Reply::KvDel(reply) => reply, Gcs, ANYONE, durable: true;
    KvKeys(KvKeysRequest) -> KvKeysReply = Reply::KvKeys(reply) => reply, Gcs, ANYONE, durable: false;
    Subscribe(SubscribeRequest) -> () = Reply::Ack => (), Gcs, ANYONE, durable: false;
    HealthCheck(HealthCheckRequest) -> HealthCheckReply = Reply::HealthCheck(reply) => reply, Node, GCS, durable: false;
    GetNodeStats(GetNodeStatsRequest) -> GetNodeStatsReply = Reply::GetNodeStats(reply) => reply, Node, ANYONE, durable: false;
    RegisterJob(RegisterJobRequest) -> RegisterJobReply = Reply::RegisterJob(reply) => reply, Gcs, WORKER, durable: true;
    FinishJob(FinishJobRequest) -> () = Reply::Ack => (), Gcs, WORKER, durable: true;
    RegisterActor(RegisterActorRequest) -> RegisterActorReply = Reply::RegisterActor(reply) => reply, Gcs, WORKER, durable: true;
    GetNamedActor(GetNamedActorRequest) -> GetNamedActorReply = Reply::GetNamedActor(reply) => reply, Gcs, CLIENTS, durable: false;
    UnregisterActor(UnregisterActorRequest) -> () = Reply::Ack => (), Gcs, WORKER, durable: true;
    GetActor(GetActorRequest) -> GetActorReply = Reply::GetActor(reply) => reply, Gcs, CLIENTS, durable: false;
    RequestWorkerLease(RequestWorkerLeaseRequest) -> LeaseOutcome = Reply::RequestWorkerLease(outcome) => outcome, Node, WORKER_OR_GCS, durable: false;
    ReturnWorkerLease(ReturnWorkerLeaseRequest) -> () = Reply::Ack => (), Node, WORKER_OR_GCS, durable: false;
    RegisterWorker(RegisterWorkerRequest) -> crate::ids::NodeId = Reply::RegisterWorker(node_id) => node_id, Node, WORKER, durable: false;
    WorkerBlocked(WorkerBlockedRequest) -> () = Reply::Ack => (), Node, WORKER, durable: false;
    KillWorker(KillWorkerRequest) -> () = Reply::Ack => (), Node, WORKER_OR_GCS, durable: false;
    PushTask(PushTaskRequest) -> TaskOutcome = Reply::Task(outcome) => outcome, Worker, WORKER, durable: false;
    CreateActor(CreateActorRequest) -> TaskOutcome = Reply::Task(outcome) => outcome, Worker, WORKER_OR_GCS, durable: false;
    GetObject(GetObjectRequest) -> GetObjectReply = Reply::GetObject(reply) => reply, Worker, CLIENTS, durable: false;
    ListState(ListStateRequest) -> ListStateReply = Reply::ListState(reply) => reply, Gcs, CLIENTS, durable: false;
    CreateObject(CreateObjectRequest) -> CreateObjectReply = Reply::CreateObject(reply) => reply, Node, WORKER, durable: false;
    SealObject(SealObjectRequest) -> () = Reply::Ack => (), Node, WORKER, durable: false;
    PullObject(PullObjectRequest) -> PullObjectReply = Reply::PullObject(reply) => reply, Node, WORKER, durable: false;
    ReleaseObject(ReleaseObjectRequest) -> () = Reply::Ack => (), Node, WORKER, durable: false;
    ReadChunk(ReadChunkRequest) -> bytes::Bytes = Reply::Chunk(bytes) => bytes, Node, NODE, durable: false;
    AddBorrower(AddBorrowerRequest) -> AddBorrowerReply = Reply::AddBorrower(reply) => reply, Worker, WORKER, durable: false;
    ListObjects(ListObjectsRequest) -> ListObjectsReply = Reply::ListObjects(reply) => reply, Node, CLIENTS, durable: false;
    CancelTask(CancelTaskRequest) -> () = Reply::Ack => (), Worker, WORKER, durable: false;
    CreatePlacementGroup(CreatePlacementGroupRequest) -> () = Reply::Ack => (), Gcs, CLIENTS, durable: true;
    RemovePlacementGroup(RemovePlacementGroupRequest) -> () = Reply::Ack => (), Gcs, CLIENTS, durable: true;
    GetPlacementGroup(GetPlacementGroupRequest) -> PlacementGroupReply = Reply::PlacementGroup(reply) => reply, Gcs, CLIENTS, durable: false;
    WaitPlacementGroup(WaitPlacementGroupRequest) -> PlacementGroupReply = Reply::PlacementGroup(reply) => reply, Gcs, CLIENTS, durable: false;
    PrepareBundles(PrepareBundlesRequest) -> () = Reply::Ack => (), Node, GCS, durable: false;
    CommitBundles(CommitBundlesRequest) -> () = Reply::Ack => (), Node, GCS, durable: false;
    CancelBundles(CancelBundlesRequest) -> () = Reply::Ack => (), Node, GCS, durable: false;
    SubscribeLogs(SubscribeLogsRequest) -> () = Reply::Ack => (), Node, WORKER, durable: false;
    FlushLogs(FlushLogsRequest) -> () = Reply::Ack => (), Node, WORKER, durable: false;
    ListLogs(ListLogsRequest) -> ListLogsReply = Reply::ListLogs(reply) => reply, Node, CLIENTS, durable: false;
    ReadLog(ReadLogRequest) -> ReadLogReply = Reply::ReadLog(reply) => reply, Node, CLIENTS, durable: false;
    UsePackage(UsePackageRequest) -> UsePackageReply = Reply::UsePackage(reply) => reply, Gcs, ANYONE, durable: true;
    PutPackage(PutPackageRequest) -> PutPackageReply = Reply::PutPackage(reply) => reply, Gcs, CLIENTS, durable: true;
    GetPackageChunk(GetPackageChunkRequest) -> bytes::Bytes = Reply::Chunk(bytes) => bytes, Gcs, ANYONE, durable: false;
    SetJobRuntimeEnv(SetJobRuntimeEnvRequest) -> () = Reply::Ack => (), Gcs, WORKER, durable: true;
    SubmitJob(SubmitJobRequest) -> () = Reply::Ack => (), Gcs, CLI, durable: true;
    GetSubmission(GetSubmissionRequest) -> GetSubmissionReply = Reply::GetSubmission(reply) => reply, Gcs, CLIENTS, durable: false;
    ListSubmissions(ListSubmissionsRequest) -> ListSubmissionsReply = Reply::ListSubmissions(reply) => reply, Gcs, CLIENTS, durable: false;
    StopSubmission(StopSubmissionRequest) -> StopSubmissionReply = Reply::StopSubmission(reply) => reply, Gcs, CLI, durable: true;
    DeleteSubmission(DeleteSubmissionRequest) -> () = Reply::Ack => (), Gcs, CLI, durable: true;
    UpdateSubmission(UpdateSubmissionRequest) -> () = Reply::Ack => (), Gcs, NODE, durable: true;
    StartSupervisor(StartSupervisorRequest) -> () = Reply::Ack => (), Node, GCS, durable: false;
    StopSupervisor(StopSupervisorRequest) -> StopSubmissionReply = Reply::StopSubmission(reply) => reply, Node, GCS, durable: false;
    GetClusterDemand(GetClusterDemandRequest) -> ClusterDemandReply = Reply::ClusterDemand(reply) => reply, Gcs, CLIENTS, durable: false;
    RequestResources(RequestResourcesRequest) -> () = Reply::Ack => (), Gcs, CLIENTS, durable: false;
    DrainForRemoval(DrainForRemovalRequest) -> () = Reply::Ack => (), Gcs, CLI, durable: false;
    ReportAutoscaler(AutoscalerStatus) -> () = Reply::Ack => (), Gcs, CLI, durable: false;
}

impl Request {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        self.spec().name
    }
}

impl Reply {
    /// Short name of the reply's kind, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Ack => "Ack",
            Reply::RegisterNode(_) => "RegisterNode",
            Reply::GetAllNodes(_) => "GetAllNodes",
            Reply::KvPut(_) => "KvPut",
            Reply::KvGet(_) => "KvGet",
            Reply::KvDel(_) => "KvDel",
            Reply::KvKeys(_) => "KvKeys",
            Reply::HealthCheck(_) => "HealthCheck",
            Reply::GetNodeStats(_) => "GetNodeStats",
            Reply::RegisterJob(_) => "RegisterJob",
            Reply::RegisterActor(_) => "RegisterActor",
            Reply::GetNamedActor(_) => "GetNamedActor",
            Reply::GetActor(_) => "GetActor",
            Reply::RequestWorkerLease(_) => "RequestWorkerLease",
            Reply::RegisterWorker(_) => "RegisterWorker",
            Reply::Task(_) => "Task",
            Reply::GetObject(_) => "GetObject",
            Reply::ListState(_) => "ListState",
            Reply::CreateObject(_) => "CreateObject",
            Reply::PullObject(_) => "PullObject",
            Reply::Chunk(_) => "Chunk",
            Reply::AddBorrower(_) => "AddBorrower",
            Reply::ListObjects(_) => "ListObjects",
            Reply::PlacementGroup(_) => "PlacementGroup",
            Reply::ListLogs(_) => "ListLogs",
            Reply::ReadLog(_) => "ReadLog",
            Reply::UsePackage(_) => "UsePackage",
            Reply::PutPackage(_) => "PutPackage",
            Reply::GetSubmission(_) => "GetSubmission",
            Reply::ListSubmissions(_) => "ListSubmissions",
            Reply::StopSubmission(_) => "StopSubmission",
            Reply::ClusterDemand(_) => "ClusterDemand",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gcs_durability_list_holds_every_change_to_a_durable_table() {
        let durable = [
            RegisterNodeRequest::SPEC,
            DrainNodeRequest::SPEC,
            KvPutRequest::SPEC,
            KvDelRequest::SPEC,
            RegisterJobRequest::SPEC,
            FinishJobRequest::SPEC,
            RegisterActorRequest::SPEC,
            UnregisterActorRequest::SPEC,
            CreatePlacementGroupRequest::SPEC,
            RemovePlacementGroupRequest::SPEC,
            SubmitJobRequest::SPEC,
            StopSubmissionRequest::SPEC,
            DeleteSubmissionRequest::SPEC,
            UpdateSubmissionRequest::SPEC,
        ];
        for spec in durable {
            assert!(spec.durable && spec.service == Service::Gcs, "{} must be durable before its reply", spec.name);
        }
        for spec in [KvGetRequest::SPEC, PushTaskRequest::SPEC, ReportResourcesRequest::SPEC] {
            assert!(!spec.durable, "{} changes no durable table", spec.name);
        }
    }

    #[test]
    fn a_reply_of_another_kind_is_named() {
        let reply = Reply::KvDel(KvDelReply { deleted: 1 });
        assert_eq!(<KvGetRequest as Rpc>::typed_reply(reply), Err("KvDel"));
        assert_eq!(<DrainNodeRequest as Rpc>::typed_reply(Reply::Ack), Ok(()));
    }

    #[test]
    fn who_may_send_what() {
        assert!(RegisterNodeRequest::SPEC.allows(Sender::Node));
        assert!(!RegisterNodeRequest::SPEC.allows(Sender::Cli), "a CLI link cannot register a node");
        assert!(PrepareBundlesRequest::SPEC.allows(Sender::Gcs));
        assert!(!PrepareBundlesRequest::SPEC.allows(Sender::Worker));
    }
}
