//! The raylet's round trips to the GCS: resource reports, which double as the
//! fence's probes, and telling workers when the fence opens or closes.

use std::time::Duration;

use manta_proto::ErrorCode;
use manta_proto::gcs::ReportResourcesRequest;
use manta_proto::message::Event;
use manta_proto::node::ServeCallsEvent;
use ractor::ActorRef;
use tracing::{info, warn};

use super::{RayletMsg, RayletState};

/// Reports the node's resources when they changed, or when `probe` (the fence's
/// round trip to the GCS: an answer keeps actor calls running).
pub(super) fn report(myself: &ActorRef<RayletMsg>, state: &mut RayletState, probe: bool) {
    let available = state.ledger.resources().available().clone();
    let demand = state.ledger.pending_demand();
    let load = (state.ledger.is_idle(), state.ledger.draining());
    if !probe
        && state.last_reported.as_ref() == Some(&available)
        && state.last_demand == demand
        && state.last_load == load
    {
        return;
    }
    state.last_reported = Some(available.clone());
    state.last_demand = demand.clone();
    state.last_load = load;
    let report = ReportResourcesRequest {
        node_id: state.identity.get(),
        resources_total: state.ledger.resources().total().clone(),
        resources_available: available,
        pending_demand: demand,
        idle: load.0,
        draining: load.1,
    };
    let gcs = state.gcs.clone();
    let myself = myself.clone();
    let sent_at = std::time::Instant::now();
    tokio::spawn(async move {
        match gcs.report_resources(report).await {
            Ok(()) => {
                let _ = myself.cast(RayletMsg::GcsAnswered(sent_at));
            }
            Err(error) if error.code() == ErrorCode::NodeFenced => {
                let _ = myself.cast(RayletMsg::Fenced);
            }
            // The GCS does not know us (it restarted): register again; it decides on fencing.
            Err(error) if error.code() == ErrorCode::NotFound => {
                let _ = myself.cast(RayletMsg::GcsReconnected);
            }
            _ => {}
        }
    });
}

/// The fence opened or closed: every worker holds or runs its actor calls.
pub(super) fn gate_changed(state: &RayletState, open: bool) {
    if open {
        info!("the GCS answers again: actor calls run");
    } else {
        warn!("no answer from the GCS within the fence window: actor calls wait until it answers");
    }
    for link in state.worker_links.values() {
        let _ = link.send_event(Event::ServeCalls(ServeCallsEvent { open }));
    }
}

/// The fence window from a registration reply (0: none).
pub fn fence_window(fence_after_ms: u64) -> Option<Duration> {
    (fence_after_ms > 0).then(|| Duration::from_millis(fence_after_ms))
}
