//! The node's object store: large objects (over
//! [`INLINE_OBJECT_MAX_BYTES`](manta_proto::object::INLINE_OBJECT_MAX_BYTES)),
//! one file each in a shared-memory folder (`/dev/shm` when it has room, as
//! Ray's plasma does, else the node's folder on disk).
//!
//! A creator reserves room ([`StoreMsg::Create`]), writes the file, and seals it.
//! Readers on the node map the file; readers on other nodes ask their own store to
//! pull a copy, which it fetches in chunks with a few requests in flight, writing
//! each chunk in place (no whole-object buffer anywhere). Primary copies are
//! pinned until their owner frees them (or exits, or its job ends); pulled copies
//! are evicted least recently used first when room is needed. When nothing can be
//! evicted, a create waits up to [`StoreConfig::full_timeout`], then fails with an
//! object-store-full error giving the sizes.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use manta_proto::message::{Reply, Request};
use manta_proto::net::{self, NetConfig, NoService, PeerHandle};
use manta_proto::object::{CreateObjectRequest, ObjectRecord, PullObjectReply, PullObjectRequest, ReadChunkRequest};
use manta_proto::{ErrorCode, JobId, NodeId, ObjectId, WireError, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// Bytes per chunk of a pull.
pub const CHUNK_BYTES: u64 = 8 << 20;
/// Chunk requests in flight per pull.
const CHUNKS_IN_FLIGHT: usize = 4;
/// How long a create waits for room by default.
pub const DEFAULT_FULL_TIMEOUT: Duration = Duration::from_secs(10);

/// How a copy came to be here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Made on this node: pinned until its owner frees it.
    Primary,
    /// Pulled from another node: evictable once sealed.
    Copy,
}

/// Where a copy is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Room reserved, bytes being written.
    Writing,
    /// Complete and readable.
    Sealed,
}

/// One object's accounting.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Bytes.
    pub size: u64,
    /// Primary or copy.
    pub kind: Kind,
    /// Writing or sealed.
    pub phase: Phase,
    /// Its owner.
    pub owner: WorkerId,
    /// Its job.
    pub job_id: JobId,
    /// Last use (a logical clock), for eviction.
    pub last_used: u64,
}

/// Why room could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// Bytes asked for.
    pub requested: u64,
    /// Bytes held.
    pub used: u64,
    /// Bytes held by pinned objects (primaries and copies being written).
    pub pinned: u64,
    /// The store's capacity.
    pub capacity: u64,
}

impl NoRoom {
    /// The error a user sees.
    pub fn message(&self, waited: Duration) -> String {
        format!(
            "object store full: {} asked for, {} of {} held ({} pinned by live objects), after waiting {:.1} s; \
             drop ObjectRefs you no longer need, or start the node with a larger --object-store-memory",
            human(self.requested),
            human(self.used),
            human(self.capacity),
            human(self.pinned),
            waited.as_secs_f64()
        )
    }
}

/// `1.5 GiB`-style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// The store's bookkeeping, without files or messages (unit-tested on its own).
#[derive(Debug, Default)]
pub struct StoreTable {
    capacity: u64,
    used: u64,
    clock: u64,
    entries: HashMap<ObjectId, Entry>,
}

impl StoreTable {
    /// An empty store of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self { capacity, ..Self::default() }
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The entry of `id`.
    pub fn get(&self, id: &ObjectId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectId, &Entry)> {
        self.entries.iter()
    }

    /// Marks `id` used now (eviction goes least recently used first).
    pub fn touch(&mut self, id: &ObjectId) {
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(id) {
            entry.last_used = self.clock;
        }
    }

    fn pinned(&self) -> u64 {
        self.entries.values().filter(|entry| !evictable(entry)).map(|entry| entry.size).sum()
    }

    /// Reserves room for a new entry, evicting sealed copies (least recently used
    /// first) as needed. Returns the evicted ids, whose files must be removed.
    pub fn reserve(
        &mut self,
        id: ObjectId,
        size: u64,
        kind: Kind,
        owner: WorkerId,
        job_id: JobId,
    ) -> Result<Vec<ObjectId>, NoRoom> {
        let no_room = |table: &Self| NoRoom {
            requested: size,
            used: table.used,
            pinned: table.pinned(),
            capacity: table.capacity,
        };
        if self.capacity.saturating_sub(self.pinned()) < size {
            return Err(no_room(self));
        }
        let mut evicted = Vec::new();
        if self.used + size > self.capacity {
            let mut candidates: Vec<(u64, ObjectId)> = self
                .entries
                .iter()
                .filter(|(_, entry)| evictable(entry))
                .map(|(id, entry)| (entry.last_used, *id))
                .collect();
            candidates.sort_unstable();
            for (_, candidate) in candidates {
                if self.used + size <= self.capacity {
                    break;
                }
                self.remove(&candidate);
                evicted.push(candidate);
            }
        }
        self.clock += 1;
        self.used += size;
        let entry = Entry { size, kind, phase: Phase::Writing, owner, job_id, last_used: self.clock };
        self.entries.insert(id, entry);
        Ok(evicted)
    }

