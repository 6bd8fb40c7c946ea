//! [`ActorDirectory`]: where each actor lives, and which names are taken.
//!
//! Actors are created by their owner (the caller of `Class::remote`), which
//! records them here; the directory answers name lookups and forgets the
//! non-detached actors of a finished job.

use std::collections::HashMap;

use manta_proto::task::{ActorInfo, ActorRecord};
use manta_proto::{ActorId, JobId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::Shared;
use crate::storage::Rows;

/// Actors by id and by (namespace, name).
#[derive(Debug, Default)]
pub struct ActorTable {
    actors: HashMap<ActorId, ActorInfo>,
    names: HashMap<(String, String), ActorId>,
    dead: std::collections::VecDeque<ActorRecord>,
    store: Rows,
}

/// Dead actors kept for `manta list actors`.
const MAX_DEAD_ACTORS: usize = 1000;

impl ActorTable {
    /// A table holding recovered records (alive and dead), persisting changes to `store`.
    pub fn restore(mut records: Vec<ActorRecord>, store: Rows) -> Self {
        records.sort_by_key(|record| record.info.actor_id);
        let mut table = Self { store, ..Self::default() };
        for record in records {
            if record.state == "DEAD" {
                table.dead.push_back(record);
            } else {
                if let Some(name) = &record.info.name {
                    table.names.insert((record.info.namespace.clone(), name.clone()), record.info.actor_id);
                }
                table.actors.insert(record.info.actor_id, record.info);
            }
        }
        table
    }

    /// Records an actor; when its name is taken, returns the holder instead.
    pub fn register(&mut self, info: ActorInfo) -> Option<ActorInfo> {
        if let Some(name) = &info.name {
            let key = (info.namespace.clone(), name.clone());
            if let Some(holder) = self.names.get(&key).and_then(|actor_id| self.actors.get(actor_id)) {
                return Some(holder.clone());
            }
            self.names.insert(key, info.actor_id);
        }
        let record = ActorRecord { info, state: "ALIVE".into(), death_cause: None };
        self.store.put(record.info.actor_id.to_string(), &record);
        self.actors.insert(record.info.actor_id, record.info);
        None
    }

    /// The actor named `name` in `namespace`.
    pub fn named(&self, namespace: &str, name: &str) -> Option<ActorInfo> {
        let actor_id = self.names.get(&(namespace.to_string(), name.to_string()))?;
        self.actors.get(actor_id).cloned()
    }

    /// Forgets an actor, frees its name, and keeps it in the dead history.
    pub fn remove(&mut self, actor_id: ActorId, cause: &str) {
        let Some(info) = self.actors.remove(&actor_id) else { return };
        if let Some(name) = &info.name {
            self.names.remove(&(info.namespace.clone(), name.clone()));
        }
        let record = ActorRecord { info, state: "DEAD".into(), death_cause: Some(cause.to_string()) };
        self.store.put(record.info.actor_id.to_string(), &record);
        self.dead.push_back(record);
        while self.dead.len() > MAX_DEAD_ACTORS {
            if let Some(old) = self.dead.pop_front() {
                self.store.delete(old.info.actor_id.to_string());
            }
        }
    }

    /// Alive actors, then the newest dead ones, at most `limit` rows.
    pub fn list(&self, limit: usize) -> Vec<ActorRecord> {
        let mut rows: Vec<ActorRecord> = self
            .actors
            .values()
            .map(|info| ActorRecord { info: info.clone(), state: "ALIVE".into(), death_cause: None })
            .collect();
        rows.sort_by_key(|row| row.info.actor_id);
        rows.extend(self.dead.iter().rev().cloned());
        rows.truncate(limit);
        rows
    }

    /// Forgets the non-detached actors of `job_id`.
    pub fn job_finished(&mut self, job_id: JobId) {
        let doomed: Vec<ActorId> = self
            .actors
            .values()
            .filter(|info| info.job_id == job_id && !info.detached)
            .map(|info| info.actor_id)
            .collect();
        for actor_id in doomed {
            self.remove(actor_id, "its job finished");
        }
    }
}

/// The directory actor. Stateless; its state is the shared [`ActorTable`].
#[derive(Debug, Default)]
pub struct ActorDirectory;

/// Messages to the [`ActorDirectory`].
#[derive(Debug)]
pub enum DirectoryMsg {
    /// Record an actor; replies with the name's holder when taken.
    Register(ActorInfo, RpcReplyPort<Option<ActorInfo>>),
    /// Look up a name.
    Named(String, String, RpcReplyPort<Option<ActorInfo>>),
    /// Forget an actor.
    Remove(ActorId),
    /// A job ended.
    JobFinished(JobId),
    /// Alive and recently dead actors, at most `usize`.
    List(usize, RpcReplyPort<Vec<ActorRecord>>),
}

impl Actor for ActorDirectory {
    type Msg = DirectoryMsg;
    type State = Shared<ActorTable>;
    type Arguments = Shared<ActorTable>;

    async fn pre_start(
        &self,
        _myself: ActorRef<DirectoryMsg>,
        table: Shared<ActorTable>,
    ) -> Result<Shared<ActorTable>, ActorProcessingErr> {
        Ok(table)
    }

    async fn handle(
        &self,
        _myself: ActorRef<DirectoryMsg>,
        message: DirectoryMsg,
        table: &mut Shared<ActorTable>,
    ) -> Result<(), ActorProcessingErr> {
        let mut table = table.lock().expect("actor table lock");
        match message {
            DirectoryMsg::Register(info, reply) => {
                let _ = reply.send(table.register(info));
            }
            DirectoryMsg::Named(namespace, name, reply) => {
                let _ = reply.send(table.named(&namespace, &name));
            }
            DirectoryMsg::Remove(actor_id) => {
                table.remove(actor_id, "killed (manta::kill, or its last handle was dropped)")
            }
            DirectoryMsg::List(limit, reply) => {
                let _ = reply.send(table.list(limit));
            }
            DirectoryMsg::JobFinished(job_id) => table.job_finished(job_id),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use manta_proto::task::WorkerAddress;
    use manta_proto::{NodeId, WorkerId};

    use super::*;

    fn info(name: Option<&str>, job: u32, detached: bool) -> ActorInfo {
        ActorInfo {
            actor_id: ActorId::random(),
            class: "Counter".into(),
            name: name.map(String::from),
            namespace: "ns".into(),
            job_id: JobId::from_counter(job),
            detached,
            worker: WorkerAddress { worker_id: WorkerId::random(), address: "a".into(), node_id: NodeId::random() },
            node_address: "n".into(),
        }
    }

    #[test]
    fn names_are_unique_per_namespace_and_freed_on_removal() {
        let mut table = ActorTable::default();
        let first = info(Some("counter"), 1, false);
        assert!(table.register(first.clone()).is_none());
        let clash = info(Some("counter"), 1, false);
        assert_eq!(table.register(clash).unwrap().actor_id, first.actor_id);
        let mut elsewhere = info(Some("counter"), 1, false);
        elsewhere.namespace = "other".into();
        assert!(table.register(elsewhere).is_none());
        table.remove(first.actor_id, "killed");
        assert!(table.named("ns", "counter").is_none());
        let rows = table.list(10);
        assert!(rows.iter().any(|row| row.info.actor_id == first.actor_id && row.state == "DEAD"));
        assert!(table.register(info(Some("counter"), 1, false)).is_none());
    }

    #[test]
    fn job_end_keeps_detached_actors() {
        let mut table = ActorTable::default();
        table.register(info(Some("plain"), 1, false));
        table.register(info(Some("kept"), 1, true));
        table.register(info(Some("other-job"), 2, false));
        table.job_finished(JobId::from_counter(1));
        assert!(table.named("ns", "plain").is_none());
        assert!(table.named("ns", "kept").is_some());
        assert!(table.named("ns", "other-job").is_some());
    }
}
