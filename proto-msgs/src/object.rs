//! Objects: where their bytes live, the node object store's requests, and the
//! borrower protocol between an object's owner and the processes holding refs.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeId, ObjectId, TaskId, WorkerId};
use crate::task::{ObjectRefWire, WorkerAddress};

/// Values up to this size travel inline and live in their owner's memory;
/// larger ones go to the object store of the node where they were made.
pub const INLINE_OBJECT_MAX_BYTES: usize = 100 * 1024;

/// A large object in a node's object store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoredObject {
    /// The node holding the primary copy.
    pub node_id: NodeId,
    /// That node's address (its raylet serves the chunks).
    pub node_address: String,
    /// Size in bytes.
    pub size: u64,
}

/// A shared inline value, without a copy when it is built from [`Bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectBody {
    /// The msgpack value itself.
    Inline(Bytes),
    /// Where to pull it from.
    Stored(StoredObject),
}

impl ObjectBody {
    /// Size of the value in bytes.
    pub fn size(&self) -> u64 {
        match self {
            ObjectBody::Inline(bytes) => bytes.len() as u64,
            ObjectBody::Stored(stored) => stored.size,
        }
    }
}

/// One return value of a finished task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReturnObject {
    /// The value.
    pub body: ObjectBody,
    /// Refs serialized inside the value: the caller (its owner) pins them
    /// while the value lives. The executor holds them until `ReleaseReturns`.
    pub nested: Vec<ObjectRefWire>,
}

/// Node: reserve `size` bytes for a new object (waits while the store is full).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateObjectRequest {
    /// The object.
    pub object_id: ObjectId,
    /// Its size.
    pub size: u64,
    /// Its owner (its objects are freed when it exits).
    pub owner: WorkerId,
    /// Its job (freed when the job ends).
    pub job_id: JobId,
}

/// Where the creator writes the object, then seals it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateObjectReply {
    /// Absolute path of the object's file, or of the node's arena when `offset` is set.
    pub path: String,
    /// The object's first byte in the arena file at `path` (it spans `size` bytes
    /// from there); absent: `path` is a file of its own, created by the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Node: the creator finished writing (`ok`) or gave up (`!ok`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealObjectRequest {
    /// The object.
    pub object_id: ObjectId,
    /// False: the write failed, drop the reservation.
    pub ok: bool,
}

/// Node: make a copy of `object` in this node's store (pulling it from its
/// node in chunks) and say where it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullObjectRequest {
    /// The object.
    pub object_id: ObjectId,
    /// Where its primary copy is.
    pub stored: StoredObject,
    /// Its owner.
    pub owner: WorkerId,
    /// Its job.
    pub job_id: JobId,
    /// The process that will read the copy: a copy in the node's arena stays
    /// pinned for it (its range is not reused) until it sends `ReleaseObject`
    /// or exits. Absent: only make the copy (read nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader: Option<WorkerId>,
}

/// Where the local copy is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullObjectReply {
    /// Absolute path of the object's file on this node, or of the node's arena
    /// when `offset` is set.
    pub path: String,
    /// True when this call made a new copy here (the owner should learn the location).
    pub copied: bool,
    /// The copy's first byte in the arena file at `path`; absent: `path` is the
    /// object's own file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Node: `reader` is done with the arena copy it was given by `PullObject`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseObjectRequest {
    /// The object.
    pub object_id: ObjectId,
    /// The reader named in the `PullObject`.
    pub reader: WorkerId,
}

/// Node to node: one chunk of a sealed object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadChunkRequest {
    /// The object.
    pub object_id: ObjectId,
    /// Byte offset.
    pub offset: u64,
    /// Bytes wanted.
    pub len: u64,
}

/// Owner to node: these objects have no references left anywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FreeObjectsEvent {
    /// The objects.
    pub object_ids: Vec<ObjectId>,
}

/// Borrower to owner: `borrower` now holds refs to these objects. Answered
/// once recorded, so the sender may release whatever pinned them in transit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddBorrowerRequest {
    /// The objects (all owned by the receiver).
    pub object_ids: Vec<ObjectId>,
    /// Who holds them.
    pub borrower: WorkerId,
}

/// Ids among the request's that the owner no longer has (freed or never known).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddBorrowerReply {
    /// Unknown objects.
    pub unknown: Vec<ObjectId>,
}

/// Borrower to owner: `borrower` dropped its last ref to these objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoveBorrowerEvent {
    /// The objects.
    pub object_ids: Vec<ObjectId>,
    /// Who held them.
    pub borrower: WorkerId,
}

/// Reader to owner: a copy of the object now also lives on this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectLocationEvent {
    /// The object.
    pub object_id: ObjectId,
    /// The node holding the copy.
    pub node_address: String,
}

/// Caller to executor: the nested refs of this task's returns are registered;
/// the executor may drop the pins it kept for them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseReturnsEvent {
    /// The task.
    pub task_id: TaskId,
}

/// What a row of `manta list objects` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ObjectState {
    /// An owner's entry.
    Owned,
    /// A node store's sealed primary copy.
    Primary,
    /// A node store's sealed copy pulled from another node.
    Copy,
    /// A primary copy being written.
    Creating,
    /// A copy being pulled.
    Pulling,
    /// A primary copy spilled to the node's disk (no store memory held).
    Spilled,
}

/// Where an owned object's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectLocation {
    /// In the owner's memory.
    Inline,
    /// In a node's object store.
    Store,
    /// Not made yet.
    Pending,
    /// Its task failed.
    Failed,
}

/// One object as `manta list objects` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object.
    pub object_id: ObjectId,
    /// Size in bytes, when known.
    pub size: Option<u64>,
    /// Who owns it.
    pub owner: Option<WorkerAddress>,
    /// The node reporting it.
    pub node_id: NodeId,
    /// Owned (an owner's table), or primary / copy / creating / pulling / spilled (a node's store).
    pub state: ObjectState,
    /// Owner only: refs held in the owner process (handles, pins by tasks and containing objects).
    pub local_refs: Option<u32>,
    /// Owner only: processes borrowing it.
    pub borrowers: Option<u32>,
    /// Owner only: where the value lives.
    pub location: Option<ObjectLocation>,
    /// The job.
    pub job_id: Option<JobId>,
    /// Pid of the owner process (owner rows).
    pub pid: Option<u32>,
}

/// Node or owner: the objects it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListObjectsRequest {
    /// At most this many rows.
    pub limit: usize,
}

/// The objects, and the owners a node knows of (its workers), for the CLI to ask next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListObjectsReply {
    /// The objects.
    pub objects: Vec<ObjectRecord>,
    /// Owner processes on this node (a node's reply only).
    pub owners: Vec<String>,
    /// Store usage: bytes used, capacity (a node's reply only).
    pub store_used: u64,
    /// Store capacity in bytes (a node's reply only).
    pub store_capacity: u64,
}

/// Worker to its node: whether it owns objects that are still referenced
/// (such a worker is not ended for being idle).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerOwnershipEvent {
    /// The worker.
    pub worker_id: WorkerId,
    /// True while it owns referenced objects.
    pub owns_objects: bool,
}

/// Driver to its node: a driver process (an owner of objects) listens at `address`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriverStartedEvent {
    /// The driver's worker id.
    pub worker_id: WorkerId,
    /// Its listener.
    pub address: String,
}
