//! [`NodeSupervisor`]: the root actor of a node process.
//!
//! ```text
//! NodeSupervisor
//!  ├─ GcsSupervisor (head only) ── NodeManager, HealthChecker, ResourceManager, KvStore, Pubsub
//!  ├─ Listener (GCS port, head only) ── PeerActor per client
//!  ├─ Listener (node port) ── PeerActor per client
//!  ├─ PeerActor (link to the GCS, reconnecting)
//!  └─ Raylet
//! ```
//!
//! A child that fails or stops on its own ends the node (exit status 1, with
//! the reason logged): a node never runs half-alive. Finer restart policies per
//! child come with fault tolerance.

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::error;

/// The node's root actor. Stateless.
#[derive(Debug, Default)]
pub struct NodeSupervisor;

/// The supervisor takes no messages of its own.
#[derive(Debug)]
pub enum NodeSupervisorMsg {}

impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<NodeSupervisorMsg>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<NodeSupervisorMsg>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let reason = match event {
            SupervisionEvent::ActorFailed(actor, failure) => format!("component {} failed: {failure}", actor.get_id()),
            SupervisionEvent::ActorTerminated(actor, _, reason) => {
                format!("component {} stopped: {}", actor.get_id(), reason.unwrap_or_else(|| "no reason given".into()))
            }
            _ => return Ok(()),
        };
        error!(%reason, "node component ended; stopping the node");
        Err(reason.into())
    }
}
