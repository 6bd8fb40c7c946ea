//! The node's object store: large objects (over
//! [`INLINE_OBJECT_MAX_BYTES`](manta_proto::object::INLINE_OBJECT_MAX_BYTES))
//! in one arena file that every process on the node maps (see [`arena`]), or a
//! file of their own when no free range fits; both in a shared-memory folder
//! (`/dev/shm` when it has room, as Ray's plasma does, else the node's folder on
//! disk).
//!
//! A creator reserves room ([`StoreMsg::Create`]), writes its range or file, and
//! seals it. Readers on the node map it (an arena range stays pinned for its
//! reader until released); readers on other nodes ask their own store to
//! pull a copy, which it fetches in chunks with a few requests in flight, writing
//! each chunk in place (no whole-object buffer anywhere). Primary copies are
//! pinned until their owner frees them (or exits, or its job ends); pulled copies
//! are evicted least recently used first when room is needed. When evicting is
//! not enough, primaries are spilled to disk (least recently used first, see
//! [`spill`]) and read from there afterwards. When neither makes room, a create
//! waits up to [`StoreConfig::full_timeout`], then fails with an
//! object-store-full error giving the sizes.

mod arena;
mod spill;
mod table;
mod transfer;

use std::fs::File;

pub use arena::Arena;

pub use spill::SpillConfig;
pub use table::{Entry, Kind, NoRoom, Phase, StoreTable, human};
pub use transfer::{CHUNK_BYTES, read_chunk};

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_proto::net::{NetConfig, PeerHandle};
use manta_proto::object::ObjectState;
use manta_proto::object::{CreateObjectReply, CreateObjectRequest, ObjectRecord, PullObjectReply, PullObjectRequest};
use manta_proto::{ErrorCode, JobId, NodeId, ObjectId, WireError, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info, warn};

use transfer::start_pull;

/// How long a create waits for room by default.
pub const DEFAULT_FULL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Capacity in bytes.
    pub capacity: u64,
    /// How long a create waits for room before failing.
    pub full_timeout: Duration,
    /// Spilling to disk.
    pub spill: SpillConfig,
}

/// Picks the folder: `/dev/shm` when it has room for the whole store, else `fallback`.
pub fn choose_dir(capacity: u64, node_id: NodeId, fallback: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    remove_stale_stores(shm);
    if let Ok(stat) = rustix::fs::statvfs(shm) {
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free >= capacity {
            return shm.join(format!("manta-{}-{}", std::process::id(), node_id.short()));
        }
        warn!(free, capacity, "/dev/shm is smaller than the object store; objects go to disk (like Ray's fallback)");
    }
    fallback.to_path_buf()
}

/// Removes the store folders of node processes that died without cleaning up
/// (`manta-<pid>-<node>` whose pid no longer runs), so a SIGKILLed node does
/// not keep its objects in shared memory for ever.
fn remove_stale_stores(shm: &Path) {
    let Ok(entries) = std::fs::read_dir(shm) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("manta-").and_then(|rest| rest.split('-').next()?.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => info!(dir = %entry.path().display(), "removed the object store of a node that died"),
                Err(error) => warn!(dir = %entry.path().display(), %error, "cannot remove a dead node's object store"),
            }
        }
    }
}

/// Messages to the [`ObjectStoreActor`].
#[derive(Debug)]
pub enum StoreMsg {
    /// Reserve room for a primary copy; answers where to write it.
    Create(CreateObjectRequest, RpcReplyPort<Result<CreateObjectReply, WireError>>),
    /// The creator finished (`true`) or gave up.
    Seal(ObjectId, bool),
    /// Bring a copy here.
    Pull(PullObjectRequest, RpcReplyPort<Result<PullObjectReply, WireError>>),
    /// A pull ended.
    PullDone(ObjectId, Result<(), String>),
    /// Writing spill file number `.1` of an object ended.
    SpillDone(ObjectId, u64, Result<(), String>),
    /// Where a sealed object's bytes are, for serving chunks (an arena range
    /// stays pinned until [`StoreMsg::Release`] with no reader).
    Locate(ObjectId, RpcReplyPort<Option<Located>>),
    /// A reader is done with an arena range it was given.
    Release(ObjectId, Option<WorkerId>),
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
    Create(CreateObjectRequest, RpcReplyPort<Result<CreateObjectReply, WireError>>),
    Pull(PullObjectRequest),
}

