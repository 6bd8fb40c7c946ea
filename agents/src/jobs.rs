//! Submitted jobs on a node: the [`JobAgent`] (one per node, restarted by the
//! node supervisor) starts a [`supervisor::JobSupervisor`] for each job the
//! GCS places here, and relays stop requests to it.
//!
//! ```text
//! GCS SubmissionManager ──StartSupervisor / StopSupervisor──▶ node service ──▶ JobAgent
//!                                                                               └─ JobSupervisor (one per job)
//!      ◀── UpdateSubmission (RUNNING, then SUCCEEDED / FAILED / STOPPED) ────────┘
//!      ◀── DriverLog events (the entrypoint's output, also in job-driver-<id>.log)
//! ```
//!
//! A supervisor that fails reports its job `FAILED` and its entrypoint's
//! process group is killed; the agent itself keeps running.

pub mod entrypoint;
pub mod supervisor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use manta_proto::client::GcsClient;
use manta_proto::submission::{JobSubmission, SubmissionStatus, SubmissionUpdate, UpdateSubmissionRequest};
use manta_proto::{ErrorCode, NodeId, WireError};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::warn;

use crate::runtime_env::AgentSlot;
use supervisor::{JobSupervisor, SupervisorArgs, SupervisorMsg};

/// How the node reaches the current job agent.
pub type JobAgentSlot = Arc<RwLock<ActorRef<JobAgentMsg>>>;

/// What every supervisor on this node shares.
#[derive(Clone)]
pub struct JobAgentArgs {
    /// This node.
    pub node_id: NodeId,
    /// The node's link to the GCS (status reports, log events).
    pub gcs: GcsClient,
    /// The cluster's GCS address (the entrypoint's `MANTA_ADDRESS`).
    pub gcs_address: String,
    /// The cluster token (the entrypoint is a driver of this cluster).
    pub token: String,
    /// TLS variables a driver needs, when the cluster uses TLS.
    pub tls_env: Vec<(String, String)>,
    /// Where `job-driver-<id>.log` files go (the node's log folder).
    pub log_dir: PathBuf,
    /// The node's RuntimeEnvAgent.
    pub runtime_env: AgentSlot,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped (Ray: 3).
    pub stop_grace: std::time::Duration,
}

impl std::fmt::Debug for JobAgentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobAgentArgs").field("node_id", &self.node_id).field("log_dir", &self.log_dir).finish()
    }
}

/// Messages to the [`JobAgent`].
#[derive(Debug)]
pub enum JobAgentMsg {
    /// Run this job's supervisor here.
    Start(Box<JobSubmission>, RpcReplyPort<Result<(), WireError>>),
    /// Stop a job's entrypoint: true when it was running here.
    Stop(String, RpcReplyPort<Result<bool, WireError>>),
}

/// The agent actor.
#[derive(Debug, Default)]
pub struct JobAgent;

/// State of the [`JobAgent`].
pub struct JobAgentState {
    args: JobAgentArgs,
    supervisors: HashMap<String, ActorRef<SupervisorMsg>>,
    by_cell: HashMap<ractor::ActorId, String>,
}

impl Actor for JobAgent {
    type Msg = JobAgentMsg;
    type State = JobAgentState;
    type Arguments = JobAgentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<JobAgentMsg>,
        args: JobAgentArgs,
    ) -> Result<JobAgentState, ActorProcessingErr> {
        Ok(JobAgentState { args, supervisors: HashMap::new(), by_cell: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<JobAgentMsg>,
        message: JobAgentMsg,
        state: &mut JobAgentState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            JobAgentMsg::Start(submission, reply) => {
                let id = submission.submission_id.clone();
                if state.supervisors.contains_key(&id) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let args = SupervisorArgs { agent: state.args.clone(), submission: *submission };
                match Actor::spawn_linked(None, JobSupervisor, args, myself.get_cell()).await {
                    Ok((supervisor, _)) => {
                        state.by_cell.insert(supervisor.get_id(), id.clone());
                        state.supervisors.insert(id, supervisor);
                        let _ = reply.send(Ok(()));
                    }
                    Err(error) => {
                        let _ =
                            reply.send(Err(WireError::internal(format!("cannot start the job supervisor: {error}"))));
                    }
                }
            }
            JobAgentMsg::Stop(id, reply) => match state.supervisors.get(&id) {
                Some(supervisor) => {
                    let _ = supervisor.cast(SupervisorMsg::Stop);
                    let _ = reply.send(Ok(true));
                }
                None => {
                    let _ = reply.send(Err(WireError::new(
                        ErrorCode::NotFound,
                        format!("job {id} has no supervisor on this node (it ended, or the node restarted)"),
                    )));
                }
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<JobAgentMsg>,
        event: SupervisionEvent,
        state: &mut JobAgentState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure): (ActorCell, Option<String>) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(id) = state.by_cell.remove(&cell.get_id()) else { return Ok(()) };
        state.supervisors.remove(&id);
        if let Some(why) = failure {
            warn!(submission_id = %id, %why, "a job supervisor failed");
            let gcs = state.args.gcs.clone();
            tokio::spawn(async move {
                let update = SubmissionUpdate::Ended {
                    status: SubmissionStatus::Failed,
                    message: format!("Unexpected error occurred: the job supervisor failed: {why}"),
                    error_type: Some("SUPERVISOR_FAILED".into()),
                    exit_code: None,
                    log_bytes: 0,
                };
                let _ = gcs.call(UpdateSubmissionRequest { submission_id: id, update }).await;
            });
        }
        Ok(())
    }
}
