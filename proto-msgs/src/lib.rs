//! The manta wire protocol.
//!
//! Everything that crosses a process boundary is defined here: the id newtypes
//! ([`ids`]), fixed-point resource sets ([`resources`]), one module per service
//! with its request/reply pairs ([`gcs`], [`node`]), the top-level
//! [`message::Request`], [`message::Reply`] and [`message::Event`] enums, the
//! length-prefixed msgpack [`frame`] codec, and the [`net`] connection layer
//! (handshake, request/reply with deadlines, credits, heartbeats, reconnect).
//!
//! This crate is also the specification for clients in other languages: a
//! program that writes these frames over a socket speaks to a manta cluster.

pub mod actor;
pub mod autoscaler;
pub mod client;
pub mod cluster;
pub mod error;
pub mod frame;
pub mod gcs;
pub mod ids;
pub mod job;
pub mod lease;
pub mod logs;
pub mod message;
pub mod metrics;
pub mod net;
pub mod node;
pub mod object;
pub mod package;
pub mod packing;
pub mod placement;
pub mod private_fs;
pub mod query;
pub mod resources;
pub mod restart;
pub mod rpc;
pub mod runtime_env;
pub mod state;
pub mod submission;
pub mod task;
pub mod worker_env;

pub use error::{ErrorCode, WireError};
pub use frame::{Frame, FrameCodec, FrameError};
pub use ids::{ActorId, JobId, NodeId, ObjectId, PlacementGroupId, TaskId, WorkerId};
pub use message::{Event, Reply, Request};
pub use resources::{Quantity, ResourceSet};

/// Version of the frame protocol; peers with another version are refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 2;
