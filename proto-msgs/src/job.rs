//! Jobs as they travel: what every worker of a job needs ([`JobConfig`]), a
//! driver registering and ending its job, its program and runtime environment,
//! and the records `manta list jobs` shows. Re-exported from [`crate::task`].

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::runtime_env::RuntimeEnvSpec;
use crate::state::JobState;

/// What every worker of a job needs to know, sent with each lease request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConfig {
    /// The job.
    pub job_id: JobId,
    /// Namespace for named actors.
    pub namespace: String,
    /// The program workers run: the package the driver uploaded its own binary
    /// as (`_manta_exe_<blake3>`). Nodes start it from their cache, never from a path.
    pub executable: String,
    /// GCS address, for workers.
    pub gcs_address: String,
}

/// A driver starts a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterJobRequest {
    /// Namespace for named actors (empty: a fresh anonymous one).
    pub namespace: String,
    /// The driver's pid.
    pub driver_pid: u32,
    /// A driver whose link to a restarted GCS came back claims its running job.
    #[serde(default)]
    pub reattach: Option<JobId>,
    /// The submitted job whose entrypoint this driver is (`manta job submit`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission_id: Option<String>,
}

/// The new job's id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterJobReply {
    /// The job.
    pub job_id: JobId,
    /// The namespace (generated when the request left it empty).
    pub namespace: String,
}

/// A job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishJobRequest {
    /// The job.
    pub job_id: JobId,
}

/// Published when a job ends: raylets end its workers (detached actors excepted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobFinishedEvent {
    /// The job.
    pub job_id: JobId,
}

/// A job as `manta list jobs` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub job_id: JobId,
    /// Its namespace.
    pub namespace: String,
    /// The driver's pid.
    pub driver_pid: u32,
    /// Running or finished.
    pub state: JobState,
    /// Milliseconds since the Unix epoch.
    pub start_time_ms: u64,
    /// When it finished.
    pub end_time_ms: Option<u64>,
    /// Its program and job-level runtime environment, once the driver gave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_env: Option<JobRuntimeEnvEvent>,
}

/// GCS: a driver gives its job's program and runtime environment (recorded with
/// the job, and published on the jobs channel so nodes can set it up early).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetJobRuntimeEnvRequest {
    /// The job (the sender must be its driver).
    pub job_id: JobId,
    /// Its program (a package name) and environment.
    pub env: JobRuntimeEnvEvent,
}

/// A job's program and job-level runtime environment (pubsub, `Channel::Jobs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRuntimeEnvEvent {
    /// The job.
    pub job_id: JobId,
    /// The program workers run (a package name).
    pub executable: String,
    /// The job-level environment, resolved.
    pub runtime_env: RuntimeEnvSpec,
}
