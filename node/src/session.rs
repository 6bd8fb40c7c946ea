//! The session folder (`--temp-dir`, default per user: `$XDG_RUNTIME_DIR/manta`, else
//! `/tmp/manta-<uid>`): the cluster token,
//! the head's address, and one subfolder per node process with its pidfile,
//! description and log.
//!
//! ```text
//! <temp-dir>/token                       cluster token, mode 0600
//! <temp-dir>/address                     the head's GCS address (while it runs)
//! <temp-dir>/nodes/<name>/node.pid       "<pid> <start time in clock ticks>"
//! <temp-dir>/nodes/<name>/node.json      node id, address, head or not
//! <temp-dir>/nodes/<name>/node.log       the node's own log
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use manta_proto::cluster::default_temp_dir;

/// A session folder.
#[derive(Clone, Debug)]
pub struct Session {
    root: PathBuf,
}

/// Why a session file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file holds something unexpected.
    #[error("{} is corrupt: {reason}; remove it if no node uses it", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The folder or a file in it could be read or changed by someone else.
    #[error("{0}")]
    NotPrivate(manta_proto::cluster::SessionFileError),
}

impl Session {
    /// Checks the session folder (creating it, mode 0700, when missing): a real
    /// directory of this user that no one else can write to.
    pub fn ensure_private(&self) -> Result<(), SessionError> {
        manta_proto::cluster::ensure_private_dir(&self.root).map_err(|error| match error {
            manta_proto::cluster::SessionFileError::Io { path, source } => {
                SessionError::Io { action: "create", path, source }
            }
            other => SessionError::NotPrivate(other),
        })
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SessionError + 'a {
    move |source| SessionError::Io { action, path: path.to_path_buf(), source }
}

/// A node process's identity on disk, checked against `/proc` before signalling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidRecord {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

impl PidRecord {
    /// The record of the calling process.
    pub fn current() -> Option<Self> {
        let pid = std::process::id();
        Some(Self { pid, start_ticks: process_start_ticks(pid)? })
    }

    /// True while the same process (not a later one reusing the pid) runs and is not a zombie.
    pub fn is_running(&self) -> bool {
        let Ok(process) = procfs::process::Process::new(self.pid as i32) else {
            return false;
        };
        match process.stat() {
            Ok(stat) => stat.starttime == self.start_ticks && stat.state != 'Z' && stat.state != 'X',
            Err(_) => false,
        }
    }
}

/// Start time of `pid` in clock ticks since boot.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32).ok()?.stat().ok().map(|stat| stat.starttime)
}

/// What a node writes about itself into its folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id when it started.
    pub node_id: String,
    /// `ip:port` the node listens on.
    pub address: String,
    /// The GCS address the node joined.
    pub gcs_address: String,
    /// True for the head.
    pub is_head: bool,
    /// The node process.
    pub pid: u32,
}

/// One node folder found by [`Session::nodes`].
#[derive(Clone, Debug)]
pub struct NodeDir {
    /// The folder.
    pub path: PathBuf,
    /// The pidfile's content, when the node has not exited cleanly.
    pub pid: Option<PidRecord>,
    /// The node's description, when written.
    pub record: Option<NodeRecord>,
}

impl Session {
    /// The session under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the token file.
    pub fn token_path(&self) -> PathBuf {
        self.root.join(manta_proto::cluster::TOKEN_FILE)
    }

    /// Path of the head address file.
    pub fn address_path(&self) -> PathBuf {
        self.root.join(manta_proto::cluster::ADDRESS_FILE)
    }

    fn nodes_path(&self) -> PathBuf {
        self.root.join("nodes")
    }

    /// Reads the token, if the file exists.
    pub fn read_token(&self) -> Result<Option<String>, SessionError> {
        manta_proto::cluster::read_token(&self.root).map_err(|error| match error {
            manta_proto::cluster::SessionFileError::Io { path, source } => {
                SessionError::Io { action: "read", path, source }
            }
            manta_proto::cluster::SessionFileError::Empty { path } => {
                SessionError::Corrupt { path, reason: "the token file is empty".into() }
            }
            refused @ manta_proto::cluster::SessionFileError::NotPrivate { .. } => SessionError::NotPrivate(refused),
        })
    }

