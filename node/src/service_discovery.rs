//! The head writes `<temp-dir>/prom_metrics_service_discovery.json`, the file
//! Prometheus's `file_sd_configs` reads: every alive node's metrics endpoint,
//! in Ray's layout. It is rewritten (atomically: a temporary file, then a
//! rename) within a second of a membership change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use manta_proto::node::{NodeInfo, NodeState};
use tracing::warn;

use manta_proto::client::GcsClient;

/// The file's name under the temp dir (as Ray's).
pub const FILE_NAME: &str = "prom_metrics_service_discovery.json";

/// The file's content for `nodes`.
pub fn render(nodes: &[NodeInfo]) -> String {
    let mut targets: Vec<&str> = nodes
        .iter()
        .filter(|node| node.state == NodeState::Alive)
        .filter_map(|node| node.metrics_address.as_deref())
        .collect();
    targets.sort_unstable();
    let quoted: Vec<String> = targets.iter().map(|target| format!("\"{target}\"")).collect();
    format!("[{{\"labels\": {{\"job\": \"manta\"}}, \"targets\": [{}]}}]\n", quoted.join(", "))
}

fn write_atomically(dir: &Path, content: &str) -> std::io::Result<()> {
    manta_proto::private_fs::write_atomically(&dir.join(FILE_NAME), content.as_bytes())
}

/// Keeps the file current while the head runs.
pub fn spawn(gcs: GcsClient, temp_dir: PathBuf) {
    tokio::spawn(async move {
        let mut written = String::new();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let Ok(nodes) = gcs.get_all_nodes().await else { continue };
            let content = render(&nodes);
            if content == written {
                continue;
            }
            match write_atomically(&temp_dir, &content) {
                Ok(()) => written = content,
                Err(error) => {
                    warn!(%error, dir = %temp_dir.display(), "cannot write the Prometheus service discovery file")
                }
            }
        }
    });
}
