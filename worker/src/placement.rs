//! Placement groups (Ray's `ray.util.placement_group`): reserve bundles of
//! resources across nodes together, then run tasks and actors in them.
//!
//! ```no_run
//! # fn main() -> manta::Result<()> {
//! use manta::{PlacementStrategy, SchedulingStrategy, TaskOptions, bundle};
//! let group = manta::placement_group(vec![bundle([("CPU", 1.0)]), bundle([("CPU", 1.0)])], PlacementStrategy::Spread)?;
//! group.ready()?;
//! let in_bundle = TaskOptions::default().scheduling_strategy(SchedulingStrategy::placement_group(group.id(), Some(0)));
//! manta::remove_placement_group(&group)?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use manta_proto::message::Request;
use manta_proto::placement::{
    CreatePlacementGroupRequest, GetPlacementGroupRequest, PlacementGroupInfo, PlacementGroupSpec, PlacementGroupState,
    PlacementStrategy, RemovePlacementGroupRequest, WaitPlacementGroupRequest,
};
use manta_proto::resources::{Quantity, ResourceSet};
use manta_proto::rpc::Rpc;
use manta_proto::{NodeId, PlacementGroupId};

use crate::core::{block_on, core};
use crate::error::{Error, Result};

/// One bundle: resource name → amount.
pub type Bundle = BTreeMap<String, f64>;

/// A bundle from `(name, amount)` pairs: `bundle([("CPU", 1.0), ("GPU", 1.0)])`.
pub fn bundle<'a>(resources: impl IntoIterator<Item = (&'a str, f64)>) -> Bundle {
    resources.into_iter().map(|(name, amount)| (name.to_string(), amount)).collect()
}

/// A placement group's options beyond its bundles and strategy.
#[derive(Debug, Clone, Default)]
pub struct PlacementGroupOptions {
    name: Option<String>,
    namespace: Option<String>,
    detached: bool,
}

impl PlacementGroupOptions {
    /// Defaults: no name, the job's namespace, ends with its job.
    pub fn new() -> Self {
        Self::default()
    }

    /// A name, unique in its namespace (`manta::get_placement_group` finds it).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The name's namespace (default: the job's).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Keep the group after its job ends (Ray's `lifetime="detached"`).
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
}

/// A placement group: its bundles are reserved together, as a whole or not at all.
#[derive(Debug, Clone)]
pub struct PlacementGroup {
    id: PlacementGroupId,
    bundles: Vec<ResourceSet>,
    strategy: PlacementStrategy,
}

impl PlacementGroup {
    /// Its id (for `SchedulingStrategy::placement_group`).
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }

    /// Number of bundles.
    pub fn bundle_count(&self) -> usize {
        self.bundles.len()
    }

    /// Its strategy.
    pub fn strategy(&self) -> PlacementStrategy {
        self.strategy
    }

    /// Waits until every bundle is reserved (`CREATED`); fails if the group is removed.
    pub fn ready(&self) -> Result<()> {
        loop {
            match self.wait(Duration::from_secs(3600))? {
                true => return Ok(()),
                false if self.state()? == PlacementGroupState::Removed => {
                    return Err(Error::InvalidArgument(format!("placement group {} was removed", self.id)));
                }
                false => {}
            }
        }
    }

    /// Waits up to `timeout` for the group to be `CREATED`; true when it is.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let request = WaitPlacementGroupRequest {
                pg_id: self.id,
                timeout_ms: left.min(Duration::from_secs(30)).as_millis() as u64,
            };
            let info = gcs_call(request, left.min(Duration::from_secs(30)) + Duration::from_secs(10))?.info;
            match info.map(|info| info.state) {
                Some(PlacementGroupState::Created) => return Ok(true),
                Some(PlacementGroupState::Removed) | None => return Ok(false),
                Some(_) if Instant::now() >= deadline => return Ok(false),
                Some(_) => {}
            }
        }
    }

    /// Its current state.
    pub fn state(&self) -> Result<PlacementGroupState> {
        Ok(self.info()?.state)
    }

    /// The node holding each bundle (`None` while unplaced).
    pub fn bundle_nodes(&self) -> Result<Vec<Option<NodeId>>> {
        Ok(self.info()?.bundle_nodes)
    }

    fn info(&self) -> Result<PlacementGroupInfo> {
        let request = GetPlacementGroupRequest { pg_id: Some(self.id), name: None, namespace: String::new() };
        gcs_call(request, Duration::from_secs(10))?
            .info
            .ok_or_else(|| Error::InvalidArgument(format!("no placement group {}", self.id)))
    }
}