    /// The bytes are written.
    pub fn seal(&mut self, id: &ObjectId) -> bool {
        match self.entries.get_mut(id) {
            Some(entry) => {
                entry.phase = Phase::Sealed;
                true
            }
            None => false,
        }
    }

    /// Forgets `id`, giving its room back.
    pub fn remove(&mut self, id: &ObjectId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.used -= entry.size;
        Some(entry)
    }

    /// Ids of entries matching `filter`.
    pub fn ids_where(&self, filter: impl Fn(&Entry) -> bool) -> Vec<ObjectId> {
        self.entries.iter().filter(|(_, entry)| filter(entry)).map(|(id, _)| *id).collect()
    }
}

fn evictable(entry: &Entry) -> bool {
    entry.kind == Kind::Copy && entry.phase == Phase::Sealed
}

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Capacity in bytes.
    pub capacity: u64,
    /// How long a create waits for room before failing.
    pub full_timeout: Duration,
}

/// Picks the folder: `/dev/shm` when it has room for the whole store, else `fallback`.
pub fn choose_dir(capacity: u64, node_id: NodeId, fallback: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if let Ok(stat) = rustix::fs::statvfs(shm) {
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free >= capacity {
            return shm.join(format!("manta-{}-{}", std::process::id(), node_id.short()));
        }
        warn!(free, capacity, "/dev/shm is smaller than the object store; objects go to disk (like Ray's fallback)");
    }
    fallback.to_path_buf()
}

/// Messages to the [`ObjectStoreActor`].
#[derive(Debug)]
pub enum StoreMsg {
    /// Reserve room for a primary copy; answers the file path.
    Create(CreateObjectRequest, RpcReplyPort<Result<String, WireError>>),
    /// The creator finished (`true`) or gave up.
    Seal(ObjectId, bool),
    /// Bring a copy here.
    Pull(PullObjectRequest, RpcReplyPort<Result<PullObjectReply, WireError>>),
    /// A pull ended.
    PullDone(ObjectId, Result<(), String>),
    /// Path and size of a sealed object, for serving chunks.
    Locate(ObjectId, RpcReplyPort<Option<(PathBuf, u64)>>),
    /// Owners freed these objects.
    Free(Vec<ObjectId>),
    /// A worker exited: free the primaries it owned.
    OwnerGone(WorkerId),
    /// A job ended: free everything it owned.
    JobFinished(JobId),
    /// The objects here, used bytes and capacity.
    List(RpcReplyPort<(Vec<ObjectRecord>, u64, u64)>),
    /// Timer: fail creates that waited too long.
    Tick,
}

/// Start-up arguments of the [`ObjectStoreActor`].
pub struct StoreArgs {
    /// Settings.
    pub config: StoreConfig,
    /// The folder for object files (created; removed when the store stops).
    pub dir: PathBuf,
    /// This node (for listings).
    pub node_id: NodeId,
    /// For pulls from other nodes.
    pub net: Arc<NetConfig>,
}

/// A request waiting for room.
struct Waiting {
    since: Instant,
    request: WaitingKind,
}

enum WaitingKind {
    Create(CreateObjectRequest, RpcReplyPort<Result<String, WireError>>),
    Pull(PullObjectRequest),
}

impl WaitingKind {
    fn id_and_size(&self) -> (ObjectId, u64) {
        match self {
            WaitingKind::Create(request, _) => (request.object_id, request.size),
            WaitingKind::Pull(request) => (request.object_id, request.stored.size),
        }
    }
}

