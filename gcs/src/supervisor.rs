//! [`GcsSupervisor`]: starts the GCS actors and restarts any that fails.
//!
//! The tables (nodes, links, resource view, KV, subscriptions) live in shared
//! state owned here, so a restarted actor resumes with them intact. More than
//! restarts than the shared [`RestartPolicy`] allows (`RESTARTS`) escalate to our own supervisor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_proto::restart::{RestartDecision, RestartPolicy, RestartTracker};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tracing::{error, warn};

use crate::actor_directory::{ActorDirectory, ActorTable};
use crate::health_checker::{HealthArgs, HealthChecker};
use crate::job_manager::{JobManager, JobManagerState, JobTable};
use crate::kv::{KvStore, KvTable};
use crate::node_manager::{NodeManager, NodeManagerState};
use crate::node_table::NodeTable;
use crate::pubsub::{Pubsub, PubsubState};
use crate::recovery::Recovered;
use crate::resource_manager::{ClusterView, ResourceArgs, ResourceManager};
use crate::service::GcsService;
use crate::storage::Storage;
use crate::task_events::{TaskEvents, TaskTable};
use crate::{GcsConfig, GcsRefs, Shared};

/// How the GCS restarts its actors: at most 10 restarts a minute, with backoff.
const RESTARTS: RestartPolicy = RestartPolicy::within(10, Duration::from_secs(60));

/// A running GCS: its supervisor and the service to put behind a listener.
pub struct Gcs {
    /// The root of the GCS actor tree; stopping it stops the GCS.
    pub supervisor: ActorRef<GcsSupervisorMsg>,
    /// Answers requests arriving on the GCS port.
    pub service: Arc<GcsService>,
}

/// Starts the GCS actor tree, linked to `parent` when given.
pub async fn start(config: GcsConfig, parent: Option<ActorCell>) -> Result<Gcs, SpawnErr> {
    config.validate().map_err(|message| SpawnErr::StartupFailed(message.into()))?;
    let failed = |error: crate::storage::StorageError| SpawnErr::StartupFailed(error.to_string().into());
    let mut backend = config.storage.open().map_err(failed)?;
    let store = backend.describe();
    let snapshot = backend.load().map_err(failed)?;
    let storage = Storage::start(backend);
    let failure = storage.failure();
    let recovered = Recovered::load(&snapshot, &storage, &config, &store).map_err(failed)?;
    drop(snapshot);
    let refs = Arc::new(GcsRefs::new(storage));
    let args = GcsSupervisorArgs { config, refs: refs.clone(), recovered };
    let (supervisor, _) = match parent {
        Some(parent) => Actor::spawn_linked(None, GcsSupervisor, args, parent).await?,
        None => Actor::spawn(None, GcsSupervisor, args).await?,
    };
    // Storage that can no longer make changes durable stops the GCS (and the head
    // with it) instead of acknowledging what it has not written.
    let root = supervisor.clone();
    tokio::spawn(async move {
        if let Some(reason) = failure.wait().await {
            root.stop(Some(format!("the GCS storage failed: {reason}")));
        }
    });
    Ok(Gcs { supervisor, service: Arc::new(GcsService::new(refs)) })
}

/// The GCS supervisor actor. Stateless; see [`GcsSupervisorState`].
#[derive(Debug, Default)]
pub struct GcsSupervisor;

/// The supervisor takes no messages of its own; it only handles supervision events.
#[derive(Debug)]
pub enum GcsSupervisorMsg {}

/// Start-up arguments of the [`GcsSupervisor`].
pub struct GcsSupervisorArgs {
    config: GcsConfig,
    refs: Arc<GcsRefs>,
    recovered: Recovered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    NodeManager,
    HealthChecker,
    ResourceManager,
    Kv,
    Pubsub,
    JobManager,
    ActorDirectory,
    TaskEvents,
    PlacementGroups,
    Packages,
    Submissions,
}

const CHILDREN: [Child; 11] = [
    Child::TaskEvents,
    Child::Pubsub,
    Child::Kv,
    Child::ActorDirectory,
    Child::JobManager,
    Child::ResourceManager,
    Child::NodeManager,
    Child::HealthChecker,
    Child::PlacementGroups,
    Child::Packages,
    Child::Submissions,
];

