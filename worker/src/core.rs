//! The per-process runtime behind the API (Ray's "core worker"): identity,
//! links to the raylet and GCS, the object store, the task submitter, and the
//! tokio runtime everything async runs on. One per process, in a global slot.

mod events;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use manta_proto::client::GcsClient;
use manta_proto::message::{Event, Request};
use manta_proto::net::{self, NetConfig, PeerHandle};
use manta_proto::object::{AddBorrowerRequest, FreeObjectsEvent, RemoveBorrowerEvent, WorkerOwnershipEvent};
use manta_proto::task::{JobConfig, TaskEvent, TaskSpec, WorkerAddress};
use manta_proto::{ActorId, ObjectId, TaskId};

use self::events::EventBuffer;
use crate::error::{Error, Result};
use crate::object_ref::UntypedRef;
use crate::store::{Action, MemoryStore};
use crate::submitter::Submitter;

/// Driver (runs the user's `main`) or worker (started by a raylet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The user's program.
    Driver,
    /// A worker process serving tasks or an actor.
    Worker,
}

/// The process's runtime.
pub struct Core {
    /// Driver or worker.
    pub mode: Mode,
    /// Where this process listens, as owners and actors are addressed.
    pub worker: WorkerAddress,
    /// The same, shared by the specs of the tasks this process submits.
    pub(crate) caller: Arc<WorkerAddress>,
    /// The job.
    pub job: JobConfig,
    /// This process's runtime environment: the parent of what its tasks and actors get.
    pub runtime_env: manta_proto::runtime_env::RuntimeEnvSpec,
    /// The local raylet.
    pub raylet: PeerHandle,
    /// Its address (where this node's object store serves chunks).
    pub raylet_address: String,
    /// The GCS.
    pub gcs: GcsClient,
    /// Objects this process owns or fetched.
    pub store: MemoryStore,
    /// Links to other workers and raylets.
    pub peers: PeerCache,
    /// Normal-task submission.
    pub submitter: Submitter,
    /// Submitted tasks waiting for their reference arguments.
    pub(crate) dependencies: crate::resolver::Dependencies,
    /// The runtime's handle.
    pub handle: tokio::runtime::Handle,
    /// The id `put` objects are numbered under.
    pub root_task: TaskId,
    put_counter: AtomicU32,
    /// The actor this worker hosts, and whether it was restarted.
    pub actor: Mutex<Option<(ActorId, bool)>>,
    /// Task events waiting for the next batch to the GCS.
    events: Mutex<EventBuffer>,
    /// Borrower registrations, in order, to owners.
    borrows: BorrowSender,
    /// Refs nested in results sent to callers, held until the caller confirms.
    pub transit: Mutex<HashMap<TaskId, Vec<UntypedRef>>>,
    /// Cancellation state of the tasks this process owns or runs.
    pub(crate) cancels: crate::cancel::Cancellations,
    /// How this process's large task results were made, to rebuild lost ones.
    pub(crate) lineage: crate::lineage::Lineage,
    /// What the raylet last heard of whether this worker owns referenced objects.
    ownership_reported: std::sync::atomic::AtomicBool,
    /// Answers of the waits sent with placement group creates.
    pub(crate) placement_waits: crate::placement::EarlyWaits,
}

/// Task events go to the GCS as soon as this many wait (else every
/// [`TASK_EVENT_FLUSH_INTERVAL`]): a burst of submissions holds no more, and no
/// batch grows into one large frame.
const EVENT_BATCH: usize = 10_000;
/// How often buffered task events go to the GCS.
pub const TASK_EVENT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

