//! The handshake and dialling with retries.
//!
//! A mutual challenge–response; the token never crosses the wire:
//!
//! ```text
//! client                                   server
//!   Hello { version, role, name, nonce_c } ─►
//!   ◄─ Challenge { version, name, nonce_s }        (or Rejected: version)
//!   Proof { proof_c } ─►                           proof_c = keyed hash(client, nonces, role, name)
//!   ◄─ Welcome { proof_s }                         (or Rejected: authentication failed)
//! the client checks proof_s before it sends or accepts any other frame.
//! ```
//!
//! Before the handshake ends, a connection may carry only these frames, each at
//! most 64 KiB.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ractor::{Actor, ActorCell};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::auth::{self, Side};
use super::connection::{Established, LinkReader};
use super::peer::PeerHandle;
use super::peer_actor::{PeerActor, PeerArgs, PeerMode};
use super::tls;
use super::writer::LinkWriter;
use super::{Backoff, NetConfig, Service};
use crate::PROTOCOL_VERSION;
use crate::error::{ErrorCode, WireError};
use crate::frame::{Frame, FrameCodec, FrameError, HANDSHAKE_MAX_FRAME_BYTES, Hello};
use crate::rpc::Sender;

/// Why no link could be established.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The peer refused our token (the message starts with "authentication failed"). Not retried.
    #[error("{0}")]
    AuthenticationFailed(String),
    /// The peer refused us for another reason (protocol version). Not retried.
    #[error("connection refused by {address}: {reason}")]
    Refused {
        /// The address that refused.
        address: String,
        /// Its reason.
        reason: String,
    },
    /// No address answered before the timeout.
    #[error("could not reach {} within {timeout:?} (tried {}); last error: {last_error}", if addresses.len() == 1 { "the cluster" } else { "any seed" }, addresses.join(", "))]
    Unreachable {
        /// Every address tried.
        addresses: Vec<String>,
        /// The overall timeout.
        timeout: Duration,
        /// The last failure seen.
        last_error: String,
    },
}

/// One failed dial: final (the peer said no) or worth retrying.
#[derive(Debug)]
pub(crate) enum DialError {
    Final(ConnectError),
    Transient(String),
}

/// Dials `address` once and runs the client side of the handshake.
pub(crate) async fn dial(address: &str, config: &NetConfig) -> Result<Established, DialError> {
    let stream = tokio::time::timeout(config.connect_attempt_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| DialError::Transient(format!("connect to {address} timed out")))?
        .map_err(|error| DialError::Transient(format!("connect to {address}: {error}")))?;
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = client_stream(stream, address, config).await?;
    let client_nonce = auth::nonce();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        role: config.role,
        name: config.name.clone(),
        nonce: client_nonce.to_vec(),
    };
    send(&mut write, &Frame::Hello(hello))
        .await
        .map_err(|error| DialError::Transient(format!("send hello to {address}: {error}")))?;
    let mut leftover = BytesMut::new();
    let (server_name, server_nonce) = match receive(&mut read, &mut leftover, config, address).await? {
        Frame::Challenge { name, nonce, .. } => (name, nonce),
        other => return Err(refusal(other, address)),
    };
    let key = auth::HandshakeKey::from_token(&config.token);
    let transcript = auth::Transcript {
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
        role: config.role,
        client_name: &config.name,
    };
    let proof = Frame::Proof { proof: key.proof(Side::Client, &transcript).to_vec() };
    send(&mut write, &proof)
        .await
        .map_err(|error| DialError::Transient(format!("send proof to {address}: {error}")))?;
    match receive(&mut read, &mut leftover, config, address).await? {
        Frame::Welcome { proof, .. } if key.verify(Side::Server, &transcript, &proof) => Ok(Established {
            read,
            write,
            leftover,
            remote_name: server_name,
            remote_address: address.to_string(),
            sender: config.remote,
        }),
        Frame::Welcome { .. } => Err(DialError::Final(ConnectError::AuthenticationFailed(format!(
            "authentication failed: {address} ({server_name}) accepted us without proving it knows the cluster token; \
             it is not this cluster's node (check the address), and nothing was sent to it"
        )))),
        other => Err(refusal(other, address)),
    }
}

