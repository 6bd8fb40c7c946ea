//! The autoscaler's decisions, as one pure function: given the nodes (joined
//! and launching), what is waiting (lease shapes, placement groups, explicit
//! `request_resources`) and the cluster config, [`plan`] returns the nodes to
//! launch per type, the nodes to terminate, and the demand no node type could
//! ever meet. No I/O and no clock: idle times come in with the nodes.
//!
//! The steps follow Ray's `resource_demand_scheduler` (reference §7.3, §7.4):
//! 1. `min_workers` per type (within `max_workers`);
//! 2. `request_resources` bundles, packed onto every node as if it were idle,
//!    launching for the rest (not limited by `upscaling_speed`);
//! 3. placement groups first, then lease shapes, packed first-fit onto what
//!    nodes have free; STRICT_PACK groups as one summed bundle, STRICT_SPREAD
//!    groups on distinct nodes (launching only when the whole group then fits);
//! 4. what is left: for each shape, the node type it fills best (the most of
//!    the node's resources used, never a node with resources nothing asked
//!    for when another type fits, then the smaller node), as many nodes as the
//!    count needs, within each type's and the cluster's `max_workers` and
//!    `upscaling_speed`;
//! 5. idle nodes past the timeout, that no demand (requested bundles
//!    included) lands on and no `min_workers` keeps, are terminated, longest
//!    idle first; never the head.
//!
//! Counts are kept as counts: 10,000 pending requests of one shape cost one
//! step, not 10,000.

use std::collections::BTreeMap;
use std::time::Duration;

use manta_proto::placement::PlacementStrategy;

use super::config::ClusterConfig;

/// Resources by name (`CPU`, `GPU`, `memory`, custom ones).
pub type Shape = BTreeMap<String, f64>;

/// Slack for float sums of fractional resources.
const EPSILON: f64 = 1e-9;

/// A node the autoscaler knows: joined, or launched and not joined yet.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// The provider's id for it.
    pub id: String,
    /// Its node type (from the config).
    pub node_type: String,
    /// True for the head (never terminated, not counted as a worker).
    pub is_head: bool,
    /// Launched but not joined yet: counts as its type's full resources, free.
    pub pending: bool,
    /// Resources in all.
    pub total: Shape,
    /// Resources free now.
    pub available: Shape,
    /// How long it has held no work (zero while it holds any).
    pub idle_for: Duration,
}

impl NodeView {
    /// True when it holds no work.
    pub fn is_idle(&self) -> bool {
        !self.pending && self.idle_for > Duration::ZERO
    }
}

/// Lease requests of one shape waiting somewhere in the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeDemand {
    /// What each asks for.
    pub shape: Shape,
    /// How many.
    pub count: u64,
}

/// A placement group waiting to be placed.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDemand {
    /// Its bundles.
    pub bundles: Vec<Shape>,
    /// How they must be spread.
    pub strategy: PlacementStrategy,
}

/// Everything waiting, from the GCS's demand snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Demand {
    /// Queued lease requests by shape.
    pub shapes: Vec<ShapeDemand>,
    /// Pending placement groups.
    pub groups: Vec<GroupDemand>,
    /// `request_resources` bundles: capacity the cluster must have, busy or not.
    pub requested: Vec<Shape>,
}

/// Why a node type was launched (every launch has one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LaunchReason {
    /// Its type's `min_workers`.
    MinWorkers,
    /// `request_resources`.
    Requested,
    /// A placement group's bundles.
    PlacementGroup,
    /// Queued lease requests.
    Tasks,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes to launch per type, with why.
    pub launch: BTreeMap<String, Vec<LaunchReason>>,
    /// Nodes to terminate (provider ids), after draining.
    pub terminate: Vec<String>,
    /// Shapes no node type can hold, with how many wait for them.
    pub infeasible: Vec<ShapeDemand>,
    /// Demand that fits a type but waits for a `max_workers` or `upscaling_speed` limit.
    pub held_back: u64,
}