/// Where an object's bytes are: `len` bytes from `offset` in the file at `path`
/// (offset 0 for an object's own file).
#[derive(Debug, Clone)]
pub struct Located {
    /// The object's file, its spill file, or the arena.
    pub path: PathBuf,
    /// Its first byte in that file.
    pub offset: u64,
    /// Its size.
    pub len: u64,
    /// True when it is an arena range (pinned until released).
    pub pinned: bool,
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
    /// No new spills before this (set when writing a spill file failed).
    spill_paused_until: Option<Instant>,
    arena: Arena,
    arena_file: Arc<File>,
    /// The last create or pull: free arena ranges go back to the OS after
    /// [`ARENA_IDLE`] without one.
    last_placed: Instant,
    ticker: tokio::task::JoinHandle<()>,
}

/// How long the store is idle before free arena pages go back to the OS.
const ARENA_IDLE: Duration = Duration::from_secs(5);

impl Drop for StoreState {
    fn drop(&mut self) {
        self.ticker.abort();
        // The files are the store's memory: give it back with the node.
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.config.spill.dir);
    }
}

impl StoreState {
    fn path(&self, id: &ObjectId) -> PathBuf {
        self.dir.join(id.hex())
    }

    fn arena_path(&self) -> PathBuf {
        self.dir.join(ARENA_FILE)
    }

    /// Where a readable entry's bytes are now: its arena range or memory file, or
    /// its spill file.
    fn locate(&self, id: &ObjectId, phase: Phase, len: u64) -> Located {
        match (phase, self.arena.offset(id)) {
            (Phase::Spilled { file }, _) => {
                Located { path: self.config.spill.path(id, file), offset: 0, len, pinned: false }
            }
            (_, Some(offset)) => Located { path: self.arena_path(), offset, len, pinned: true },
            (_, None) => Located { path: self.path(id), offset: 0, len, pinned: false },
        }
    }

    /// Hands out `id`'s bytes to `reader` (pinning an arena range for it).
    fn read_reply(&mut self, id: &ObjectId, reader: Option<WorkerId>, copied: bool) -> Option<PullObjectReply> {
        let entry = self.table.get(id)?;
        let located = self.locate(id, entry.phase, entry.size);
        if located.pinned && reader.is_some() {
            self.arena.pin(id, reader);
        }
        let offset = located.pinned.then_some(located.offset);
        Some(PullObjectReply { path: located.path.to_string_lossy().into_owned(), copied, offset })
    }