/// The dialled socket as a link's two halves: TLS over it when configured.
async fn client_stream(
    stream: TcpStream,
    address: &str,
    config: &NetConfig,
) -> Result<(LinkReader, LinkWriter), DialError> {
    let Some(tls) = &config.tls else {
        let (read, write) = stream.into_split();
        return Ok((Box::new(read), Box::new(write)));
    };
    let name = tls::server_name(address)
        .map_err(|reason| DialError::Final(ConnectError::Refused { address: address.to_string(), reason }))?;
    let stream = tokio::time::timeout(config.handshake_timeout, tls.connector.connect(name, stream))
        .await
        .map_err(|_| DialError::Transient(format!("{address} did not finish the TLS handshake")))?
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::InvalidData => DialError::Final(ConnectError::Refused {
                address: address.to_string(),
                reason: format!(
                    "TLS handshake failed: {error}; check that the peer runs with TLS, that its certificate is signed by \
                     this process's CA ({}) and names the address dialled",
                    tls.files().ca.display()
                ),
            }),
            _ => DialError::Transient(format!("TLS handshake with {address}: {error}")),
        })?;
    let (read, write) = tokio::io::split(stream);
    Ok((Box::new(read), Box::new(write)))
}

/// Writes one handshake frame.
async fn send(write: &mut LinkWriter, frame: &Frame) -> Result<(), String> {
    let mut out = BytesMut::new();
    FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES).encode(frame, &mut out).map_err(|error| error.to_string())?;
    write.write_all(&out).await.map_err(|error| error.to_string())
}

/// Reads the server's next handshake frame within the handshake timeout.
async fn receive(
    read: &mut LinkReader,
    leftover: &mut BytesMut,
    config: &NetConfig,
    address: &str,
) -> Result<Frame, DialError> {
    tokio::time::timeout(config.handshake_timeout, read_one(read, leftover))
        .await
        .map_err(|_| DialError::Transient(format!("{address} did not answer the handshake")))?
        .map_err(|error| DialError::Transient(format!("handshake with {address}: {error}")))
}

/// What an unexpected server frame means for the dial.
fn refusal(frame: Frame, address: &str) -> DialError {
    match frame {
        Frame::Rejected(error) if error.code == ErrorCode::AuthenticationFailed => {
            DialError::Final(ConnectError::AuthenticationFailed(error.message))
        }
        Frame::Rejected(error) => {
            DialError::Final(ConnectError::Refused { address: address.to_string(), reason: error.message })
        }
        other => DialError::Transient(format!("{address} answered the handshake with {}", frame_kind(&other))),
    }
}

/// Tries `addresses` in order, again and again with backoff, until one answers
/// or `timeout` passes. A refusal (wrong token, version) ends it at once.
pub(crate) async fn dial_any(
    addresses: &[String],
    config: &NetConfig,
    timeout: Duration,
) -> Result<(Established, String), ConnectError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(20), config.max_reconnect_backoff);
    let mut last_error = String::from("no address given");
    loop {
        for address in addresses {
            match dial(address, config).await {
                Ok(established) => return Ok((established, address.clone())),
                Err(DialError::Final(error)) => return Err(error),
                Err(DialError::Transient(error)) => {
                    debug!(%address, %error, "dial failed");
                    last_error = error;
                }
            }
        }
        let pause = backoff.next_delay();
        if Instant::now() + pause >= deadline {
            return Err(ConnectError::Unreachable { addresses: addresses.to_vec(), timeout, last_error });
        }
        tokio::time::sleep(pause).await;
    }
}

/// Connects to `address`; see [`connect_any`].
pub async fn connect(
    address: &str,
    config: Arc<NetConfig>,
    service: Arc<dyn Service>,
    supervisor: Option<ActorCell>,
    timeout: Duration,
) -> Result<PeerHandle, ConnectError> {
    connect_any(&[address.to_string()], config, service, supervisor, timeout).await
}

