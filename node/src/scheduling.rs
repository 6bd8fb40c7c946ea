//! Scheduling policies: where a lease request should run. One policy per file,
//! each a pure function over a [`NodeView`] list, unit-tested without a runtime.
//!
//! - [`hybrid`]: the DEFAULT policy (stay local until 50 % busy, then the least
//!   loaded of the top k nodes; keep GPU nodes for GPU work).
//! - [`spread`]: round robin over nodes that can run the request.
//! - [`node_affinity`]: one given node, hard or soft.

pub mod dense;
pub mod hybrid;
pub mod node_affinity;
pub mod spread;

use manta_proto::NodeId;
use manta_proto::resources::{ResourceSet, names};

/// One node as the policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// The node.
    pub node_id: NodeId,
    /// Its address.
    pub address: String,
    /// What it offers.
    pub total: ResourceSet,
    /// What is free.
    pub available: ResourceSet,
}

impl NodeView {
    /// The request could ever run here.
    pub fn feasible(&self, request: &ResourceSet) -> bool {
        self.total.contains(request)
    }

    /// The request fits what is free now.
    pub fn available_for(&self, request: &ResourceSet) -> bool {
        self.available.contains(request)
    }

    /// Critical-resource utilization: the highest `1 - available/total` over CPU,
    /// memory and object store memory (GPU and custom resources do not count).
    pub fn utilization(&self) -> f64 {
        [names::CPU, names::MEMORY, names::OBJECT_STORE_MEMORY]
            .iter()
            .filter_map(|name| {
                let total = self.total.get(name).as_f64();
                (total > 0.0).then(|| 1.0 - self.available.get(name).as_f64() / total)
            })
            .fold(0.0, f64::max)
    }

    /// The node has GPUs.
    pub fn has_gpus(&self) -> bool {
        !self.total.get(names::GPU).is_zero()
    }
}

/// A small deterministic random source for policies (seeded per raylet).
#[derive(Debug, Clone)]
pub struct PolicyRng(u64);

impl PolicyRng {
    /// Seeded from `seed` (never zero).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A number in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound.max(1) as u64) as usize
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use manta_proto::NodeId;
    use manta_proto::resources::{Quantity, ResourceSet};

    use super::NodeView;

    /// A node with `cpus` CPUs of which `free` are free, and optional GPUs; ids sort by `index`.
    pub fn node(index: u8, cpus: u64, free: u64, gpus: u64) -> NodeView {
        let id: NodeId = format!("{index:02x}{}", "00".repeat(15)).parse().unwrap();
        let total = ResourceSet::new().with("CPU", Quantity::from_whole(cpus)).with("GPU", Quantity::from_whole(gpus));
        let available =
            ResourceSet::new().with("CPU", Quantity::from_whole(free)).with("GPU", Quantity::from_whole(gpus));
        NodeView { node_id: id, address: format!("n{index}"), total, available }
    }

    pub fn cpus(count: u64) -> ResourceSet {
        ResourceSet::new().with("CPU", Quantity::from_whole(count))
    }
}
