//! [`NodeService`]: what a node answers, on its own port and on its link to the GCS.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use manta_proto::message::{Event, Reply, Request};
use manta_proto::net::{BoxFuture, PeerHandle, Service};
use manta_proto::node::HealthCheckReply;
use manta_proto::object::ListObjectsReply;
use manta_proto::{ErrorCode, WireError};
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tracing::{info, warn};

use std::path::PathBuf;

use manta_agents::log_monitor::LogMonitorMsg;

use crate::object_store::{StoreMsg, read_chunk};
use crate::raylet::{NodeIdentity, RayletMsg};

/// Asks the raylet something it answers with success or a refusal.
async fn ask_raylet(
    raylet: Option<ActorRef<RayletMsg>>,
    message: impl FnOnce(ractor::RpcReplyPort<Result<(), WireError>>) -> RayletMsg,
) -> Result<Reply, WireError> {
    let raylet = raylet.ok_or_else(|| WireError::internal("the node is still starting"))?;
    match raylet.call(message, Some(Duration::from_secs(10))).await {
        Ok(CallResult::Success(result)) => result.map(|()| Reply::Ack),
        _ => Err(WireError::internal("the raylet did not answer")),
    }
}

/// The log monitor's current ref, and the subscriptions it was sent (the node
/// restarts the agent when it fails, and replays them to the new one).
#[derive(Clone)]
pub struct LogMonitorSlot {
    current: Arc<std::sync::RwLock<ActorRef<LogMonitorMsg>>>,
    subscriptions: Arc<std::sync::Mutex<Vec<(manta_proto::JobId, PeerHandle)>>>,
    /// The workers' pipes, for flushes.
    pipes: crate::log_pipes::Pipes,
}

/// How long a flush waits for the workers' pipes to drain into their files.
const FLUSH_PATIENCE: Duration = Duration::from_secs(2);

impl LogMonitorSlot {
    /// A slot holding `monitor`.
    pub fn new(monitor: ActorRef<LogMonitorMsg>) -> Self {
        Self {
            current: Arc::new(std::sync::RwLock::new(monitor)),
            subscriptions: Default::default(),
            pipes: Default::default(),
        }
    }

    /// The workers' pipes (the launcher registers them).
    pub fn pipes(&self) -> crate::log_pipes::Pipes {
        self.pipes.clone()
    }

    /// Sends `job_id`'s subscribers every line its workers printed so far: waits
    /// for the pipes to drain into the files (2 s at most), then has the monitor poll.
    async fn flush(&self, job_id: manta_proto::JobId) -> Result<(), WireError> {
        let _ = tokio::time::timeout(FLUSH_PATIENCE, self.pipes.drained(job_id)).await;
        let monitor = self.current.read().expect("monitor lock").clone();
        match monitor.call(LogMonitorMsg::Flush, Some(Duration::from_secs(5))).await {
            Ok(CallResult::Success(())) => Ok(()),
            _ => Err(WireError::internal("the log monitor did not answer; try again")),
        }
    }

    /// Puts a restarted monitor in place and hands it the live subscriptions.
    pub fn replace(&self, monitor: ActorRef<LogMonitorMsg>) {
        let mut subscriptions = self.subscriptions.lock().expect("subscriptions lock");
        subscriptions.retain(|(_, peer)| !peer.is_closed());
        for (job_id, peer) in subscriptions.iter() {
            let _ = monitor.cast(LogMonitorMsg::Subscribe(*job_id, peer.clone()));
        }
        *self.current.write().expect("monitor lock") = monitor;
    }

    fn subscribe(&self, job_id: manta_proto::JobId, peer: PeerHandle) -> Result<(), WireError> {
        self.subscriptions.lock().expect("subscriptions lock").push((job_id, peer.clone()));
        let monitor = self.current.read().expect("monitor lock").clone();
        monitor.cast(LogMonitorMsg::Subscribe(job_id, peer)).map_err(|_| WireError::internal("the log monitor stopped"))
    }
}

/// The metrics agent's current ref (the node restarts the agent when it fails).
pub type MetricsSlot = Arc<std::sync::RwLock<ActorRef<manta_agents::metrics_agent::MetricsAgentMsg>>>;

/// The node's request handler. The GCS link's copy also forwards pushes and
/// reconnects to the raylet.
pub struct NodeService {
    identity: NodeIdentity,
    raylet: Arc<OnceLock<ActorRef<RayletMsg>>>,
    store: ActorRef<StoreMsg>,
    is_gcs_link: bool,
    /// GCS link only: how long the node runs on without it, and a counter of
    /// link changes (a reconnect cancels the pending exit).
    gcs_timeout: Duration,
    gcs_changes: Arc<std::sync::atomic::AtomicU64>,
    /// The log monitor and the worker log folder (the node's own listener only).
    logs: Option<(LogMonitorSlot, PathBuf)>,
    /// The metrics agent (the node's own listener only): workers push their metrics here.
    metrics: Option<MetricsSlot>,
    /// The job agent (GCS link only: the GCS places job supervisors here), once started.
    jobs: Option<Arc<OnceLock<manta_agents::jobs::JobAgentSlot>>>,
}