/// Connects to the first of `addresses` that answers (retrying with backoff up
/// to `timeout`) and returns a handle whose link reconnects by itself, with
/// backoff capped at `config.max_reconnect_backoff`, until closed.
pub async fn connect_any(
    addresses: &[String],
    config: Arc<NetConfig>,
    service: Arc<dyn Service>,
    supervisor: Option<ActorCell>,
    timeout: Duration,
) -> Result<PeerHandle, ConnectError> {
    let (established, address) = dial_any(addresses, &config, timeout).await?;
    let handle = PeerHandle::new(format!("{} ({address})", established.remote_name), config.max_in_flight);
    handle.set_remote_address(address);
    let args = PeerArgs {
        handle: handle.clone(),
        service,
        config,
        mode: PeerMode::Outbound { addresses: addresses.to_vec() },
        established,
    };
    let spawned = match supervisor {
        Some(supervisor) => Actor::spawn_linked(None, PeerActor, args, supervisor).await,
        None => Actor::spawn(None, PeerActor, args).await,
    };
    spawned.map_err(|error| ConnectError::Unreachable {
        addresses: addresses.to_vec(),
        timeout,
        last_error: format!("could not start the peer actor: {error}"),
    })?;
    Ok(handle)
}

/// Runs the server side of the handshake on an accepted socket.
pub(crate) async fn accept(stream: TcpStream, config: &NetConfig) -> Result<Established, String> {
    let _ = stream.set_nodelay(true);
    let remote_address = stream.peer_addr().map(|address| address.to_string()).unwrap_or_default();
    let deadline = Instant::now() + config.handshake_timeout;
    let (mut read, mut write) = server_stream(stream, config, deadline).await?;
    let mut leftover = BytesMut::new();
    let first = tokio::time::timeout_at(deadline, read_one(&mut read, &mut leftover))
        .await
        .map_err(|_| "no handshake within the handshake timeout".to_string())?;
    let hello = match check_hello(first) {
        Ok(hello) => hello,
        Err((error, log_reason)) => return Err(reject(&mut write, error, log_reason).await),
    };
    let server_nonce = auth::nonce();
    let challenge = Frame::Challenge {
        protocol_version: PROTOCOL_VERSION,
        name: config.name.clone(),
        nonce: server_nonce.to_vec(),
    };
    send(&mut write, &challenge).await.map_err(|error| format!("send challenge: {error}"))?;
    let proof = match tokio::time::timeout_at(deadline, read_one(&mut read, &mut leftover)).await {
        Err(_) => return Err("no proof within the handshake timeout".to_string()),
        Ok(Ok(Frame::Proof { proof })) => proof,
        Ok(Ok(other)) => {
            let error = WireError::invalid(format!("expected a Proof frame, got {}", frame_kind(&other)));
            return Err(reject(&mut write, error.clone(), error.message).await);
        }
        Ok(Err(error)) => return Err(reject(&mut write, error.to_wire(), error.to_string()).await),
    };
    let key = auth::HandshakeKey::from_token(&config.token);
    let transcript = auth::Transcript {
        client_nonce: &hello.nonce,
        server_nonce: &server_nonce,
        role: hello.role,
        client_name: &hello.name,
    };
    if !key.verify(Side::Client, &transcript, &proof) {
        let message = "authentication failed: the cluster token is wrong or missing; pass the head's token with --token or \
                       MANTA_TOKEN (the head stores it in <temp-dir>/token)";
        let reason =
            format!("authentication failed for {:?} peer {:?}: wrong or missing token", hello.role, hello.name);
        return Err(reject(&mut write, WireError::new(ErrorCode::AuthenticationFailed, message), reason).await);
    }
    let welcome = Frame::Welcome {
        protocol_version: PROTOCOL_VERSION,
        name: config.name.clone(),
        proof: key.proof(Side::Server, &transcript).to_vec(),
    };
    send(&mut write, &welcome).await.map_err(|error| format!("send welcome: {error}"))?;
    Ok(Established {
        read,
        write,
        leftover,
        sender: Sender::from_role(hello.role),
        remote_name: hello.name,
        remote_address,
    })
}

