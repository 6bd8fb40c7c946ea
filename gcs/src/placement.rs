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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_proto::gcs::NodeResources;
use manta_proto::message::{Event, Reply, Request};
use manta_proto::net::PeerHandle;
use manta_proto::placement::{
    CancelBundlesRequest, CommitBundlesRequest, PlacementGroupInfo, PlacementGroupRemovedEvent, PlacementGroupSpec,
    PlacementGroupState, PlacementStrategy, PrepareBundlesRequest,
};
use manta_proto::resources::ResourceSet;
use manta_proto::{ErrorCode, JobId, NodeId, PlacementGroupId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info};

use crate::pubsub::PubsubMsg;
use crate::resource_manager::ResourceMsg;
use crate::{GcsRefs, Shared, ask, now_ms};

/// Chooses a node for every bundle not yet placed (`placed[i] = None`), or says
/// why it cannot. `available` is what each alive node has free, ordered by node id;
/// it is not changed. Bundles already placed keep their nodes (a rescheduled group).
pub fn place(
    bundles: &[ResourceSet],
    placed: &[Option<NodeId>],
    strategy: PlacementStrategy,
    available: &[(NodeId, ResourceSet)],
) -> Result<Vec<NodeId>, String> {
    let mut free: Vec<(NodeId, ResourceSet)> = available.to_vec();
    let mut result: Vec<Option<NodeId>> = placed.to_vec();
    result.resize(bundles.len(), None);
    let used = |result: &[Option<NodeId>], node: NodeId| result.iter().filter(|placed| **placed == Some(node)).count();
    let fits = |free: &ResourceSet, bundle: &ResourceSet| bundle.iter().all(|(name, amount)| free.get(name) >= amount);
    let take = |free: &mut ResourceSet, bundle: &ResourceSet| {
        for (name, amount) in bundle.iter() {
            let left = free.get(name).saturating_sub(amount);
            free.set(name.to_string(), left);
        }
    };
    let todo: Vec<usize> = (0..bundles.len()).filter(|index| result[*index].is_none()).collect();
    if strategy == PlacementStrategy::Pack
        && let Ok(together) = place(bundles, placed, PlacementStrategy::StrictPack, available)
    {
        // All on one node when some node has room for all of them.
        return Ok(together);
    }
    match strategy {
        PlacementStrategy::StrictPack => {
            let mut total = ResourceSet::new();
            for index in &todo {
                for (name, amount) in bundles[*index].iter() {
                    total.set(name.to_string(), total.get(name).saturating_add(amount));
                }
            }
            // Where the others already are, if anywhere; else the first node with room for all.
            let anchor = result.iter().flatten().next().copied();
            let node = free
                .iter()
                .filter(|(node, _)| anchor.is_none_or(|anchor| anchor == *node))
                .find(|(_, free)| fits(free, &total))
                .map(|(node, _)| *node)
                .ok_or_else(|| "no single node has room for all the bundles together (STRICT_PACK)".to_string())?;
            for index in todo {
                result[index] = Some(node);
            }
        }
        PlacementStrategy::StrictSpread => {
            for index in todo {
                let node = free
                    .iter_mut()
                    .filter(|(node, _)| used(&result, *node) == 0)
                    .find(|(_, free)| fits(free, &bundles[index]));
                let Some((node, room)) = node else {
                    return Err(format!(
                        "bundle {index} needs a node of its own with room for it (STRICT_SPREAD over {} alive nodes)",
                        available.len()
                    ));
                };
                take(room, &bundles[index]);
                result[index] = Some(*node);
            }
        }
        PlacementStrategy::Pack | PlacementStrategy::Spread => {
            for index in todo {
                let bundle = &bundles[index];
                // PACK: the node already holding most bundles first; SPREAD: the least used.
                let mut candidates: Vec<usize> = (0..free.len()).filter(|at| fits(&free[*at].1, bundle)).collect();
                if candidates.is_empty() {
                    return Err(format!("no node has room for bundle {index} ({:?})", bundle.to_f64_map()));
                }
                candidates.sort_by_key(|at| {
                    let count = used(&result, free[*at].0) as i64;
                    if strategy == PlacementStrategy::Pack { -count } else { count }
                });
                let at = candidates[0];
                take(&mut free[at].1, bundle);
                result[index] = Some(free[at].0);
            }
        }
    }
    Ok(result.into_iter().map(|node| node.expect("every bundle placed")).collect())
}

/// Every group, by id, with names per namespace.
#[derive(Debug, Default)]
pub struct PlacementTable {
    groups: HashMap<PlacementGroupId, PlacementGroupInfo>,
    order: Vec<PlacementGroupId>,
    names: HashMap<(String, String), PlacementGroupId>,
}