    /// Gives back the memory `id` holds: its arena range (once unpinned) or file.
    fn free_memory(&mut self, id: &ObjectId) {
        if self.arena.offset(id).is_some() {
            self.arena.release(id);
        } else {
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    fn delete(&mut self, id: &ObjectId) {
        if let Some(entry) = self.table.remove(id) {
            // A spill still being written is removed when it ends (`SpillDone`).
            match entry.phase {
                Phase::Spilled { file } => {
                    let _ = std::fs::remove_file(self.config.spill.path(id, file));
                }
                _ => self.free_memory(id),
            }
            if let Some(waiters) = self.pull_waiters.remove(id) {
                for (_, waiter) in waiters {
                    let _ = waiter.send(Err(WireError::new(ErrorCode::NotFound, format!("object {id} was freed"))));
                }
            }
        }
    }

    fn remove_evicted(&mut self, ids: &[ObjectId]) {
        for id in ids {
            debug!(object_id = %id, "evicted a copy");
            self.free_memory(id);
        }
    }
}

/// The arena's name in the store folder.
const ARENA_FILE: &str = "arena";

/// The node's object store actor.
#[derive(Debug, Default)]
pub struct ObjectStoreActor;

impl Actor for ObjectStoreActor {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = StoreArgs;

    async fn pre_start(&self, myself: ActorRef<StoreMsg>, args: StoreArgs) -> Result<StoreState, ActorProcessingErr> {
        manta_proto::private_fs::create_dir_all(&args.dir)
            .map_err(|error| format!("cannot create the object store folder {}: {error}", args.dir.display()))?;
        let arena_path = args.dir.join(ARENA_FILE);
        let arena_file = manta_proto::private_fs::create_truncate(&arena_path)
            .and_then(|file| file.set_len(args.config.capacity).map(|()| file))
            .map_err(|error| format!("cannot create the object store arena {}: {error}", arena_path.display()))?;
        info!(dir = %args.dir.display(), capacity = %human(args.config.capacity), "object store ready");
        let capacity = args.config.capacity;
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
            spill_paused_until: None,
            arena: Arena::new(capacity),
            arena_file: Arc::new(arena_file),
            last_placed: Instant::now(),
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
                    let answer = if entry.phase.readable() {
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
                    if entry.phase.readable() {
                        state.table.touch(&id);
                        let answer = state.read_reply(&id, request.reader, false);
                        let _ = reply.send(answer.ok_or_else(|| WireError::internal("the object vanished")));
                    } else {
                        state.pull_waiters.entry(id).or_default().push((request.reader, reply));
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
                state.pull_waiters.entry(id).or_default().push((request.reader, reply));
                if first {
                    state.waiting.push_back(Waiting { since: Instant::now(), request: WaitingKind::Pull(request) });
                    admit(&myself, state, false);
                }
            }
            StoreMsg::PullDone(id, result) => {
                let waiters = state.pull_waiters.remove(&id).unwrap_or_default();
                match result {
                    Ok(()) if state.table.seal(&id) => {
                        let mut copied = true;
                        for (reader, waiter) in waiters {
                            let answer = state.read_reply(&id, reader, copied);
                            let _ = waiter.send(answer.ok_or_else(|| WireError::internal("the object vanished")));
                            copied = false;
                        }
                    }
                    Ok(()) => {}
                    Err(reason) => {
                        warn!(object_id = %id, %reason, "pull failed");
                        state.delete(&id);
                        for (_, waiter) in waiters {
                            let _ = waiter.send(Err(WireError::new(ErrorCode::NotFound, reason.clone())));
                        }
                        admit(&myself, state, false);
                    }
                }
            }
            StoreMsg::SpillDone(id, file, result) => {
                match result {
                    Ok(()) if state.table.spilled_out(&id, file) => state.free_memory(&id),
                    Ok(()) => {
                        // Freed while it was being written out.
                        let _ = std::fs::remove_file(state.config.spill.path(&id, file));
                    }
                    Err(_) => {
                        state.table.spill_failed(&id, file);
                        state.spill_paused_until = Some(Instant::now() + SPILL_PAUSE);
                    }
                }
                admit(&myself, state, false);
            }
            StoreMsg::Locate(id, reply) => {
                let found = state
                    .table
                    .get(&id)
                    .filter(|entry| entry.phase.readable())
                    .map(|entry| state.locate(&id, entry.phase, entry.size));
                if found.as_ref().is_some_and(|located| located.pinned) {
                    state.arena.pin(&id, None);
                }
                let _ = reply.send(found);
            }
            StoreMsg::Release(id, reader) => state.arena.unpin(&id, reader),
            StoreMsg::Free(ids) => {
                for id in ids {
                    state.delete(&id);
                }
                admit(&myself, state, false);
            }
            StoreMsg::OwnerGone(worker) => {
                state.arena.reader_gone(worker);
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
                            (_, Phase::Spilled { .. }) => ObjectState::Spilled,
                            (Kind::Primary, Phase::Sealed | Phase::Spilling { .. }) => ObjectState::Primary,
                            (Kind::Copy, Phase::Sealed | Phase::Spilling { .. }) => ObjectState::Copy,
                            (Kind::Primary, Phase::Writing) => ObjectState::Creating,
                            (Kind::Copy, Phase::Writing) => ObjectState::Pulling,
                        },
                        local_refs: None,
                        borrowers: None,
                        location: None,
                        job_id: Some(entry.job_id),
                        pid: None,
                    })
                    .collect();
                let _ = reply.send((records, state.table.used(), state.table.capacity()));
            }
            StoreMsg::Tick => {
                admit(&myself, state, true);
                if state.last_placed.elapsed() >= ARENA_IDLE {
                    arena::punch(&state.arena_file, state.arena.punch_free());
                }
            }
        }
        Ok(())
    }
}

/// How long spilling pauses after writing a spill file failed.
const SPILL_PAUSE: Duration = Duration::from_secs(1);

