//! The raylet's registration with the GCS: the node's current id (shared with
//! the health-check responder) and registering again after a reconnect, under
//! a fresh id when the GCS has declared the old one dead.

use std::sync::{Arc, RwLock};

use manta_proto::net::CallError;
use manta_proto::{ErrorCode, NodeId};
use tracing::{info, warn};

use super::report::{fence_window, gate_changed};
use super::{RAYLET_CHANNELS, RayletState, apply};

/// The node's current id, shared by the raylet and the health-check responder.
#[derive(Clone, Debug)]
pub struct NodeIdentity(Arc<RwLock<NodeId>>);

impl NodeIdentity {
    /// Starts as `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self(Arc::new(RwLock::new(node_id)))
    }

    /// The current id.
    pub fn get(&self) -> NodeId {
        *self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn set(&self, node_id: NodeId) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = node_id;
    }
}

/// Registers again after a reconnect. A fenced node takes a fresh id, so no
/// work ever runs under an identity the cluster has declared dead.
pub(super) async fn reregister(state: &mut RayletState, known_fenced: bool) {
    let mut fenced = known_fenced;
    for _attempt in 0..2 {
        if fenced {
            let old = state.identity.get();
            let new = NodeId::random();
            state.identity.set(new);
            warn!(%old, %new, "the GCS declared this node dead; rejoining as a new node");
            // Its actors may already run elsewhere: end them all, so none runs twice.
            let effects = state.ledger.fenced(new);
            // Every worker is being ended: none may see the gate open again.
            state.worker_links.clear();
            state.launcher.set_node_id(new);
            apply(state, effects);
        }
        let mut request = state.registration.clone();
        request.node_id = state.identity.get();
        request.resources_total = state.ledger.resources().total().clone();
        request.resources_available = state.ledger.resources().available().clone();
        let sent_at = std::time::Instant::now();
        match state.gcs.register_node(request).await {
            Ok(reply) => {
                // Alive in the GCS's table (and fenced first, if it had declared us dead).
                state.fence.set_after(fence_window(reply.fence_after_ms));
                state.fence.answered(sent_at);
                if let Some(open) = state.fence.check(std::time::Instant::now()) {
                    gate_changed(state, open);
                }
                info!(node_id = %reply.node.node_id, reattached = reply.reattached, "registered with the GCS");
                // The view held may be a dead GCS's; the GCS sends its own on subscribe.
                state.ledger.forget_view();
                state.last_reported = Some(state.ledger.resources().available().clone());
                if let Err(error) = state.gcs.subscribe(RAYLET_CHANNELS.to_vec()).await {
                    warn!(%error, "could not resubscribe to the GCS");
                }
                return;
            }
            Err(error) if error.code() == ErrorCode::NodeFenced => fenced = true,
            Err(error) => {
                log_registration_error(&error);
                return;
            }
        }
    }
}

fn log_registration_error(error: &CallError) {
    warn!(%error, "could not register with the GCS; will retry on the next reconnect");
}
