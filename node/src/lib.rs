//! The manta node: one process per machine.
//!
//! A node hosts the raylet (registration, resource reports, the cluster view;
//! leases and workers come next) and, on the head, the GCS. The `manta` command
//! line ([`cli`]) starts, inspects and stops nodes; [`node::start`] is the one
//! entry point the command line, the embedded cluster and tests all use.

pub mod autoscaling;
pub mod cli;
pub mod config;
pub mod fence;
pub mod gpus;
pub mod launcher;
pub mod leases;
pub mod ledger;
pub mod log_pipes;
pub mod logs;
pub mod node;
pub mod node_service;
pub mod object_store;
pub mod raylet;
pub mod resources;
pub mod scheduling;
pub mod service_discovery;
pub mod session;
pub mod supervisor;
pub mod worker_logs;

pub use config::{NodeConfig, Role};
pub use manta_proto::client::GcsClient;
pub use node::{Exit, Prepared, ReadyInfo, RunningNode, StartError, prepare, start};