/// State of the [`ObjectStoreActor`].
pub struct StoreState {
    table: StoreTable,
    config: StoreConfig,
    dir: PathBuf,
    node_id: NodeId,
    net: Arc<NetConfig>,
    peers: Arc<tokio::sync::Mutex<HashMap<String, PeerHandle>>>,
    waiting: VecDeque<Waiting>,
    pull_waiters: PullWaiters,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for StoreState {
    fn drop(&mut self) {
        self.ticker.abort();
        // The files are the store's memory: give it back with the node.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl StoreState {
    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(id.hex())
    }

    fn delete(&mut self, id: &ObjectId) {
        if self.table.remove(id).is_some() {
            let _ = std::fs::remove_file(self.path(id));
            if let Some(waiters) = self.pull_waiters.remove(id) {
                for waiter in waiters {
                    let _ = waiter.send(Err(WireError::new(ErrorCode::NotFound, format!("object {id} was freed"))));
                }
            }
        }
    }

    fn remove_files(&self, ids: &[ObjectId]) {
        for id in ids {
            debug!(object_id = %id, "evicted a copy");
            let _ = std::fs::remove_file(self.path(id));
        }
    }
}

/// The node's object store actor.
#[derive(Debug, Default)]
pub struct ObjectStoreActor;

impl Actor for ObjectStoreActor {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = StoreArgs;