/// State of the [`GcsSupervisor`]: the shared tables and who is who.
pub struct GcsSupervisorState {
    config: GcsConfig,
    refs: Arc<GcsRefs>,
    nodes: Shared<NodeTable>,
    links: Shared<HashMap<manta_proto::NodeId, manta_proto::net::PeerHandle>>,
    view: Shared<ClusterView>,
    view_feed: Arc<crate::view_feed::ViewFeed>,
    kv: Shared<KvTable>,
    subscriptions: Shared<PubsubState>,
    jobs: Shared<JobTable>,
    actors: Shared<ActorTable>,
    tasks: Shared<TaskTable>,
    placement_groups: Shared<crate::placement::PlacementTable>,
    packages: Shared<crate::packages::PackageTable>,
    submissions: Shared<crate::submissions::SubmissionTable>,
    children: HashMap<ActorId, Child>,
    restarts: RestartTracker,
}

impl Actor for GcsSupervisor {
    type Msg = GcsSupervisorMsg;
    type State = GcsSupervisorState;
    type Arguments = GcsSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GcsSupervisorMsg>,
        args: GcsSupervisorArgs,
    ) -> Result<GcsSupervisorState, ActorProcessingErr> {
        let max_tasks = args.config.max_tasks;
        let recovered = args.recovered;
        let view_feed = Arc::new(crate::view_feed::ViewFeed::default());
        let followed = manta_proto::net::SharedFeed::new(view_feed.clone());
        let mut state = GcsSupervisorState {
            nodes: recovered.nodes,
            config: args.config,
            refs: args.refs,
            links: Default::default(),
            view: Shared::new(ClusterView::new(recovered.incarnation)),
            view_feed,
            kv: recovered.kv,
            subscriptions: Shared::new(
                PubsubState::default().with_feed(manta_proto::gcs::Channel::ClusterView, followed),
            ),
            jobs: recovered.jobs,
            actors: recovered.actors,
            tasks: Shared::new(TaskTable::new(max_tasks)),
            placement_groups: recovered.placement_groups,
            packages: recovered.packages,
            submissions: recovered.submissions,
            children: HashMap::new(),
            restarts: RestartTracker::new(RESTARTS),
        };
        for child in CHILDREN {
            spawn_child(&myself, &mut state, child).await?;
        }
        if recovered.restarted {
            expire_after_grace(&state, recovered.awaited_nodes);
        }
        spawn_state_gauges(&state);
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<GcsSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut GcsSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        match state.restarts.on_failure(Instant::now()) {
            RestartDecision::GiveUp { restarts } => {
                error!(?child, %why, "GCS actor failed too often; giving up");
                return Err(format!("GCS {child:?} failed after {restarts} restarts within a minute: {why}").into());
            }
            RestartDecision::Restart { after, attempt } => {
                warn!(?child, %why, attempt, ?after, "GCS actor stopped; restarting it");
                tokio::time::sleep(after).await;
            }
        }
        spawn_child(&myself, state, child).await?;
        Ok(())
    }
}

/// Every second, the GCS's tables as gauges: `manta_tasks`, `manta_actors`,
/// `manta_placement_groups` by `State`, and `manta_cluster_nodes` alive and dead.
fn spawn_state_gauges(state: &GcsSupervisorState) {
    let (tasks, actors, groups, nodes) =
        (state.tasks.clone(), state.actors.clone(), state.placement_groups.clone(), state.nodes.clone());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let set = |name: &'static str, counts: std::collections::BTreeMap<String, usize>| {
                for (state, count) in counts {
                    metrics::gauge!(name, "State" => state, "Component" => "gcs").set(count as f64);
                }
            };
            set("manta_tasks", tasks.lock().count_by_state());
            set("manta_actors", actors.lock().count_by_state());
            set("manta_placement_groups", groups.lock().count_by_state());
            let (alive, dead) = {
                let table = nodes.lock();
                let alive = table.alive().count();
                (alive, table.rows().len() - alive)
            };
            metrics::gauge!("manta_cluster_nodes", "State" => "ALIVE").set(alive as f64);
            metrics::gauge!("manta_cluster_nodes", "State" => "DEAD").set(dead as f64);
        }
    });
}

