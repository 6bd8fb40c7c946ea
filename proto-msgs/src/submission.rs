//! Submitted jobs (Ray's "submission jobs"): an entrypoint shell command run on
//! the cluster by a job supervisor, with Ray's statuses and `JobInfo` fields.
//! The head's HTTP server submits, stops and deletes them; the GCS keeps their
//! records (a durable table) and picks the node; the supervisor on that node
//! runs the entrypoint and reports each transition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeId, PlacementGroupId};
use crate::runtime_env::RuntimeEnvSpec;

/// The variable a job supervisor sets for its entrypoint: the submission id
/// (a driver started by it links its job to the submission).
pub const SUBMISSION_ID_VAR: &str = "MANTA_SUBMISSION_ID";

/// Ray's `JobStatus`, with Ray's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubmissionStatus {
    /// Submitted; waiting for resources, its supervisor or its runtime env.
    Pending,
    /// The entrypoint runs.
    Running,
    /// Stopped by a user.
    Stopped,
    /// The entrypoint exited with status 0.
    Succeeded,
    /// The entrypoint failed, or its supervisor, node or runtime env did.
    Failed,
}

impl SubmissionStatus {
    /// Stopped, succeeded or failed: it never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, SubmissionStatus::Stopped | SubmissionStatus::Succeeded | SubmissionStatus::Failed)
    }

    /// Ray's text (`"RUNNING"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SubmissionStatus::Pending => "PENDING",
            SubmissionStatus::Running => "RUNNING",
            SubmissionStatus::Stopped => "STOPPED",
            SubmissionStatus::Succeeded => "SUCCEEDED",
            SubmissionStatus::Failed => "FAILED",
        }
    }
}

/// What an entrypoint needs on its node (Ray's `entrypoint_num_cpus` and friends).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntrypointResources {
    /// CPUs held while the entrypoint runs.
    pub num_cpus: f64,
    /// GPUs held while the entrypoint runs.
    pub num_gpus: f64,
    /// Bytes of memory held.
    pub memory: u64,
    /// Custom resources held.
    pub custom: BTreeMap<String, f64>,
}

impl EntrypointResources {
    /// True when nothing is asked for (the entrypoint runs on the head).
    pub fn is_empty(&self) -> bool {
        self.num_cpus <= 0.0 && self.num_gpus <= 0.0 && self.memory == 0 && self.custom.values().all(|v| *v <= 0.0)
    }
}

/// A submitted job as the GCS records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSubmission {
    /// Its id (`mantasubmit_…` unless the submitter chose one).
    pub submission_id: String,
    /// The shell command.
    pub entrypoint: String,
    /// Where it is.
    pub status: SubmissionStatus,
    /// Ray's status message.
    pub message: String,
    /// Why it failed, in one word (`"RUNTIME_ENV_SETUP_FAILURE"`, `"SUPERVISOR_NODE_DIED"`, …).
    #[serde(default)]
    pub error_type: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub start_time_ms: u64,
    /// When it reached a terminal status.
    #[serde(default)]
    pub end_time_ms: Option<u64>,
    /// The submitter's metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The runtime env as the submitter gave it (JSON text, shown back as given).
    #[serde(default)]
    pub runtime_env_json: String,
    /// The same, resolved (packages only): what the supervisor builds and the driver inherits.
    #[serde(default)]
    pub runtime_env: RuntimeEnvSpec,
    /// What the entrypoint holds on its node.
    #[serde(default)]
    pub resources: EntrypointResources,
    /// The node its supervisor runs on, once placed.
    #[serde(default)]
    pub driver_node_id: Option<NodeId>,
    /// That node's IP address.
    #[serde(default)]
    pub driver_node_ip: Option<String>,
    /// The entrypoint's pid, once started.
    #[serde(default)]
    pub driver_pid: Option<u32>,
    /// Its exit code (negative: the signal that ended it).
    #[serde(default)]
    pub driver_exit_code: Option<i32>,
    /// The manta job its driver started, if it called `manta::init`.
    #[serde(default)]
    pub job_id: Option<JobId>,
    /// The driver log's size when the job ended (a log follower has it all once it read this much).
    #[serde(default)]
    pub log_bytes: Option<u64>,
    /// The placement group (one bundle) that holds the entrypoint's resources, when it asks for any.
    #[serde(default)]
    pub placement_group: Option<PlacementGroupId>,
}

/// Ray's message for a job that has not started.
pub const PENDING_MESSAGE: &str =
    "Job has not started yet. It may be waiting for resources or for its runtime environment to be set up.";

