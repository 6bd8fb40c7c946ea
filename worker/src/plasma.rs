//! The client side of the node object store: writing large values into it and
//! mapping them out of it (pulling a copy to this node first when needed).
//! Objects live in the node's arena (one file every process maps once, see
//! `arena`) or, when no free range fits, in a file of their own.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manta_proto::client::NodeClient;
use manta_proto::message::Event;
use manta_proto::object::{
    CreateObjectReply, CreateObjectRequest, ObjectLocationEvent, PullObjectRequest, SealObjectRequest, StoredObject,
};
use manta_proto::task::WorkerAddress;
use manta_proto::{ErrorCode, JobId, ObjectId, WorkerId};
use serde::Serialize;

mod arena;

use crate::core::Core;
use crate::error::{Error, Result};

/// Counts bytes written (to size a value before reserving room for it).
#[derive(Default)]
pub(crate) struct CountingWriter(pub u64);

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The msgpack size of `value`.
pub(crate) fn encoded_size<T: Serialize + ?Sized>(value: &T) -> Result<u64> {
    let mut counter = CountingWriter::default();
    rmp_serde::encode::write_named(&mut counter, value)
        .map_err(|error| Error::InvalidArgument(format!("the value cannot be serialized: {error}")))?;
    Ok(counter.0)
}

/// Who a stored object belongs to.
#[derive(Clone, Copy)]
pub(crate) struct Ownership {
    pub owner: WorkerId,
    pub job_id: JobId,
}

/// How long a create or pull may wait for room in a full store (the node decides
/// when to give up: `--object-store-full-timeout-ms`).
const STORE_WAIT: Duration = Duration::from_secs(24 * 3600);

fn store_error(error: manta_proto::net::CallError) -> Error {
    match error.code() {
        ErrorCode::ResourceExhausted => Error::ObjectStoreFull(error.to_string()),
        _ => Error::Cluster(format!("the node's object store: {error}")),
    }
}

/// Reserves `size` bytes in this node's store; where to write them.
async fn create(core: &Core, object_id: ObjectId, size: u64, owner: Ownership) -> Result<CreateObjectReply> {
    let request = CreateObjectRequest { object_id, size, owner: owner.owner, job_id: owner.job_id };
    NodeClient::new(core.raylet.clone(), STORE_WAIT).call(request).await.map_err(store_error)
}

async fn seal(core: &Core, object_id: ObjectId, ok: bool) -> Result<()> {
    let node = NodeClient::new(core.raylet.clone(), Duration::from_secs(30));
    node.call(SealObjectRequest { object_id, ok }).await.map_err(store_error)?;
    Ok(())
}

fn stored(core: &Core, size: u64) -> StoredObject {
    StoredObject { node_id: core.worker.node_id, node_address: core.raylet_address.clone(), size }
}

/// Serializes `value` (of `size` bytes) straight into a new store file: the only
/// copy of its bytes. Blocks the calling thread (not a runtime thread).
pub(crate) fn put_value<T: Serialize + ?Sized>(
    core: &Arc<Core>,
    object_id: ObjectId,
    value: &T,
    size: u64,
) -> Result<StoredObject> {
    let ownership = Ownership { owner: core.worker.worker_id, job_id: core.job.job_id };
    let place = crate::core::block_on(&core.handle, {
        let core = core.clone();
        async move { create(&core, object_id, size, ownership).await }
    })?;
    let written = (|| -> std::io::Result<u64> {
        if let Some(offset) = place.offset {
            let arena = arena::open(&place.path)?;
            // SAFETY: the store gave this range to this writer alone until the seal.
            let mut writer = arena::SliceWriter::new(unsafe { arena.range_mut(offset, size)? });
            rmp_serde::encode::write_named(&mut writer, value).map_err(std::io::Error::other)?;
            return Ok(writer.written() as u64);
        }
        let file = manta_proto::private_fs::create_new(std::path::Path::new(&place.path))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        rmp_serde::encode::write_named(&mut writer, value).map_err(std::io::Error::other)?;
        writer.flush()?;
        let file = writer.into_inner().map_err(|error| error.into_error())?;
        Ok(file.metadata()?.len())
    })();
    let ok = matches!(written, Ok(length) if length == size);
    crate::core::block_on(&core.handle, {
        let core = core.clone();
        async move { seal(&core, object_id, ok).await }
    })?;
    match written {
        Ok(length) if length == size => Ok(stored(core, size)),
        Ok(length) => Err(Error::InvalidArgument(format!(
            "the value serialized to {length} bytes the second time and {size} the first; put values whose encoding is deterministic"
        ))),
        Err(error) => {
            Err(Error::ObjectStoreFull(format!("writing object {object_id} into the node's store failed: {error}")))
        }
    }
}

