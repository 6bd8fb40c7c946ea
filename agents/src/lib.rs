//! manta's per-node agents, each a supervised actor started by the node.
//!
//! - [`log_monitor`]: tails the workers' log files and streams new lines to the
//!   drivers of their jobs.
//!
//! - [`metrics_agent`]: serves the node's `/metrics`, with what workers push.
//! - [`runtime_env`]: builds, caches and frees the environments workers start in.
//! - [`jobs`]: runs submitted jobs' entrypoints (a supervisor per job).
//! - [`http`]: the head's HTTP server: the Jobs REST API (Ray's paths and JSON),
//!   the state API (`/api/v0/...`) and the dashboard.
//! - [`metrics_history`]: the last hour of the cluster's built-in metrics, for
//!   the dashboard's charts.
//! - [`state_json`]: the state tables' rows as JSON, shared by the state API,
//!   the dashboard and `manta list`.
//! - [`autoscaler`]: the cluster config and the pure planner (issue 18, in progress).
//!
//! Dependencies run `proto-msgs` ← `agents` ← `node`.

pub mod autoscaler;
pub mod http;
pub mod jobs;
pub mod log_monitor;
pub mod metrics_agent;
pub mod metrics_history;
pub mod runtime_env;
pub mod state_json;
