//! Finding a running cluster from a client: its GCS address and token, given
//! directly or read from the session folder a local head writes, and a typed
//! connection to its GCS. The node's command line and the user crate both use
//! this (the node also writes these files: [`TOKEN_FILE`], [`ADDRESS_FILE`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::client::GcsClient;
use crate::frame::PeerRole;
use crate::net::tls::{TlsConfig, TlsFiles};
use crate::net::{self, NetConfig, NoService, PeerHandle};

/// The default session folder, private to this user: `$XDG_RUNTIME_DIR/manta` when
/// that is set (an absolute path), else `/tmp/manta-<uid>`.
pub fn default_temp_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(runtime) if runtime.is_absolute() => runtime.join("manta"),
        _ => PathBuf::from(format!("/tmp/manta-{}", rustix::process::geteuid().as_raw())),
    }
}
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
    /// TLS files; else the `MANTA_TLS_*` variables, else what a TLS head recorded
    /// in the session folder ([`crate::net::tls::TLS_FILE`]), else clear text.
    pub tls: Option<TlsFiles>,
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
    /// The file or folder could be read or changed by someone else: refused.
    #[error("refusing {path}: {problem}; {fix}")]
    NotPrivate {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

/// Checks that `dir` may hold a session: a real directory (not a symlink) owned
/// by this user that no one else can write to. Creates it (mode 0700) when missing.
pub fn ensure_private_dir(dir: &Path) -> Result<(), SessionFileError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let not_private =
        |problem: String, fix: String| SessionFileError::NotPrivate { path: dir.to_path_buf(), problem, fix };
    let metadata = match std::fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| SessionFileError::Io { path: dir.to_path_buf(), source })?;
            std::fs::symlink_metadata(dir).map_err(|source| SessionFileError::Io { path: dir.to_path_buf(), source })?
        }
        Err(source) => return Err(SessionFileError::Io { path: dir.to_path_buf(), source }),
    };
    if metadata.file_type().is_symlink() {
        return Err(not_private("it is a symbolic link".into(), "use a real directory as --temp-dir".into()));
    }
    if !metadata.is_dir() {
        return Err(not_private("it is not a directory".into(), "choose another --temp-dir".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(not_private(
            format!("it belongs to user {}, not to you (user {me})", metadata.uid()),
            "use a folder of your own as --temp-dir (the default is per user)".into(),
        ));
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(not_private(
            format!("others may write to it (mode {mode:o})"),
            format!("run `chmod 700 {}`, or choose another --temp-dir", dir.display()),
        ));
    }
    Ok(())
}

/// Reads the cluster token under `temp_dir`, if the file exists. The file is
/// opened without following a symbolic link and refused unless it belongs to
/// this user and only they can read it (mode 0600).
pub fn read_token(temp_dir: &Path) -> Result<Option<String>, SessionFileError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = temp_dir.join(TOKEN_FILE);
    let opened =
        std::fs::OpenOptions::new().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(SessionFileError::NotPrivate {
                path,
                problem: "it is a symbolic link".into(),
                fix: "remove it; the head writes a real token file".into(),
            });
        }
        Err(source) => return Err(SessionFileError::Io { path, source }),
    };
    let metadata = file.metadata().map_err(|source| SessionFileError::Io { path: path.clone(), source })?;
    let me = rustix::process::geteuid().as_raw();
    if metadata.uid() != me {
        return Err(SessionFileError::NotPrivate {
            path,
            problem: format!("it belongs to user {}, not to you (user {me})", metadata.uid()),
            fix: "use a session folder of your own, or pass the token with --token-file / MANTA_TOKEN".into(),
        });
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SessionFileError::NotPrivate {
            problem: format!("others may read or change it (mode {mode:o})"),
            fix: format!("run `chmod 600 {}` if you trust its content, else remove it", path.display()),
            path,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|source| SessionFileError::Io { path: path.clone(), source })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(SessionFileError::Empty { path });
    }
    Ok(Some(token))
}

/// Reads the head's recorded GCS address under `temp_dir`, if any.
pub fn read_dashboard_url(temp_dir: &Path) -> Option<String> {
    std::fs::read_to_string(temp_dir.join(DASHBOARD_FILE))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

/// The file a head records its HTTP server's URL in (`http://host:port`).
pub const DASHBOARD_FILE: &str = "dashboard_url";
/// Where the head records its HTTP server's URL in the GCS KV (namespace, key),
/// for clients on other machines that know only the GCS address.
pub const DASHBOARD_KV: (&str, &str) = ("manta", "dashboard_url");

/// The address a local head recorded, if any.
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

    /// The TLS settings to connect with, if the cluster uses TLS.
    pub fn tls_config(&self) -> Result<Option<Arc<TlsConfig>>, String> {
        let files = match &self.tls {
            Some(files) => Some(files.clone()),
            None => match TlsFiles::from_env()? {
                Some(files) => Some(files),
                None if self.temp_dir.as_os_str().is_empty() => None,
                None => TlsFiles::from_session(&self.temp_dir)?,
            },
        };
        files.map(|files| files.load().map(Arc::new)).transpose()
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
        let mut config = NetConfig::new(token, role, name);
        config.tls = self.tls_config()?;
        let config = Arc::new(config);
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
        config.tls = self.tls_config()?;
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
        let target = ClusterTarget { address: None, token: None, temp_dir: dir.path().to_path_buf(), tls: None };
        let missing = target.resolve().unwrap_err();
        assert!(missing.contains("manta start --head"), "{missing}");
        std::fs::write(dir.path().join(ADDRESS_FILE), "127.0.0.1:6379\n").unwrap();
        let no_token = target.resolve().unwrap_err();
        assert!(no_token.contains("MANTA_TOKEN"), "{no_token}");
        write_token(dir.path(), 0o600);
        assert_eq!(target.resolve().unwrap(), ("127.0.0.1:6379".into(), "secret".into()));
        let given = ClusterTarget { address: Some("127.0.0.2:1".into()), token: Some("t".into()), ..target };
        assert_eq!(given.resolve().unwrap(), ("127.0.0.2:1".into(), "t".into()));
    }

    fn write_token(dir: &Path, mode: u32) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(dir.join(TOKEN_FILE)).unwrap();
        file.write_all(b"secret\n").unwrap();
    }

    #[test]
    fn the_default_session_folder_is_per_user() {
        let dir = default_temp_dir();
        let uid = rustix::process::geteuid().as_raw().to_string();
        let text = dir.to_string_lossy();
        assert!(text.ends_with("/manta") || text.ends_with(&format!("/manta-{uid}")), "{text}");
    }

    #[test]
    fn a_token_others_can_read_or_a_linked_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_token(dir.path(), 0o600);
        assert_eq!(read_token(dir.path()).unwrap().as_deref(), Some("secret"));
        std::fs::set_permissions(dir.path().join(TOKEN_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_token(dir.path()).unwrap_err().to_string();
        assert!(error.contains("mode 644") && error.contains("chmod 600"), "{error}");

        let elsewhere = tempfile::tempdir().unwrap();
        write_token(elsewhere.path(), 0o600);
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join(TOKEN_FILE), linked.path().join(TOKEN_FILE)).unwrap();
        let error = read_token(linked.path()).unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
    }

    #[test]
    fn a_session_folder_others_can_write_to_is_refused_and_a_new_one_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = ensure_private_dir(&open).unwrap_err().to_string();
        assert!(error.contains("mode 777") && error.contains("chmod 700"), "{error}");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(ensure_private_dir(&link).unwrap_err().to_string().contains("symbolic link"));
    }
}