/// After a restart: nodes and drivers that have not reconnected within the
/// grace period are declared dead, and their jobs finished.
fn expire_after_grace(state: &GcsSupervisorState, awaited: Vec<manta_proto::NodeId>) {
    let refs = state.refs.clone();
    let links = state.links.clone();
    let grace = state.config.recovery_grace;
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let missing: Vec<_> = {
            let links = links.lock();
            awaited.into_iter().filter(|node_id| !links.contains_key(node_id)).collect()
        };
        if let Ok(nodes) = refs.node_manager() {
            for node_id in missing {
                let reason = format!("did not reconnect within {grace:?} after the GCS restarted");
                let _ = nodes.cast(crate::node_manager::NodeManagerMsg::MarkDead(node_id, reason));
            }
        }
        if let Ok(jobs) = refs.job_manager() {
            let _ = jobs.cast(crate::job_manager::JobMsg::ExpireUnattached);
        }
    });
}

async fn spawn_child(
    myself: &ActorRef<GcsSupervisorMsg>,
    state: &mut GcsSupervisorState,
    child: Child,
) -> Result<(), SpawnErr> {
    let supervisor = myself.get_cell();
    let refs = state.refs.clone();
    let cell = match child {
        Child::NodeManager => {
            let args = NodeManagerState {
                table: state.nodes.clone(),
                links: state.links.clone(),
                refs: refs.clone(),
                config: state.config.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, NodeManager, args, supervisor).await?;
            *refs.node_manager.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::HealthChecker => {
            let args = HealthArgs { config: state.config.clone(), refs: refs.clone() };
            let (actor, _) = Actor::spawn_linked(None, HealthChecker, args, supervisor).await?;
            *refs.health_checker.write().expect("refs lock") = Some(actor.clone());
            // A fresh checker knows no node: hand it every alive node's link again.
            for (node_id, link) in state.links.lock().iter() {
                let _ = actor.cast(crate::health_checker::HealthMsg::Watch(*node_id, link.clone()));
            }
            actor.get_cell()
        }
        Child::ResourceManager => {
            let args = ResourceArgs {
                config: state.config.clone(),
                view: state.view.clone(),
                feed: state.view_feed.clone(),
                refs: refs.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, ResourceManager, args, supervisor).await?;
            *refs.resource_manager.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::Packages => {
            let args = crate::packages::PackageStoreState {
                table: state.packages.clone(),
                dir: state.config.packages_dir.clone(),
                actors: state.actors.clone(),
            };
            let (actor, _) = Actor::spawn_linked(None, crate::packages::PackageStore, args, supervisor).await?;
            *refs.packages.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::Submissions => {
            let args = crate::submission_manager::SubmissionManagerState {
                table: state.submissions.clone(),
                nodes: state.nodes.clone(),
                links: state.links.clone(),
                refs: refs.clone(),
                waiting: Default::default(),
                start_timeout: state.config.job_start_timeout,
            };
            let (actor, _) =
                Actor::spawn_linked(None, crate::submission_manager::SubmissionManager, args, supervisor).await?;
            *refs.submissions.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::Kv => {
            let (actor, _) = Actor::spawn_linked(None, KvStore, state.kv.clone(), supervisor).await?;
            *refs.kv.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::JobManager => {
            let args = JobManagerState { table: state.jobs.clone(), refs: refs.clone() };
            let (actor, _) = Actor::spawn_linked(None, JobManager, args, supervisor).await?;
            *refs.job_manager.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::ActorDirectory => {
            let mut net = manta_proto::net::NetConfig::new(
                state.config.token.clone(),
                manta_proto::frame::PeerRole::Gcs,
                "gcs actor restarts",
            );
            net.reconnect = false;
            net.tls = state.config.tls.clone();
            let args = crate::actor_directory::DirectoryArgs {
                table: state.actors.clone(),
                links: state.links.clone(),
                net: Arc::new(net),
            };
            let (actor, _) = Actor::spawn_linked(None, ActorDirectory, args, supervisor).await?;
            *refs.actor_directory.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::TaskEvents => {
            let (actor, _) = Actor::spawn_linked(None, TaskEvents, state.tasks.clone(), supervisor).await?;
            *refs.task_events.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::PlacementGroups => {
            let args = crate::placement::PlacementArgs {
                table: state.placement_groups.clone(),
                links: state.links.clone(),
                refs: refs.clone(),
            };
            let (actor, _) =
                Actor::spawn_linked(None, crate::placement::PlacementGroupManager, args, supervisor).await?;
            *refs.placement_groups.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
        Child::Pubsub => {
            let (actor, _) = Actor::spawn_linked(None, Pubsub, state.subscriptions.clone(), supervisor).await?;
            *refs.pubsub.write().expect("refs lock") = Some(actor.clone());
            actor.get_cell()
        }
    };
    state.children.insert(cell.get_id(), child);
    Ok(())
}
