//! [`PlacementGroupManager`]: placement groups, scheduled by the GCS as in Ray.
//!
//! A pass takes the pending groups in creation order, picks a node for each
//! unplaced bundle with the group's strategy ([`place`], pure) over the cluster
//! view (minus what earlier groups of the pass took), then reserves them in two
//! phases: `PrepareBundles` on every chosen node (each locks all of its bundles or
//! none), then `CommitBundles`, which turns the locked resources into bundle
//! resources (`CPU_group_<i>_<pg>`, ...). A failed prepare rolls back the others
//! (`CancelBundles`) and the group waits for the next pass (retried every 100 ms
//! while anything is pending, and at once when something changes). Removal, the
//! end of a non-detached group's job, or the death of a node holding bundles
//! (the group goes `RESCHEDULING` and its lost bundles are placed again) release
//! the bundles.

mod policy;
mod table;

pub use policy::place;
pub use table::PlacementTable;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_proto::autoscaler::{DemandChangedEvent, PendingGroup};
use manta_proto::client::NodeClient;
use manta_proto::gcs::NodeResources;
use manta_proto::message::Event;
use manta_proto::net::PeerHandle;
use manta_proto::placement::{
    CancelBundlesRequest, CommitBundlesRequest, PlacementGroupInfo, PlacementGroupRemovedEvent, PlacementGroupSpec,
    PlacementGroupState, PrepareBundlesRequest,
};
use manta_proto::resources::ResourceSet;
use manta_proto::{ErrorCode, JobId, NodeId, PlacementGroupId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info};

use crate::pubsub::PubsubMsg;
use crate::resource_manager::ResourceMsg;
use crate::{GcsRefs, Shared, ask, now_ms};

/// Messages to the [`PlacementGroupManager`].
pub enum PlacementMsg {
    /// Create a group.
    Create(PlacementGroupSpec, RpcReplyPort<Result<(), WireError>>),
    /// Remove a group.
    Remove(PlacementGroupId, RpcReplyPort<Result<(), WireError>>),
    /// A group by id, or by (namespace, name).
    Get(Option<PlacementGroupId>, Option<(String, String)>, RpcReplyPort<Option<PlacementGroupInfo>>),
    /// Answer once the group leaves `PENDING`, or at the deadline.
    Wait(PlacementGroupId, Duration, RpcReplyPort<Option<PlacementGroupInfo>>),
    /// A page of the groups, newest first.
    Query(manta_proto::query::StateQuery, RpcReplyPort<manta_proto::task::ListStateReply>),
    /// A node died.
    NodeDead(NodeId),
    /// A job finished.
    JobFinished(JobId),
    /// Run a scheduling pass (if none is running).
    Schedule,
    /// A pass placed a group on these nodes (committed).
    Placed(PlacementGroupId, Vec<NodeId>),
    /// A pass could not place a group.
    NotPlaced(PlacementGroupId, String),
    /// A pass ended.
    PassDone,
    /// Timer: deadlines of waiters, retries.
    Tick,
    /// Groups waiting for room, oldest first (the autoscaler's demand).
    Pending(RpcReplyPort<Vec<PendingGroup>>),
}

/// Start-up arguments (the table outlives a restart).
pub struct PlacementArgs {
    /// Every group.
    pub table: Shared<PlacementTable>,
    /// Links to alive nodes.
    pub links: Shared<HashMap<NodeId, PeerHandle>>,
    /// Sibling actors.
    pub refs: Arc<GcsRefs>,
}

/// A `wait`: its deadline and where its answer goes.
type Waiter = (Instant, RpcReplyPort<Option<PlacementGroupInfo>>);