    async fn pre_start(&self, myself: ActorRef<StoreMsg>, args: StoreArgs) -> Result<StoreState, ActorProcessingErr> {
        std::fs::create_dir_all(&args.dir)
            .map_err(|error| format!("cannot create the object store folder {}: {error}", args.dir.display()))?;
        info!(dir = %args.dir.display(), capacity = %human(args.config.capacity), "object store ready");
        let ticker = myself.send_interval(Duration::from_millis(100), || StoreMsg::Tick);
        Ok(StoreState {
            table: StoreTable::new(args.config.capacity),
            config: args.config,
            dir: args.dir,
            node_id: args.node_id,
            net: args.net,
            peers: Default::default(),
            waiting: VecDeque::new(),
            pull_waiters: HashMap::new(),
            ticker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<StoreMsg>,
        message: StoreMsg,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StoreMsg::Create(request, reply) => {
                if let Some(entry) = state.table.get(&request.object_id) {
                    // Created twice (a retried task): the first copy stands.
                    let answer = if entry.phase == Phase::Sealed {
                        Err(WireError::new(ErrorCode::InvalidArgument, "object already exists"))
                    } else {
                        Err(WireError::new(ErrorCode::InvalidArgument, "object is being written"))
                    };
                    let _ = reply.send(answer);
                    return Ok(());
                }
                state
                    .waiting
                    .push_back(Waiting { since: Instant::now(), request: WaitingKind::Create(request, reply) });
                admit(&myself, state, false);
            }
            StoreMsg::Seal(id, ok) => {
                if ok {
                    state.table.seal(&id);
                } else {
                    state.delete(&id);
                    admit(&myself, state, false);
                }
            }
            StoreMsg::Pull(request, reply) => {
                let id = request.object_id;
                if let Some(entry) = state.table.get(&id) {
                    if entry.phase == Phase::Sealed {
                        state.table.touch(&id);
                        let path = state.path(&id).to_string_lossy().into_owned();
                        let _ = reply.send(Ok(PullObjectReply { path, copied: false }));
                    } else {
                        state.pull_waiters.entry(id).or_default().push(reply);
                    }
                    return Ok(());
                }
                if request.stored.node_id == state.node_id {
                    let _ = reply.send(Err(WireError::new(
                        ErrorCode::NotFound,
                        format!("object {id} is no longer in this node's store (it was freed or its node restarted)"),
                    )));
                    return Ok(());
                }
                let first = !state.pull_waiters.contains_key(&id);
                state.pull_waiters.entry(id).or_default().push(reply);
                if first {
                    state.waiting.push_back(Waiting { since: Instant::now(), request: WaitingKind::Pull(request) });
                    admit(&myself, state, false);
                }
            }
            StoreMsg::PullDone(id, result) => {
                let waiters = state.pull_waiters.remove(&id).unwrap_or_default();
                match result {
                    Ok(()) if state.table.seal(&id) => {
                        let path = state.path(&id).to_string_lossy().into_owned();
                        let mut copied = true;
                        for waiter in waiters {
                            let _ = waiter.send(Ok(PullObjectReply { path: path.clone(), copied }));
                            copied = false;
                        }
                    }
                    Ok(()) => {}
                    Err(reason) => {
                        warn!(object_id = %id, %reason, "pull failed");
                        state.delete(&id);
                        for waiter in waiters {
                            let _ = waiter.send(Err(WireError::new(ErrorCode::NotFound, reason.clone())));
                        }
                        admit(&myself, state, false);
                    }
                }
            }
            StoreMsg::Locate(id, reply) => {
                let found = state
                    .table
                    .get(&id)
                    .filter(|entry| entry.phase == Phase::Sealed)
                    .map(|entry| (state.path(&id), entry.size));
                let _ = reply.send(found);
            }
            StoreMsg::Free(ids) => {
                for id in ids {
                    state.delete(&id);
                }
                admit(&myself, state, false);
            }
            StoreMsg::OwnerGone(worker) => {
                for id in state.table.ids_where(|entry| entry.owner == worker && entry.kind == Kind::Primary) {
                    state.delete(&id);
                }
                admit(&myself, state, false);
            }
            StoreMsg::JobFinished(job) => {
                for id in state.table.ids_where(|entry| entry.job_id == job) {
                    state.delete(&id);
                }
                admit(&myself, state, false);
            }
            StoreMsg::List(reply) => {
                let records = state
                    .table
                    .entries()
                    .map(|(id, entry)| ObjectRecord {
                        object_id: *id,
                        size: Some(entry.size),
                        owner: None,
                        node_id: state.node_id,
                        state: match (entry.kind, entry.phase) {
                            (Kind::Primary, Phase::Sealed) => "PRIMARY",
                            (Kind::Copy, Phase::Sealed) => "COPY",
                            (Kind::Primary, Phase::Writing) => "CREATING",
                            (Kind::Copy, Phase::Writing) => "PULLING",
                        }
                        .to_string(),
                        local_refs: None,
                        borrowers: None,
                        location: None,
                        job_id: Some(entry.job_id),
                        pid: None,
                    })
                    .collect();
                let _ = reply.send((records, state.table.used(), state.table.capacity()));
            }
            StoreMsg::Tick => admit(&myself, state, true),
        }
        Ok(())
    }
}

/// Admits waiting requests in order while room can be made; with `expire`, first
/// fails the ones that waited past the timeout.
fn admit(myself: &ActorRef<StoreMsg>, state: &mut StoreState, expire: bool) {
    if expire {
        let timeout = state.config.full_timeout;
        let (expired, kept): (VecDeque<Waiting>, VecDeque<Waiting>) =
            state.waiting.drain(..).partition(|waiting| waiting.since.elapsed() >= timeout);
        state.waiting = kept;
        for waiting in expired {
            fail_waiting(&mut state.pull_waiters, waiting, &state.table);
        }
    }
    while let Some(waiting) = state.waiting.pop_front() {
        let (id, size) = waiting.request.id_and_size();
        let (owner, job_id, kind) = match &waiting.request {
            WaitingKind::Create(request, _) => (request.owner, request.job_id, Kind::Primary),
            WaitingKind::Pull(request) => (request.owner, request.job_id, Kind::Copy),
        };
        match state.table.reserve(id, size, kind, owner, job_id) {
            Ok(evicted) => {
                state.remove_files(&evicted);
                match waiting.request {
                    WaitingKind::Create(_, reply) => {
                        let path = state.path(&id);
                        if reply.send(Ok(path.to_string_lossy().into_owned())).is_err() {
                            state.delete(&id);
                        }
                    }
                    WaitingKind::Pull(request) => start_pull(myself, state, request),
                }
            }
            Err(_) if size > state.table.capacity() => fail_waiting(&mut state.pull_waiters, waiting, &state.table),
            Err(_) => {
                // Keep order: later requests wait behind this one.
                state.waiting.push_front(waiting);
                return;
            }
        }
    }
}

type PullWaiters = HashMap<ObjectId, Vec<RpcReplyPort<Result<PullObjectReply, WireError>>>>;

fn fail_waiting(pull_waiters: &mut PullWaiters, waiting: Waiting, table: &StoreTable) {
    let (id, size) = waiting.request.id_and_size();
    let no_room = NoRoom { requested: size, used: table.used(), pinned: table.pinned(), capacity: table.capacity() };
    let message = no_room.message(waiting.since.elapsed());
    warn!(object_id = %id, %message, "object refused");
    let error = WireError::new(ErrorCode::ResourceExhausted, message);
    match waiting.request {
        WaitingKind::Create(_, reply) => {
            let _ = reply.send(Err(error));
        }
        WaitingKind::Pull(_) => {
            for waiter in pull_waiters.remove(&id).unwrap_or_default() {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}

/// Fetches `request`'s object from its node in chunks into this store's file.
fn start_pull(myself: &ActorRef<StoreMsg>, state: &StoreState, request: PullObjectRequest) {
    let id = request.object_id;
    let path = state.path(&id);
    let peers = state.peers.clone();
    let net = state.net.clone();
    let myself = myself.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = pull(&peers, net, &request, &path).await;
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
    path: &Path,
) -> Result<(), String> {
    let source = source_peer(peers, net, &request.stored.node_address).await?;
    let size = request.stored.size;
    let file = std::fs::File::create(path).map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    file.set_len(size).map_err(|error| format!("cannot size {}: {error}", path.display()))?;
    let file = Arc::new(file);
    let mut offsets = (0..size).step_by(CHUNK_BYTES as usize);
    let mut in_flight = JoinSet::new();
    let fetch = |offset: u64, in_flight: &mut JoinSet<Result<(), String>>| {
        let source = source.clone();
        let file = file.clone();
        let len = CHUNK_BYTES.min(size - offset);
        let object_id = request.object_id;
        in_flight.spawn(async move {
            let request = Request::ReadChunk(ReadChunkRequest { object_id, offset, len });
            let chunk = match source.call(request, Duration::from_secs(60)).await {
                Ok(Reply::Chunk(chunk)) => chunk,
                Ok(other) => return Err(format!("unexpected reply to ReadChunk: {other:?}")),
                Err(error) => return Err(format!("reading object {object_id} from its node failed: {error}")),
            };
            if chunk.len() as u64 != len {
                return Err(format!("short chunk at {offset}: {} of {len} bytes", chunk.len()));
            }
            tokio::task::spawn_blocking(move || file.write_all_at(&chunk, offset))
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

/// Reads one chunk of a sealed object (for another node's pull).
pub async fn read_chunk(store: &ActorRef<StoreMsg>, request: ReadChunkRequest) -> Result<Bytes, WireError> {
    let located = store
        .call(|reply| StoreMsg::Locate(request.object_id, reply), Some(Duration::from_secs(10)))
        .await
        .map_err(|_| WireError::internal("the object store did not answer"))?;
    let ractor::rpc::CallResult::Success(Some((path, size))) = located else {
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!("object {} is not in this node's store", request.object_id),
        ));
    };
    if request.offset > size || request.len > size - request.offset || request.len > 2 * CHUNK_BYTES {
        return Err(WireError::invalid(format!(
            "chunk {}+{} is outside object {} of {size} bytes (or larger than {} bytes)",
            request.offset,
            request.len,
            request.object_id,
            2 * CHUNK_BYTES
        )));
    }
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let mut buffer = vec![0u8; request.len as usize];
        file.read_exact_at(&mut buffer, request.offset)?;
        Ok::<_, std::io::Error>(Bytes::from(buffer))
    })
    .await
    .map_err(|error| WireError::internal(error.to_string()))?
    .map_err(|error| WireError::internal(format!("reading object {}: {error}", request.object_id)))
}

#[cfg(test)]
mod tests {
    use manta_proto::TaskId;

    use super::*;

    fn id() -> ObjectId {
        ObjectId::for_put(TaskId::random(), 0)
    }

    #[test]
    fn copies_are_evicted_least_recently_used_first_and_primaries_never() {
        let (owner, job) = (WorkerId::random(), JobId::from_counter(1));
        let mut table = StoreTable::new(100);
        let primary = id();
        table.reserve(primary, 40, Kind::Primary, owner, job).unwrap();
        table.seal(&primary);
        let (old, new) = (id(), id());
        table.reserve(old, 30, Kind::Copy, owner, job).unwrap();
        table.seal(&old);
        table.reserve(new, 30, Kind::Copy, owner, job).unwrap();
        table.seal(&new);
        table.touch(&old);
        // 100 used; 30 more needs one copy out: `new` was used least recently.
        let evicted = table.reserve(id(), 30, Kind::Primary, owner, job).unwrap();
        assert_eq!(evicted, vec![new]);
        assert_eq!(table.used(), 100);
        // Primaries and unsealed entries are pinned: 40 + 30 + (old 30 evictable).
        let no_room = table.reserve(id(), 70, Kind::Primary, owner, job).unwrap_err();
        assert_eq!((no_room.requested, no_room.pinned, no_room.capacity), (70, 70, 100));
        assert!(no_room.message(Duration::from_secs(1)).contains("70 B asked for"));
        table.remove(&primary);
        assert!(table.reserve(id(), 70, Kind::Copy, owner, job).is_ok());
        assert_eq!(table.used(), 100);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
