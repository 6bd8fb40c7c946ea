//! The handshake (protocol version and cluster token) and dialling with retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ractor::{Actor, ActorCell};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::Instant;
use tracing::debug;

use super::connection::Established;
use super::peer::PeerHandle;
use super::peer_actor::{PeerActor, PeerArgs, PeerMode};
use super::{Backoff, NetConfig, Service};
use crate::PROTOCOL_VERSION;
use crate::error::{ErrorCode, WireError};
use crate::frame::{Frame, FrameCodec, FrameError, HANDSHAKE_MAX_FRAME_BYTES, Hello};

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
    let (mut read, mut write) = stream.into_split();
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        token: config.token.clone(),
        role: config.role,
        name: config.name.clone(),
    });
    let mut out = BytesMut::new();
    FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES)
        .encode(&hello, &mut out)
        .map_err(|error| DialError::Transient(error.to_string()))?;
    write.write_all(&out).await.map_err(|error| DialError::Transient(format!("send hello to {address}: {error}")))?;
    let mut leftover = BytesMut::new();
    let reply = tokio::time::timeout(config.handshake_timeout, read_one(&mut read, &mut leftover))
        .await
        .map_err(|_| DialError::Transient(format!("{address} did not answer the handshake")))?
        .map_err(|error| DialError::Transient(format!("handshake with {address}: {error}")))?;
    match reply {
        Frame::Welcome { name, .. } => {
            Ok(Established { read, write, leftover, remote_name: name, remote_address: address.to_string() })
        }
        Frame::Rejected(error) if error.code == ErrorCode::AuthenticationFailed => {
            Err(DialError::Final(ConnectError::AuthenticationFailed(error.message)))
        }
        Frame::Rejected(error) => {
            Err(DialError::Final(ConnectError::Refused { address: address.to_string(), reason: error.message }))
        }
        other => Err(DialError::Transient(format!("{address} answered the handshake with {}", frame_kind(&other)))),
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
    let (mut read, mut write) = stream.into_split();
    let mut leftover = BytesMut::new();
    let first = tokio::time::timeout(config.handshake_timeout, read_one(&mut read, &mut leftover))
        .await
        .map_err(|_| "no handshake within the handshake timeout".to_string())?;
    let hello = match check_hello(first, config) {
        Ok(hello) => hello,
        Err((error, log_reason)) => {
            let mut out = BytesMut::new();
            if FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES).encode(&Frame::Rejected(error), &mut out).is_ok() {
                let _ = write.write_all(&out).await;
                let _ = write.shutdown().await;
            }
            return Err(log_reason);
        }
    };
    let welcome = Frame::Welcome { protocol_version: PROTOCOL_VERSION, name: config.name.clone() };
    let mut out = BytesMut::new();
    FrameCodec::new(HANDSHAKE_MAX_FRAME_BYTES).encode(&welcome, &mut out).map_err(|error| error.to_string())?;
    write.write_all(&out).await.map_err(|error| format!("send welcome: {error}"))?;
    Ok(Established { read, write, leftover, remote_name: hello.name, remote_address })
}

/// Checks the first frame of an inbound connection: the refusal to send, and the reason to log.
fn check_hello(first: Result<Frame, FrameError>, config: &NetConfig) -> Result<Hello, (WireError, String)> {
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
    if !tokens_match(&hello.token, &config.token) {
        let message = if hello.token.is_empty() {
            "authentication failed: no cluster token was given; pass --token or set MANTA_TOKEN (the head stores it in <temp-dir>/token)"
        } else {
            "authentication failed: the cluster token is wrong; pass the head's token with --token or MANTA_TOKEN (the head stores it in <temp-dir>/token)"
        };
        let reason =
            format!("authentication failed for {:?} peer {:?}: wrong or missing token", hello.role, hello.name);
        return Err((WireError::new(ErrorCode::AuthenticationFailed, message), reason));
    }
    Ok(hello)
}

fn frame_kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
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
async fn read_one(read: &mut OwnedReadHalf, buffer: &mut BytesMut) -> Result<Frame, FrameError> {
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

/// Compares tokens in time independent of where they differ.
fn tokens_match(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    if given.len() != expected.len() {
        return false;
    }
    given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