impl Plan {
    /// Nodes to launch of `node_type`.
    pub fn count(&self, node_type: &str) -> usize {
        self.launch.get(node_type).map_or(0, Vec::len)
    }

    /// Nodes to launch in all.
    pub fn launches(&self) -> usize {
        self.launch.values().map(Vec::len).sum()
    }
}

/// How many of `shape` fit in `free` (`u64::MAX` for an empty shape).
pub fn fits(free: &Shape, shape: &Shape) -> u64 {
    let mut count = u64::MAX;
    for (name, need) in shape.iter().filter(|(_, need)| **need > EPSILON) {
        let have = free.get(name).copied().unwrap_or_default();
        count = count.min(((have + EPSILON) / need).floor().max(0.0) as u64);
    }
    count
}

fn sum(bundles: &[Shape]) -> Shape {
    let mut total = Shape::new();
    for bundle in bundles {
        for (name, amount) in bundle {
            *total.entry(name.clone()).or_default() += amount;
        }
    }
    total
}

/// Resource names as indices, so the packing loop compares arrays, not maps.
struct Dims(BTreeMap<String, usize>);

/// What a shape needs, as (index, amount) pairs of its nonzero resources.
type Need = Vec<(usize, f64)>;

impl Dims {
    fn new<'a>(shapes: impl Iterator<Item = &'a Shape>) -> Dims {
        let mut names = BTreeMap::new();
        for shape in shapes {
            for name in shape.keys() {
                let next = names.len();
                names.entry(name.clone()).or_insert(next);
            }
        }
        Dims(names)
    }

    fn dense(&self, shape: &Shape) -> Vec<f64> {
        let mut values = vec![0.0; self.0.len()];
        for (name, amount) in shape {
            if let Some(index) = self.0.get(name) {
                values[*index] = *amount;
            }
        }
        values
    }

    fn need(&self, shape: &Shape) -> Need {
        shape.iter().filter(|(_, amount)| **amount > EPSILON).map(|(name, amount)| (self.0[name], *amount)).collect()
    }
}

/// How many of `need` fit in `free` (`u64::MAX` when it needs nothing).
fn fits_dense(free: &[f64], need: &Need) -> u64 {
    let mut count = u64::MAX;
    for (index, amount) in need {
        count = count.min(((free[*index] + EPSILON) / amount).floor().max(0.0) as u64);
        if count == 0 {
            break;
        }
    }
    count
}

fn take_dense(free: &mut [f64], need: &Need, times: u64) {
    for (index, amount) in need {
        free[*index] = (free[*index] - amount * times as f64).max(0.0);
    }
}

/// A node's free space during planning.
#[derive(Clone)]
struct Bin {
    free: Vec<f64>,
    /// Index into the nodes, or `None` for a node this plan launches.
    node: Option<usize>,
    /// The type of a node this plan launches.
    launched: Option<String>,
    used: bool,
}

/// The planner's running state.
struct Planner<'a> {
    config: &'a ClusterConfig,
    dims: Dims,
    bins: Vec<Bin>,
    /// Workers per type, joined + pending + launched by this plan.
    workers: BTreeMap<String, u64>,
    /// Launched by this plan per type, against `upscaling_speed`.
    new_by_type: BTreeMap<String, u64>,
    /// Joined (not pending) workers per type, for `upscaling_speed`.
    running: BTreeMap<String, u64>,
    /// Pending (launched earlier, not joined) per type.
    pending: BTreeMap<String, u64>,
    plan: Plan,
}