/// Removed groups kept for `manta list placement-groups`.
const MAX_REMOVED: usize = 1000;

impl PlacementTable {
    /// Records a new group as `PENDING`; refuses an empty bundle list or a taken name.
    pub fn create(&mut self, spec: PlacementGroupSpec, now_ms: u64) -> Result<(), WireError> {
        if spec.bundles.is_empty() {
            return Err(WireError::invalid("a placement group needs at least one bundle"));
        }
        if let Some(index) = spec.bundles.iter().position(|bundle| bundle.iter().all(|(_, amount)| amount.is_zero())) {
            return Err(WireError::invalid(format!("bundle {index} is empty: give every bundle some resources")));
        }
        if self.groups.contains_key(&spec.pg_id) {
            return Ok(());
        }
        if let Some(name) = &spec.name {
            let key = (spec.namespace.clone(), name.clone());
            if self.names.get(&key).is_some_and(|id| self.is_live(id)) {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    format!("a placement group named {name:?} already exists in namespace {:?}", spec.namespace),
                ));
            }
            self.names.insert(key, spec.pg_id);
        }
        let bundle_nodes = vec![None; spec.bundles.len()];
        self.order.push(spec.pg_id);
        let info = PlacementGroupInfo {
            spec,
            state: PlacementGroupState::Pending,
            bundle_nodes,
            pending_reason: None,
            create_time_ms: now_ms,
        };
        self.groups.insert(info.spec.pg_id, info);
        Ok(())
    }

    fn is_live(&self, id: &PlacementGroupId) -> bool {
        self.groups.get(id).is_some_and(|info| info.state != PlacementGroupState::Removed)
    }

    /// A group.
    pub fn get(&self, id: &PlacementGroupId) -> Option<&PlacementGroupInfo> {
        self.groups.get(id)
    }

    /// A live group by name.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<&PlacementGroupInfo> {
        let id = self.names.get(&(namespace.to_string(), name.to_string()))?;
        self.groups.get(id).filter(|info| info.state != PlacementGroupState::Removed)
    }

    /// Groups waiting for placement, oldest first.
    pub fn pending(&self) -> Vec<PlacementGroupId> {
        self.order
            .iter()
            .filter(|id| {
                self.groups.get(id).is_some_and(|info| {
                    matches!(info.state, PlacementGroupState::Pending | PlacementGroupState::Rescheduling)
                })
            })
            .copied()
            .collect()
    }

    /// Marks a group removed; returns the nodes holding its bundles.
    pub fn remove(&mut self, id: &PlacementGroupId) -> Option<Vec<NodeId>> {
        let info = self.groups.get_mut(id).filter(|info| info.state != PlacementGroupState::Removed)?;
        info.state = PlacementGroupState::Removed;
        let mut nodes: Vec<NodeId> = info.bundle_nodes.iter().flatten().copied().collect();
        nodes.sort();
        nodes.dedup();
        self.trim();
        Some(nodes)
    }

    fn trim(&mut self) {
        let removed = self.order.iter().filter(|id| !self.is_live(id)).count();
        if removed <= MAX_REMOVED {
            return;
        }
        let mut excess = removed - MAX_REMOVED;
        let groups = &mut self.groups;
        self.order.retain(|id| {
            let live = groups.get(id).is_some_and(|info| info.state != PlacementGroupState::Removed);
            if !live && excess > 0 {
                excess -= 1;
                groups.remove(id);
                return false;
            }
            true
        });
    }

    /// Bundles placed: the group is `CREATED`.
    pub fn placed(&mut self, id: &PlacementGroupId, nodes: &[NodeId]) -> bool {
        let Some(info) = self.groups.get_mut(id).filter(|info| info.state != PlacementGroupState::Removed) else {
            return false;
        };
        info.bundle_nodes = nodes.iter().copied().map(Some).collect();
        info.state = PlacementGroupState::Created;
        info.pending_reason = None;
        true
    }

    /// Why a group still waits.
    pub fn waiting(&mut self, id: &PlacementGroupId, reason: String) {
        if let Some(info) = self.groups.get_mut(id) {
            info.pending_reason = Some(reason);
        }
    }

    /// A node died: its bundles must be placed again.
    pub fn node_dead(&mut self, node_id: NodeId) -> usize {
        let mut hit = 0;
        for info in self.groups.values_mut().filter(|info| info.state == PlacementGroupState::Created) {
            let mut lost = false;
            for slot in info.bundle_nodes.iter_mut().filter(|slot| **slot == Some(node_id)) {
                *slot = None;
                lost = true;
            }
            if lost {
                info.state = PlacementGroupState::Rescheduling;
                hit += 1;
            }
        }
        for info in self.groups.values_mut().filter(|info| info.state != PlacementGroupState::Removed) {
            for slot in info.bundle_nodes.iter_mut().filter(|slot| **slot == Some(node_id)) {
                *slot = None;
            }
        }
        hit
    }

    /// Live groups of a finished job that do not outlive it.
    pub fn of_finished_job(&self, job_id: JobId) -> Vec<PlacementGroupId> {
        self.groups
            .values()
            .filter(|info| {
                info.spec.job_id == job_id && !info.spec.detached && info.state != PlacementGroupState::Removed
            })
            .map(|info| info.spec.pg_id)
            .collect()
    }

    /// The newest `limit` groups, oldest first.
    pub fn list(&self, limit: usize) -> Vec<PlacementGroupInfo> {
        let skip = self.order.len().saturating_sub(limit);
        self.order.iter().skip(skip).filter_map(|id| self.groups.get(id).cloned()).collect()
    }
}

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
    /// The newest groups.
    List(usize, RpcReplyPort<Vec<PlacementGroupInfo>>),
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