impl NodeService {
    /// The service for the node's own listener.
    pub fn new(identity: NodeIdentity, raylet: Arc<OnceLock<ActorRef<RayletMsg>>>, store: ActorRef<StoreMsg>) -> Self {
        Self {
            identity,
            raylet,
            store,
            is_gcs_link: false,
            gcs_timeout: Duration::MAX,
            gcs_changes: Default::default(),
            logs: None,
            metrics: None,
            jobs: None,
        }
    }

    /// Runs job supervisors the GCS places on this node.
    pub fn with_jobs(mut self, jobs: Arc<OnceLock<manta_agents::jobs::JobAgentSlot>>) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// Takes the metrics workers and drivers push.
    pub fn with_metrics(mut self, metrics: MetricsSlot) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves log subscriptions and `manta logs` from `log_dir`.
    pub fn with_logs(mut self, monitor: LogMonitorSlot, log_dir: PathBuf) -> Self {
        self.logs = Some((monitor, log_dir));
        self
    }

    /// The service for the node's link to the GCS.
    pub fn for_gcs_link(
        identity: NodeIdentity,
        raylet: Arc<OnceLock<ActorRef<RayletMsg>>>,
        store: ActorRef<StoreMsg>,
        gcs_timeout: Duration,
    ) -> Self {
        Self { is_gcs_link: true, gcs_timeout, ..Self::new(identity, raylet, store) }
    }
}

