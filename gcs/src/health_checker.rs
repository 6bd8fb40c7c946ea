//! [`HealthChecker`]: checks every alive node with a deadline and reports the
//! ones that miss too many checks in a row.
//!
//! Checks are requests that bypass the link's credits, so they never queue
//! behind bulk traffic. At most one check per node is in flight; a check that
//! has not answered by its deadline counts as a failure. A loaded but live node
//! must miss `threshold` consecutive checks to be declared dead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use manta_proto::NodeId;
use manta_proto::net::{LinkId, PeerHandle};
use manta_proto::node::HealthCheckRequest;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::node_manager::NodeManagerMsg;
use crate::{GcsConfig, GcsRefs};

/// Consecutive failures of one node: the pure part of the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthRecord {
    consecutive_failures: u32,
    last_error: String,
}

impl HealthRecord {
    /// Records a passed check.
    pub fn passed(&mut self) {
        self.consecutive_failures = 0;
        self.last_error.clear();
    }

    /// Records a failed check; true when the node should now be declared dead.
    pub fn failed(&mut self, error: String, threshold: u32) -> bool {
        self.consecutive_failures += 1;
        self.last_error = error;
        self.consecutive_failures >= threshold
    }

    /// Why the node is being declared dead.
    pub fn death_reason(&self, period: Duration) -> String {
        format!(
            "missed {} health checks in a row (every {} ms); last error: {}",
            self.consecutive_failures,
            period.as_millis(),
            self.last_error
        )
    }
}

/// The health checker actor. Stateless; see [`HealthState`].
#[derive(Debug, Default)]
pub struct HealthChecker;

/// Messages to the [`HealthChecker`].
#[derive(Debug)]
pub enum HealthMsg {
    /// Start (or restart, with a new link) checking a node.
    Watch(NodeId, PeerHandle),
    /// Stop checking a node.
    Unwatch(NodeId),
    /// Timer: send the checks that are due.
    Tick,
    /// A check finished; `link` says which watch it belongs to.
    CheckDone(NodeId, LinkId, Result<(), String>),
}

struct Watched {
    peer: PeerHandle,
    record: HealthRecord,
    in_flight: bool,
}

/// Start-up arguments of the [`HealthChecker`].
pub struct HealthArgs {
    pub(crate) config: GcsConfig,
    pub(crate) refs: Arc<GcsRefs>,
}

/// State of the [`HealthChecker`].
pub struct HealthState {
    config: GcsConfig,
    refs: Arc<GcsRefs>,
    watched: HashMap<NodeId, Watched>,
    ticker: JoinHandle<()>,
}

impl Drop for HealthState {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

impl Actor for HealthChecker {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = HealthArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        args: HealthArgs,
    ) -> Result<HealthState, ActorProcessingErr> {
        let ticker = myself.send_interval(args.config.health_check_period, || HealthMsg::Tick);
        Ok(HealthState { config: args.config, refs: args.refs, watched: HashMap::new(), ticker })
    }

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        message: HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HealthMsg::Watch(node_id, peer) => {
                state.watched.insert(node_id, Watched { peer, record: HealthRecord::default(), in_flight: false });
            }
            HealthMsg::Unwatch(node_id) => {
                state.watched.remove(&node_id);
            }
            HealthMsg::Tick => {
                for (node_id, watched) in state.watched.iter_mut().filter(|(_, watched)| !watched.in_flight) {
                    watched.in_flight = true;
                    spawn_check(&myself, *node_id, watched.peer.clone(), state.config.health_check_timeout);
                }
            }
            HealthMsg::CheckDone(node_id, link_id, outcome) => {
                let Some(watched) = state.watched.get_mut(&node_id) else {
                    return Ok(());
                };
                if watched.peer.id() != link_id {
                    return Ok(()); // a check of a link that has since been replaced
                }
                watched.in_flight = false;
                match outcome {
                    Ok(()) => watched.record.passed(),
                    Err(error) => {
                        debug!(%node_id, %error, "health check failed");
                        if watched.record.failed(error, state.config.health_check_failure_threshold) {
                            let reason = watched.record.death_reason(state.config.health_check_period);
                            state.watched.remove(&node_id);
                            if let Ok(node_manager) = state.refs.node_manager() {
                                let _ = node_manager.cast(NodeManagerMsg::MarkDead(node_id, reason));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn spawn_check(myself: &ActorRef<HealthMsg>, node_id: NodeId, peer: PeerHandle, timeout: Duration) {
    let myself = myself.clone();
    tokio::spawn(async move {
        let outcome = match peer.rpc_priority(HealthCheckRequest { node_id }, timeout).await {
            Ok(reply) if reply.node_id == node_id => Ok(()),
            Ok(reply) => Err(format!("the node now answers as {}", reply.node_id)),
            Err(error) => Err(error.to_string()),
        };
        let _ = myself.cast(HealthMsg::CheckDone(node_id, peer.id(), outcome));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_consecutive_failures() {
        let mut record = HealthRecord::default();
        assert!(!record.failed("timeout".into(), 3));
        assert!(!record.failed("timeout".into(), 3));
        record.passed();
        assert!(!record.failed("timeout".into(), 3));
        assert!(!record.failed("timeout".into(), 3));
        assert!(record.failed("connection lost".into(), 3));
        let reason = record.death_reason(Duration::from_millis(500));
        assert!(reason.contains("missed 3 health checks"), "{reason}");
        assert!(reason.contains("connection lost"), "{reason}");
    }
}