/// State of the [`PlacementGroupManager`].
pub struct PlacementState {
    table: Shared<PlacementTable>,
    links: Shared<HashMap<NodeId, PeerHandle>>,
    refs: Arc<GcsRefs>,
    waiters: Vec<(PlacementGroupId, Instant, RpcReplyPort<Option<PlacementGroupInfo>>)>,
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
            waiters: Vec::new(),
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
                let created = state.table.lock().expect("placement lock").create(spec, now_ms());
                let ok = created.is_ok();
                let _ = reply.send(created);
                if ok {
                    schedule(&myself, state);
                }
            }
            PlacementMsg::Remove(pg_id, reply) => {
                let nodes = state.table.lock().expect("placement lock").remove(&pg_id);
                match nodes {
                    Some(nodes) => {
                        info!(%pg_id, "placement group removed");
                        release(state, pg_id, &nodes);
                        if let Ok(pubsub) = state.refs.pubsub() {
                            let event = Event::PlacementGroupRemoved(PlacementGroupRemovedEvent { pg_id });
                            let _ = pubsub.cast(PubsubMsg::Publish(event));
                        }
                        answer_waiters(state);
                        let _ = reply.send(Ok(()));
                    }
                    None => {
                        let known = state.table.lock().expect("placement lock").get(&pg_id).is_some();
                        let _ = reply.send(if known {
                            Ok(())
                        } else {
                            Err(WireError::new(ErrorCode::NotFound, format!("no placement group {pg_id}")))
                        });
                    }
                }
            }
            PlacementMsg::Get(pg_id, name, reply) => {
                let table = state.table.lock().expect("placement lock");
                let info = match (pg_id, name) {
                    (Some(pg_id), _) => table.get(&pg_id).cloned(),
                    (None, Some((namespace, name))) => table.by_name(&namespace, &name).cloned(),
                    (None, None) => None,
                };
                let _ = reply.send(info);
            }
            PlacementMsg::Wait(pg_id, timeout, reply) => {
                let info = state.table.lock().expect("placement lock").get(&pg_id).cloned();
                match info {
                    Some(info) if is_waiting(&info) => state.waiters.push((pg_id, Instant::now() + timeout, reply)),
                    other => {
                        let _ = reply.send(other);
                    }
                }
            }
            PlacementMsg::List(limit, reply) => {
                let _ = reply.send(state.table.lock().expect("placement lock").list(limit));
            }
            PlacementMsg::NodeDead(node_id) => {
                let hit = state.table.lock().expect("placement lock").node_dead(node_id);
                if hit > 0 {
                    info!(%node_id, groups = hit, "node holding placement group bundles died; rescheduling them");
                    schedule(&myself, state);
                }
            }
            PlacementMsg::JobFinished(job_id) => {
                let groups = state.table.lock().expect("placement lock").of_finished_job(job_id);
                for pg_id in groups {
                    let nodes = state.table.lock().expect("placement lock").remove(&pg_id).unwrap_or_default();
                    release(state, pg_id, &nodes);
                    if let Ok(pubsub) = state.refs.pubsub() {
                        let event = Event::PlacementGroupRemoved(PlacementGroupRemovedEvent { pg_id });
                        let _ = pubsub.cast(PubsubMsg::Publish(event));
                    }
                }
                answer_waiters(state);
            }
            PlacementMsg::Schedule => schedule(&myself, state),
            PlacementMsg::Placed(pg_id, nodes) => {
                let placed = state.table.lock().expect("placement lock").placed(&pg_id, &nodes);
                if placed {
                    debug!(%pg_id, "placement group created");
                } else {
                    // Removed while being reserved: give the bundles back.
                    let mut unique = nodes.clone();
                    unique.sort();
                    unique.dedup();
                    release(state, pg_id, &unique);
                }
                answer_waiters(state);
            }
            PlacementMsg::NotPlaced(pg_id, reason) => {
                state.table.lock().expect("placement lock").waiting(&pg_id, reason);
            }
            PlacementMsg::PassDone => {
                state.scheduling = false;
                if std::mem::take(&mut state.again) {
                    schedule(&myself, state);
                }
            }
            PlacementMsg::Tick => {
                answer_waiters(state);
                if !state.scheduling && !state.table.lock().expect("placement lock").pending().is_empty() {
                    schedule(&myself, state);
                }
            }
        }
        Ok(())
    }
}