impl Service for NodeService {
    fn request(&self, peer: &PeerHandle, request: Request) -> BoxFuture<Result<Reply, WireError>> {
        let node_id = self.identity.get();
        let caller = peer.id();
        let from = crate::raylet::Requester { link: caller, gcs: self.is_gcs_link };
        let caller_peer = peer.clone();
        let raylet = self.raylet.get().cloned();
        let store = self.store.clone();
        let logs = self.logs.clone();
        let jobs = self
            .jobs
            .as_ref()
            .and_then(|slot| slot.get())
            .map(|slot| slot.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone());
        Box::pin(async move {
            match request {
                Request::StartSupervisor(start) => {
                    let jobs = jobs.ok_or_else(|| WireError::internal("the node's job agent is still starting"))?;
                    let submission = start.submission;
                    match jobs
                        .call(
                            |port| manta_agents::jobs::JobAgentMsg::Start(submission, port),
                            Some(Duration::from_secs(10)),
                        )
                        .await
                    {
                        Ok(CallResult::Success(result)) => result.map(|()| Reply::Ack),
                        _ => Err(WireError::internal("the node's job agent did not answer")),
                    }
                }
                Request::StopSupervisor(stop) => {
                    let jobs = jobs.ok_or_else(|| WireError::internal("the node's job agent is still starting"))?;
                    let id = stop.submission_id;
                    match jobs
                        .call(|port| manta_agents::jobs::JobAgentMsg::Stop(id, port), Some(Duration::from_secs(10)))
                        .await
                    {
                        Ok(CallResult::Success(result)) => result.map(|stopped| {
                            Reply::StopSubmission(manta_proto::submission::StopSubmissionReply { stopped })
                        }),
                        _ => Err(WireError::internal("the node's job agent did not answer")),
                    }
                }
                Request::SubscribeLogs(subscribe) => {
                    let (monitor, _) = logs.ok_or_else(|| WireError::invalid("subscribe on the node's own port"))?;
                    monitor.subscribe(subscribe.job_id, caller_peer)?;
                    Ok(Reply::Ack)
                }
                Request::FlushLogs(flush) => {
                    let (monitor, _) = logs.ok_or_else(|| WireError::invalid("flush on the node's own port"))?;
                    monitor.flush(flush.job_id).await?;
                    Ok(Reply::Ack)
                }
                Request::ListLogs(_) => {
                    let (_, dir) = logs.ok_or_else(|| WireError::invalid("ask the node's own port"))?;
                    Ok(Reply::ListLogs(crate::logs::list(&dir)))
                }
                Request::ReadLog(read) => {
                    let (_, dir) = logs.ok_or_else(|| WireError::invalid("ask the node's own port"))?;
                    Ok(Reply::ReadLog(crate::logs::read(&dir, &read)?))
                }
                Request::CreateObject(request) => {
                    match store.call(|reply| StoreMsg::Create(request, reply), None).await {
                        Ok(CallResult::Success(answer)) => Ok(Reply::CreateObject(answer?)),
                        _ => Err(WireError::internal("the object store did not answer")),
                    }
                }
                Request::SealObject(request) => {
                    store
                        .cast(StoreMsg::Seal(request.object_id, request.ok))
                        .map_err(|_| WireError::internal("the object store stopped"))?;
                    Ok(Reply::Ack)
                }
                Request::PullObject(request) => match store.call(|reply| StoreMsg::Pull(request, reply), None).await {
                    Ok(CallResult::Success(reply)) => Ok(Reply::PullObject(reply?)),
                    _ => Err(WireError::internal("the object store did not answer")),
                },
                Request::ReleaseObject(request) => {
                    store
                        .cast(StoreMsg::Release(request.object_id, Some(request.reader)))
                        .map_err(|_| WireError::internal("the object store stopped"))?;
                    Ok(Reply::Ack)
                }
                Request::ReadChunk(request) => Ok(Reply::Chunk(read_chunk(&store, request).await?)),
                Request::PrepareBundles(request) => {
                    let raylet = raylet.ok_or_else(|| WireError::internal("the node is still starting"))?;
                    match raylet
                        .call(|port| RayletMsg::PrepareBundles(request, port), Some(Duration::from_secs(10)))
                        .await
                    {
                        Ok(CallResult::Success(result)) => result.map(|()| Reply::Ack),
                        _ => Err(WireError::internal("the raylet did not answer")),
                    }
                }
                Request::CommitBundles(request) => {
                    let raylet = raylet.ok_or_else(|| WireError::internal("the node is still starting"))?;
                    let pg_id = request.pg_id;
                    match raylet.call(|port| RayletMsg::CommitBundles(pg_id, port), Some(Duration::from_secs(10))).await
                    {
                        Ok(CallResult::Success(result)) => result.map(|()| Reply::Ack),
                        _ => Err(WireError::internal("the raylet did not answer")),
                    }
                }
                Request::CancelBundles(request) => {
                    let raylet = raylet.ok_or_else(|| WireError::internal("the node is still starting"))?;
                    let pg_id = request.pg_id;
                    match raylet.call(|port| RayletMsg::CancelBundles(pg_id, port), Some(Duration::from_secs(10))).await
                    {
                        Ok(CallResult::Success(())) => Ok(Reply::Ack),
                        _ => Err(WireError::internal("the raylet did not answer")),
                    }
                }
                Request::ListObjects(request) => {
                    let listed = store.call(StoreMsg::List, Some(Duration::from_secs(10))).await;
                    let Ok(CallResult::Success((mut objects, store_used, store_capacity))) = listed else {
                        return Err(WireError::internal("the object store did not answer"));
                    };
                    objects.truncate(request.limit);
                    let owners = match raylet {
                        Some(raylet) => {
                            match raylet.call(RayletMsg::WorkerAddresses, Some(Duration::from_secs(5))).await {
                                Ok(CallResult::Success(owners)) => owners,
                                _ => Vec::new(),
                            }
                        }
                        None => Vec::new(),
                    };
                    Ok(Reply::ListObjects(ListObjectsReply { objects, owners, store_used, store_capacity }))
                }
                // Answered here, not in the raylet's mailbox: a busy raylet must not look dead.
                Request::HealthCheck(_) => Ok(Reply::HealthCheck(HealthCheckReply { node_id })),
                Request::GetNodeStats(_) => {
                    let raylet = raylet.ok_or_else(|| WireError::internal("the node is still starting"))?;
                    match raylet.call(RayletMsg::GetStats, Some(Duration::from_secs(5))).await {
                        Ok(CallResult::Success(stats)) => Ok(Reply::GetNodeStats(stats)),
                        _ => Err(WireError::internal("the raylet did not answer")),
                    }
                }
                Request::RequestWorkerLease(request) => {
                    let raylet = raylet.ok_or_else(|| WireError::internal("the node is still starting"))?;
                    let caller_peer = caller_peer.clone();
                    match raylet
                        .call(|port| RayletMsg::RequestLease(Box::new(request), caller, caller_peer, port), None)
                        .await
                    {
                        Ok(CallResult::Success(outcome)) => Ok(Reply::RequestWorkerLease(outcome?)),
                        _ => Err(WireError::internal("the raylet did not answer the lease request")),
                    }
                }
                Request::RegisterWorker(request) => {
                    let raylet = raylet.ok_or_else(|| WireError::internal("the node is still starting"))?;
                    match raylet
                        .call(
                            |port| RayletMsg::RegisterWorker(request, caller_peer.clone(), port),
                            Some(Duration::from_secs(10)),
                        )
                        .await
                    {
                        Ok(CallResult::Success(node_id)) => Ok(Reply::RegisterWorker(node_id?)),
                        _ => Err(WireError::internal("the raylet did not answer the worker registration")),
                    }
                }
                Request::ReturnWorkerLease(request) => {
                    ask_raylet(raylet, |port| RayletMsg::ReturnLease(request.worker_id, from, port)).await
                }
                Request::WorkerBlocked(request) => {
                    ask_raylet(raylet, |port| RayletMsg::WorkerBlocked(request.worker_id, request.blocked, from, port))
                        .await
                }
                Request::KillWorker(request) => {
                    ask_raylet(raylet, |port| RayletMsg::KillWorker(request.worker_id, request.reason, from, port))
                        .await
                }
                other => Err(WireError::new(
                    ErrorCode::Unimplemented,
                    format!("a node does not serve {} requests; send them to the GCS address", other.name()),
                )),
            }
        })
    }