/// An accepted socket as a link's two halves: TLS over it when configured. A
/// client that speaks the other way (TLS to a plain node, plain to a TLS node)
/// is refused with a reason that says so.
async fn server_stream(
    stream: TcpStream,
    config: &NetConfig,
    deadline: Instant,
) -> Result<(LinkReader, LinkWriter), String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return Err("no handshake within the handshake timeout".to_string()),
        Ok(Err(error)) => return Err(format!("read failed during the handshake: {error}")),
        Ok(Ok(0)) => return Err("connection closed during the handshake".to_string()),
        Ok(Ok(_)) => {}
    }
    let speaks_tls = first[0] == tls::TLS_HANDSHAKE_RECORD;
    let Some(tls) = &config.tls else {
        let (mut read, mut write) = stream.into_split();
        if speaks_tls {
            // Take in its hello first: closing with unread bytes resets the connection.
            let _ = tokio::time::timeout_at(deadline, read.read(&mut [0u8; 4096])).await;
            let _ = write.write_all(&tls::NO_TLS_ALERT).await;
            let _ = write.shutdown().await;
            return Err(
                "a TLS client connected, but this node runs without TLS (start every node with the same --tls-* flags)"
                    .to_string(),
            );
        }
        return Ok((Box::new(read), Box::new(write)));
    };
    if !speaks_tls {
        let (read, write) = stream.into_split();
        let (mut read, mut write): (LinkReader, LinkWriter) = (Box::new(read), Box::new(write));
        // Read its Hello first: closing with unread bytes resets the connection,
        // and the client could lose the refusal.
        let _ = tokio::time::timeout_at(deadline, read_one(&mut read, &mut BytesMut::new())).await;
        let message = "this cluster requires TLS: set MANTA_TLS_CERT, MANTA_TLS_KEY and MANTA_TLS_CA (a certificate \
                       signed by the cluster's CA), or pass --tls-cert/--tls-key/--tls-ca";
        let error = WireError::new(ErrorCode::AuthenticationFailed, message);
        return Err(reject(&mut write, error, "a client connected without TLS".to_string()).await);
    }
    let stream = tokio::time::timeout_at(deadline, tls.acceptor.accept(stream))
        .await
        .map_err(|_| "no TLS handshake within the handshake timeout".to_string())?
        .map_err(|error| format!("TLS handshake failed: {error}"))?;
    let (read, write) = tokio::io::split(stream);
    Ok((Box::new(read), Box::new(write)))
}

/// Sends a refusal and closes; returns the reason to log.
async fn reject(write: &mut LinkWriter, error: WireError, log_reason: String) -> String {
    if send(write, &Frame::Rejected(error)).await.is_ok() {
        let _ = write.shutdown().await;
    }
    log_reason
}

/// Checks the first frame of an inbound connection: the refusal to send, and the reason to log.
fn check_hello(first: Result<Frame, FrameError>) -> Result<Hello, (WireError, String)> {
    let hello = match first {
        Ok(Frame::Hello(hello)) => hello,
        Ok(other) => {
            let error = WireError::invalid(format!("expected a Hello frame, got {}", frame_kind(&other)));
            return Err((error.clone(), error.message));
        }
        Err(error) => return Err((error.to_wire(), error.to_string())),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version {} is not supported (this peer speaks {PROTOCOL_VERSION}); run the same manta version everywhere",
            hello.protocol_version
        );
        return Err((WireError::new(ErrorCode::VersionMismatch, message.clone()), message));
    }
    if hello.nonce.len() != auth::NONCE_BYTES {
        let error = WireError::invalid(format!("the Hello nonce must be {} bytes", auth::NONCE_BYTES));
        return Err((error.clone(), error.message));
    }
    Ok(hello)
}

fn frame_kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::Challenge { .. } => "Challenge",
        Frame::Proof { .. } => "Proof",
        Frame::Welcome { .. } => "Welcome",
        Frame::Rejected(_) => "Rejected",
        Frame::Request { .. } => "Request",
        Frame::Reply { .. } => "Reply",
        Frame::Cancel { .. } => "Cancel",
        Frame::Event(_) => "Event",
        Frame::Ping { .. } => "Ping",
        Frame::Pong { .. } => "Pong",
        Frame::Error(_) => "Error",
    }
}

/// Reads exactly one frame with the handshake-sized cap.
async fn read_one(read: &mut LinkReader, buffer: &mut BytesMut) -> Result<Frame, FrameError> {
    let mut codec = FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES);
    loop {
        if let Some(frame) = codec.decode(buffer)? {
            return Ok(frame);
        }
        if read.read_buf(buffer).await? == 0 {
            return Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed during the handshake",
            )));
        }
    }
}