impl Planner<'_> {
    fn total_workers(&self) -> u64 {
        self.workers.values().sum()
    }

    /// Nodes of `node_type` that may still be launched, counting `upscaling_speed` when `limited`.
    fn room(&self, node_type: &str, limited: bool) -> u64 {
        let Some(kind) = self.config.available_node_types.get(node_type) else { return 0 };
        let have = self.workers.get(node_type).copied().unwrap_or_default();
        let mut room = u64::from(kind.max_workers)
            .saturating_sub(have)
            .min(u64::from(self.config.max_workers).saturating_sub(self.total_workers()));
        if limited {
            let running = self.running.get(node_type).copied().unwrap_or_default().max(1);
            let speed = ((self.config.upscaling_speed * running as f64).floor() as u64).max(5);
            let in_flight = self.pending.get(node_type).copied().unwrap_or_default()
                + self.new_by_type.get(node_type).copied().unwrap_or_default();
            room = room.min(speed.saturating_sub(in_flight));
        }
        room
    }

    fn launch(&mut self, node_type: &str, reason: LaunchReason) -> usize {
        *self.workers.entry(node_type.to_string()).or_default() += 1;
        *self.new_by_type.entry(node_type.to_string()).or_default() += 1;
        self.plan.launch.entry(node_type.to_string()).or_default().push(reason);
        let free = self.dims.dense(&self.config.available_node_types[node_type].resources);
        self.bins.push(Bin { free, node: None, launched: Some(node_type.to_string()), used: true });
        self.bins.len() - 1
    }

    /// Packs `count` of `shape` first-fit into the bins; returns how many did not fit.
    fn pack(&mut self, shape: &Shape, mut count: u64) -> u64 {
        let need = self.dims.need(shape);
        for bin in &mut self.bins {
            if count == 0 {
                break;
            }
            let fit = fits_dense(&bin.free, &need).min(count);
            if fit > 0 {
                take_dense(&mut bin.free, &need, fit);
                bin.used = true;
                count -= fit;
            }
        }
        count
    }

    /// The node type `shape` fills best: most of the node used by as many of
    /// `shape` as fit; then no resource kinds nothing asked for; then smaller.
    fn best_type(&self, shape: &Shape, limited: bool) -> Option<(String, u64)> {
        let mut best: Option<((f64, bool, f64), String, u64)> = None;
        for (name, kind) in &self.config.available_node_types {
            let per_node = fits(&kind.resources, shape);
            if per_node == 0 || self.room(name, limited) == 0 {
                continue;
            }
            let per_node = per_node.min(1 << 20);
            let used: Vec<f64> = kind
                .resources
                .iter()
                .filter(|(_, total)| **total > EPSILON)
                .map(|(name, total)| (shape.get(name).copied().unwrap_or_default() * per_node as f64 / total).min(1.0))
                .collect();
            let utilization = if used.is_empty() { 0.0 } else { used.iter().sum::<f64>() / used.len() as f64 };
            let no_waste = used.iter().all(|fraction| *fraction > EPSILON);
            let size: f64 = kind.resources.values().sum();
            let score = (utilization, no_waste, -size);
            let better = match &best {
                None => true,
                Some((current, _, _)) => {
                    (score.1, score.0, score.2).partial_cmp(&(current.1, current.0, current.2))
                        == Some(std::cmp::Ordering::Greater)
                }
            };
            if better {
                best = Some((score, name.clone(), per_node));
            }
        }
        best.map(|(_, name, per_node)| (name, per_node))
    }

    /// True when some node type could hold `shape` were there room.
    fn feasible(&self, shape: &Shape) -> bool {
        self.config.available_node_types.values().any(|kind| kind.max_workers > 0 && fits(&kind.resources, shape) > 0)
    }

    /// Launches nodes for `count` of `shape` left over after packing.
    fn launch_for(&mut self, shape: &Shape, mut count: u64, reason: LaunchReason, limited: bool) {
        let need = self.dims.need(shape);
        while count > 0 {
            let Some((node_type, per_node)) = self.best_type(shape, limited) else {
                if self.feasible(shape) {
                    self.plan.held_back += count;
                } else {
                    self.plan.infeasible.push(ShapeDemand { shape: shape.clone(), count });
                }
                return;
            };
            let needed = count.div_ceil(per_node).min(self.room(&node_type, limited));
            for _ in 0..needed {
                let bin = self.launch(&node_type, reason.clone());
                let fit = fits_dense(&self.bins[bin].free, &need).min(count);
                take_dense(&mut self.bins[bin].free, &need, fit);
                count -= fit;
            }
        }
    }

    /// A STRICT_SPREAD group: one bundle per distinct node, launching the rest
    /// (one node each) only when the whole group then fits.
    fn strict_spread(&mut self, bundles: &[Shape]) {
        let mut placed: Vec<(usize, Need)> = Vec::new();
        let mut left = Vec::new();
        for bundle in bundles {
            let need = self.dims.need(bundle);
            let free = (0..self.bins.len()).find(|index| {
                placed.iter().all(|(taken, _)| taken != index) && fits_dense(&self.bins[*index].free, &need) > 0
            });
            match free {
                Some(index) => placed.push((index, need)),
                None => left.push(bundle),
            }
        }
        let before = (self.bins.len(), self.workers.clone(), self.new_by_type.clone(), self.plan.launch.clone());
        for bundle in &left {
            match self.best_type(bundle, false) {
                Some((node_type, _)) => {
                    let bin = self.launch(&node_type, LaunchReason::PlacementGroup);
                    take_dense(&mut self.bins[bin].free, &self.dims.need(bundle), 1);
                }
                None => {
                    // Not the whole group: launch none of it.
                    let (bins, workers, new_by_type, launch) = before;
                    self.bins.truncate(bins);
                    (self.workers, self.new_by_type, self.plan.launch) = (workers, new_by_type, launch);
                    for bundle in &left {
                        if self.feasible(bundle) {
                            self.plan.held_back += 1;
                        } else {
                            self.plan.infeasible.push(ShapeDemand { shape: (*bundle).clone(), count: 1 });
                        }
                    }
                    return;
                }
            }
        }
        for (index, need) in placed {
            take_dense(&mut self.bins[index].free, &need, 1);
            self.bins[index].used = true;
        }
    }
}

