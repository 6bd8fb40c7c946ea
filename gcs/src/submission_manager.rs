//! [`SubmissionManager`] (Ray's JobManager): records submitted jobs in the
//! durable [`SubmissionTable`], places each one's supervisor on a node, tells
//! that node to run it, relays stop requests, and fails the live jobs of a node
//! that dies. Every change is published on `Channel::Submissions`, where the
//! head's HTTP server follows it.
//!
//! An entrypoint that asks for nothing runs on the head. One that asks for
//! resources gets them held for its whole run, as Ray's supervisor actor holds
//! them: a placement group of one bundle (`_manta_job_<id>`, detached) is
//! created, the job waits `PENDING` until it is placed, the supervisor runs on
//! the bundle's node, and the group is removed when the job ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use manta_proto::message::Event;
use manta_proto::net::{LinkId, PeerHandle};
use manta_proto::node::NodeInfo;
use manta_proto::placement::{PlacementGroupSpec, PlacementGroupState, PlacementStrategy};
use manta_proto::resources::{Quantity, ResourceSet, names};
use manta_proto::submission::{
    EntrypointResources, JobSubmission, StartSupervisorRequest, StopSupervisorRequest, SubmissionChangedEvent,
    SubmissionStatus, UpdateSubmissionRequest,
};
use manta_proto::{ErrorCode, JobId, NodeId, PlacementGroupId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::node_table::NodeTable;
use crate::placement::PlacementMsg;
use crate::pubsub::PubsubMsg;
use crate::submissions::{StopStep, SubmissionTable};
use crate::{GcsRefs, Shared, now_ms};

/// Deadline of a call to a supervisor's node.
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The manager actor. Stateless; see [`SubmissionManagerState`].
#[derive(Debug, Default)]
pub struct SubmissionManager;

/// Messages to the [`SubmissionManager`].
#[derive(Debug)]
pub enum SubmissionMsg {
    /// Record a new job and start it.
    Submit(Box<JobSubmission>, RpcReplyPort<Result<(), WireError>>),
    /// One job by submission id or job id.
    Get(String, RpcReplyPort<Option<JobSubmission>>),
    /// Every job, oldest first.
    List(RpcReplyPort<Vec<JobSubmission>>),
    /// Stop a job: true when it was live.
    Stop(String, RpcReplyPort<Result<bool, WireError>>),
    /// Forget a terminal job.
    Delete(String, RpcReplyPort<Result<(), WireError>>),
    /// A supervisor reports a transition over this link (a node's).
    Update(UpdateSubmissionRequest, LinkId, RpcReplyPort<Result<(), WireError>>),
    /// Place the jobs still waiting for a node (a node joined, resources freed).
    PlacePending,
    /// A node could not start a job's supervisor.
    StartFailed(String, String),
    /// A node died: its supervisors with it.
    NodeDead(NodeId),
    /// A submission's driver called `manta::init` and got this job.
    DriverStarted(String, JobId),
    /// The placement group holding a job's resources was placed on this node.
    Reserved(String, NodeId),
    /// A job's start deadline passed: fail it if it is still `PENDING`.
    StartDeadline(String),
}

/// Start-up arguments and state of the [`SubmissionManager`].
pub struct SubmissionManagerState {
    pub(crate) table: Shared<SubmissionTable>,
    pub(crate) nodes: Shared<NodeTable>,
    pub(crate) links: Shared<HashMap<NodeId, PeerHandle>>,
    pub(crate) refs: Arc<GcsRefs>,
    /// Jobs whose placement group this actor instance waits on (not durable:
    /// a restarted manager waits again).
    pub(crate) waiting: std::collections::HashSet<String>,
    /// How long a job may stay `PENDING`.
    pub(crate) start_timeout: Duration,
}

/// The namespace of the placement groups that hold entrypoints' resources.
pub const JOB_GROUPS_NAMESPACE: &str = "_manta_jobs";
/// How long one wait for a job's placement group lasts before it is asked again.
const RESERVATION_WAIT: Duration = Duration::from_secs(30);

/// What an entrypoint asks of its node, as resources.
pub fn resource_request(resources: &EntrypointResources) -> ResourceSet {
    let mut set = ResourceSet::new();
    let mut add = |name: &str, value: f64| {
        if value > 0.0
            && let Some(quantity) = Quantity::from_f64(value)
        {
            set.set(name, quantity);
        }
    };
    add(names::CPU, resources.num_cpus);
    add(names::GPU, resources.num_gpus);
    add(names::MEMORY, resources.memory as f64);
    for (name, value) in &resources.custom {
        add(name, *value);
    }
    set
}

/// The alive head, where an entrypoint that asks for no resources runs (as in Ray).
pub fn head_of(alive: &[NodeInfo]) -> Option<&NodeInfo> {
    alive.iter().find(|node| node.is_head)
}

/// The IP part of `host:port`.
fn ip_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

impl SubmissionManagerState {
    fn publish(&self, submission: &JobSubmission) {
        if let Ok(pubsub) = self.refs.pubsub() {
            let event = SubmissionChangedEvent { submission: Box::new(submission.clone()) };
            let _ = pubsub.cast(PubsubMsg::Publish(Event::SubmissionChanged(event)));
        }
    }

    /// Places every unplaced job that a node can take now and starts its supervisor.
    fn place_pending(&mut self, myself: &ActorRef<SubmissionMsg>) {
        let waiting = self.table.lock().unplaced();
        if waiting.is_empty() {
            return;
        }
        let alive: Vec<NodeInfo> = self.nodes.lock().alive().cloned().collect();
        for job in waiting {
            if !job.resources.is_empty() {
                self.reserve(myself, &job);
            } else if let Some(head) = head_of(&alive) {
                self.start_on(myself, &job.submission_id, head);
            }
        }
    }

    /// Places a job on `node` and has that node start its supervisor.
    fn start_on(&self, myself: &ActorRef<SubmissionMsg>, id: &str, node: &NodeInfo) {
        let Some(link) = self.links.lock().get(&node.node_id).cloned() else { return };
        let Some(placed) = self.table.lock().place(id, node.node_id, ip_of(&node.address)) else { return };
        info!(submission_id = %id, node_id = %node.node_id, "starting the job's supervisor");
        self.publish(&placed);
        let myself = myself.clone();
        tokio::spawn(async move {
            let id = placed.submission_id.clone();
            let request = StartSupervisorRequest { submission: Box::new(placed) };
            if let Err(error) = link.rpc(request, NODE_CALL_TIMEOUT).await {
                let _ = myself.cast(SubmissionMsg::StartFailed(id, error.to_string()));
            }
        });
    }

    /// Has a placement group hold the job's resources (once), and waits for it.
    fn reserve(&mut self, myself: &ActorRef<SubmissionMsg>, job: &JobSubmission) {
        if !self.waiting.insert(job.submission_id.clone()) {
            return;
        }
        let Ok(groups) = self.refs.placement_groups() else {
            self.waiting.remove(&job.submission_id);
            return;
        };
        let pg_id = match job.placement_group {
            Some(pg_id) => pg_id,
            None => {
                let pg_id = PlacementGroupId::random();
                let spec = PlacementGroupSpec {
                    pg_id,
                    name: Some(format!("_manta_job_{}", job.submission_id)),
                    namespace: JOB_GROUPS_NAMESPACE.into(),
                    bundles: vec![resource_request(&job.resources)],
                    strategy: PlacementStrategy::Pack,
                    detached: true,
                    job_id: JobId::from_counter(0),
                };
                let (sender, _) = ractor::concurrency::oneshot();
                if groups.cast(PlacementMsg::Create(spec, sender.into())).is_err() {
                    self.waiting.remove(&job.submission_id);
                    return;
                }
                self.table.lock().reserve(&job.submission_id, pg_id);
                pg_id
            }
        };
        tokio::spawn(wait_for_reservation(
            self.refs.clone(),
            self.table.clone(),
            myself.clone(),
            job.submission_id.clone(),
            pg_id,
        ));
    }

    /// Fails the job if it is still `PENDING` when its start timeout has passed.
    fn arm_start_deadline(&self, myself: &ActorRef<SubmissionMsg>, job: &JobSubmission) {
        let deadline = job.start_time_ms + self.start_timeout.as_millis() as u64;
        let left = Duration::from_millis(deadline.saturating_sub(now_ms()));
        let id = job.submission_id.clone();
        myself.send_after(left, move || SubmissionMsg::StartDeadline(id));
    }

    /// Lets go of what a job that ended held (its placement group).
    fn release(&self, job: &JobSubmission) {
        if let (Some(pg_id), Ok(groups)) = (job.placement_group, self.refs.placement_groups()) {
            let (sender, _) = ractor::concurrency::oneshot();
            let _ = groups.cast(PlacementMsg::Remove(pg_id, sender.into()));
        }
    }

    fn fail(&self, id: &str, error_type: &str, message: String) {
        let failed = self.table.lock().fail(id, error_type, message, now_ms());
        if let Some(failed) = failed {
            warn!(submission_id = %id, message = %failed.message, "job failed");
            self.release(&failed);
            // A supervisor still setting up (a start timeout) must not start the entrypoint.
            if let Some(link) = failed.driver_node_id.and_then(|node_id| self.links.lock().get(&node_id).cloned()) {
                let submission_id = failed.submission_id.clone();
                tokio::spawn(async move {
                    let _ = link.rpc(StopSupervisorRequest { submission_id }, NODE_CALL_TIMEOUT).await;
                });
            }
            self.publish(&failed);
        }
    }
}

/// Waits until a job's placement group is placed and reports its node; gives up
/// when the job ended meanwhile (stopped while pending) or the group is gone.
async fn wait_for_reservation(
    refs: Arc<GcsRefs>,
    table: Shared<SubmissionTable>,
    myself: ActorRef<SubmissionMsg>,
    id: String,
    pg_id: PlacementGroupId,
) {
    loop {
        let pending = table.lock().get(&id).is_some_and(|job| job.status == SubmissionStatus::Pending);
        if !pending {
            return;
        }
        let Ok(groups) = refs.placement_groups() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let answer = groups
            .call(
                |port| PlacementMsg::Wait(pg_id, RESERVATION_WAIT, port),
                Some(RESERVATION_WAIT + Duration::from_secs(5)),
            )
            .await;
        match answer {
            Ok(ractor::rpc::CallResult::Success(Some(info))) => match info.state {
                PlacementGroupState::Created => {
                    if let Some(Some(node_id)) = info.bundle_nodes.first() {
                        let _ = myself.cast(SubmissionMsg::Reserved(id, *node_id));
                        return;
                    }
                }
                PlacementGroupState::Removed => {
                    let _ = myself
                        .cast(SubmissionMsg::StartFailed(id, "the reservation of its resources was removed".into()));
                    return;
                }
                PlacementGroupState::Pending | PlacementGroupState::Rescheduling => {}
            },
            Ok(ractor::rpc::CallResult::Success(None)) => {
                let _ = myself.cast(SubmissionMsg::StartFailed(id, "the reservation of its resources is gone".into()));
                return;
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

impl Actor for SubmissionManager {
    type Msg = SubmissionMsg;
    type State = SubmissionManagerState;
    type Arguments = SubmissionManagerState;

    async fn pre_start(
        &self,
        myself: ActorRef<SubmissionMsg>,
        state: SubmissionManagerState,
    ) -> Result<SubmissionManagerState, ActorProcessingErr> {
        // After a head restart: a live job whose supervisor's node is gone failed with it.
        let live = state.table.lock().placed_live();
        for job in live {
            let node_id = job.driver_node_id.expect("placed");
            if !state.nodes.lock().is_alive(node_id) {
                state.fail(&job.submission_id, "SUPERVISOR_NODE_DIED", node_died_message(node_id));
            }
        }
        // Every pending job gets its start deadline again, counted from its submission.
        let pending: Vec<JobSubmission> =
            state.table.lock().list().into_iter().filter(|job| job.status == SubmissionStatus::Pending).collect();
        for job in pending {
            state.arm_start_deadline(&myself, &job);
        }
        let _ = myself.cast(SubmissionMsg::PlacePending);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SubmissionMsg>,
        message: SubmissionMsg,
        state: &mut SubmissionManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SubmissionMsg::Submit(submission, reply) => {
                let submitted = state.table.lock().submit((*submission).clone());
                if submitted.is_ok() {
                    info!(submission_id = %submission.submission_id, entrypoint = %submission.entrypoint, "job submitted");
                    state.arm_start_deadline(&myself, &submission);
                    state.publish(&submission);
                    state.place_pending(&myself);
                }
                let _ = reply.send(submitted);
            }
            SubmissionMsg::Get(id, reply) => {
                let _ = reply.send(state.table.lock().get(&id));
            }
            SubmissionMsg::List(reply) => {
                let _ = reply.send(state.table.lock().list());
            }
            SubmissionMsg::Stop(id, reply) => {
                let step = state.table.lock().stop(&id, now_ms());
                match step {
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                    Ok(StopStep::AlreadyEnded) => {
                        let _ = reply.send(Ok(false));
                    }
                    Ok(StopStep::StoppedHere(stopped)) => {
                        state.release(&stopped);
                        state.publish(&stopped);
                        let _ = reply.send(Ok(true));
                    }
                    Ok(StopStep::AskNode(node_id)) => {
                        let submission_id = state.table.lock().get(&id).map(|job| job.submission_id).unwrap_or(id);
                        let link = state.links.lock().get(&node_id).cloned();
                        let Some(link) = link else {
                            let message = format!(
                                "the node of job {submission_id}'s supervisor is not connected; retry once it is back"
                            );
                            let _ = reply.send(Err(WireError::new(ErrorCode::Unavailable, message)));
                            return Ok(());
                        };
                        tokio::spawn(async move {
                            let answer = link.rpc(StopSupervisorRequest { submission_id }, NODE_CALL_TIMEOUT).await;
                            let _ = reply.send(
                                answer
                                    .map(|answer| answer.stopped)
                                    .map_err(|error| WireError::new(ErrorCode::Unavailable, error.to_string())),
                            );
                        });
                    }
                }
            }
            SubmissionMsg::Delete(id, reply) => {
                let _ = reply.send(state.table.lock().delete(&id));
            }
            SubmissionMsg::Update(request, link_id, reply) => {
                let from =
                    state.links.lock().iter().find(|(_, link)| link.id() == link_id).map(|(node_id, _)| *node_id);
                let Some(from) = from else {
                    let refused = "job status updates come only from a registered node";
                    let _ = reply.send(Err(WireError::new(ErrorCode::PermissionDenied, refused)));
                    return Ok(());
                };
                let updated = state.table.lock().update(&request.submission_id, request.update, from, now_ms());
                match updated {
                    Ok(updated) => {
                        info!(submission_id = %updated.submission_id, status = updated.status.as_str(), "job status");
                        if updated.status.is_terminal() {
                            state.release(&updated);
                        }
                        state.publish(&updated);
                        let _ = reply.send(Ok(()));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            SubmissionMsg::PlacePending => state.place_pending(&myself),
            SubmissionMsg::StartFailed(id, why) => {
                state.fail(&id, "SUPERVISOR_START_FAILED", format!("Job supervisor could not be started: {why}"));
            }
            SubmissionMsg::NodeDead(node_id) => {
                let on_node = state.table.lock().on_node(node_id);
                for id in on_node {
                    state.fail(&id, "SUPERVISOR_NODE_DIED", node_died_message(node_id));
                }
            }
            SubmissionMsg::Reserved(id, node_id) => {
                state.waiting.remove(&id);
                let node = state.nodes.lock().get(node_id).cloned();
                match node {
                    Some(node) if node.state == manta_proto::node::NodeState::Alive => {
                        state.start_on(&myself, &id, &node)
                    }
                    _ => state.fail(&id, "SUPERVISOR_NODE_DIED", node_died_message(node_id)),
                }
            }
            SubmissionMsg::StartDeadline(id) => {
                let pending = state.table.lock().get(&id).is_some_and(|job| job.status == SubmissionStatus::Pending);
                if pending {
                    let message = format!(
                        "Job supervisor failed to start within {} seconds. This timeout can be changed with \
                         `manta start --head --job-start-timeout`; check that a node has the entrypoint's resources \
                         (entrypoint_num_cpus, entrypoint_num_gpus, entrypoint_memory, entrypoint_resources)",
                        state.start_timeout.as_secs_f64()
                    );
                    state.fail(&id, "START_TIMEOUT", message);
                }
            }
            SubmissionMsg::DriverStarted(id, job_id) => {
                let updated = state.table.lock().driver_started(&id, job_id);
                if let Some(updated) = updated {
                    state.publish(&updated);
                }
            }
        }
        Ok(())
    }
}

fn node_died_message(node_id: NodeId) -> String {
    format!("Job supervisor's node {node_id} died (or the head restarted with it); the entrypoint is gone")
}

#[cfg(test)]
mod tests {
    use super::*;
    use manta_proto::node::NodeState;

    fn node(is_head: bool) -> NodeInfo {
        NodeInfo {
            node_id: NodeId::random(),
            address: "127.0.0.1:1".into(),
            state: NodeState::Alive,
            death_reason: None,
            is_head,
            pid: 1,
            resources_total: ResourceSet::new(),
            resources_available: ResourceSet::new(),
            labels: Default::default(),
            start_time_ms: 0,
            end_time_ms: None,
            pending_demand: Vec::new(),
            metrics_address: None,
        }
    }

    #[test]
    fn an_entrypoint_that_asks_for_nothing_runs_on_the_head() {
        let (head, worker) = (node(true), node(false));
        assert_eq!(head_of(&[worker.clone(), head.clone()]).unwrap().node_id, head.node_id);
        assert!(head_of(&[worker]).is_none(), "waits for the head to come back");
    }

    #[test]
    fn the_request_holds_every_resource_asked_for() {
        let asked = EntrypointResources {
            num_cpus: 1.5,
            num_gpus: 0.0,
            memory: 1 << 20,
            custom: [("disk".to_string(), 2.0)].into(),
        };
        let set = resource_request(&asked);
        assert_eq!(set.get(names::CPU).as_f64(), 1.5);
        assert_eq!(set.get(names::MEMORY).as_f64(), (1u64 << 20) as f64);
        assert_eq!(set.get("disk").as_f64(), 2.0);
        assert!(set.get(names::GPU).is_zero(), "nothing for what was not asked");
    }
}
