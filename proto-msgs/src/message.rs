//! The top-level request, reply and event enums carried by frames.
//!
//! Each request variant has a reply variant of the same name; typed clients
//! turn a mismatch into an error instead of trusting the peer.

use serde::{Deserialize, Serialize};

use crate::gcs::*;
use crate::node::*;

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
}

impl Request {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::RegisterNode(_) => "RegisterNode",
            Request::DrainNode(_) => "DrainNode",
            Request::ReportResources(_) => "ReportResources",
            Request::GetAllNodes(_) => "GetAllNodes",
            Request::KvPut(_) => "KvPut",
            Request::KvGet(_) => "KvGet",
            Request::KvDel(_) => "KvDel",
            Request::KvKeys(_) => "KvKeys",
            Request::Subscribe(_) => "Subscribe",
            Request::HealthCheck(_) => "HealthCheck",
            Request::GetNodeStats(_) => "GetNodeStats",
        }
    }
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
}

/// One-way messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Pubsub: a node joined or died.
    NodeChange(NodeChangeEvent),
    /// Pubsub: the cluster resource view changed.
    ClusterView(ClusterViewEvent),
}

impl Event {
    /// The pubsub channel this event belongs to.
    pub fn channel(&self) -> Channel {
        match self {
            Event::NodeChange(_) => Channel::NodeChanges,
            Event::ClusterView(_) => Channel::ClusterView,
        }
    }
}
