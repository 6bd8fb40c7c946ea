//! Leases: asking a node for a worker (with where the work may run and which
//! kind of worker it needs), the node's answer, and giving the worker back.
//! Re-exported from [`crate::task`].

use serde::{Deserialize, Serialize};

use crate::ids::{ActorId, NodeId, WorkerId};
use crate::resources::ResourceSet;
use crate::runtime_env::RuntimeEnvSpec;
use crate::task::{JobConfig, Language, WorkerAddress};

/// A lease answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// A worker is reserved for the caller.
    Granted {
        /// The worker to push tasks to.
        worker: WorkerAddress,
    },
    /// Try this node instead (spillback).
    Reschedule {
        /// The node.
        node_id: NodeId,
        /// Its address.
        node_address: String,
    },
    /// The request cannot be served.
    Canceled {
        /// Why.
        reason: String,
        /// What kind of refusal it is.
        #[serde(default)]
        cause: CancelCause,
    },
}

/// Why a lease request was refused, when the caller treats it differently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelCause {
    /// Infeasible, cancelled, its job or caller gone, ...
    #[default]
    Other,
    /// The node could not set up the runtime environment: the work fails with
    /// `RuntimeEnvSetupFailed` and is not retried.
    RuntimeEnvSetupFailed,
}

/// Where work may run (Ray's `scheduling_strategy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedulingStrategy {
    /// The hybrid policy: local until busy, then the least-loaded nodes.
    #[default]
    Default,
    /// Round robin over the nodes that can run it.
    Spread,
    /// One given node; `soft` falls back to `Default` when that node is gone or can never fit.
    NodeAffinity {
        /// The node.
        node_id: NodeId,
        /// Fall back instead of failing.
        soft: bool,
    },
    /// A placement group's bundle (`bundle_index`), or any of its bundles (`None`).
    PlacementGroup {
        /// The group.
        pg_id: crate::ids::PlacementGroupId,
        /// Which bundle.
        bundle_index: Option<u32>,
        /// Tasks this one submits default to the same group.
        capture_child_tasks: bool,
    },
}

impl SchedulingStrategy {
    /// Run in bundle `bundle_index` of a placement group, or in any of its bundles.
    pub fn placement_group(pg_id: crate::ids::PlacementGroupId, bundle_index: Option<u32>) -> Self {
        SchedulingStrategy::PlacementGroup { pg_id, bundle_index, capture_child_tasks: false }
    }
}

/// Asks a raylet for a worker with `resources` for `job`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestWorkerLeaseRequest {
    /// Where the work may run.
    #[serde(default)]
    pub strategy: SchedulingStrategy,
    /// The job.
    pub job: JobConfig,
    /// What the work needs.
    pub resources: ResourceSet,
    /// The worker's runtime environment (resolved: packages named, parents merged).
    #[serde(default, skip_serializing_if = "RuntimeEnvSpec::is_empty")]
    pub runtime_env: RuntimeEnvSpec,
    /// The lease is for this actor (a dedicated worker that lives with it).
    pub actor: Option<ActorId>,
    /// The actor survives its job.
    pub detached: bool,
    /// May the raylet send the caller elsewhere? False after one spillback.
    pub allow_spill: bool,
    /// What placing the work needs, when more than `resources` (an actor that holds
    /// nothing still needs 1 CPU free to be placed, as in Ray).
    #[serde(default)]
    pub placement: Option<ResourceSet>,
    /// Tasks of this shape the caller still queues beyond its lease requests in
    /// flight, when it sent this one (Ray's backlog; the autoscaler's demand).
    #[serde(default)]
    pub backlog: u32,
    /// Which kind of worker: workers of one language never serve another's leases.
    #[serde(default, skip_serializing_if = "Language::is_rust")]
    pub language: Language,
}

impl RequestWorkerLeaseRequest {
    /// What the placement decision checks.
    pub fn placement_resources(&self) -> &ResourceSet {
        self.placement.as_ref().unwrap_or(&self.resources)
    }
}

/// Gives a leased worker back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReturnWorkerLeaseRequest {
    /// The worker.
    pub worker_id: WorkerId,
}
