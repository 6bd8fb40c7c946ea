//! Worker logs: lines streamed from a node's log monitor to the drivers of the
//! job, and the requests behind `manta logs`.

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, WorkerId};

/// Marker a worker prints (alone on a line, on stdout and stderr) when the task
/// or actor it runs changes, so the log monitor can name the lines after it.
pub const TASK_NAME_MARKER: &str = ":manta_task_name:";

/// Driver to node: send me the log lines of `job_id`'s workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubscribeLogsRequest {
    /// The job.
    pub job_id: JobId,
}

/// Node: send the caller every line the job's workers on this node printed so
/// far (to a link subscribed with [`SubscribeLogs`](SubscribeLogsRequest)), then
/// answer. A driver ending its job waits on this instead of a quiet period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlushLogsRequest {
    /// The job.
    pub job_id: JobId,
}

/// Lines of one worker's stdout or stderr.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerLines {
    /// The worker.
    pub worker_id: WorkerId,
    /// Its pid.
    pub pid: u32,
    /// The task function or actor type it was running (no module path).
    pub name: String,
    /// True for stderr.
    pub is_err: bool,
    /// The lines, without their newline.
    pub lines: Vec<String>,
    /// Lines the rate limit held back since the last batch (they stay in the file).
    pub held_back: u64,
    /// The log file, for the held-back note.
    pub file: String,
}

/// Node to driver: new log lines of the driver's job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogBatchEvent {
    /// The node's IP (for the `ip=` prefix).
    pub ip: String,
    /// Lines per worker stream.
    pub streams: Vec<WorkerLines>,
}

/// Node: its log files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListLogsRequest {}

/// One log file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogFileInfo {
    /// File name (in the node's log folder).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// The node's log files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListLogsReply {
    /// The files, by name.
    pub files: Vec<LogFileInfo>,
}

/// Node: read a log file from `offset` (at most `max_bytes`), or its last `tail_lines` lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadLogRequest {
    /// File name (no folders).
    pub name: String,
    /// Start here (ignored with `tail_lines`).
    pub offset: u64,
    /// At most this many bytes.
    pub max_bytes: u64,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
}

/// A piece of a log file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadLogReply {
    /// The bytes read.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Where the next read continues.
    pub next_offset: u64,
}
