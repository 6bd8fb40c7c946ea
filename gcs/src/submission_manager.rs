//! [`SubmissionManager`] (Ray's JobManager): records submitted jobs in the
//! durable [`SubmissionTable`], places each one's supervisor on a node (the
//! head unless the entrypoint asks for resources, then an alive node that has
//! them available), tells that node to run it, relays stop requests, and fails
//! the live jobs of a node that dies. Every change is published on
//! `Channel::Submissions`, where the head's HTTP server follows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use manta_proto::gcs::NodeResources;
use manta_proto::message::Event;
use manta_proto::net::{LinkId, PeerHandle};
use manta_proto::node::NodeInfo;
use manta_proto::resources::{Quantity, ResourceSet, names};
use manta_proto::submission::{
    EntrypointResources, JobSubmission, StartSupervisorRequest, StopSupervisorRequest, SubmissionChangedEvent,
    UpdateSubmissionRequest,
};
use manta_proto::{ErrorCode, JobId, NodeId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::node_table::NodeTable;
use crate::pubsub::PubsubMsg;
use crate::resource_manager::ClusterView;
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
}

/// Start-up arguments and state of the [`SubmissionManager`].
pub struct SubmissionManagerState {
    pub(crate) table: Shared<SubmissionTable>,
    pub(crate) nodes: Shared<NodeTable>,
    pub(crate) view: Shared<ClusterView>,
    pub(crate) links: Shared<HashMap<NodeId, PeerHandle>>,
    pub(crate) refs: Arc<GcsRefs>,
}

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

/// Where a job's supervisor goes: the head when the entrypoint asks for nothing,
/// else the first alive node (the head first) with the resources available.
pub fn choose_node<'a>(
    resources: &EntrypointResources,
    alive: &'a [NodeInfo],
    view: &[NodeResources],
) -> Option<&'a NodeInfo> {
    if resources.is_empty() {
        return alive.iter().find(|node| node.is_head);
    }
    let request = resource_request(resources);
    let fits = |node: &&NodeInfo| {
        view.iter().find(|entry| entry.node_id == node.node_id).is_some_and(|entry| entry.available.contains(&request))
    };
    alive.iter().filter(|node| node.is_head).find(fits).or_else(|| alive.iter().find(fits))
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
    fn place_pending(&self, myself: &ActorRef<SubmissionMsg>) {
        let waiting = self.table.lock().unplaced();
        if waiting.is_empty() {
            return;
        }
        let alive: Vec<NodeInfo> = self.nodes.lock().alive().cloned().collect();
        let view = self.view.lock().snapshot().nodes;
        for job in waiting {
            let Some(node) = choose_node(&job.resources, &alive, &view) else { continue };
            let Some(link) = self.links.lock().get(&node.node_id).cloned() else { continue };
            let Some(placed) = self.table.lock().place(&job.submission_id, node.node_id, ip_of(&node.address)) else {
                continue;
            };
            info!(submission_id = %placed.submission_id, node_id = %node.node_id, "starting the job's supervisor");
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
    }

    fn fail(&self, id: &str, error_type: &str, message: String) {
        let failed = self.table.lock().fail(id, error_type, message, now_ms());
        if let Some(failed) = failed {
            warn!(submission_id = %id, message = %failed.message, "job failed");
            self.publish(&failed);
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

    fn free(node: &NodeInfo, cpus: u64) -> NodeResources {
        let set = ResourceSet::new().with(names::CPU, Quantity::from_whole(cpus));
        NodeResources {
            node_id: node.node_id,
            address: node.address.clone(),
            total: set.clone(),
            available: set,
            labels: Default::default(),
            pending_demand: Vec::new(),
        }
    }

    #[test]
    fn the_head_by_default_else_a_node_with_the_resources_free() {
        let (head, worker) = (node(true), node(false));
        let alive = vec![worker.clone(), head.clone()];
        let view = vec![free(&head, 1), free(&worker, 4)];
        let nothing = EntrypointResources::default();
        assert_eq!(choose_node(&nothing, &alive, &view).unwrap().node_id, head.node_id);
        let two = EntrypointResources { num_cpus: 2.0, ..Default::default() };
        assert_eq!(choose_node(&two, &alive, &view).unwrap().node_id, worker.node_id);
        let one = EntrypointResources { num_cpus: 1.0, ..Default::default() };
        assert_eq!(choose_node(&one, &alive, &view).unwrap().node_id, head.node_id, "the head first");
        let eight = EntrypointResources { num_cpus: 8.0, ..Default::default() };
        assert!(choose_node(&eight, &alive, &view).is_none(), "waits for resources");
        let gpu = EntrypointResources { custom: [("disk".to_string(), 1.0)].into(), ..Default::default() };
        assert!(choose_node(&gpu, &alive, &view).is_none());
    }
}