impl JobSubmission {
    /// A new `PENDING` job (no runtime env, no resources, no metadata yet).
    pub fn pending(submission_id: impl Into<String>, entrypoint: impl Into<String>, now_ms: u64) -> Self {
        Self {
            submission_id: submission_id.into(),
            entrypoint: entrypoint.into(),
            status: SubmissionStatus::Pending,
            message: PENDING_MESSAGE.into(),
            error_type: None,
            start_time_ms: now_ms,
            end_time_ms: None,
            metadata: BTreeMap::new(),
            runtime_env_json: "{}".into(),
            runtime_env: RuntimeEnvSpec::default(),
            resources: EntrypointResources::default(),
            driver_node_id: None,
            driver_node_ip: None,
            driver_pid: None,
            driver_exit_code: None,
            job_id: None,
            log_bytes: None,
            placement_group: None,
        }
    }

    /// The driver log's file name on the supervisor's node (Ray's name).
    pub fn log_file_name(&self) -> String {
        log_file_name(&self.submission_id)
    }
}

/// The driver log's file name on the supervisor's node.
pub fn log_file_name(submission_id: &str) -> String {
    format!("job-driver-{submission_id}.log")
}

/// Checks a submission id: letters, digits, `-`, `_` and `.`, 1 to 128 of them
/// (it names a file and travels in URLs).
pub fn check_submission_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "submission_id {id:?} is not valid: use 1 to 128 letters, digits, '-', '_' or '.' (not starting with '.')"
        ))
    }
}

/// A fresh submission id, `mantasubmit_` and 16 characters without look-alikes (as Ray's `raysubmit_…`).
pub fn new_submission_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz123456789";
    let suffix: String = (0..16).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    format!("mantasubmit_{suffix}")
}

/// GCS (from the head's HTTP server): record a new job and start it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitJobRequest {
    /// The job, `PENDING`; its id must be new.
    pub submission: Box<JobSubmission>,
}

/// GCS: one job by submission id, or by the manta job id its driver got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetSubmissionRequest {
    /// Submission id or job id text.
    pub id: String,
}

/// Reply to [`GetSubmissionRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetSubmissionReply {
    /// The job, if there is one.
    pub submission: Option<Box<JobSubmission>>,
}

/// GCS: every submitted job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListSubmissionsRequest {}

/// Reply to [`ListSubmissionsRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListSubmissionsReply {
    /// Oldest first.
    pub submissions: Vec<JobSubmission>,
}

/// GCS: stop a job (its supervisor signals the entrypoint's process group).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopSubmissionRequest {
    /// Submission id or job id text.
    pub id: String,
}

/// Reply to [`StopSubmissionRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopSubmissionReply {
    /// False when the job had already ended.
    pub stopped: bool,
}

/// GCS: forget a terminal job (its log file stays on its node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteSubmissionRequest {
    /// Submission id or job id text.
    pub id: String,
}

/// A supervisor's report of a transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SubmissionUpdate {
    /// The entrypoint started.
    Running {
        /// Its pid.
        pid: u32,
    },
    /// The job ended.
    Ended {
        /// `SUCCEEDED`, `FAILED` or `STOPPED`.
        status: SubmissionStatus,
        /// Ray's message.
        message: String,
        /// Why, in one word, when it failed.
        error_type: Option<String>,
        /// The entrypoint's exit code, when it ran.
        exit_code: Option<i32>,
        /// The driver log's final size.
        log_bytes: u64,
    },
}

/// GCS (from the supervisor's node): a job's status changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateSubmissionRequest {
    /// The job.
    pub submission_id: String,
    /// What happened.
    pub update: SubmissionUpdate,
}

/// Node (from the GCS): run a job's supervisor here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartSupervisorRequest {
    /// The job.
    pub submission: Box<JobSubmission>,
}

/// Node (from the GCS): stop a job's entrypoint (SIGTERM, then SIGKILL after the grace period).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopSupervisorRequest {
    /// The job.
    pub submission_id: String,
}

/// Pubsub (`Channel::Submissions`): a submitted job's record after a change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmissionChangedEvent {
    /// The record.
    pub submission: Box<JobSubmission>,
}

/// Node to GCS, and pubsub (`Channel::Submissions`): output of a job's entrypoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DriverLogEvent {
    /// The job.
    pub submission_id: String,
    /// Where `data` starts in the driver log.
    pub offset: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_ray_s_and_ids_are_checked() {
        assert_eq!(serde_json::to_string(&SubmissionStatus::Succeeded).unwrap(), "\"SUCCEEDED\"");
        assert!(SubmissionStatus::Stopped.is_terminal() && !SubmissionStatus::Running.is_terminal());
        let id = new_submission_id();
        assert!(id.starts_with("mantasubmit_") && id.len() == 28, "{id}");
        check_submission_id(&id).unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(check_submission_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(log_file_name("s1"), "job-driver-s1.log");
    }
}