    /// Returns the stored token, or creates a random one (mode 0600) if none exists.
    pub fn read_or_create_token(&self) -> Result<String, SessionError> {
        self.ensure_private()?;
        if let Some(token) = self.read_token()? {
            return Ok(token);
        }
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let path = self.token_path();
        let created = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        match created {
            Ok(mut file) => {
                file.write_all(token.as_bytes()).map_err(io_error("write", &path))?;
                file.sync_all().map_err(io_error("sync", &path))?;
                Ok(token)
            }
            // Another head on this folder won the race: use its token.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                self.read_token()?.ok_or(SessionError::Corrupt { path, reason: "vanished".into() })
            }
            Err(error) => Err(SessionError::Io { action: "create", path, source: error }),
        }
    }

    /// Records the head's GCS address.
    pub fn write_address(&self, address: &str) -> Result<(), SessionError> {
        write_atomically(&self.address_path(), address.as_bytes())
    }

    /// Records the head's HTTP server URL for local clients (`manta job`).
    pub fn write_dashboard_url(&self, url: &str) -> Result<(), SessionError> {
        write_atomically(&self.root.join(manta_proto::cluster::DASHBOARD_FILE), url.as_bytes())
    }

    /// The recorded head address, if any.
    pub fn read_address(&self) -> Option<String> {
        manta_proto::cluster::read_address(&self.root)
    }

    /// Records where a TLS head's certificate, key and CA are, for local clients
    /// and joining nodes; removes a stale record when the head runs without TLS.
    pub fn write_tls(&self, tls: Option<&manta_proto::net::tls::TlsFiles>) -> Result<(), SessionError> {
        let path = self.root.join(manta_proto::net::tls::TLS_FILE);
        match tls {
            Some(files) => write_atomically(&path, &files.to_json()),
            None => match fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(SessionError::Io { action: "remove", path, source: error })
                }
                _ => Ok(()),
            },
        }
    }

    /// Removes the address file (and the TLS record) if it still names `address`.
    pub fn clear_address(&self, address: &str) {
        if self.read_address().as_deref() == Some(address) {
            let _ = fs::remove_file(self.address_path());
            let _ = fs::remove_file(self.root.join(manta_proto::net::tls::TLS_FILE));
            let _ = fs::remove_file(self.root.join(manta_proto::cluster::DASHBOARD_FILE));
        }
    }

    /// Creates this process's node folder and pidfile.
    pub fn create_node_dir(&self, name: &str) -> Result<PathBuf, SessionError> {
        self.ensure_private()?;
        let dir = self.nodes_path().join(name);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_error("create", &dir))?;
        let record = PidRecord::current().ok_or_else(|| SessionError::Corrupt {
            path: PathBuf::from("/proc/self/stat"),
            reason: "cannot read this process's start time".into(),
        })?;
        write_atomically(&dir.join("node.pid"), format!("{} {}\n", record.pid, record.start_ticks).as_bytes())?;
        Ok(dir)
    }

    /// Writes the node's description into its folder.
    pub fn write_node_record(&self, dir: &Path, record: &NodeRecord) -> Result<(), SessionError> {
        let json = serde_json::to_vec_pretty(record).expect("node record serializes");
        write_atomically(&dir.join("node.json"), &json)
    }

    /// Every node folder, with its pidfile if present.
    pub fn nodes(&self) -> Vec<NodeDir> {
        let Ok(entries) = fs::read_dir(self.nodes_path()) else {
            return Vec::new();
        };
        let mut nodes: Vec<NodeDir> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().is_dir())
            .map(|entry| {
                let path = entry.path();
                let pid = read_pidfile(&path.join("node.pid"));
                let record =
                    fs::read(path.join("node.json")).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
                NodeDir { path, pid, record }
            })
            .collect();
        nodes.sort_by(|a, b| a.path.cmp(&b.path));
        nodes
    }
}

/// Removes the pidfile in `dir` (on clean exit).
pub fn remove_pidfile(dir: &Path) {
    let _ = fs::remove_file(dir.join("node.pid"));
}

/// Reads "<pid> <start ticks>".
pub fn read_pidfile(path: &Path) -> Option<PidRecord> {
    let text = fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let start_ticks = fields.next()?.parse().ok()?;
    Some(PidRecord { pid, start_ticks })
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), SessionError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    manta_proto::private_fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    manta_proto::private_fs::write_atomically(path, contents).map_err(io_error("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(dir.path());
        let token = session.read_or_create_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(session.read_or_create_token().unwrap(), token, "a restarted head reuses the token");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(session.token_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn empty_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(dir.path());
        fs::write(session.token_path(), "").unwrap();
        assert!(session.read_or_create_token().is_err());
    }

    #[test]
    fn node_dirs_and_pidfiles() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(dir.path());
        let node_dir = session.create_node_dir("node-a").unwrap();
        let record = NodeRecord {
            node_id: "abc".into(),
            address: "127.0.0.1:1".into(),
            gcs_address: "127.0.0.1:2".into(),
            is_head: true,
            pid: std::process::id(),
        };
        session.write_node_record(&node_dir, &record).unwrap();
        let nodes = session.nodes();
        assert_eq!(nodes.len(), 1);
        let pid = nodes[0].pid.unwrap();
        assert_eq!(pid.pid, std::process::id());
        assert!(pid.is_running());
        assert_eq!(nodes[0].record.as_ref(), Some(&record));
        remove_pidfile(&node_dir);
        assert!(session.nodes()[0].pid.is_none());
    }

    #[test]
    fn stale_pidfile_is_not_running() {
        let record = PidRecord { pid: std::process::id(), start_ticks: 1 };
        assert!(!record.is_running(), "a start-time mismatch means another process");
        let gone = PidRecord { pid: u32::MAX - 1, start_ticks: 0 };
        assert!(!gone.is_running());
    }

    #[test]
    fn address_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::new(dir.path());
        assert!(session.read_address().is_none());
        session.write_address("127.0.0.1:6379").unwrap();
        assert_eq!(session.read_address().as_deref(), Some("127.0.0.1:6379"));
        session.clear_address("127.0.0.1:1");
        assert!(session.read_address().is_some(), "only the owner clears it");
        session.clear_address("127.0.0.1:6379");
        assert!(session.read_address().is_none());
    }
}
