//! [`ActorDirectory`]: where each actor lives, which names are taken, and
//! restarts after an actor's process or node dies.
//!
//! Actors are created by their owner (the caller of `Class::remote`), which
//! records them here with what a restart needs. When a node reports that an
//! actor's worker process exited, or the node itself is declared dead, the
//! directory restarts the actor while `max_restarts` allows ([`crate::actor_restart`]):
//! the record goes `RESTARTING`, then `ALIVE` at its new address. Handles whose
//! calls failed ask here (`GetActor`) where the actor went.

use std::collections::HashMap;
use std::sync::Arc;

use manta_proto::client::NodeClient;
use manta_proto::net::{NetConfig, PeerHandle};
use manta_proto::query::StateQuery;
use manta_proto::task::{
    ActorInfo, ActorRecord, ActorRestartSpec, ActorWorkerDiedEvent, KillWorkerRequest, ListStateReply, StateRows,
};
use manta_proto::{ActorId, ErrorCode, JobId, NodeId, WireError, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::Shared;
use crate::storage::Rows;

use manta_proto::task::ActorState::{Alive, Dead, Restarting};

/// Actors by id and by (namespace, name).
#[derive(Debug, Default)]
pub struct ActorTable {
    /// Alive and restarting actors.
    actors: HashMap<ActorId, ActorRecord>,
    names: HashMap<(String, String), ActorId>,
    dead: std::collections::VecDeque<ActorRecord>,
    /// Dead actors dropped from the history by its bound.
    dropped: u64,
    store: Rows,
}

/// Dead actors kept for `manta list actors` and the dashboard.
const MAX_DEAD_ACTORS: usize = 10_000;

impl ActorTable {
    /// A table holding recovered records (alive and dead), persisting changes to `store`.
    pub fn restore(mut records: Vec<ActorRecord>, store: Rows) -> Self {
        records.sort_by_key(|record| record.info.actor_id);
        let mut table = Self { store, ..Self::default() };
        for record in records {
            if record.state == Dead {
                table.dead.push_back(record);
            } else {
                if let Some(name) = &record.info.name {
                    table.names.insert((record.info.namespace.clone(), name.clone()), record.info.actor_id);
                }
                table.actors.insert(record.info.actor_id, record);
            }
        }
        table
    }

    fn persist(&self, actor_id: ActorId) {
        if let Some(record) = self.actors.get(&actor_id) {
            self.store.put(actor_id.to_string(), record);
        }
    }

    /// Records an actor; when its name is taken, returns the holder instead.
    /// An actor id already known (alive, restarting or dead) is refused: a
    /// registration never replaces an actor.
    pub fn register(
        &mut self,
        info: ActorInfo,
        restart: Option<Box<ActorRestartSpec>>,
    ) -> Result<Option<ActorInfo>, WireError> {
        if self.actors.contains_key(&info.actor_id) || self.dead.iter().any(|row| row.info.actor_id == info.actor_id) {
            return Err(WireError::new(
                ErrorCode::PermissionDenied,
                format!("actor {} is already registered; RegisterActor never replaces an actor", info.actor_id),
            ));
        }
        if let Some(name) = &info.name {
            let key = (info.namespace.clone(), name.clone());
            if let Some(holder) = self.names.get(&key).and_then(|actor_id| self.actors.get(actor_id)) {
                return Ok(Some(holder.info.clone()));
            }
            self.names.insert(key, info.actor_id);
        }
        let actor_id = info.actor_id;
        let record = ActorRecord { info, state: Alive, death_cause: None, num_restarts: 0, restart };
        self.actors.insert(actor_id, record);
        self.persist(actor_id);
        Ok(None)
    }

    /// The actor named `name` in `namespace` (alive or restarting).
    pub fn named(&self, namespace: &str, name: &str) -> Option<ActorInfo> {
        let actor_id = self.names.get(&(namespace.to_string(), name.to_string()))?;
        self.actors.get(actor_id).map(|record| record.info.clone())
    }

    /// An actor's record, dead ones included (without its restart spec).
    pub fn get(&self, actor_id: ActorId) -> Option<ActorRecord> {
        let record = self.actors.get(&actor_id).or_else(|| self.dead.iter().find(|row| row.info.actor_id == actor_id));
        record.map(|record| ActorRecord { restart: None, ..record.clone() })
    }

    /// Forgets an actor, frees its name, and keeps it in the dead history;
    /// returns where it lived when it was alive.
    pub fn remove(&mut self, actor_id: ActorId, cause: &str) -> Option<ActorInfo> {
        let mut record = self.actors.remove(&actor_id)?;
        let was_alive = (record.state == Alive).then(|| record.info.clone());
        if let Some(name) = &record.info.name {
            self.names.remove(&(record.info.namespace.clone(), name.clone()));
        }
        record.state = Dead;
        record.death_cause = Some(cause.to_string());
        record.restart = None;
        self.store.put(actor_id.to_string(), &record);
        self.dead.push_back(record);
        while self.dead.len() > MAX_DEAD_ACTORS {
            if let Some(old) = self.dead.pop_front() {
                self.dropped += 1;
                self.store.delete(old.info.actor_id.to_string());
            }
        }
        was_alive
    }

    /// The actor's process died: returns what to restart it with while its
    /// budget lasts (the record goes `RESTARTING`), else records it dead.
    pub fn process_died(&mut self, actor_id: ActorId, worker: Option<WorkerId>, cause: &str) -> Option<ActorRecord> {
        let record = self.actors.get_mut(&actor_id)?;
        if record.state != Alive || worker.is_some_and(|worker| worker != record.info.worker.worker_id) {
            return None;
        }
        let budget = record.restart.as_ref().map(|restart| restart.spec.max_restarts).unwrap_or(0);
        if budget >= 0 && record.num_restarts as i64 >= budget as i64 {
            let cause = match budget {
                0 => format!("{cause}; the actor has no restarts (max_restarts = 0)"),
                _ => format!("{cause}; it was restarted {} times, its max_restarts", record.num_restarts),
            };
            let _ = self.remove(actor_id, &cause);
            return None;
        }
        record.state = Restarting;
        record.num_restarts += 1;
        record.death_cause = Some(cause.to_string());
        let restarting = record.clone();
        self.persist(actor_id);
        Some(restarting)
    }

    /// The actor panicked in its process: one restart more spent, or dead with `cause`.
    pub fn panicked(&mut self, actor_id: ActorId, restarted: bool, cause: &str) {
        if !restarted {
            let _ = self.remove(actor_id, cause);
            return;
        }
        if let Some(record) = self.actors.get_mut(&actor_id) {
            record.num_restarts += 1;
            self.persist(actor_id);
        }
    }

    /// Actors alive on `node_id`.
    pub fn on_node(&self, node_id: NodeId) -> Vec<ActorId> {
        let here = |record: &&ActorRecord| record.state == Alive && record.info.worker.node_id == node_id;
        self.actors.values().filter(here).map(|record| record.info.actor_id).collect()
    }

    /// A restart finished: the actor lives at `info`'s address.
    pub fn restarted(&mut self, info: ActorInfo) -> bool {
        let Some(record) = self.actors.get_mut(&info.actor_id).filter(|record| record.state == Restarting) else {
            return false;
        };
        record.info.worker = info.worker;
        record.info.node_address = info.node_address;
        record.state = Alive;
        self.persist(info.actor_id);
        true
    }

    /// True while `actor_id` waits for a restart.
    pub fn is_restarting(&self, actor_id: ActorId) -> bool {
        self.actors.get(&actor_id).is_some_and(|record| record.state == Restarting)
    }

    /// The page `query` selects: alive and restarting actors (by id), then the
    /// dead ones, newest first.
    pub fn query(&self, query: &StateQuery) -> ListStateReply {
        let mut live: Vec<&ActorRecord> = self.actors.values().collect();
        live.sort_by_key(|record| record.info.actor_id);
        let rows = live.into_iter().chain(self.dead.iter().rev());
        let page = query.page(rows, self.actors.len() + self.dead.len());
        ListStateReply {
            rows: StateRows::Actors(page.rows.into_iter().map(|row| ActorRecord { restart: None, ..row }).collect()),
            total: page.total,
            matched: page.matched,
            dropped: self.dropped,
            counts: self.count_by_state(),
            completed_total: 0,
        }
    }

    /// Actors per state (for the `manta_actors` gauge); dead ones as kept in the history.
    pub fn count_by_state(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts =
            std::collections::BTreeMap::from([(Alive.as_str().to_string(), 0), (Restarting.as_str().to_string(), 0)]);
        for record in self.actors.values() {
            *counts.entry(record.state.as_str().to_string()).or_default() += 1;
        }
        counts.insert(Dead.as_str().to_string(), self.dead.len());
        counts
    }

    /// True when `job_id` has a detached actor that is not dead.
    pub fn has_live_detached(&self, job_id: JobId) -> bool {
        self.actors.values().any(|record| record.info.job_id == job_id && record.info.detached)
    }

    /// Forgets the non-detached actors of `job_id`.
    pub fn job_finished(&mut self, job_id: JobId) {
        let doomed: Vec<ActorId> = self
            .actors
            .values()
            .filter(|record| record.info.job_id == job_id && !record.info.detached)
            .map(|record| record.info.actor_id)
            .collect();
        for actor_id in doomed {
            let _ = self.remove(actor_id, "its job finished");
        }
    }
}

/// The directory actor. Its tables are the shared [`ActorTable`].
#[derive(Debug, Default)]
pub struct ActorDirectory;

/// Messages to the [`ActorDirectory`].
#[derive(Debug)]
pub enum DirectoryMsg {
    /// Record an actor; replies with the name's holder when taken.
    Register(ActorInfo, Option<Box<ActorRestartSpec>>, RpcReplyPort<Result<Option<ActorInfo>, WireError>>),
    /// Look up a name.
    Named(String, String, RpcReplyPort<Option<ActorInfo>>),
    /// Look up an id.
    Get(ActorId, RpcReplyPort<Option<ActorRecord>>),
    /// Forget an actor and end its process; answered once the process's node took the kill.
    Remove(ActorId, RpcReplyPort<()>),
    /// A job ended.
    JobFinished(JobId),
    /// A page of alive and recently dead actors.
    Query(StateQuery, RpcReplyPort<ListStateReply>),
    /// A node says an actor's worker process exited.
    WorkerDied(ActorWorkerDiedEvent),
    /// A node was declared dead: its actors' processes are gone.
    NodeDead(NodeId),
    /// An actor panicked in its process.
    Panicked(manta_proto::task::ActorPanickedEvent),
    /// A restart placed the actor at this address.
    Restarted(ActorInfo),
    /// A restart cannot succeed (its constructor failed): the actor is dead.
    RestartFailed(ActorId, String),
}

/// Start-up arguments and state of the [`ActorDirectory`].
pub struct DirectoryArgs {
    pub(crate) table: Shared<ActorTable>,
    /// Links of alive nodes, to lease workers for restarts.
    pub(crate) links: Shared<HashMap<NodeId, PeerHandle>>,
    /// How the GCS dials a worker to construct a restarted actor.
    pub(crate) net: Arc<NetConfig>,
}

/// Ends the process a removed actor lived in, through its node's link.
fn kill_worker(links: &Shared<HashMap<NodeId, PeerHandle>>, info: ActorInfo, done: RpcReplyPort<()>) {
    let Some(node) = links.lock().get(&info.worker.node_id).cloned() else {
        let _ = done.send(());
        return;
    };
    tokio::spawn(async move {
        let kill = KillWorkerRequest {
            worker_id: info.worker.worker_id,
            reason: format!("actor {} was killed", info.actor_id),
        };
        if let Err(error) = NodeClient::new(node, std::time::Duration::from_secs(10)).call(kill).await {
            tracing::debug!(actor_id = %info.actor_id, %error, "could not end the killed actor's process");
        }
        let _ = done.send(());
    });
}

impl Actor for ActorDirectory {
    type Msg = DirectoryMsg;
    type State = DirectoryArgs;
    type Arguments = DirectoryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DirectoryMsg>,
        args: DirectoryArgs,
    ) -> Result<DirectoryArgs, ActorProcessingErr> {
        // Restarts interrupted by a restart of this actor (or of the head) start again.
        let pending: Vec<ActorRecord> = {
            let table = args.table.lock();
            table.actors.values().filter(|record| record.state == Restarting).cloned().collect()
        };
        for record in pending {
            crate::actor_restart::spawn(&myself, &args, record);
        }
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<DirectoryMsg>,
        message: DirectoryMsg,
        state: &mut DirectoryArgs,
    ) -> Result<(), ActorProcessingErr> {
        let mut table = state.table.lock();
        let mut restarts = Vec::new();
        match message {
            DirectoryMsg::Register(info, restart, reply) => {
                let _ = reply.send(table.register(info, restart));
            }
            DirectoryMsg::Named(namespace, name, reply) => {
                let _ = reply.send(table.named(&namespace, &name));
            }
            DirectoryMsg::Get(actor_id, reply) => {
                let _ = reply.send(table.get(actor_id));
            }
            DirectoryMsg::Remove(actor_id, reply) => {
                // The GCS ends the process itself: a node takes a kill only from the
                // lease's holder or the GCS, and whoever kills may hold neither.
                match table.remove(actor_id, "killed (manta::kill, or its last handle was dropped)") {
                    Some(info) => kill_worker(&state.links, info, reply),
                    None => {
                        let _ = reply.send(());
                    }
                }
            }
            DirectoryMsg::Query(query, reply) => {
                let _ = reply.send(table.query(&query));
            }
            DirectoryMsg::JobFinished(job_id) => table.job_finished(job_id),
            DirectoryMsg::WorkerDied(event) => {
                restarts.extend(table.process_died(event.actor_id, Some(event.worker_id), &event.reason));
            }
            DirectoryMsg::NodeDead(node_id) => {
                for actor_id in table.on_node(node_id) {
                    let cause = format!("its node {node_id} died");
                    restarts.extend(table.process_died(actor_id, None, &cause));
                }
            }
            DirectoryMsg::Panicked(event) => table.panicked(event.actor_id, event.restarted, &event.cause),
            DirectoryMsg::Restarted(info) => {
                let actor_id = info.actor_id;
                if table.restarted(info) {
                    info!(%actor_id, "actor restarted");
                }
            }
            DirectoryMsg::RestartFailed(actor_id, cause) => {
                warn!(%actor_id, %cause, "actor restart failed; it is dead");
                let _ = table.remove(actor_id, &cause);
            }
        }
        drop(table);
        for record in restarts {
            info!(actor_id = %record.info.actor_id, restart = record.num_restarts, "restarting actor");
            crate::actor_restart::spawn(&myself, state, record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::task::WorkerAddress;

    use super::*;

    fn info(name: Option<&str>, job: u32, detached: bool) -> ActorInfo {
        ActorInfo {
            actor_id: ActorId::random(),
            class: "Counter".into(),
            language: Default::default(),
            name: name.map(String::from),
            namespace: "ns".into(),
            job_id: JobId::from_counter(job),
            detached,
            worker: WorkerAddress { worker_id: WorkerId::random(), address: "a".into(), node_id: NodeId::random() },
            node_address: "n".into(),
            max_task_retries: 0,
        }
    }

    #[test]
    fn names_are_unique_per_namespace_and_freed_on_removal() {
        let mut table = ActorTable::default();
        let first = info(Some("counter"), 1, false);
        assert!(table.register(first.clone(), None).unwrap().is_none());
        let clash = info(Some("counter"), 1, false);
        assert_eq!(table.register(clash, None).unwrap().unwrap().actor_id, first.actor_id);
        let mut elsewhere = info(Some("counter"), 1, false);
        elsewhere.namespace = "other".into();
        assert!(table.register(elsewhere, None).unwrap().is_none());
        let _ = table.remove(first.actor_id, "killed");
        assert!(table.named("ns", "counter").is_none());
        let StateRows::Actors(rows) = table.query(&StateQuery::newest(10)).rows else { panic!("actors") };
        assert!(rows.iter().any(|row| row.info.actor_id == first.actor_id && row.state == Dead));
        assert!(table.register(info(Some("counter"), 1, false), None).unwrap().is_none());
    }

    #[test]
    fn job_end_keeps_detached_actors() {
        let mut table = ActorTable::default();
        table.register(info(Some("plain"), 1, false), None).unwrap();
        table.register(info(Some("kept"), 1, true), None).unwrap();
        table.register(info(Some("other-job"), 2, false), None).unwrap();
        table.job_finished(JobId::from_counter(1));
        assert!(table.named("ns", "plain").is_none());
        assert!(table.named("ns", "kept").is_some());
        assert!(table.named("ns", "other-job").is_some());
    }

    fn restart_spec(info: &ActorInfo, max_restarts: i32) -> ActorRestartSpec {
        use manta_proto::task::{ActorSpec, JobConfig, RequestWorkerLeaseRequest};
        let job =
            JobConfig { job_id: info.job_id, namespace: "ns".into(), executable: "x".into(), gcs_address: "g".into() };
        ActorRestartSpec {
            spec: ActorSpec {
                actor_id: info.actor_id,
                job_id: info.job_id,
                class: "C".into(),
                language: Default::default(),
                args: Vec::new(),
                max_restarts,
                max_concurrency: 1,
                name: None,
                namespace: "ns".into(),
                detached: false,
                runtime_env: Default::default(),
                owner: info.worker.clone(),
                restarts_used: 0,
            },
            lease: RequestWorkerLeaseRequest {
                strategy: Default::default(),
                job,
                resources: Default::default(),
                runtime_env: Default::default(),
                actor: Some(info.actor_id),
                detached: false,
                allow_spill: true,
                placement: None,
                backlog: 0,
                language: Default::default(),
            },
        }
    }

    #[test]
    fn a_dead_process_restarts_the_actor_until_its_budget_is_spent() {
        let mut table = ActorTable::default();
        let actor = info(Some("kept"), 1, false);
        table.register(actor.clone(), Some(Box::new(restart_spec(&actor, 2)))).unwrap();
        let first = table.process_died(actor.actor_id, Some(actor.worker.worker_id), "exit 9").expect("restart 1");
        assert_eq!((first.num_restarts, first.state), (1, Restarting));
        assert!(table.named("ns", "kept").is_some(), "the name stays while it restarts");
        assert!(table.process_died(actor.actor_id, None, "again").is_none(), "no second restart while restarting");
        let mut moved = actor.clone();
        moved.worker.worker_id = WorkerId::random();
        assert!(table.restarted(moved.clone()));
        assert!(
            table.process_died(actor.actor_id, Some(actor.worker.worker_id), "stale").is_none(),
            "a report about the old process changes nothing"
        );
        assert!(table.process_died(actor.actor_id, Some(moved.worker.worker_id), "exit 9").is_some());
        moved.worker.worker_id = WorkerId::random();
        table.restarted(moved.clone());
        assert!(table.process_died(actor.actor_id, Some(moved.worker.worker_id), "exit 9").is_none());
        let record = table.get(actor.actor_id).unwrap();
        assert_eq!(record.state, Dead);
        assert!(record.death_cause.unwrap().contains("restarted 2 times"));
        assert!(table.named("ns", "kept").is_none());
    }

    #[test]
    fn panic_restarts_count_against_the_same_budget() {
        let mut table = ActorTable::default();
        let actor = info(None, 1, false);
        table.register(actor.clone(), Some(Box::new(restart_spec(&actor, 2)))).unwrap();
        table.panicked(actor.actor_id, true, "panicked");
        let restarted = table.process_died(actor.actor_id, Some(actor.worker.worker_id), "exit 9").unwrap();
        assert_eq!(restarted.num_restarts, 2, "the panic restart counted");
        let mut moved = actor.clone();
        moved.worker.worker_id = WorkerId::random();
        table.restarted(moved);
        table.panicked(actor.actor_id, false, "panicked with no restarts left");
        assert_eq!(table.get(actor.actor_id).unwrap().death_cause.as_deref(), Some("panicked with no restarts left"));
    }

    #[test]
    fn a_registration_never_replaces_an_actor() {
        let mut table = ActorTable::default();
        let first = info(None, 1, false);
        table.register(first.clone(), None).unwrap();
        let impostor = ActorInfo { class: "Impostor".into(), ..first.clone() };
        let refused = table.register(impostor, None).unwrap_err();
        assert_eq!(refused.code, ErrorCode::PermissionDenied);
        assert_eq!(table.get(first.actor_id).unwrap().info.class, "Counter", "the actor is unchanged");
        let _ = table.remove(first.actor_id, "killed");
        assert!(table.register(first.clone(), None).is_err(), "nor brings a dead one back");
    }
}