impl Core {
    /// A fresh object id for a `put`.
    pub fn next_put_id(&self) -> ObjectId {
        ObjectId::for_put(self.root_task, self.put_counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Builds the runtime's state (links already established).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        mode: Mode,
        worker: WorkerAddress,
        job: JobConfig,
        runtime_env: manta_proto::runtime_env::RuntimeEnvSpec,
        raylet: PeerHandle,
        gcs: GcsClient,
        net: Arc<NetConfig>,
        handle: tokio::runtime::Handle,
    ) -> Self {
        let raylet_address = raylet.remote_address();
        Self {
            raylet_address,
            borrows: BorrowSender::new(),
            transit: Mutex::new(HashMap::new()),
            ownership_reported: std::sync::atomic::AtomicBool::new(false),
            placement_waits: Default::default(),
            cancels: Default::default(),
            lineage: Default::default(),
            mode,
            caller: Arc::new(worker.clone()),
            worker,
            job,
            runtime_env,
            raylet,
            gcs,
            store: MemoryStore::default(),
            peers: PeerCache::new(net),
            submitter: Submitter::default(),
            dependencies: Default::default(),
            handle,
            root_task: TaskId::random(),
            put_counter: AtomicU32::new(0),
            actor: Mutex::new(None),
            events: Mutex::new(EventBuffer::default()),
        }
    }

    /// Records a task state change for `manta list tasks` (sent later, in a batch).
    pub fn task_event(
        &self,
        spec: &TaskSpec,
        state: manta_proto::task::TaskState,
        worker: Option<&WorkerAddress>,
        detail: EventDetail,
    ) {
        let event = TaskEvent {
            task_id: spec.task_id,
            job_id: spec.job_id,
            name: spec.name.to_string(),
            state,
            node_id: worker.map(|worker| worker.node_id),
            worker_id: worker.map(|worker| worker.worker_id),
            actor_id: spec.actor_call.as_ref().map(|call| call.actor_id),
            error: detail.error,
            lease_outcome: detail.lease_outcome,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_millis() as u64)
                .unwrap_or(0),
            earlier: Vec::new(),
        };
        let full = {
            let mut buffer = self.events.lock().expect("events lock");
            buffer.push(event);
            buffer.len() >= EVENT_BATCH
        };
        if full {
            self.flush_task_events();
        }
    }

    /// Carries out what a reference-table change asks for.
    pub fn apply(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Register(owner, object_id) => self.borrows.register(owner, object_id),
                Action::Unregister(owner, object_id) => self.borrows.send(BorrowMsg::Unregister(owner, object_id)),
                Action::FreeCopies(object_id, nodes) => {
                    self.lineage.forget(object_id);
                    for node in nodes {
                        self.free_copy(object_id, node);
                    }
                }
            }
        }
    }

    /// Tells the raylet when this worker starts or stops owning referenced
    /// objects (a worker that owns some is not ended for being idle).
    pub fn report_ownership(&self) {
        if self.mode != Mode::Worker {
            return;
        }
        let owns = self.store.owns_objects();
        if self.ownership_reported.swap(owns, Ordering::Relaxed) != owns {
            let event = WorkerOwnershipEvent { worker_id: self.worker.worker_id, owns_objects: owns };
            let _ = self.raylet.send_event(Event::WorkerOwnership(event));
        }
    }

    /// Tells `node`'s store to drop its copy of `object_id`.
    pub fn free_copy(&self, object_id: ObjectId, node: String) {
        let event = Event::FreeObjects(FreeObjectsEvent { object_ids: vec![object_id] });
        if node == self.raylet_address {
            let _ = self.raylet.send_event(event);
            return;
        }
        let Some(core) = current() else { return };
        self.handle.spawn(async move {
            if let Ok(peer) = core.peers.get(&node).await {
                let _ = peer.send_event_when_up(event, EVENT_TIMEOUT).await;
            }
        });
    }

    /// Waits until every borrower registration made so far has been answered by
    /// its owner (before releasing whatever pinned those refs in transit).
    pub async fn flush_registrations(&self) {
        self.borrows.flush().await;
    }

    /// True when registrations are waiting for their owners' answers.
    pub fn registrations_pending(&self) -> bool {
        self.borrows.pending()
    }

    /// Sends the buffered task events to the GCS.
    pub fn flush_task_events(&self) {
        let Some(batch) = self.events.lock().expect("events lock").take() else {
            return;
        };
        let count = batch.events.len() as u64 + batch.dropped;
        // Events the GCS cannot take now are counted as dropped in the next batch.
        if self.gcs.peer().send_event(Event::TaskEvents(batch)).is_err() {
            self.events.lock().expect("events lock").dropped += count;
        }
    }
}

/// Optional parts of a task event.
#[derive(Debug, Default)]
pub struct EventDetail {
    /// The failure, for `FAILED`.
    pub error: Option<String>,
    /// The lease outcome that led here.
    pub lease_outcome: Option<String>,
}

/// How long a one-way message waits for a fresh link to come up.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A message for the borrow sender.
enum BorrowMsg {
    Register(WorkerAddress, ObjectId, u64),
    Unregister(WorkerAddress, ObjectId),
    Flush,
}

