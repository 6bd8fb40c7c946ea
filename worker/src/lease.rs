//! Leasing a worker: ask the local raylet (or the node holding the task's
//! data), follow one spillback, and route around nodes that died under the
//! request until the cluster view drops them.

use std::sync::Arc;
use std::time::Duration;

use manta_proto::ActorId;
use manta_proto::client::NodeClient;
use manta_proto::net::CallError;
use manta_proto::net::PeerHandle;
use manta_proto::resources::ResourceSet;
use manta_proto::runtime_env::RuntimeEnvSpec;
use manta_proto::task::{CancelCause, LeaseOutcome, RequestWorkerLeaseRequest, SchedulingStrategy, WorkerAddress};
use tracing::debug;

use crate::core::Core;

/// Deadline of a lease request (it waits at the raylet for resources).
const LEASE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long lease requests route around a node that cannot be reached (until
/// the GCS declares it dead and the cluster view drops it).
const UNREACHABLE_NODE_PATIENCE: Duration = Duration::from_secs(60);
/// Pause before asking the local node again after an unreachable one.
const UNREACHABLE_NODE_PAUSE: Duration = Duration::from_millis(100);
/// What a lease is for.
pub(crate) struct LeaseAsk {
    /// Which kind of worker.
    pub language: manta_proto::task::Language,
    pub resources: ResourceSet,
    pub runtime_env: RuntimeEnvSpec,
    pub strategy: SchedulingStrategy,
    /// An actor's dedicated worker.
    pub actor: Option<ActorId>,
    pub detached: bool,
    /// Ask this node first instead of the local one (data locality).
    pub first_node: Option<String>,
    /// What placing needs, when more than `resources`.
    pub placement: Option<ResourceSet>,
    /// Tasks of this shape queued beyond the requests in flight.
    pub backlog: u32,
}

/// Why no worker was leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRefused {
    /// What the node (or the link) said.
    pub reason: String,
    /// A failed runtime env setup is reported as such, and never retried.
    pub cause: CancelCause,
}

impl From<String> for LeaseRefused {
    fn from(reason: String) -> Self {
        Self { reason, cause: CancelCause::Other }
    }
}

impl std::fmt::Display for LeaseRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl LeaseRefused {
    /// The failure kind a task or actor creation refused this way ends in.
    pub(crate) fn failure_kind(&self) -> manta_proto::task::FailureKind {
        match self.cause {
            CancelCause::RuntimeEnvSetupFailed => manta_proto::task::FailureKind::RuntimeEnvSetupFailed,
            CancelCause::Other => manta_proto::task::FailureKind::Unschedulable,
        }
    }
}

/// Leases a worker for `resources` (an actor's dedicated worker when `actor` is set).
/// Returns the worker, the raylet that granted it, and a link to the worker.
pub(crate) async fn request_lease(
    core: &Arc<Core>,
    ask: LeaseAsk,
) -> Result<(WorkerAddress, PeerHandle, PeerHandle, Vec<String>), LeaseRefused> {
    let LeaseAsk { language, resources, runtime_env, strategy, actor, detached, first_node, placement, backlog } = ask;
    let mut raylet = core.raylet.clone();
    if let Some(address) = first_node.filter(|address| *address != core.raylet_address)
        && let Ok(peer) = core.peers.get(&address).await
    {
        raylet = peer;
    }
    let mut allow_spill = true;
    let mut outcomes = Vec::new();
    // A node that dies under a lease request (or that we were spilled to) is
    // skipped: ask the local node again until the GCS has declared it dead.
    let unreachable_deadline = std::time::Instant::now() + UNREACHABLE_NODE_PATIENCE;
    let mut hops = 0;
    while hops < 8 {
        hops += 1;
        let request = RequestWorkerLeaseRequest {
            strategy: strategy.clone(),
            job: core.job.clone(),
            resources: resources.clone(),
            runtime_env: runtime_env.clone(),
            actor,
            detached,
            allow_spill,
            placement: placement.clone(),
            backlog,
            language,
        };
        match NodeClient::new(raylet.clone(), LEASE_TIMEOUT).call(request).await {
            Ok(LeaseOutcome::Granted { worker }) => {
                match core.peers.get(&worker.address).await {
                    Ok(peer) => {
                        outcomes.push("granted".to_string());
                        return Ok((worker, raylet, peer, outcomes));
                    }
                    // The granted worker died at once (its node went down): ask again.
                    Err(error) if std::time::Instant::now() < unreachable_deadline => {
                        debug!(%error, "the granted worker is unreachable; asking the local node again");
                        (raylet, allow_spill, hops) = (core.raylet.clone(), true, 0);
                        tokio::time::sleep(UNREACHABLE_NODE_PAUSE).await;
                    }
                    Err(error) => return Err(error.to_string().into()),
                }
            }
            Ok(LeaseOutcome::Reschedule { node_address, .. }) => {
                debug!(%node_address, "lease spilled to another node");
                outcomes.push("reschedule".to_string());
                match core.peers.get(&node_address).await {
                    Ok(peer) => {
                        raylet = peer;
                        allow_spill = false;
                    }
                    Err(error) if std::time::Instant::now() < unreachable_deadline => {
                        debug!(%node_address, %error, "the spillback node is unreachable; asking the local node again");
                        (raylet, allow_spill, hops) = (core.raylet.clone(), true, 0);
                        tokio::time::sleep(UNREACHABLE_NODE_PAUSE).await;
                    }
                    Err(error) => return Err(error.to_string().into()),
                }
            }
            Ok(LeaseOutcome::Canceled { reason, cause }) => return Err(LeaseRefused { reason, cause }),
            Err(error @ CallError::UnexpectedReply { .. }) => return Err(error.to_string().into()),
            Err(error) if raylet.id() != core.raylet.id() && std::time::Instant::now() < unreachable_deadline => {
                debug!(%error, "a remote node failed the lease request; asking the local node again");
                (raylet, allow_spill, hops) = (core.raylet.clone(), true, 0);
                tokio::time::sleep(UNREACHABLE_NODE_PAUSE).await;
            }
            Err(error) => return Err(format!("the lease request failed: {error}").into()),
        }
    }
    Err(String::from("the lease request bounced between nodes too often").into())
}
