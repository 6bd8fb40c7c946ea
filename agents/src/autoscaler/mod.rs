//! The autoscaler: what the cluster lacks, from the GCS's demand snapshot, and
//! the node types of a cluster config, decide which nodes to add and remove,
//! and have a node provider add and remove them.
//!
//! - [`config`]: the cluster config (YAML, Ray's field names), checked at start;
//! - [`planner`]: the pure decision (launches, terminations, infeasible demand);
//! - [`book`]: a round's pure step (launches waiting to join, drains before
//!   terminations) and the state it keeps between rounds;
//! - [`provider`]: the node provider interface, with [`local`] (processes on
//!   this machine) and [`kubernetes`] (worker pods);
//! - [`actor`]: the supervised actor that runs a round on every demand change.

pub mod actor;
pub mod book;
pub mod config;
pub mod kubernetes;
pub mod local;
pub mod planner;
pub mod provider;
