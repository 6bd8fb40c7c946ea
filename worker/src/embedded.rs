//! The embedded cluster: with no cluster running, `manta::init()` starts a head
//! node inside the program (free loopback ports, a private temp dir) and stops
//! it at `shutdown`. Behind the default cargo feature `embedded`: a program
//! built without it compiles none of the node, GCS or storage code and needs a
//! running cluster (`manta start --head`, or `MANTA_ADDRESS`).

use manta_proto::NodeId;
use manta_proto::client::GcsClient;
use tokio::runtime::Handle;

use crate::error::{Error, Result};

/// What the embedded cluster needs from the builder.
#[derive(Debug, Clone, Default)]
pub(crate) struct EmbeddedResources {
    pub num_cpus: Option<f64>,
    pub num_gpus: Option<f64>,
    pub resources: std::collections::BTreeMap<String, f64>,
}

/// A started embedded head: how to stop it, its GCS client, token, TLS and node.
pub(crate) struct Started {
    pub(crate) embedded: Embedded,
    pub(crate) gcs: GcsClient,
    pub(crate) token: String,
    pub(crate) tls: Option<std::sync::Arc<manta_proto::net::tls::TlsConfig>>,
    pub(crate) node_id: NodeId,
}

#[cfg(feature = "embedded")]
mod cluster {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use manta_node::Exit;
    use manta_node::config::{NodeConfig, Role};
    use manta_proto::cluster::ClusterTarget;
    use manta_proto::frame::PeerRole;
    use manta_proto::net;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;

    /// A head node running inside this process.
    pub(crate) struct Embedded {
        stop: oneshot::Sender<()>,
        done: JoinHandle<Exit>,
        dir: PathBuf,
    }

    /// Starts the embedded head; the GCS client, the token and the node's id.
    pub(crate) async fn start(resources: &EmbeddedResources) -> Result<Started> {
        let dir =
            std::env::temp_dir().join(format!("manta-embedded-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        let mut config = NodeConfig::head();
        config.role = Role::Head { gcs_port: 0 };
        config.temp_dir = dir.clone();
        config.gcs.packages_dir = dir.join("gcs").join("packages");
        config.resources.num_cpus = resources.num_cpus;
        config.resources.num_gpus = resources.num_gpus;
        config.resources.custom = resources.resources.clone();
        // The user's process keeps its own metrics recorder slot: the embedded
        // node records nothing globally (its /metrics serves what workers push).
        config.install_metrics_recorder = false;
        // No HTTP server: a cluster that lives and dies with this program takes no
        // submitted jobs and opens no port beyond its own links (`manta start --head` does).
        config.dashboard = None;
        // A driver given TLS files (MANTA_TLS_*) runs its own cluster with them too.
        config.tls = manta_proto::net::tls::TlsFiles::from_env().map_err(Error::Init)?;
        let prepared =
            manta_node::prepare(&config).map_err(|error| Error::Init(format!("embedded cluster: {error}")))?;
        let token = prepared.token.clone();
        let tls = prepared.tls.clone();
        let running = manta_node::start(config, prepared)
            .await
            .map_err(|error| Error::Init(format!("embedded cluster: {error}")))?;
        let info = running.info.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(running.run_until(async move {
            let _ = stopped.await;
        }));
        let target = ClusterTarget {
            address: Some(info.gcs_address.clone()),
            token: Some(token.clone()),
            temp_dir: dir.clone(),
            tls: tls.as_ref().map(|tls| tls.files().clone()),
        };
        let gcs = target
            .connect_gcs("manta driver", PeerRole::Worker, Arc::new(net::NoService))
            .await
            .map_err(Error::Cluster)?;
        Ok(Started { embedded: Embedded { stop, done, dir }, gcs, token, tls, node_id: info.node_id })
    }

    impl Embedded {
        /// Stops the node (10 s at most) and removes its temp dir.
        pub(crate) fn stop(self, runtime: &Handle) {
            let _ = self.stop.send(());
            let done = self.done;
            let _ = crate::core::block_on(
                runtime,
                async move { tokio::time::timeout(Duration::from_secs(10), done).await },
            );
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(feature = "embedded")]
pub(crate) use cluster::{Embedded, start};

/// Without the `embedded` feature there is never an embedded cluster.
#[cfg(not(feature = "embedded"))]
pub(crate) enum Embedded {}

#[cfg(not(feature = "embedded"))]
impl Embedded {
    pub(crate) fn stop(self, _runtime: &Handle) {
        match self {}
    }
}

/// Without the `embedded` feature: says how to get a cluster.
#[cfg(not(feature = "embedded"))]
pub(crate) async fn start(_resources: &EmbeddedResources) -> Result<Started> {
    Err(Error::Init(
        "no running cluster found, and this program was built without manta's `embedded` feature: start one with \
         `manta start --head` (and set MANTA_ADDRESS when it is not under MANTA_TEMP_DIR), or enable the feature"
            .into(),
    ))
}
