//! Errors that travel on the wire: a small code set plus a sentence for the user.

use serde::{Deserialize, Serialize};

/// What went wrong, as a stable code other languages can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or named something that does not exist.
    InvalidArgument,
    /// The link may not send this request or event (see `manta_proto::rpc`).
    PermissionDenied,
    /// The cluster token was missing or wrong.
    AuthenticationFailed,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The request's deadline passed before it finished.
    DeadlineExceeded,
    /// The caller cancelled the request.
    Cancelled,
    /// The node was declared dead; it must rejoin under a new identity.
    NodeFenced,
    /// The thing asked for does not exist.
    NotFound,
    /// This peer does not serve that request.
    Unimplemented,
    /// The connection closed before the reply arrived.
    ConnectionLost,
    /// The server hit an internal error; the message says which.
    Internal,
    /// A capacity ran out (the object store is full); the message gives the sizes.
    ResourceExhausted,
    /// The service cannot do it now: the GCS cannot make changes durable (retrying may work after the operator acts), or a worker's running task is blocked in get or wait (the pushed task did not run; send it to another worker).
    Unavailable,
}

/// An error sent in a reply frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
}

impl WireError {
    /// A new error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Shorthand for [`ErrorCode::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// Shorthand for [`ErrorCode::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
