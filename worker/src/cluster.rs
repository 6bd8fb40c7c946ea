//! A read-only view of a running cluster and its internal KV, without starting
//! a job (as `ray.nodes()` and the internal KV do in Ray).

use std::path::PathBuf;

use bytes::Bytes;
use manta_proto::client::GcsClient;
use manta_proto::cluster::{ClusterTarget, default_temp_dir};
use manta_proto::frame::PeerRole;

use manta_proto::node::{NodeInfo, NodeState};
use manta_proto::resources::ResourceSet;

use crate::error::{Error, Result};

/// Where the cluster is. Each field falls back to its environment variable,
/// then to the session under the temp dir.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// GCS address (`MANTA_ADDRESS`; else `<temp-dir>/address`).
    pub address: Option<String>,
    /// Cluster token (`MANTA_TOKEN`; else `<temp-dir>/token`).
    pub token: Option<String>,
    /// Session folder (`MANTA_TEMP_DIR`; else `$XDG_RUNTIME_DIR/manta` or `/tmp/manta-<uid>`).
    pub temp_dir: Option<PathBuf>,
}

/// A connection to a cluster's GCS.
#[derive(Debug, Clone)]
pub struct Cluster {
    gcs: GcsClient,
}

impl Cluster {
    /// Connects to the cluster described by `options`.
    pub async fn connect(options: ConnectOptions) -> Result<Self> {
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let target = ClusterTarget {
            address: options.address.or_else(|| env("MANTA_ADDRESS")),
            token: options.token.or_else(|| env("MANTA_TOKEN")),
            temp_dir: options
                .temp_dir
                .or_else(|| env("MANTA_TEMP_DIR").map(PathBuf::from))
                .unwrap_or_else(default_temp_dir),
            tls: None,
        };
        let gcs = target
            .connect_gcs("manta client", PeerRole::Cli, std::sync::Arc::new(manta_proto::net::NoService))
            .await
            .map_err(|error| Error::Cluster(format!("cannot connect to the manta cluster: {error}")))?;
        Ok(Self { gcs })
    }

    /// Every node the cluster has seen, alive and dead.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        Ok(self.gcs.get_all_nodes().await?)
    }

    /// Sum of the resources of alive nodes.
    pub async fn cluster_resources(&self) -> Result<ResourceSet> {
        let mut total = ResourceSet::new();
        for node in self.nodes().await?.into_iter().filter(|node| node.state == NodeState::Alive) {
            for (name, quantity) in node.resources_total.iter() {
                total.set(name, total.get(name).saturating_add(quantity));
            }
        }
        Ok(total)
    }

    /// Stores `value` under `key` in the cluster's internal KV; true when the key is new.
    pub async fn kv_put(&self, namespace: &str, key: &str, value: impl Into<Bytes>, overwrite: bool) -> Result<bool> {
        Ok(self.gcs.kv_put(namespace, key, value.into(), overwrite).await?)
    }

    /// Reads `key` from the internal KV.
    pub async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Bytes>> {
        Ok(self.gcs.kv_get(namespace, key).await?)
    }

    /// Lists keys starting with `prefix`.
    pub async fn kv_keys(&self, namespace: &str, prefix: &str) -> Result<Vec<String>> {
        Ok(self.gcs.kv_keys(namespace, prefix).await?)
    }

    /// Deletes `key` (or every key starting with it when `by_prefix`); returns how many went.
    pub async fn kv_del(&self, namespace: &str, key: &str, by_prefix: bool) -> Result<u64> {
        Ok(self.gcs.kv_del(namespace, key, by_prefix).await?)
    }
}
