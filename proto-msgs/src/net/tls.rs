//! TLS for links that leave the machine: mutual TLS with one cluster CA.
//!
//! Every process of a TLS cluster holds a certificate signed by the cluster's CA
//! and its key. A server asks for and checks the client's certificate; a client
//! checks that the server's certificate is signed by the CA and names the address
//! it dialled (an IP address or DNS name in the subject alternative names). The
//! token handshake then runs inside the encrypted stream, so a TLS cluster needs
//! both: a certificate to connect and the token to be admitted.
//!
//! Files are PEM. The same three paths come from `manta start --tls-cert/--tls-key/--tls-ca`,
//! from `MANTA_TLS_CERT`, `MANTA_TLS_KEY` and `MANTA_TLS_CA` (drivers, the command
//! line, and the workers a node starts), or from the session folder's [`TLS_FILE`],
//! where a head started with TLS records them for local clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};

/// The certificate variable.
pub const CERT_VAR: &str = "MANTA_TLS_CERT";
/// The private-key variable.
pub const KEY_VAR: &str = "MANTA_TLS_KEY";
/// The CA variable.
pub const CA_VAR: &str = "MANTA_TLS_CA";
/// The session folder's record of a TLS head's three paths (JSON, mode 0600).
pub const TLS_FILE: &str = "tls.json";

/// The first byte of every TLS connection (a handshake record); a plain manta
/// frame starts with its length, whose first byte is 0 for any handshake frame.
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a clear-text node answers a TLS client: a fatal `protocol_version` alert
/// record, so the client's TLS library fails at once with a reason instead of
/// retrying a closed connection.
pub(crate) const NO_TLS_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70];

/// Where a process's certificate, key and the cluster CA are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster CA's certificate(s) (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// All three of the `MANTA_TLS_*` variables, none, or an error naming the missing ones.
    pub fn from_env() -> Result<Option<Self>, String> {
        let read = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from);
        Self::from_parts(read(CERT_VAR), read(KEY_VAR), read(CA_VAR), [CERT_VAR, KEY_VAR, CA_VAR])
    }

    /// All three paths, none, or an error naming the missing ones (`names`: how the user spells them).
    pub fn from_parts(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        names: [&str; 3],
    ) -> Result<Option<Self>, String> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self { cert, key, ca })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [cert.is_none(), key.is_none(), ca.is_none()]
                    .iter()
                    .zip(names)
                    .filter(|(missing, _)| **missing)
                    .map(|(_, name)| name)
                    .collect();
                Err(format!(
                    "TLS needs a certificate, its key and the cluster CA together; {} missing",
                    missing.join(", ")
                ))
            }
        }
    }

    /// The paths a TLS head recorded in `temp_dir`, if any.
    pub fn from_session(temp_dir: &Path) -> Result<Option<Self>, String> {
        let path = temp_dir.join(TLS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| {
                format!("{} is not a TLS record ({error}); remove it and restart the head", path.display())
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!("cannot read {}: {error}", path.display())),
        }
    }

    /// What the three files look like as JSON, for [`TLS_FILE`].
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("paths serialise")
    }

    /// The variables a child process (a worker) needs to connect the same way.
    pub fn env(&self) -> [(&'static str, &Path); 3] {
        [(CERT_VAR, &self.cert), (KEY_VAR, &self.key), (CA_VAR, &self.ca)]
    }

    /// Reads and checks the files, building both sides' configurations.
    pub fn load(&self) -> Result<TlsConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = read_pem(&self.cert, "certificate", |path| {
            CertificateDer::pem_file_iter(path).and_then(Iterator::collect)
        })?;
        if chain.is_empty() {
            return Err(format!("{} holds no PEM certificate", self.cert.display()));
        }
        let key = read_pem(&self.key, "private key", |path| PrivateKeyDer::from_pem_file(path))?;
        let mut roots = RootCertStore::empty();
        let authorities: Vec<CertificateDer<'static>> = read_pem(&self.ca, "CA certificate", |path| {
            CertificateDer::pem_file_iter(path).and_then(Iterator::collect)
        })?;
        for authority in authorities {
            roots
                .add(authority)
                .map_err(|error| format!("{} is not a usable CA certificate: {error}", self.ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{} holds no PEM certificate", self.ca.display()));
        }
        let roots = Arc::new(roots);
        let bad = |what: &str, error: rustls::Error| {
            format!("the TLS files {} / {} do not make a {what}: {error}", self.cert.display(), self.key.display())
        };
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|error| format!("the CA in {} cannot check peers: {error}", self.ca.display()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| bad("server configuration", error))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| bad("server configuration", error))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|error| format!("the CA in {} cannot check peers: {error}", self.ca.display()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| bad("client configuration", error))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|error| bad("client configuration", error))?;
        Ok(TlsConfig {
            files: self.clone(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }
}

fn read_pem<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&Path) -> Result<T, rustls::pki_types::pem::Error>,
) -> Result<T, String> {
    parse(path).map_err(|error| match error {
        rustls::pki_types::pem::Error::Io(error) => format!("cannot read the TLS {what} {}: {error}", path.display()),
        rustls::pki_types::pem::Error::NoItemsFound => format!("{} holds no PEM {what}", path.display()),
        other => format!("{} is not a PEM {what}: {other:?}", path.display()),
    })
}

/// Loaded TLS settings: what a link needs to encrypt both directions.
#[derive(Clone)]
pub struct TlsConfig {
    files: TlsFiles,
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("TlsConfig").field("files", &self.files).finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// The files it was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// The name a server's certificate must carry for `address` (`host:port`, `[v6]:port`).
pub(crate) fn server_name(address: &str) -> Result<ServerName<'static>, String> {
    let host = match address.rsplit_once(':') {
        Some((host, _port)) => host,
        None => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|error| format!("{host:?} cannot name a TLS server: {error}"))
}

#[cfg(test)]
pub(crate) mod test_ca {
    //! A throwaway CA and certificates for tests.
    use std::path::Path;

    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    use super::TlsFiles;

    /// Writes a CA and one certificate for 127.0.0.1 and localhost under `dir`.
    pub(crate) fn write(dir: &Path, prefix: &str) -> TlsFiles {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{prefix}cert.pem")),
            key: dir.join(format!("{prefix}key.pem")),
            ca: dir.join(format!("{prefix}ca.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.ca, ca_cert.pem()).unwrap();
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_paths_or_none() {
        let names = ["--tls-cert", "--tls-key", "--tls-ca"];
        assert_eq!(TlsFiles::from_parts(None, None, None, names), Ok(None));
        let error = TlsFiles::from_parts(Some("c".into()), None, None, names).unwrap_err();
        assert!(error.contains("--tls-key, --tls-ca missing"), "{error}");
    }

    #[test]
    fn loads_a_ca_and_certificate_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = test_ca::write(dir.path(), "");
        files.load().expect("a good set loads");
        let bad = TlsFiles { key: dir.path().join("missing.pem"), ..files.clone() };
        let error = bad.load().unwrap_err();
        assert!(error.contains("missing.pem"), "{error}");
        let swapped = TlsFiles { ca: files.key.clone(), ..files };
        let error = swapped.load().unwrap_err();
        assert!(error.contains("key.pem holds no PEM certificate"), "{error}");
    }

    #[test]
    fn server_names_come_from_the_dialled_host() {
        assert!(matches!(server_name("127.0.0.1:6379"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]:6379"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("head.example:6379"), Ok(ServerName::DnsName(_))));
    }
}
