//! [`NodeSupervisor`]: the root actor of a node process.
//!
//! ```text
//! NodeSupervisor
//!  ├─ GcsSupervisor (head only) ── NodeManager, HealthChecker, ResourceManager, KvStore, Pubsub, ...
//!  ├─ Listener (GCS port, head only) ── PeerActor per client
//!  ├─ Listener (node port) ── PeerActor per client
//!  ├─ PeerActor (link to the GCS, reconnecting)
//!  ├─ LogMonitor (an agent: restarted)
//!  ├─ ObjectStoreActor
//!  └─ Raylet
//! ```
//!
//! Agents (adopted with [`NodeSupervisorMsg::Adopt`]) are restarted under the
//! shared [`RestartPolicy`] (at most 5 restarts a minute, with backoff); one that
//! fails more often ends the node. Any other child that fails or stops on its
//! own ends the node (exit status 1, with the reason logged): a node never runs
//! half-alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_proto::net::BoxFuture;
use manta_proto::restart::{RestartDecision, RestartPolicy, RestartTracker};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tracing::{error, warn};

/// How agents are restarted.
pub const AGENT_RESTARTS: RestartPolicy = RestartPolicy::within(5, Duration::from_secs(60));

/// Starts an agent again, linked to the given supervisor; returns its cell.
pub type Respawn = Arc<dyn Fn(ActorCell) -> BoxFuture<Result<ActorCell, SpawnErr>> + Send + Sync + 'static>;

/// An agent the node restarts when it fails.
pub struct Agent {
    /// For logs.
    pub name: &'static str,
    /// How to start it again.
    pub respawn: Respawn,
}

/// The node's root actor.
#[derive(Debug, Default)]
pub struct NodeSupervisor;

/// Messages to the [`NodeSupervisor`].
pub enum NodeSupervisorMsg {
    /// Restart this child (an agent) when it fails, instead of ending the node.
    Adopt(ActorId, Agent),
}

impl std::fmt::Debug for NodeSupervisorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeSupervisorMsg::Adopt(id, agent) => write!(f, "Adopt({id}, {})", agent.name),
        }
    }
}

/// The agents by their current actor id, and their failure history.
#[derive(Default)]
pub struct NodeSupervisorState {
    agents: HashMap<ActorId, (Agent, RestartTracker)>,
}

impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeSupervisorMsg>,
        _args: (),
    ) -> Result<NodeSupervisorState, ActorProcessingErr> {
        Ok(NodeSupervisorState::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeSupervisorMsg>,
        message: NodeSupervisorMsg,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let NodeSupervisorMsg::Adopt(id, agent) = message;
        state.agents.insert(id, (agent, RestartTracker::new(AGENT_RESTARTS)));
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (actor, reason) = match event {
            SupervisionEvent::ActorFailed(actor, failure) => (actor.get_id(), format!("failed: {failure}")),
            SupervisionEvent::ActorTerminated(actor, _, reason) => {
                (actor.get_id(), format!("stopped: {}", reason.unwrap_or_else(|| "no reason given".into())))
            }
            _ => return Ok(()),
        };
        let Some((agent, mut tracker)) = state.agents.remove(&actor) else {
            let reason = format!("component {actor} {reason}");
            error!(%reason, "node component ended; stopping the node");
            return Err(reason.into());
        };
        match tracker.on_failure(Instant::now()) {
            RestartDecision::Restart { after, attempt } => {
                warn!(agent = agent.name, %reason, attempt, ?after, "agent ended; restarting it");
                tokio::time::sleep(after).await;
                let cell = (agent.respawn)(myself.get_cell()).await?;
                state.agents.insert(cell.get_id(), (agent, tracker));
                Ok(())
            }
            RestartDecision::GiveUp { restarts } => {
                let reason = format!("agent {} {reason}, after {restarts} restarts within a minute", agent.name);
                error!(%reason, "stopping the node");
                Err(reason.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An agent that fails on any message.
    struct Fragile;

    impl Actor for Fragile {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _myself: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(&self, _myself: ActorRef<()>, _message: (), _state: &mut ()) -> Result<(), ActorProcessingErr> {
            Err("the agent crashed".into())
        }
    }

    #[tokio::test]
    async fn a_crashed_agent_is_restarted_until_the_policy_gives_up() {
        let (supervisor, done) = Actor::spawn(None, NodeSupervisor, ()).await.unwrap();
        let current = Arc::new(std::sync::Mutex::new(None::<ActorRef<()>>));
        let starts = Arc::new(AtomicUsize::new(0));
        let (first, _) = Actor::spawn_linked(None, Fragile, (), supervisor.get_cell()).await.unwrap();
        *current.lock().unwrap() = Some(first.clone());
        let (slot, count) = (current.clone(), starts.clone());
        let respawn: Respawn = Arc::new(move |parent| {
            let (slot, count) = (slot.clone(), count.clone());
            Box::pin(async move {
                let (agent, _) = Actor::spawn_linked(None, Fragile, (), parent).await?;
                count.fetch_add(1, Ordering::SeqCst);
                *slot.lock().unwrap() = Some(agent.clone());
                Ok(agent.get_cell())
            })
        });
        supervisor.cast(NodeSupervisorMsg::Adopt(first.get_id(), Agent { name: "fragile", respawn })).unwrap();
        for restart in 1..=AGENT_RESTARTS.max_restarts {
            let agent = current.lock().unwrap().clone().unwrap();
            agent.cast(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while starts.load(Ordering::SeqCst) < restart {
                assert!(Instant::now() < deadline, "restart {restart} did not happen");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // One failure more within the minute: the node supervisor gives up (the node would exit).
        current.lock().unwrap().clone().unwrap().cast(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), done).await.expect("the supervisor stops").unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), AGENT_RESTARTS.max_restarts);
    }
}