    fn event(&self, peer: &PeerHandle, event: Event) {
        match event {
            Event::WorkerOwnership(ownership) => {
                if let Some(raylet) = self.raylet.get() {
                    let _ = raylet.cast(RayletMsg::WorkerOwnership(ownership.worker_id, ownership.owns_objects));
                }
            }
            Event::DriverStarted(started) => {
                if let Some(raylet) = self.raylet.get() {
                    let _ = raylet.cast(RayletMsg::DriverStarted(peer.id(), started.worker_id, started.address));
                }
            }
            Event::ClusterView(view) => {
                if let Some(raylet) = self.raylet.get() {
                    let _ = raylet.cast(RayletMsg::ClusterView(view));
                }
            }
            Event::PlacementGroupRemoved(removed) => {
                if let Some(raylet) = self.raylet.get() {
                    let _ = raylet.cast(RayletMsg::PlacementGroupRemoved(removed.pg_id));
                }
            }
            Event::JobFinished(finished) => {
                if let Some(raylet) = self.raylet.get() {
                    let _ = raylet.cast(RayletMsg::JobFinished(finished.job_id));
                }
            }
            Event::JobRuntimeEnv(env) => {
                if let Some(raylet) = self.raylet.get() {
                    let _ = raylet.cast(RayletMsg::JobRuntimeEnv(Box::new(env)));
                }
            }
            Event::FreeObjects(free) => {
                let _ = self.store.cast(StoreMsg::Free(free.object_ids));
            }
            Event::MetricsReport(report) => {
                if let Some(metrics) = &self.metrics {
                    let agent = metrics.read().expect("metrics lock").clone();
                    let _ = agent.cast(manta_agents::metrics_agent::MetricsAgentMsg::Report(report));
                }
            }
            Event::Warning(_)
            | Event::DemandChanged(_)
            | Event::ServeCalls(_)
            | Event::ActorWorkerDied(_)
            | Event::ActorPanicked(_)
            | Event::LogBatch(_)
            | Event::TaskEvents(_)
            | Event::RemoveBorrower(_)
            | Event::ObjectLocation(_)
            | Event::ReleaseReturns(_)
            | Event::SubmissionChanged(_)
            | Event::DriverLog(_) => {}
            Event::NodeChange(change) => {
                let node = change.node;
                info!(node_id = %node.node_id, address = %node.address, state = node.state.as_str(), "node change");
            }
        }
    }

    fn connected(&self, _peer: &PeerHandle) {
        self.gcs_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.is_gcs_link
            && let Some(raylet) = self.raylet.get()
        {
            let _ = raylet.cast(RayletMsg::GcsReconnected);
        }
    }

    fn disconnected(&self, peer: &PeerHandle, reason: &str) {
        if self.is_gcs_link {
            warn!(gcs = %peer.label(), %reason, timeout = ?self.gcs_timeout, "lost the link to the GCS; reconnecting");
            // Work goes on meanwhile; only a link down for the whole timeout ends the node.
            let changes = self.gcs_changes.clone();
            let seen = changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let (raylet, timeout, peer) = (self.raylet.clone(), self.gcs_timeout, peer.clone());
            if timeout < Duration::from_secs(365 * 24 * 3600) {
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let unchanged = changes.load(std::sync::atomic::Ordering::SeqCst) == seen;
                    if unchanged
                        && !peer.is_connected()
                        && let Some(raylet) = raylet.get()
                    {
                        let _ = raylet.cast(RayletMsg::GcsGone(timeout));
                    }
                });
            }
        } else if let Some(raylet) = self.raylet.get() {
            let _ = raylet.cast(RayletMsg::CallerGone(peer.id()));
        }
    }
}
