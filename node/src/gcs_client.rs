//! [`GcsClient`]: typed calls to the GCS over a peer link.

use std::time::Duration;

use bytes::Bytes;
use manta_proto::gcs::*;
use manta_proto::message::{Reply, Request};
use manta_proto::net::{CallError, PeerHandle};
use manta_proto::node::NodeInfo;
use manta_proto::{NodeId, WireError};

/// Default deadline of a GCS call.
pub const DEFAULT_GCS_TIMEOUT: Duration = Duration::from_secs(10);

/// A typed GCS client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GcsClient {
    peer: PeerHandle,
    timeout: Duration,
}

macro_rules! expect_reply {
    ($reply:expr, $variant:ident) => {
        match $reply {
            Reply::$variant(inner) => Ok(inner),
            other => Err(CallError::Remote(WireError::internal(format!(
                concat!("the GCS answered ", stringify!($variant), " with {:?}"),
                other
            )))),
        }
    };
}

impl GcsClient {
    /// A client over `peer` with the default deadline.
    pub fn new(peer: PeerHandle) -> Self {
        Self { peer, timeout: DEFAULT_GCS_TIMEOUT }
    }

    /// The underlying link.
    pub fn peer(&self) -> &PeerHandle {
        &self.peer
    }

    async fn call(&self, request: Request) -> Result<Reply, CallError> {
        self.peer.call(request, self.timeout).await
    }

    /// Joins the cluster (or re-attaches after a reconnect).
    pub async fn register_node(&self, request: RegisterNodeRequest) -> Result<RegisterNodeReply, CallError> {
        expect_reply!(self.call(Request::RegisterNode(request)).await?, RegisterNode)
    }

    /// Leaves the cluster on purpose.
    pub async fn drain_node(&self, node_id: NodeId, reason: &str, timeout: Duration) -> Result<(), CallError> {
        let request = Request::DrainNode(DrainNodeRequest { node_id, reason: reason.to_string() });
        self.peer.call(request, timeout).await.map(|_| ())
    }

    /// Reports resource availability.
    pub async fn report_resources(&self, request: ReportResourcesRequest) -> Result<(), CallError> {
        self.call(Request::ReportResources(request)).await.map(|_| ())
    }

    /// The node table.
    pub async fn get_all_nodes(&self) -> Result<Vec<NodeInfo>, CallError> {
        Ok(expect_reply!(self.call(Request::GetAllNodes(GetAllNodesRequest {})).await?, GetAllNodes)?.nodes)
    }

    /// Subscribes this link to pubsub channels.
    pub async fn subscribe(&self, channels: Vec<Channel>) -> Result<(), CallError> {
        self.call(Request::Subscribe(SubscribeRequest { channels })).await.map(|_| ())
    }

    /// Stores a KV entry; true when the key is new.
    pub async fn kv_put(&self, namespace: &str, key: &str, value: Bytes, overwrite: bool) -> Result<bool, CallError> {
        let request = Request::KvPut(KvPutRequest { namespace: namespace.into(), key: key.into(), value, overwrite });
        Ok(expect_reply!(self.call(request).await?, KvPut)?.added)
    }

    /// Reads a KV entry.
    pub async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Bytes>, CallError> {
        let request = Request::KvGet(KvGetRequest { namespace: namespace.into(), key: key.into() });
        Ok(expect_reply!(self.call(request).await?, KvGet)?.value)
    }

    /// Deletes a key (or every key with the prefix); returns how many went.
    pub async fn kv_del(&self, namespace: &str, key: &str, by_prefix: bool) -> Result<u64, CallError> {
        let request = Request::KvDel(KvDelRequest { namespace: namespace.into(), key: key.into(), by_prefix });
        Ok(expect_reply!(self.call(request).await?, KvDel)?.deleted)
    }

    /// Lists keys by prefix.
    pub async fn kv_keys(&self, namespace: &str, prefix: &str) -> Result<Vec<String>, CallError> {
        let request = Request::KvKeys(KvKeysRequest { namespace: namespace.into(), prefix: prefix.into() });
        Ok(expect_reply!(self.call(request).await?, KvKeys)?.keys)
    }
}
