//! `manta::request_resources` (Ray's `ray.autoscaler.sdk.request_resources`):
//! ask the autoscaler for capacity ahead of the work that will need it.

use std::time::Duration;

use manta_proto::autoscaler::{MAX_REQUESTED_BUNDLES as MAX_BUNDLES, RequestResourcesRequest};
use manta_proto::resources::{Quantity, ResourceSet};

use crate::error::{Error, Result};
use crate::placement::{Bundle, gcs_call, resource_set};

/// Asks the autoscaler to keep room for `num_cpus` one-CPU bundles plus
/// `bundles`, all at once, busy or not: a floor on the cluster's capacity that
/// work already running counts toward (as in Ray). It is not held back by
/// `upscaling_speed`, still bounded by `max_workers`. Each call replaces the
/// previous request; `request_resources(0, vec![])` clears it.
///
/// ```no_run
/// manta::request_resources(8, vec![manta::bundle([("GPU", 1.0)])])?;
/// # Ok::<(), manta::Error>(())
/// ```
pub fn request_resources(num_cpus: u32, bundles: Vec<Bundle>) -> Result<()> {
    let count = num_cpus as usize + bundles.len();
    if count > MAX_BUNDLES {
        return Err(Error::InvalidArgument(format!(
            "request_resources asks for {count} bundles; at most {MAX_BUNDLES} (ask for bigger bundles instead)"
        )));
    }
    let mut sets = Vec::with_capacity(num_cpus as usize + bundles.len());
    let one_cpu = ResourceSet::new().with("CPU", Quantity::from_whole(1));
    sets.extend(std::iter::repeat_n(one_cpu, num_cpus as usize));
    for (index, bundle) in bundles.iter().enumerate() {
        sets.push(resource_set(bundle, index)?);
    }
    gcs_call(RequestResourcesRequest { bundles: sets }, Duration::from_secs(10))?;
    Ok(())
}
