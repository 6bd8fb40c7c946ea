//! The autoscaler: what the cluster lacks, from the GCS's demand snapshot, and
//! the node types of a cluster config, decide which nodes to add and remove.
//!
//! - [`config`]: the cluster config (YAML, Ray's field names), checked at start;
//! - [`planner`]: the pure decision (launches, terminations, infeasible demand).
//!
//! The actor that runs the planner on demand changes, and the node providers
//! (`local`, `kubernetes`), are issue 18's next steps.

pub mod config;
pub mod planner;