/// `manta_object_store_memory` by `State` (Ray's `ray_object_store_memory`), and
/// the bytes spilled to disk.
fn record_gauges(state: &StoreState) {
    let (used, capacity, pinned) = (state.table.used(), state.table.capacity(), state.table.pinned());
    metrics::gauge!("manta_object_store_memory", "State" => "USED").set(used as f64);
    metrics::gauge!("manta_object_store_memory", "State" => "AVAILABLE").set(capacity.saturating_sub(used) as f64);
    metrics::gauge!("manta_object_store_memory", "State" => "PINNED").set(pinned as f64);
    metrics::gauge!("manta_object_store_spilled_bytes").set(state.table.spilled() as f64);
    metrics::gauge!("manta_object_store_objects").set(state.table.entries().count() as f64);
}

/// Admits waiting requests in order while room can be made (spilling primaries to
/// disk when evicting copies is not enough); with `expire`, first fails the ones
/// that waited past the timeout.
fn admit(myself: &ActorRef<StoreMsg>, state: &mut StoreState, expire: bool) {
    record_gauges(state);
    if expire {
        let timeout = state.config.full_timeout;
        let (expired, kept): (VecDeque<Waiting>, VecDeque<Waiting>) =
            state.waiting.drain(..).partition(|waiting| waiting.since.elapsed() >= timeout);
        state.waiting = kept;
        for waiting in expired {
            fail_waiting(state, waiting);
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
                state.remove_evicted(&evicted);
                state.last_placed = Instant::now();
                let offset = state.arena.place(id, size);
                let path = if offset.is_some() { state.arena_path() } else { state.path(&id) };
                match waiting.request {
                    WaitingKind::Create(_, reply) => {
                        let answer = CreateObjectReply { path: path.to_string_lossy().into_owned(), offset };
                        if reply.send(Ok(answer)).is_err() {
                            state.delete(&id);
                        }
                    }
                    WaitingKind::Pull(request) => {
                        let target = match offset {
                            Some(offset) => transfer::Target::Arena(state.arena_file.clone(), offset),
                            None => transfer::Target::File(path),
                        };
                        start_pull(myself, state, request, target);
                    }
                }
            }
            Err(_) if size > state.table.capacity() => fail_waiting(state, waiting),
            Err(_) => {
                spill_for(myself, state, size);
                // Keep order: later requests wait behind this one.
                state.waiting.push_front(waiting);
                return;
            }
        }
    }
}

type PullWaiters = HashMap<ObjectId, Vec<(Option<WorkerId>, RpcReplyPort<Result<PullObjectReply, WireError>>)>>;

/// Starts spilling enough primaries for `size` bytes to fit, unless spilling is
/// off, paused after a failure, or cannot make room within its budget.
fn spill_for(myself: &ActorRef<StoreMsg>, state: &mut StoreState, size: u64) {
    if !state.config.spill.enabled() || state.spill_paused_until.is_some_and(|until| Instant::now() < until) {
        return;
    }
    let budget = state.config.spill.budget(state.table.spilled());
    for (id, len, file) in state.table.plan_spill(size, budget) {
        let to = state.config.spill.path(&id, file);
        let from = match state.arena.offset(&id) {
            Some(offset) => spill::Source::Arena(state.arena_file.clone(), offset, len),
            None => spill::Source::File(state.path(&id)),
        };
        spill::start_spill(myself, id, file, from, to);
    }
}

fn fail_waiting(state: &mut StoreState, waiting: Waiting) {
    let (id, size) = waiting.request.id_and_size();
    let table = &state.table;
    let spill = &state.config.spill;
    let no_room = NoRoom {
        requested: size,
        used: table.used(),
        pinned: table.pinned(),
        capacity: table.capacity(),
        spill: spill.enabled().then(|| (table.spilled(), spill.budget(table.spilled()))),
    };
    let message = no_room.message(waiting.since.elapsed());
    warn!(object_id = %id, %message, "object refused");
    let error = WireError::new(ErrorCode::ResourceExhausted, message);
    match waiting.request {
        WaitingKind::Create(_, reply) => {
            let _ = reply.send(Err(error));
        }
        WaitingKind::Pull(_) => {
            for (_, waiter) in state.pull_waiters.remove(&id).unwrap_or_default() {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }
}