/// Sends borrower registrations to owners in the order they were made (one task,
/// so a register and a later unregister for one owner never swap).
struct BorrowSender {
    queue: Mutex<(u64, Option<tokio::sync::mpsc::UnboundedSender<BorrowMsg>>)>,
    receiver: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<BorrowMsg>>>,
    acked: tokio::sync::watch::Sender<u64>,
}

impl BorrowSender {
    fn new() -> Self {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        Self {
            queue: Mutex::new((0, Some(sender))),
            receiver: Mutex::new(Some(receiver)),
            acked: tokio::sync::watch::channel(0).0,
        }
    }

    fn register(&self, owner: WorkerAddress, object_id: ObjectId) {
        let mut queue = self.queue.lock().expect("borrow queue lock");
        queue.0 += 1;
        let sequence = queue.0;
        if let Some(sender) = &queue.1 {
            let _ = sender.send(BorrowMsg::Register(owner, object_id, sequence));
        }
    }

    fn send(&self, message: BorrowMsg) {
        let queue = self.queue.lock().expect("borrow queue lock");
        if let Some(sender) = &queue.1 {
            let _ = sender.send(message);
        }
    }

    fn pending(&self) -> bool {
        let target = self.queue.lock().expect("borrow queue lock").0;
        *self.acked.borrow() < target
    }

    async fn flush(&self) {
        let target = self.queue.lock().expect("borrow queue lock").0;
        if *self.acked.borrow() >= target {
            return;
        }
        self.send(BorrowMsg::Flush);
        let mut acked = self.acked.subscribe();
        let _ = acked.wait_for(|acked| *acked >= target).await;
    }
}

/// Runs the borrow sender of `core` while it is installed.
pub(crate) fn spawn_borrow_sender(core: &Arc<Core>) {
    let Some(mut receiver) = core.borrows.receiver.lock().expect("borrow receiver lock").take() else { return };
    let weak = Arc::downgrade(core);
    core.handle.spawn(async move {
        let mut in_flight: Vec<manta_proto::net::PendingReply> = Vec::new();
        let mut sent = 0u64;
        let mut batch = Vec::new();
        while receiver.recv_many(&mut batch, 4096).await > 0 {
            let Some(core) = weak.upgrade() else { return };
            let mut messages = std::mem::take(&mut batch).into_iter().peekable();
            while let Some(message) = messages.next() {
                match message {
                    BorrowMsg::Register(owner, object_id, sequence) => {
                        let mut ids = vec![object_id];
                        sent = sent.max(sequence);
                        while let Some(BorrowMsg::Register(next, _, _)) = messages.peek() {
                            if next.address != owner.address {
                                break;
                            }
                            if let Some(BorrowMsg::Register(_, id, sequence)) = messages.next() {
                                ids.push(id);
                                sent = sent.max(sequence);
                            }
                        }
                        let request = Request::AddBorrower(AddBorrowerRequest {
                            object_ids: ids,
                            borrower: core.worker.worker_id,
                        });
                        // An owner that cannot be reached is dead: its objects are lost anyway.
                        if let Ok(peer) = core.peers.get(&owner.address).await
                            && let Ok(pending) = peer.send(request, Duration::from_secs(30)).await
                        {
                            in_flight.push(pending);
                        }
                    }
                    BorrowMsg::Unregister(owner, object_id) => {
                        let mut ids = vec![object_id];
                        while let Some(BorrowMsg::Unregister(next, _)) = messages.peek() {
                            if next.address != owner.address {
                                break;
                            }
                            if let Some(BorrowMsg::Unregister(_, id)) = messages.next() {
                                ids.push(id);
                            }
                        }
                        let event = Event::RemoveBorrower(RemoveBorrowerEvent {
                            object_ids: ids,
                            borrower: core.worker.worker_id,
                        });
                        if let Ok(peer) = core.peers.get(&owner.address).await {
                            let _ = peer.send_event_when_up(event, EVENT_TIMEOUT).await;
                        }
                    }
                    BorrowMsg::Flush => {
                        for pending in in_flight.drain(..) {
                            let _ = pending.wait().await;
                        }
                        core.borrows.acked.send_replace(sent);
                    }
                }
            }
            if in_flight.len() > 1024 {
                for pending in in_flight.drain(..) {
                    let _ = pending.wait().await;
                }
                core.borrows.acked.send_replace(sent);
            }
        }
    });
}

