//! manta's per-node agents.
//!
//! This crate will hold the runtime-env agent, the log monitor, the metrics
//! agent, the autoscaler, the job manager and the dashboard, each a supervised
//! actor started by the node. None of them exists yet: the cluster spine
//! (membership, health checks, resources, auth) lands first, and each agent
//! arrives with the issue that asks for it. The crate is in the workspace now
//! so the dependency direction (`proto-msgs` ← `agents` ← `node`) is fixed
//! from the start.