pub(crate) fn gcs_call<R: Rpc>(request: R, timeout: Duration) -> Result<R::Reply> {
    let core = core()?;
    let gcs = core.gcs.with_timeout(timeout);
    Ok(block_on(&core.handle, async move { gcs.call(request).await })?)
}

pub(crate) fn resource_set(bundle: &Bundle, index: usize) -> Result<ResourceSet> {
    let mut set = ResourceSet::new();
    for (name, amount) in bundle {
        let quantity = Quantity::from_f64(*amount).ok_or_else(|| {
            Error::InvalidArgument(format!("bundle {index}: {name} = {amount} is not a valid amount"))
        })?;
        set.set(name.clone(), quantity);
    }
    if set.iter().all(|(_, amount)| amount.is_zero()) {
        return Err(Error::InvalidArgument(format!("bundle {index} is empty: give every bundle some resources")));
    }
    Ok(set)
}

/// Creates a placement group (returns at once; `ready()` waits for it).
pub fn placement_group(bundles: Vec<Bundle>, strategy: PlacementStrategy) -> Result<PlacementGroup> {
    placement_group_with(bundles, strategy, PlacementGroupOptions::default())
}

/// [`placement_group`] with a name, namespace or detached lifetime.
pub fn placement_group_with(
    bundles: Vec<Bundle>,
    strategy: PlacementStrategy,
    options: PlacementGroupOptions,
) -> Result<PlacementGroup> {
    if bundles.is_empty() {
        return Err(Error::InvalidArgument("a placement group needs at least one bundle".into()));
    }
    let core = core()?;
    let bundles: Vec<ResourceSet> =
        bundles.iter().enumerate().map(|(index, bundle)| resource_set(bundle, index)).collect::<Result<_>>()?;
    let id = PlacementGroupId::random();
    let spec = PlacementGroupSpec {
        pg_id: id,
        name: options.name,
        namespace: options.namespace.unwrap_or_else(|| core.job.namespace.clone()),
        bundles: bundles.clone(),
        strategy,
        detached: options.detached,
        job_id: core.job.job_id,
    };
    let named = spec.name.is_some();
    let request = CreatePlacementGroupRequest { spec };
    if named {
        // A taken name must fail here, so wait for the answer.
        gcs_call(request, Duration::from_secs(10)).map_err(|error| Error::InvalidArgument(error.to_string()))?;
    } else {
        send_in_order(request.into_request())?;
    }
    Ok(PlacementGroup { id, bundles, strategy })
}

/// Sends `request` to the GCS without waiting for its answer (as Ray, creation and
/// removal are asynchronous); later requests on the link arrive after it.
fn send_in_order(request: Request) -> Result<()> {
    let core = core()?;
    let gcs = core.gcs.peer().clone();
    let name = request.name();
    let pending = block_on(&core.handle, async move { gcs.send(request, Duration::from_secs(30)).await })?;
    core.handle.spawn(async move {
        // Once `shutdown` has begun (no core installed), a failure is the embedded
        // cluster stopping under the request, which the job's end makes moot.
        if let Err(error) = pending.wait().await
            && crate::core::core().is_ok()
        {
            eprintln!("manta: warning: {name} failed: {error}");
        }
    });
    Ok(())
}

/// Removes a group: its bundles are released and what runs in them is ended.
/// Returns at once, as Ray's; the group's state turns `REMOVED`.
pub fn remove_placement_group(group: &PlacementGroup) -> Result<()> {
    send_in_order(Request::RemovePlacementGroup(RemovePlacementGroupRequest { pg_id: group.id }))
}

/// A live placement group by name, in the job's namespace.
pub fn get_placement_group(name: &str) -> Result<PlacementGroup> {
    let core = core()?;
    let request =
        GetPlacementGroupRequest { pg_id: None, name: Some(name.to_string()), namespace: core.job.namespace.clone() };
    let info = gcs_call(request, Duration::from_secs(10))?
        .info
        .ok_or_else(|| Error::InvalidArgument(format!("no placement group named {name:?}")))?;
    Ok(PlacementGroup { id: info.spec.pg_id, bundles: info.spec.bundles, strategy: info.spec.strategy })
}
