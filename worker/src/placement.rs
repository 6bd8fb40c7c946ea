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
use manta_proto::net::PendingReply;
use manta_proto::placement::{
    CreatePlacementGroupRequest, GetPlacementGroupRequest, PlacementGroupInfo, PlacementGroupSpec, PlacementGroupState,
    PlacementStrategy, RemovePlacementGroupRequest, WaitPlacementGroupRequest,
};
use manta_proto::resources::{Quantity, ResourceSet};
use manta_proto::rpc::Rpc;
use manta_proto::{NodeId, PlacementGroupId};

use crate::core::{block_on_here, core};
use crate::error::{Error, Result};

mod early;
pub(crate) use early::EarlyWaits;
use early::{Answer, Verdict};

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
        if let Some(done) = self.early_answer(timeout)? {
            return Ok(done);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let request = WaitPlacementGroupRequest {
                pg_id: self.id,
                timeout_ms: left.min(Duration::from_secs(30)).as_millis() as u64,
            };
            let info = gcs_call(request, left.min(Duration::from_secs(30)) + Duration::from_secs(10))?.info;
            match early::verdict(Answer::State(info.map(|info| info.state))) {
                Verdict::Done(done) => return Ok(done),
                Verdict::Ask if Instant::now() >= deadline => return Ok(false),
                Verdict::Ask => {}
            }
        }
    }

    /// The answer of the wait sent with the create, when there is one: waits for
    /// it up to `timeout` (`Some(false)` when it has not come by then; it stays for
    /// the next `wait`). `None`: ask the GCS.
    fn early_answer(&self, timeout: Duration) -> Result<Option<bool>> {
        let core = core()?;
        let Some(mut slot) = core.placement_waits.slot(&self.id) else { return Ok(None) };
        let answer = *slot.borrow();
        let answer = match answer {
            Some(answer) => answer,
            None => {
                let waited = block_on_here(&core.handle, async move {
                    let answer = tokio::time::timeout(timeout, slot.wait_for(Option::is_some)).await;
                    answer.map(|answer| answer.ok().and_then(|answer| *answer))
                });
                match waited {
                    Err(_elapsed) => return Ok(Some(false)),
                    Ok(answer) => answer.unwrap_or(Answer::Failed),
                }
            }
        };
        core.placement_waits.forget(&self.id);
        Ok(match early::verdict(answer) {
            Verdict::Done(done) => Some(done),
            Verdict::Ask => None,
        })
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
    Ok(block_on_here(&core.handle, gcs.call(request))?)
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
        return Ok(PlacementGroup { id, bundles, strategy });
    }
    let created = send_in_order(request.into_request())?;
    let early = core.placement_waits.open(id).map(|answer| {
        let request = WaitPlacementGroupRequest { pg_id: id, timeout_ms: early::EARLY_WAIT.as_millis() as u64 };
        (send_in_order(request.into_request()), answer)
    });
    core.handle.spawn(async move {
        warn_on_failure(created).await;
        let Some((sent, answer)) = early else { return };
        let reply = match sent {
            Ok(pending) => pending.wait_for::<WaitPlacementGroupRequest>().await.ok(),
            Err(_) => None,
        };
        answer
            .send_replace(Some(reply.map_or(Answer::Failed, |reply| Answer::State(reply.info.map(|info| info.state)))));
    });
    Ok(PlacementGroup { id, bundles, strategy })
}

/// How long a request sent without waiting may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` to the GCS without waiting for its answer (as Ray, creation and
/// removal are asynchronous); later requests on the link arrive after it. Queued
/// from this thread when the link is up.
fn send_in_order(request: Request) -> Result<PendingReply> {
    let core = core()?;
    match core.gcs.peer().send_if_up(request, SEND_TIMEOUT) {
        Ok(sent) => Ok(sent?),
        Err(request) => {
            let gcs = core.gcs.peer().clone();
            Ok(block_on_here(&core.handle, async move { gcs.send(*request, SEND_TIMEOUT).await })?)
        }
    }
}

/// Waits for the reply of a request sent without waiting; prints why it failed.
async fn warn_on_failure(pending: PendingReply) {
    let name = pending.name();
    // Once `shutdown` has begun (no core installed), a failure is the embedded
    // cluster stopping under the request, which the job's end makes moot.
    if let Err(error) = pending.wait().await
        && crate::core::core().is_ok()
    {
        eprintln!("manta: warning: {name} failed: {error}");
    }
}

/// Removes a group: its bundles are released and what runs in them is ended.
/// Returns at once, as Ray's; the group's state turns `REMOVED`.
pub fn remove_placement_group(group: &PlacementGroup) -> Result<()> {
    let core = core()?;
    core.placement_waits.forget(&group.id);
    let sent = send_in_order(Request::RemovePlacementGroup(RemovePlacementGroupRequest { pg_id: group.id }))?;
    core.handle.spawn(warn_on_failure(sent));
    Ok(())
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