/// Decides what to launch and terminate now.
pub fn plan(config: &ClusterConfig, nodes: &[NodeView], demand: &Demand) -> Plan {
    let group_bundles = demand.groups.iter().flat_map(|group| group.bundles.iter());
    let dims = Dims::new(
        config
            .available_node_types
            .values()
            .map(|kind| &kind.resources)
            .chain(nodes.iter().flat_map(|node| [&node.total, &node.available]))
            .chain(demand.shapes.iter().map(|demand| &demand.shape))
            .chain(group_bundles)
            .chain(demand.requested.iter()),
    );
    let mut planner = Planner {
        config,
        dims,
        bins: Vec::new(),
        workers: BTreeMap::new(),
        new_by_type: BTreeMap::new(),
        running: BTreeMap::new(),
        pending: BTreeMap::new(),
        plan: Plan::default(),
    };
    for node in nodes.iter().filter(|node| !node.is_head) {
        *planner.workers.entry(node.node_type.clone()).or_default() += 1;
        let bucket = if node.pending { &mut planner.pending } else { &mut planner.running };
        *bucket.entry(node.node_type.clone()).or_default() += 1;
    }

    // 1. min_workers.
    for (name, kind) in &config.available_node_types {
        let want = u64::from(kind.min_workers.min(kind.max_workers));
        while planner.workers.get(name).copied().unwrap_or_default() < want && planner.room(name, false) > 0 {
            planner.launch(name, LaunchReason::MinWorkers);
        }
    }

    // 2. request_resources: against whole nodes, as if idle.
    let mut requested_on = vec![false; nodes.len()];
    if !demand.requested.is_empty() {
        let launched = std::mem::take(&mut planner.bins);
        planner.bins = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| Bin {
                free: planner.dims.dense(&whole(config, node)),
                node: Some(index),
                launched: None,
                used: false,
            })
            .chain(launched.iter().cloned())
            .collect();
        let first_new = planner.bins.len();
        let mut requested = demand.requested.clone();
        requested.sort_by(order);
        for bundle in &requested {
            let left = planner.pack(bundle, 1);
            planner.launch_for(bundle, left, LaunchReason::Requested, false);
        }
        // A node a requested bundle landed on is kept, idle or not.
        for bin in &planner.bins[..first_new] {
            if let (Some(index), true) = (bin.node, bin.used) {
                requested_on[index] = true;
            }
        }
        // Nodes launched for requests are empty in reality: their whole type is free.
        let new: Vec<Bin> = planner.bins.drain(first_new..).collect();
        planner.bins = launched;
        for bin in new {
            let node_type = bin.launched.unwrap_or_default();
            let free =
                config.available_node_types.get(&node_type).map(|kind| kind.resources.clone()).unwrap_or_default();
            let free = planner.dims.dense(&free);
            planner.bins.push(Bin { free, node: None, launched: Some(node_type), used: true });
        }
    }

    // The real free space: joined nodes' available, launching nodes' whole type.
    let mut real: Vec<Bin> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let free = if node.pending { whole(config, node) } else { node.available.clone() };
            Bin { free: planner.dims.dense(&free), node: Some(index), launched: None, used: false }
        })
        .collect();
    real.append(&mut planner.bins);
    planner.bins = real;

    // 3. Placement groups first, then lease shapes.
    for group in &demand.groups {
        match group.strategy {
            PlacementStrategy::StrictSpread => planner.strict_spread(&group.bundles),
            PlacementStrategy::StrictPack => {
                let whole = sum(&group.bundles);
                let left = planner.pack(&whole, 1);
                planner.launch_for(&whole, left, LaunchReason::PlacementGroup, false);
            }
            PlacementStrategy::Pack | PlacementStrategy::Spread => {
                for bundle in &group.bundles {
                    let left = planner.pack(bundle, 1);
                    planner.launch_for(bundle, left, LaunchReason::PlacementGroup, false);
                }
            }
        }
    }
    let mut shapes: Vec<&ShapeDemand> = demand.shapes.iter().filter(|demand| demand.count > 0).collect();
    shapes.sort_by(|a, b| order(&a.shape, &b.shape));
    for demand in shapes {
        let left = planner.pack(&demand.shape, demand.count);
        // 4. What is left launches nodes.
        planner.launch_for(&demand.shape, left, LaunchReason::Tasks, true);
    }

    // 5. Idle nodes past the timeout that nothing landed on.
    let used: Vec<bool> = {
        let mut used = requested_on;
        for bin in &planner.bins {
            if let (Some(index), true) = (bin.node, bin.used) {
                used[index] = true;
            }
        }
        used
    };
    let mut idle: Vec<usize> = (0..nodes.len())
        .filter(|index| {
            let node = &nodes[*index];
            !node.is_head && node.is_idle() && node.idle_for >= config.idle_timeout() && !used[*index]
        })
        .collect();
    idle.sort_by_key(|index| std::cmp::Reverse(nodes[*index].idle_for));
    let mut left_of_type = planner.workers.clone();
    for index in idle {
        let node = &nodes[index];
        let min = config.available_node_types.get(&node.node_type).map_or(0, |kind| u64::from(kind.min_workers));
        let count = left_of_type.entry(node.node_type.clone()).or_default();
        if *count > min {
            *count -= 1;
            planner.plan.terminate.push(node.id.clone());
        }
    }
    planner.plan
}

/// A node's resources when it holds nothing (a launching node: its type's).
fn whole(config: &ClusterConfig, node: &NodeView) -> Shape {
    match (node.pending, config.available_node_types.get(&node.node_type)) {
        (true, Some(kind)) => kind.resources.clone(),
        _ => node.total.clone(),
    }
}

/// Bigger demands first: more resource kinds, then more in all, then by name.
fn order(a: &Shape, b: &Shape) -> std::cmp::Ordering {
    let total = |shape: &Shape| shape.values().sum::<f64>();
    b.len()
        .cmp(&a.len())
        .then(total(b).partial_cmp(&total(a)).unwrap_or(std::cmp::Ordering::Equal))
        .then_with(|| a.keys().cmp(b.keys()))
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