/// Flushes `core`'s task events every [`TASK_EVENT_FLUSH_INTERVAL`] while it is installed.
pub(crate) fn spawn_event_flusher(core: &Arc<Core>) {
    let weak = Arc::downgrade(core);
    core.handle.spawn(async move {
        loop {
            tokio::time::sleep(TASK_EVENT_FLUSH_INTERVAL).await;
            let Some(core) = weak.upgrade() else { return };
            core.flush_task_events();
            core.report_ownership();
        }
    });
}

static CORE: RwLock<Option<Arc<Core>>> = RwLock::new(None);

/// The process's runtime, or an error telling the user to call `init`.
pub fn core() -> Result<Arc<Core>> {
    current().ok_or_else(|| Error::Init("manta is not initialised: call manta::init() first".into()))
}

/// The process's runtime, if initialised.
pub fn current() -> Option<Arc<Core>> {
    CORE.read().expect("core lock").clone()
}

pub(crate) fn install(core: Arc<Core>) -> Result<()> {
    let mut slot = CORE.write().expect("core lock");
    if slot.is_some() {
        return Err(Error::Init("manta is already initialised in this process".into()));
    }
    *slot = Some(core);
    Ok(())
}

pub(crate) fn uninstall() -> Option<Arc<Core>> {
    CORE.write().expect("core lock").take()
}

/// Runs `future` on the runtime and blocks this thread for its output.
/// Works from any thread that is not itself driving the runtime (the user's
/// threads, task threads, blocking-pool threads).
pub fn block_on<F>(handle: &tokio::runtime::Handle, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = sender.send(future.await);
    });
    receiver.recv().expect("the manta runtime stopped while a call was waiting")
}

/// Polls `future` on this very thread (spinning a moment, then parking
/// between wake-ups: see [`crate::spin`]), with the runtime's context entered
/// so its timers and I/O work. Saves the hop to a runtime thread and back that
/// [`block_on`] costs; for the latency-critical `get`. Must not be called from
/// a runtime thread.
pub fn block_on_here<F: Future>(handle: &tokio::runtime::Handle, future: F) -> F::Output {
    use std::sync::atomic::{AtomicBool, Ordering};

    struct ThreadWaker {
        thread: std::thread::Thread,
        woken: AtomicBool,
    }

    impl std::task::Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::Release);
            self.thread.unpark();
        }
    }

    let _runtime = handle.enter();
    let waker = Arc::new(ThreadWaker { thread: std::thread::current(), woken: AtomicBool::new(false) });
    let thread_waker = std::task::Waker::from(waker.clone());
    let mut context = std::task::Context::from_waker(&thread_waker);
    let mut future = std::pin::pin!(future);
    // Set once the future had to wait: only real waits teach the spin.
    let mut started: Option<std::time::Instant> = None;
    loop {
        waker.woken.store(false, Ordering::Relaxed);
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            if let Some(started) = started {
                crate::spin::waited(started.elapsed());
            }
            return output;
        }
        started.get_or_insert_with(std::time::Instant::now);
        let spin = crate::spin::next();
        let spinning = std::time::Instant::now();
        while !waker.woken.load(Ordering::Acquire) && spinning.elapsed() < spin {
            std::hint::spin_loop();
        }
        if !waker.woken.load(Ordering::Acquire) {
            std::thread::park();
        }
    }
}

/// Links to other processes, by address, opened on first use.
pub struct PeerCache {
    peers: tokio::sync::Mutex<HashMap<String, PeerHandle>>,
    net: Arc<NetConfig>,
}

impl PeerCache {
    fn new(net: Arc<NetConfig>) -> Self {
        Self { peers: tokio::sync::Mutex::new(HashMap::new()), net }
    }

    /// The link to `address`, opening it if needed. Links to workers do not
    /// redial: a worker that went away is gone.
    pub async fn get(&self, address: &str) -> Result<PeerHandle> {
        let mut peers = self.peers.lock().await;
        if let Some(peer) = peers.get(address)
            && !peer.is_closed()
        {
            return Ok(peer.clone());
        }
        // One or two tries: a worker or node that refuses a connection is gone, not busy
        // (a slow connect still gets the full per-attempt timeout).
        let service = Arc::new(crate::service::DriverLinkService);
        let peer = net::connect(address, self.net.clone(), service, None, Duration::from_millis(200))
            .await
            .map_err(|error| Error::Cluster(error.to_string()))?;
        peers.insert(address.to_string(), peer.clone());
        Ok(peer)
    }
}