fn is_waiting(info: &PlacementGroupInfo) -> bool {
    matches!(info.state, PlacementGroupState::Pending | PlacementGroupState::Rescheduling)
}

/// Answers waiters whose group left `PENDING` or whose deadline passed.
fn answer_waiters(state: &mut PlacementState) {
    let now = Instant::now();
    let table = state.table.lock().expect("placement lock");
    let mut kept = Vec::new();
    for (pg_id, deadline, reply) in state.waiters.drain(..) {
        let info = table.get(&pg_id).cloned();
        if info.as_ref().is_some_and(is_waiting) && now < deadline {
            kept.push((pg_id, deadline, reply));
        } else {
            let _ = reply.send(info);
        }
    }
    drop(table);
    state.waiters = kept;
}

/// Tells `nodes` to give `pg_id`'s bundles back.
fn release(state: &PlacementState, pg_id: PlacementGroupId, nodes: &[NodeId]) {
    let links = state.links.lock().expect("links lock");
    for node in nodes {
        if let Some(link) = links.get(node).cloned() {
            tokio::spawn(async move {
                let request = Request::CancelBundles(CancelBundlesRequest { pg_id });
                let _ = link.call(request, BUNDLE_CALL_TIMEOUT).await;
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
    let pending = state.table.lock().expect("placement lock").pending();
    if pending.is_empty() {
        return;
    }
    state.scheduling = true;
    let groups: Vec<PlacementGroupInfo> = {
        let table = state.table.lock().expect("placement lock");
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
    let mut available: Vec<(NodeId, ResourceSet)> =
        view.nodes.iter().map(|node: &NodeResources| (node.node_id, node.available.clone())).collect();
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
        let links = links.lock().expect("links lock");
        per_node.keys().filter_map(|node| links.get(node).map(|link| (*node, link.clone()))).collect()
    };
    if peers.len() != per_node.len() {
        return Err("a chosen node went away".into());
    }
    let commit = peers.len() == 1;
    let prepares = peers.iter().map(|(node, peer)| {
        let bundles = per_node[node].clone();
        let peer = peer.clone();
        async move {
            let request = Request::PrepareBundles(PrepareBundlesRequest { pg_id, bundles, commit });
            matches!(peer.call(request, BUNDLE_CALL_TIMEOUT).await, Ok(Reply::Ack))
        }
    });
    let prepared: Vec<bool> = join_all(prepares).await;
    if !prepared.iter().all(|ok| *ok) {
        let rollbacks = peers.iter().zip(&prepared).filter(|(_, ok)| **ok).map(|((_, peer), _)| {
            let peer = peer.clone();
            async move {
                let _ = peer.call(Request::CancelBundles(CancelBundlesRequest { pg_id }), BUNDLE_CALL_TIMEOUT).await;
            }
        });
        join_all(rollbacks).await;
        return Err("a node could not lock the resources (its load changed); retrying".into());
    }
    if commit {
        return Ok(());
    }
    let commits = peers.iter().map(|(_, peer)| {
        let peer = peer.clone();
        async move {
            matches!(
                peer.call(Request::CommitBundles(CommitBundlesRequest { pg_id }), BUNDLE_CALL_TIMEOUT).await,
                Ok(Reply::Ack)
            )
        }
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

#[cfg(test)]
mod tests {
    use manta_proto::resources::Quantity;

    use super::*;

    fn cpus(count: u64) -> ResourceSet {
        ResourceSet::new().with("CPU", Quantity::from_whole(count))
    }

    fn nodes(free: &[u64]) -> Vec<(NodeId, ResourceSet)> {
        let mut nodes: Vec<_> = free.iter().map(|count| (NodeId::random(), cpus(*count))).collect();
        nodes.sort_by_key(|(id, _)| *id);
        nodes
    }

    fn distinct(placed: &[NodeId]) -> usize {
        let mut unique = placed.to_vec();
        unique.sort();
        unique.dedup();
        unique.len()
    }

    #[test]
    fn pack_uses_as_few_nodes_as_possible_and_may_spill() {
        let view = nodes(&[4, 4, 4]);
        let placed = place(&[cpus(1), cpus(1), cpus(1)], &[None; 3], PlacementStrategy::Pack, &view).unwrap();
        assert_eq!(distinct(&placed), 1);
        let placed = place(&[cpus(3), cpus(3)], &[None; 2], PlacementStrategy::Pack, &view).unwrap();
        assert_eq!(distinct(&placed), 2, "does not fit on one node: spills");
    }

    #[test]
    fn spread_uses_distinct_nodes_while_it_can_and_overlaps_after() {
        let view = nodes(&[4, 4]);
        let placed = place(&[cpus(1), cpus(1)], &[None; 2], PlacementStrategy::Spread, &view).unwrap();
        assert_eq!(distinct(&placed), 2);
        let placed = place(&[cpus(1), cpus(1), cpus(1)], &[None; 3], PlacementStrategy::Spread, &view).unwrap();
        assert_eq!(distinct(&placed), 2, "three bundles over two nodes overlap");
    }

    #[test]
    fn strict_pack_needs_one_node_for_all() {
        let view = nodes(&[2, 2]);
        assert!(place(&[cpus(1), cpus(1)], &[None; 2], PlacementStrategy::StrictPack, &view).is_ok());
        let refused = place(&[cpus(2), cpus(1)], &[None; 2], PlacementStrategy::StrictPack, &view).unwrap_err();
        assert!(refused.contains("STRICT_PACK"), "{refused}");
    }

    #[test]
    fn strict_spread_needs_a_node_per_bundle() {
        let view = nodes(&[4, 4]);
        let placed = place(&[cpus(1), cpus(1)], &[None; 2], PlacementStrategy::StrictSpread, &view).unwrap();
        assert_eq!(distinct(&placed), 2);
        assert!(place(&[cpus(1), cpus(1), cpus(1)], &[None; 3], PlacementStrategy::StrictSpread, &view).is_err());
    }

    #[test]
    fn a_rescheduled_group_keeps_its_placed_bundles() {
        let view = nodes(&[4, 4, 4]);
        let kept = view[0].0;
        let placed = place(&[cpus(1), cpus(1)], &[Some(kept), None], PlacementStrategy::StrictSpread, &view).unwrap();
        assert_eq!(placed[0], kept);
        assert_ne!(placed[1], kept);
        let packed = place(&[cpus(1), cpus(1)], &[Some(kept), None], PlacementStrategy::StrictPack, &view).unwrap();
        assert_eq!(packed, vec![kept, kept]);
    }

    #[test]
    fn the_table_tracks_states_names_and_node_deaths() {
        let mut table = PlacementTable::default();
        let spec = |name: Option<&str>| PlacementGroupSpec {
            pg_id: PlacementGroupId::random(),
            name: name.map(str::to_string),
            namespace: "ns".into(),
            bundles: vec![cpus(1), cpus(1)],
            strategy: PlacementStrategy::Spread,
            detached: false,
            job_id: JobId::from_counter(1),
        };
        let first = spec(Some("g"));
        table.create(first.clone(), 1).unwrap();
        assert!(table.create(spec(Some("g")), 2).is_err(), "names are unique per namespace");
        let mut empty = spec(None);
        empty.bundles = vec![ResourceSet::new()];
        assert!(table.create(empty, 3).is_err());
        assert_eq!(table.pending(), vec![first.pg_id]);
        let (a, b) = (NodeId::random(), NodeId::random());
        assert!(table.placed(&first.pg_id, &[a, b]));
        assert!(table.pending().is_empty());
        assert_eq!(table.node_dead(a), 1);
        assert_eq!(table.get(&first.pg_id).unwrap().state, PlacementGroupState::Rescheduling);
        assert_eq!(table.get(&first.pg_id).unwrap().bundle_nodes, vec![None, Some(b)]);
        assert_eq!(table.of_finished_job(JobId::from_counter(1)), vec![first.pg_id]);
        assert_eq!(table.remove(&first.pg_id), Some(vec![b]));
        assert!(table.by_name("ns", "g").is_none());
        table.create(spec(Some("g")), 4).unwrap();
    }
}