/// Copies encoded `bytes` into a new store file (a large task result).
pub(crate) async fn put_bytes(
    core: &Core,
    object_id: ObjectId,
    bytes: Bytes,
    owner: Ownership,
) -> Result<StoredObject> {
    let size = bytes.len() as u64;
    let place = create(core, object_id, size, owner).await?;
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(offset) = place.offset {
            let arena = arena::open(&place.path)?;
            // SAFETY: the store gave this range to this writer alone until the seal.
            arena::copy_parallel(unsafe { arena.range_mut(offset, size)? }, &bytes);
            return Ok(());
        }
        let mut file = manta_proto::private_fs::create_new(std::path::Path::new(&place.path))?;
        file.write_all(&bytes)
    })
    .await
    .map_err(|error| Error::Cluster(error.to_string()))?;
    seal(core, object_id, written.is_ok()).await?;
    written.map_err(|error| {
        Error::ObjectStoreFull(format!("writing object {object_id} into the node's store failed: {error}"))
    })?;
    Ok(stored(core, size))
}

/// The bytes of a stored object, mapped from this node's store (pulled here
/// first when it lives elsewhere). No copy is made in this process.
pub(crate) async fn read(
    core: &Core,
    object_id: ObjectId,
    owner: &WorkerAddress,
    location: &StoredObject,
) -> Result<Bytes> {
    let mut attempts = 0;
    let file = loop {
        attempts += 1;
        let reader = Some(core.worker.worker_id);
        let (path, offset) = local_copy(core, object_id, owner, location, reader).await?;
        if let Some(offset) = offset {
            let release = arena::Release::new(core, object_id);
            let arena = arena::open(&path).map_err(|error| lost(object_id, &format!("cannot map {path}: {error}")))?;
            return arena::View::new(arena, offset, location.size, release)
                .map(Bytes::from_owner)
                .map_err(|error| lost(object_id, &error.to_string()));
        }
        match File::open(&path) {
            Ok(file) => break file,
            // Spilled to disk between the answer and the open: ask where it is now.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
            Err(error) => return Err(lost(object_id, &format!("cannot open {path}: {error}"))),
        }
    };
    // SAFETY: store and spill files are written once, sealed, and never truncated
    // or rewritten afterwards (a freed or spilled object's file is unlinked, which
    // keeps the mapping valid).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|error| lost(object_id, &error.to_string()))?;
    if map.len() as u64 != location.size {
        return Err(lost(object_id, &format!("the copy has {} bytes, not {}", map.len(), location.size)));
    }
    Ok(Bytes::from_owner(map))
}

/// Makes sure this node's store has a copy; returns its path (and offset, in the
/// arena). With a `reader`, an arena copy stays pinned until it releases it.
pub(crate) async fn local_copy(
    core: &Core,
    object_id: ObjectId,
    owner: &WorkerAddress,
    location: &StoredObject,
    reader: Option<WorkerId>,
) -> Result<(String, Option<u64>)> {
    let request = PullObjectRequest {
        object_id,
        stored: location.clone(),
        owner: owner.worker_id,
        job_id: core.job.job_id,
        reader,
    };
    let reply = match NodeClient::new(core.raylet.clone(), STORE_WAIT).call(request).await {
        Ok(reply) => reply,
        Err(error) if error.code() == ErrorCode::ResourceExhausted => {
            return Err(Error::ObjectStoreFull(error.to_string()));
        }
        Err(error) => return Err(lost(object_id, &error.to_string())),
    };
    if reply.copied {
        // The owner frees every copy, so it must learn of this one.
        let event = Event::ObjectLocation(ObjectLocationEvent { object_id, node_address: core.raylet_address.clone() });
        if owner.worker_id == core.worker.worker_id {
            core.store.add_location(object_id, &core.raylet_address);
        } else if let Ok(peer) = core.peers.get(&owner.address).await {
            let _ = peer.send_event_when_up(event, crate::core::EVENT_TIMEOUT).await;
        }
    }
    Ok((reply.path, reply.offset))
}

fn lost(object_id: ObjectId, reason: &str) -> Error {
    Error::ObjectLost(format!("object {object_id} could not be read from the object store: {reason}"))
}
