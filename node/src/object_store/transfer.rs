//! Moving objects between nodes: pulling a copy in chunks, and serving chunks.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manta_proto::net::{self, NetConfig, NoService, PeerHandle};
use manta_proto::object::{PullObjectRequest, ReadChunkRequest};
use manta_proto::{ErrorCode, ObjectId, WireError};
use ractor::ActorRef;
use tokio::task::JoinSet;
use tracing::debug;

use super::{Located, StoreMsg, StoreState};

/// Bytes per chunk of a pull.
pub const CHUNK_BYTES: u64 = 8 << 20;
/// Chunk requests in flight per pull.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Where a pulled copy goes.
pub(super) enum Target {
    /// A range of the arena, from this offset.
    Arena(Arc<File>, u64),
    /// A file of its own.
    File(PathBuf),
}

/// Fetches `request`'s object from its node in chunks into `target`.
pub(super) fn start_pull(myself: &ActorRef<StoreMsg>, state: &StoreState, request: PullObjectRequest, target: Target) {
    let id = request.object_id;
    let peers = state.peers.clone();
    let net = state.net.clone();
    let myself = myself.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = pull(&peers, net, &request, target).await;
        if result.is_ok() {
            debug!(object_id = %id, size = request.stored.size, elapsed = ?started.elapsed(), "pulled");
        }
        let _ = myself.cast(StoreMsg::PullDone(id, result));
    });
}

async fn source_peer(
    peers: &tokio::sync::Mutex<HashMap<String, PeerHandle>>,
    net: Arc<NetConfig>,
    address: &str,
) -> Result<PeerHandle, String> {
    let mut peers = peers.lock().await;
    if let Some(peer) = peers.get(address)
        && !peer.is_closed()
    {
        return Ok(peer.clone());
    }
    let peer = net::connect(address, net, Arc::new(NoService), None, Duration::from_secs(2))
        .await
        .map_err(|error| format!("cannot reach node {address}, which holds the object: {error}"))?;
    peers.insert(address.to_string(), peer.clone());
    Ok(peer)
}

async fn pull(
    peers: &tokio::sync::Mutex<HashMap<String, PeerHandle>>,
    net: Arc<NetConfig>,
    request: &PullObjectRequest,
    target: Target,
) -> Result<(), String> {
    let source = source_peer(peers, net, &request.stored.node_address).await?;
    let size = request.stored.size;
    let (file, base) = match target {
        Target::Arena(file, offset) => (file, offset),
        Target::File(path) => {
            let file = manta_proto::private_fs::create_truncate(&path)
                .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
            file.set_len(size).map_err(|error| format!("cannot size {}: {error}", path.display()))?;
            (Arc::new(file), 0)
        }
    };
    let mut offsets = (0..size).step_by(CHUNK_BYTES as usize);
    let mut in_flight = JoinSet::new();
    let fetch = |offset: u64, in_flight: &mut JoinSet<Result<(), String>>| {
        let source = source.clone();
        let file = file.clone();
        let len = CHUNK_BYTES.min(size - offset);
        let object_id = request.object_id;
        in_flight.spawn(async move {
            let request = ReadChunkRequest { object_id, offset, len };
            let chunk = match source.rpc(request, Duration::from_secs(60)).await {
                Ok(chunk) => chunk,
                Err(error) => return Err(format!("reading object {object_id} from its node failed: {error}")),
            };
            if chunk.len() as u64 != len {
                return Err(format!("short chunk at {offset}: {} of {len} bytes", chunk.len()));
            }
            tokio::task::spawn_blocking(move || file.write_all_at(&chunk, base + offset))
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| format!("writing the copy failed (is the disk full?): {error}"))
        });
    };
    for offset in offsets.by_ref().take(CHUNKS_IN_FLIGHT) {
        fetch(offset, &mut in_flight);
    }
    while let Some(done) = in_flight.join_next().await {
        done.map_err(|error| error.to_string())??;
        if let Some(offset) = offsets.next() {
            fetch(offset, &mut in_flight);
        }
    }
    Ok(())
}

/// Reads one chunk of a sealed object (for another node's pull). The object may
/// be spilled between finding its file and opening it: then it is found again.
pub async fn read_chunk(store: &ActorRef<StoreMsg>, request: ReadChunkRequest) -> Result<Bytes, WireError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let located = locate(store, request.object_id).await?;
        // Held by the read itself: released when it ends, even if this request is dropped.
        let pin = located.pinned.then(|| Pin { store: store.clone(), id: request.object_id });
        let size = located.len;
        if request.offset > size || request.len > size - request.offset || request.len > 2 * CHUNK_BYTES {
            return Err(WireError::invalid(format!(
                "chunk {}+{} is outside object {} of {size} bytes (or larger than {} bytes)",
                request.offset,
                request.len,
                request.object_id,
                2 * CHUNK_BYTES
            )));
        }
        let (path, start) = (located.path, located.offset + request.offset);
        let read = tokio::task::spawn_blocking(move || {
            let _pin = pin;
            let file = File::open(&path)?;
            let mut buffer = vec![0u8; request.len as usize];
            file.read_exact_at(&mut buffer, start)?;
            Ok::<_, std::io::Error>(Bytes::from(buffer))
        })
        .await
        .map_err(|error| WireError::internal(error.to_string()));
        let read = read?;
        match read {
            Ok(chunk) => return Ok(chunk),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
            Err(error) => {
                return Err(WireError::internal(format!("reading object {}: {error}", request.object_id)));
            }
        }
    }
}

/// An arena range pinned for a chunk read; released when dropped.
struct Pin {
    store: ActorRef<StoreMsg>,
    id: ObjectId,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = self.store.cast(StoreMsg::Release(self.id, None));
    }
}

async fn locate(store: &ActorRef<StoreMsg>, id: ObjectId) -> Result<Located, WireError> {
    let located = store
        .call(|reply| StoreMsg::Locate(id, reply), Some(Duration::from_secs(10)))
        .await
        .map_err(|_| WireError::internal("the object store did not answer"))?;
    match located {
        ractor::rpc::CallResult::Success(Some(found)) => Ok(found),
        _ => Err(WireError::new(ErrorCode::NotFound, format!("object {id} is not in this node's store"))),
    }
}