/// State of the [`PlacementGroupManager`].
pub struct PlacementState {
    table: Shared<PlacementTable>,
    links: Shared<HashMap<NodeId, PeerHandle>>,
    refs: Arc<GcsRefs>,
    /// `wait`s by group: their deadlines and reply ports.
    waiters: HashMap<PlacementGroupId, Vec<Waiter>>,
    scheduling: bool,
    again: bool,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for PlacementState {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// The placement group manager actor.
#[derive(Debug, Default)]
pub struct PlacementGroupManager;

/// Deadline of one prepare, commit or cancel.
const BUNDLE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Actor for PlacementGroupManager {
    type Msg = PlacementMsg;
    type State = PlacementState;
    type Arguments = PlacementArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PlacementMsg>,
        args: PlacementArgs,
    ) -> Result<PlacementState, ActorProcessingErr> {
        let ticker = myself.send_interval(Duration::from_millis(100), || PlacementMsg::Tick);
        let _ = myself.cast(PlacementMsg::Schedule);
        Ok(PlacementState {
            table: args.table,
            links: args.links,
            refs: args.refs,
            waiters: HashMap::new(),
            scheduling: false,
            again: false,
            ticker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PlacementMsg>,
        message: PlacementMsg,
        state: &mut PlacementState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PlacementMsg::Create(spec, reply) => {
                let created = state.table.lock().create(spec, now_ms());
                let ok = created.is_ok();
                let _ = reply.send(created);
                if ok {
                    schedule(&myself, state);
                    demand_changed(state);
                }
            }
            PlacementMsg::Remove(pg_id, reply) => {
                let nodes = state.table.lock().remove(&pg_id);
                match nodes {
                    Some(nodes) => {
                        info!(%pg_id, "placement group removed");
                        release(state, pg_id, &nodes);
                        if let Ok(pubsub) = state.refs.pubsub() {
                            let event = Event::PlacementGroupRemoved(PlacementGroupRemovedEvent { pg_id });
                            let _ = pubsub.cast(PubsubMsg::Publish(event));
                        }
                        answer_waiters(state, &pg_id);
                        let _ = reply.send(Ok(()));
                    }
                    None => {
                        let known = state.table.lock().get(&pg_id).is_some();
                        let _ = reply.send(if known {
                            Ok(())
                        } else {
                            Err(WireError::new(ErrorCode::NotFound, format!("no placement group {pg_id}")))
                        });
                    }
                }
            }
            PlacementMsg::Get(pg_id, name, reply) => {
                let table = state.table.lock();
                let info = match (pg_id, name) {
                    (Some(pg_id), _) => table.get(&pg_id).cloned(),
                    (None, Some((namespace, name))) => table.by_name(&namespace, &name).cloned(),
                    (None, None) => None,
                };
                let _ = reply.send(info);
            }
            PlacementMsg::Wait(pg_id, timeout, reply) => {
                let info = state.table.lock().get(&pg_id).cloned();
                match info {
                    Some(info) if is_waiting(&info) => {
                        state.waiters.entry(pg_id).or_default().push((Instant::now() + timeout, reply));
                    }
                    other => {
                        let _ = reply.send(other);
                    }
                }
            }
            PlacementMsg::Query(query, reply) => {
                let _ = reply.send(state.table.lock().query(&query));
            }
            PlacementMsg::NodeDead(node_id) => {
                let hit = state.table.lock().node_dead(node_id);
                if hit > 0 {
                    info!(%node_id, groups = hit, "node holding placement group bundles died; rescheduling them");
                    schedule(&myself, state);
                    demand_changed(state);
                }
            }
            PlacementMsg::JobFinished(job_id) => {
                let groups = state.table.lock().of_finished_job(job_id);
                for pg_id in groups {
                    let nodes = state.table.lock().remove(&pg_id).unwrap_or_default();
                    release(state, pg_id, &nodes);
                    if let Ok(pubsub) = state.refs.pubsub() {
                        let event = Event::PlacementGroupRemoved(PlacementGroupRemovedEvent { pg_id });
                        let _ = pubsub.cast(PubsubMsg::Publish(event));
                    }
                    answer_waiters(state, &pg_id);
                }
            }
            PlacementMsg::Schedule => schedule(&myself, state),
            PlacementMsg::Pending(reply) => {
                let table = state.table.lock();
                let groups = table
                    .pending()
                    .iter()
                    .filter_map(|id| table.get(id))
                    .map(|info| PendingGroup {
                        pg_id: info.spec.pg_id,
                        name: info.spec.name.clone(),
                        strategy: info.spec.strategy,
                        // A rescheduled group waits only for its unplaced bundles.
                        bundles: info
                            .spec
                            .bundles
                            .iter()
                            .zip(&info.bundle_nodes)
                            .filter(|(_, node)| node.is_none())
                            .map(|(bundle, _)| bundle.clone())
                            .collect(),
                    })
                    .collect();
                let _ = reply.send(groups);
            }
            PlacementMsg::Placed(pg_id, nodes) => {
                let placed = state.table.lock().placed(&pg_id, &nodes);
                if placed {
                    debug!(%pg_id, "placement group created");
                } else {
                    // Removed while being reserved: give the bundles back.
                    let mut unique = nodes.clone();
                    unique.sort();
                    unique.dedup();
                    release(state, pg_id, &unique);
                }
                answer_waiters(state, &pg_id);
            }
            PlacementMsg::NotPlaced(pg_id, reason) => {
                state.table.lock().waiting(&pg_id, reason);
            }
            PlacementMsg::PassDone => {
                state.scheduling = false;
                if std::mem::take(&mut state.again) {
                    schedule(&myself, state);
                }
            }
            PlacementMsg::Tick => {
                expire_waiters(state);
                if !state.scheduling && state.table.lock().has_pending() {
                    schedule(&myself, state);
                }
            }
        }
        Ok(())
    }
}

/// Tells the autoscaler that placement group demand changed.
fn demand_changed(state: &PlacementState) {
    if let Ok(pubsub) = state.refs.pubsub() {
        let _ = pubsub.cast(PubsubMsg::Publish(Event::DemandChanged(DemandChangedEvent {})));
    }
}

fn is_waiting(info: &PlacementGroupInfo) -> bool {
    matches!(info.state, PlacementGroupState::Pending | PlacementGroupState::Rescheduling)
}

/// Answers the waiters of `pg_id` once it left `PENDING`.
fn answer_waiters(state: &mut PlacementState, pg_id: &PlacementGroupId) {
    let info = state.table.lock().get(pg_id).cloned();
    if info.as_ref().is_some_and(is_waiting) {
        return;
    }
    for (_, reply) in state.waiters.remove(pg_id).unwrap_or_default() {
        let _ = reply.send(info.clone());
    }
}

/// Answers the waiters whose deadline passed (or whose group no longer waits),
/// with their group as it is.
fn expire_waiters(state: &mut PlacementState) {
    let now = Instant::now();
    let table = state.table.lock();
    state.waiters.retain(|pg_id, waiters| {
        let info = table.get(pg_id);
        let settled = !info.is_some_and(is_waiting);
        let (due, kept): (Vec<_>, Vec<_>) =
            std::mem::take(waiters).into_iter().partition(|(deadline, _)| settled || *deadline <= now);
        for (_, reply) in due {
            let _ = reply.send(info.cloned());
        }
        *waiters = kept;
        !waiters.is_empty()
    });
}

/// Tells `nodes` to give `pg_id`'s bundles back.
fn release(state: &PlacementState, pg_id: PlacementGroupId, nodes: &[NodeId]) {
    let links = state.links.lock();
    for node in nodes {
        if let Some(link) = links.get(node).cloned() {
            tokio::spawn(async move {
                let _ = NodeClient::new(link, BUNDLE_CALL_TIMEOUT).call(CancelBundlesRequest { pg_id }).await;
            });
        }
    }
}

/// Starts a pass unless one runs (then another follows it).
fn schedule(myself: &ActorRef<PlacementMsg>, state: &mut PlacementState) {
    if state.scheduling {
        state.again = true;
        return;
    }
    let pending = state.table.lock().pending();
    if pending.is_empty() {
        return;
    }
    state.scheduling = true;
    let groups: Vec<PlacementGroupInfo> = {
        let table = state.table.lock();
        pending.iter().filter_map(|id| table.get(id).cloned()).collect()
    };
    let links = state.links.clone();
    let refs = state.refs.clone();
    let myself = myself.clone();
    tokio::spawn(async move {
        run_pass(&myself, groups, links, refs).await;
        let _ = myself.cast(PlacementMsg::PassDone);
    });
}

async fn run_pass(
    myself: &ActorRef<PlacementMsg>,
    groups: Vec<PlacementGroupInfo>,
    links: Shared<HashMap<NodeId, PeerHandle>>,
    refs: Arc<GcsRefs>,
) {
    let view = match refs.resource_manager() {
        Ok(resources) => ask(&resources, ResourceMsg::Snapshot).await.ok(),
        Err(_) => None,
    };
    let Some(view) = view else { return };
    // Only the resources some bundle of the pass asks for matter: a node's other
    // entries (the bundle resources of every group it holds) are left out.
    let asked: std::collections::BTreeSet<&str> = groups
        .iter()
        .flat_map(|info| info.spec.bundles.iter())
        .flat_map(|bundle| bundle.iter())
        .map(|(name, _)| name)
        .collect();
    let mut available: Vec<(NodeId, ResourceSet)> = view
        .nodes
        .iter()
        .filter(|node| !node.draining)
        .map(|node: &NodeResources| {
            let mut free = ResourceSet::new();
            for name in &asked {
                free.set(name.to_string(), node.available.get(name));
            }
            (node.node_id, free)
        })
        .collect();
    let mut reservations = Vec::new();
    for info in groups {
        let pg_id = info.spec.pg_id;
        match place(&info.spec.bundles, &info.bundle_nodes, info.spec.strategy, &available) {
            Ok(nodes) => {
                // What this pass gave away is gone for the next groups of the pass.
                for (index, node) in nodes.iter().enumerate() {
                    if info.bundle_nodes[index].is_some() {
                        continue;
                    }
                    if let Some((_, free)) = available.iter_mut().find(|(id, _)| id == node) {
                        for (name, amount) in info.spec.bundles[index].iter() {
                            let left = free.get(name).saturating_sub(amount);
                            free.set(name.to_string(), left);
                        }
                    }
                }
                let links = links.clone();
                let myself = myself.clone();
                reservations.push(tokio::spawn(async move {
                    match reserve(&info, &nodes, &links).await {
                        Ok(()) => {
                            let _ = myself.cast(PlacementMsg::Placed(pg_id, nodes));
                        }
                        Err(reason) => {
                            let _ = myself.cast(PlacementMsg::NotPlaced(pg_id, reason));
                        }
                    }
                }));
            }
            Err(reason) => {
                let _ = myself.cast(PlacementMsg::NotPlaced(pg_id, reason));
            }
        }
    }
    for reservation in reservations {
        let _ = reservation.await;
    }
}

/// Two-phase reservation of the group's unplaced bundles on `nodes`.
async fn reserve(
    info: &PlacementGroupInfo,
    nodes: &[NodeId],
    links: &Shared<HashMap<NodeId, PeerHandle>>,
) -> Result<(), String> {
    let pg_id = info.spec.pg_id;
    let mut per_node: BTreeMap<NodeId, Vec<(u32, ResourceSet)>> = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        if info.bundle_nodes[index].is_none() {
            per_node.entry(*node).or_default().push((index as u32, info.spec.bundles[index].clone()));
        }
    }
    let peers: Vec<(NodeId, PeerHandle)> = {
        let links = links.lock();
        per_node.keys().filter_map(|node| links.get(node).map(|link| (*node, link.clone()))).collect()
    };
    if peers.len() != per_node.len() {
        return Err("a chosen node went away".into());
    }
    let commit = peers.len() == 1;
    let prepares = peers.iter().map(|(node, peer)| {
        let bundles = per_node[node].clone();
        let node = NodeClient::new(peer.clone(), BUNDLE_CALL_TIMEOUT);
        async move { node.call(PrepareBundlesRequest { pg_id, bundles, commit }).await.is_ok() }
    });
    let prepared: Vec<bool> = join_all(prepares).await;
    if !prepared.iter().all(|ok| *ok) {
        let rollbacks = peers.iter().zip(&prepared).filter(|(_, ok)| **ok).map(|((_, peer), _)| {
            let node = NodeClient::new(peer.clone(), BUNDLE_CALL_TIMEOUT);
            async move {
                let _ = node.call(CancelBundlesRequest { pg_id }).await;
            }
        });
        join_all(rollbacks).await;
        return Err("a node could not lock the resources (its load changed); retrying".into());
    }
    if commit {
        return Ok(());
    }
    let commits = peers.iter().map(|(_, peer)| {
        let node = NodeClient::new(peer.clone(), BUNDLE_CALL_TIMEOUT);
        async move { node.call(CommitBundlesRequest { pg_id }).await.is_ok() }
    });
    if join_all(commits).await.iter().all(|ok| *ok) {
        Ok(())
    } else {
        Err("a node failed to commit its bundles; retrying".into())
    }
}

/// Runs the futures concurrently, keeping their order.
async fn join_all<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("a reservation task panicked"));
    }
    outputs
}
