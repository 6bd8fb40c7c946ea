//! [`GcsClient`]: typed calls to the GCS over a peer link.

use std::time::Duration;

use bytes::Bytes;

use crate::NodeId;
use crate::gcs::*;
use crate::net::{CallError, PeerHandle};
use crate::node::NodeInfo;
use crate::rpc::{Rpc, Service};

/// Default deadline of a GCS call.
pub const DEFAULT_GCS_TIMEOUT: Duration = Duration::from_secs(10);

/// A typed GCS client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GcsClient {
    peer: PeerHandle,
    timeout: Duration,
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

    /// The same link with another deadline.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { peer: self.peer.clone(), timeout }
    }

    /// Sends a request the GCS answers and returns its typed reply.
    pub async fn call<R: Rpc>(&self, request: R) -> Result<R::Reply, CallError> {
        const { assert!(matches!(R::SPEC.service, Service::Gcs), "the GCS does not answer that request") };
        self.peer.rpc(request, self.timeout).await
    }

    /// Joins the cluster (or re-attaches after a reconnect).
    pub async fn register_node(&self, request: RegisterNodeRequest) -> Result<RegisterNodeReply, CallError> {
        self.call(request).await
    }

    /// Leaves the cluster on purpose.
    pub async fn drain_node(&self, node_id: NodeId, reason: &str, timeout: Duration) -> Result<(), CallError> {
        self.with_timeout(timeout).call(DrainNodeRequest { node_id, reason: reason.to_string() }).await
    }

    /// Reports resource availability.
    pub async fn report_resources(&self, request: ReportResourcesRequest) -> Result<(), CallError> {
        self.call(request).await
    }

    /// The node table.
    pub async fn get_all_nodes(&self) -> Result<Vec<NodeInfo>, CallError> {
        Ok(self.call(GetAllNodesRequest {}).await?.nodes)
    }

    /// Subscribes this link to pubsub channels.
    pub async fn subscribe(&self, channels: Vec<Channel>) -> Result<(), CallError> {
        self.call(SubscribeRequest { channels }).await
    }

    /// Stores a KV entry; true when the key is new.
    pub async fn kv_put(&self, namespace: &str, key: &str, value: Bytes, overwrite: bool) -> Result<bool, CallError> {
        let request = KvPutRequest { namespace: namespace.into(), key: key.into(), value, overwrite };
        Ok(self.call(request).await?.added)
    }

    /// Reads a KV entry.
    pub async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Bytes>, CallError> {
        Ok(self.call(KvGetRequest { namespace: namespace.into(), key: key.into() }).await?.value)
    }

    /// Deletes a key (or every key with the prefix); returns how many went.
    pub async fn kv_del(&self, namespace: &str, key: &str, by_prefix: bool) -> Result<u64, CallError> {
        Ok(self.call(KvDelRequest { namespace: namespace.into(), key: key.into(), by_prefix }).await?.deleted)
    }

    /// Lists keys by prefix.
    pub async fn kv_keys(&self, namespace: &str, prefix: &str) -> Result<Vec<String>, CallError> {
        Ok(self.call(KvKeysRequest { namespace: namespace.into(), prefix: prefix.into() }).await?.keys)
    }
}
