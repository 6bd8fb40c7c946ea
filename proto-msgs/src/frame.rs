//! Length-prefixed msgpack frames.
//!
//! A frame on the wire is a 4-byte big-endian body length followed by the
//! body: one [`Frame`] encoded as msgpack with named fields. The length is
//! checked against the codec's cap before any buffer is grown, so a peer
//! cannot make us allocate by announcing a huge frame.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};
use crate::message::{Event, Reply, Request};

/// Default cap on one frame's body.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;
/// Cap on frames before the handshake completes.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 64 << 10;
/// Bytes in the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Who is connecting, sent in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    /// A node process (raylet) joining or talking to another node.
    Node,
    /// A command-line client (`manta status`, ...).
    Cli,
    /// A driver or worker process.
    Worker,
    /// A benchmark or test peer.
    Test,
    /// The GCS, dialling a worker (to re-create an actor).
    Gcs,
}

/// The first frame a connecting peer sends. It carries no secret: the token is
/// proven, never sent (see `net::auth`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// What kind of peer this is.
    pub role: PeerRole,
    /// A label for logs (`node 1a2b3c4d`, `manta status`).
    pub name: String,
    /// The client's fresh nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
}

/// Everything that travels on a connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Handshake 1, client to server.
    Hello(Hello),
    /// Handshake 2, server to client: prove you know the token.
    Challenge {
        /// The server's protocol version.
        protocol_version: u32,
        /// The server's label.
        name: String,
        /// The server's fresh nonce.
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
    /// Handshake 3, client to server: the client's proof.
    Proof {
        /// Keyed hash of both nonces, the client's role and name (`net::auth`).
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    /// Handshake 4, server to client: accepted, with the server's own proof,
    /// which the client checks before it sends or accepts anything else.
    Welcome {
        /// The server's protocol version.
        protocol_version: u32,
        /// The server's label.
        name: String,
        /// The server's proof over the same transcript.
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    /// Handshake refused; the connection closes after this frame.
    Rejected(WireError),
    /// A request expecting exactly one reply with the same id.
    Request {
        /// Unique per connection direction.
        id: u64,
        /// Milliseconds left before the caller gives up (a budget, not a clock time).
        budget_ms: u64,
        /// The request.
        body: Request,
    },
    /// The reply to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The result.
        result: Result<Reply, WireError>,
    },
    /// The caller gave up on request `id`; the callee should stop working on it.
    Cancel {
        /// The request's id.
        id: u64,
    },
    /// A one-way message.
    Event(Event),
    /// Liveness probe; answered with `Pong` carrying the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// A protocol error notice sent just before closing the connection.
    Error(WireError),
}

impl Frame {
    /// Replies, cancels, heartbeats and protocol notices never wait for credits.
    pub fn bypasses_credits(&self) -> bool {
        !matches!(self, Frame::Request { .. } | Frame::Event(_))
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced or encoded body is larger than the cap.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Body length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The body is not a valid msgpack frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The error as sent to the peer before closing.
    pub fn to_wire(&self) -> WireError {
        WireError::new(ErrorCode::InvalidArgument, self.to_string())
    }
}

/// Encodes one frame body (without the length prefix).
pub fn encode_body(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    rmp_serde::to_vec_named(frame).map_err(|error| FrameError::Encode(error.to_string()))
}

/// Decodes one frame body (without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    rmp_serde::from_slice(body).map_err(|error| FrameError::Malformed(error.to_string()))
}

/// The frame codec, with a size cap that can be raised after the handshake.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl FrameCodec {
    /// A codec refusing bodies over `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes }
    }

    /// Changes the cap (used once the peer is authenticated).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// The current cap.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl FrameCodec {
    /// Takes one whole frame off the front of `src`, or returns `None` (consuming
    /// nothing) while the frame is incomplete. An oversize length is refused
    /// before the buffer grows.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge { len, max: self.max_frame_bytes });
        }
        let needed = LENGTH_PREFIX_BYTES + len;
        if src.len() < needed {
            src.reserve(needed - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_BYTES);
        let body = src.split_to(len);
        decode_body(&body).map(Some)
    }

    /// Appends `frame`, length-prefixed, to `dst`. On error `dst` is left as it was.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_into(frame, dst, self.max_frame_bytes)
    }
}

/// Encodes `frame` once for many links, length prefix included (a feed's
/// frames); each link's writer checks it against its own cap before sending.
pub fn encode_shared(frame: &Frame) -> Result<bytes::Bytes, FrameError> {
    let mut buffer = BytesMut::new();
    encode_into(frame, &mut buffer, u32::MAX as usize)?;
    Ok(buffer.freeze())
}

fn encode_into(frame: &Frame, dst: &mut BytesMut, max_frame_bytes: usize) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    let encoded = rmp_serde::encode::write_named(&mut writer, frame);
    let dst = writer.into_inner();
    if let Err(error) = encoded {
        dst.truncate(start);
        return Err(FrameError::Encode(error.to_string()));
    }
    let len = dst.len() - start - LENGTH_PREFIX_BYTES;
    if len > max_frame_bytes {
        dst.truncate(start);
        return Err(FrameError::TooLarge { len, max: max_frame_bytes });
    }
    dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests;
