//! Finding a running cluster from a client: its GCS address and token, given
//! directly or read from the session folder a local head writes, and a typed
//! connection to its GCS. The node's command line and the user crate both use
//! this (the node also writes these files: [`TOKEN_FILE`], [`ADDRESS_FILE`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::client::GcsClient;
use crate::frame::PeerRole;
use crate::net::{self, NetConfig, NoService, PeerHandle};

/// Default session folder.
pub const DEFAULT_TEMP_DIR: &str = "/tmp/manta";
/// The cluster token's file in the session folder.
pub const TOKEN_FILE: &str = "token";
/// The head's GCS address's file in the session folder (while the head runs).
pub const ADDRESS_FILE: &str = "address";

/// Where a cluster is and how to prove we belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTarget {
    /// The GCS address (`host:port`); else the one the local head recorded.
    pub address: Option<String>,
    /// The cluster token; else the session folder's token file.
    pub token: Option<String>,
    /// The session folder.
    pub temp_dir: PathBuf,
}

/// Errors reading a session file.
#[derive(Debug, thiserror::Error)]
pub enum SessionFileError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{path} is empty; remove it and restart the head, or pass the token with --token / MANTA_TOKEN")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the cluster token under `temp_dir`, if the file exists.
pub fn read_token(temp_dir: &Path) -> Result<Option<String>, SessionFileError> {
    let path = temp_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(SessionFileError::Empty { path });
            }
            Ok(Some(token))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SessionFileError::Io { path, source }),
    }
}

/// Reads the head's recorded GCS address under `temp_dir`, if any.
pub fn read_address(temp_dir: &Path) -> Option<String> {
    std::fs::read_to_string(temp_dir.join(ADDRESS_FILE))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

impl ClusterTarget {
    /// Resolves the address and token, or says what to do.
    pub fn resolve(&self) -> Result<(String, String), String> {
        let address = match &self.address {
            Some(address) => address.clone(),
            None => read_address(&self.temp_dir).ok_or_else(|| {
                format!(
                    "no cluster found: no --address or MANTA_ADDRESS, and no running head recorded in {}; start one with `manta start --head`",
                    self.temp_dir.join(ADDRESS_FILE).display()
                )
            })?,
        };
        let token = match &self.token {
            Some(token) => token.clone(),
            None => read_token(&self.temp_dir).map_err(|error| error.to_string())?.ok_or_else(|| {
                format!(
                    "no cluster token: pass --token or set MANTA_TOKEN (no token file at {})",
                    self.temp_dir.join(TOKEN_FILE).display()
                )
            })?,
        };
        Ok((address, token))
    }

    /// Connects to the cluster's GCS as `role` (a driver or worker is `Worker`, a
    /// command-line client `Cli`); `service` answers what the GCS sends and hears
    /// each (re)connect of the link.
    pub async fn connect_gcs(
        &self,
        name: &str,
        role: PeerRole,
        service: Arc<dyn net::Service>,
    ) -> Result<GcsClient, String> {
        let (address, token) = self.resolve()?;
        let config = Arc::new(NetConfig::new(token, role, name));
        let peer = net::connect(&address, config, service, None, Duration::from_secs(5))
            .await
            .map_err(|error| error.to_string())?;
        Ok(GcsClient::new(peer))
    }

    /// Connects once (no redial) to another process of the cluster (a node or an object owner).
    pub async fn connect_to(&self, address: &str, name: &str) -> Result<PeerHandle, String> {
        let (_, token) = self.resolve()?;
        let mut config = NetConfig::new(token, PeerRole::Cli, name);
        config.reconnect = false;
        net::connect(address, Arc::new(config), Arc::new(NoService), None, Duration::from_secs(2))
            .await
            .map_err(|error| format!("{address}: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_from_the_session_folder_or_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let target = ClusterTarget { address: None, token: None, temp_dir: dir.path().to_path_buf() };
        let missing = target.resolve().unwrap_err();
        assert!(missing.contains("manta start --head"), "{missing}");
        std::fs::write(dir.path().join(ADDRESS_FILE), "127.0.0.1:6379\n").unwrap();
        let no_token = target.resolve().unwrap_err();
        assert!(no_token.contains("MANTA_TOKEN"), "{no_token}");
        std::fs::write(dir.path().join(TOKEN_FILE), "secret\n").unwrap();
        assert_eq!(target.resolve().unwrap(), ("127.0.0.1:6379".into(), "secret".into()));
        let given = ClusterTarget { address: Some("127.0.0.2:1".into()), token: Some("t".into()), ..target };
        assert_eq!(given.resolve().unwrap(), ("127.0.0.2:1".into(), "t".into()));
    }
}
