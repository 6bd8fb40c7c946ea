//! manta's per-node agents, each a supervised actor started by the node.
//!
//! - [`log_monitor`]: tails the workers' log files and streams new lines to the
//!   drivers of their jobs.
//!
//! The runtime-env agent, the metrics agent, the autoscaler, the job manager and
//! the dashboard arrive with the issues that ask for them. Dependencies run
//! `proto-msgs` ← `agents` ← `node`.

pub mod log_monitor;
pub mod metrics_agent;
