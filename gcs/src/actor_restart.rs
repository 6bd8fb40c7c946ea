//! Re-creating an actor whose process or node died: lease a worker from a
//! live node (following one spillback, as owners do), run the constructor
//! there, and tell the [`ActorDirectory`](crate::actor_directory) its new address.
//!
//! While no node can host it the restart keeps trying (the actor stays
//! `RESTARTING`, and its callers wait), as Ray's GCS does; it stops when the
//! directory no longer lists the actor as restarting (killed, or its job ended).

use std::time::Duration;

use manta_proto::client::{NodeClient, WorkerClient};
use manta_proto::net::{self, PeerHandle};
use manta_proto::task::{ActorInfo, ActorRecord, CreateActorRequest, KillWorkerRequest, LeaseOutcome};
use ractor::ActorRef;
use tracing::{debug, warn};

use crate::actor_directory::{DirectoryArgs, DirectoryMsg};

/// Pause between attempts while no node can take the actor.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// Deadline of one lease request (it may wait at the raylet for resources).
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of the constructor.
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// Starts restarting `record`'s actor in the background.
pub(crate) fn spawn(directory: &ActorRef<DirectoryMsg>, args: &DirectoryArgs, record: ActorRecord) {
    let directory = directory.clone();
    let table = args.table.clone();
    let links = args.links.clone();
    let net = args.net.clone();
    tokio::spawn(async move {
        let Some(restart) = record.restart.clone() else {
            let cause = "no restart spec was recorded for it".to_string();
            let _ = directory.cast(DirectoryMsg::RestartFailed(record.info.actor_id, cause));
            return;
        };
        let actor_id = record.info.actor_id;
        let mut spec = restart.spec.clone();
        spec.restarts_used = record.num_restarts as i32;
        loop {
            if !table.lock().is_restarting(actor_id) {
                return;
            }
            let nodes: Vec<PeerHandle> = links.lock().values().cloned().collect();
            let Some(first) = pick(&nodes, actor_id) else {
                tokio::time::sleep(RETRY_INTERVAL).await;
                continue;
            };
            let (node, worker) = match lease(&links, first, restart.lease.clone()).await {
                Ok(granted) => granted,
                Err(reason) => {
                    debug!(%actor_id, %reason, "no worker for the restart yet");
                    tokio::time::sleep(RETRY_INTERVAL).await;
                    continue;
                }
            };
            let info = ActorInfo { worker: worker.clone(), node_address: node.remote_address(), ..record.info.clone() };
            match construct(&net, &worker.address, spec.clone()).await {
                Ok(()) => {
                    let _ = directory.cast(DirectoryMsg::Restarted(info));
                    return;
                }
                Err(Some(cause)) => {
                    let kill = KillWorkerRequest { worker_id: worker.worker_id, reason: cause.clone() };
                    let _ = NodeClient::new(node.clone(), Duration::from_secs(5)).call(kill).await;
                    let _ = directory.cast(DirectoryMsg::RestartFailed(actor_id, cause));
                    return;
                }
                Err(None) => {
                    warn!(%actor_id, "the worker for the restarted actor went away; trying again");
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
            }
        }
    });
}

/// A node to ask first: spread restarts over the live nodes.
fn pick(nodes: &[PeerHandle], actor_id: manta_proto::ActorId) -> Option<PeerHandle> {
    if nodes.is_empty() {
        return None;
    }
    let seed = actor_id.as_bytes().iter().fold(0usize, |acc, byte| acc.wrapping_mul(31).wrapping_add(*byte as usize));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|at| at.subsec_nanos());
    Some(nodes[(seed ^ nanos.unwrap_or(0) as usize) % nodes.len()].clone())
}

/// Leases a worker, following one spillback.
async fn lease(
    links: &crate::Shared<std::collections::HashMap<manta_proto::NodeId, PeerHandle>>,
    mut node: PeerHandle,
    mut request: manta_proto::task::RequestWorkerLeaseRequest,
) -> Result<(PeerHandle, manta_proto::task::WorkerAddress), String> {
    request.allow_spill = true;
    for _hop in 0..2 {
        let reply = NodeClient::new(node.clone(), LEASE_TIMEOUT).call(request.clone()).await;
        match reply {
            Ok(LeaseOutcome::Granted { worker }) => return Ok((node, worker)),
            Ok(LeaseOutcome::Reschedule { node_id, node_address }) => {
                node = links
                    .lock()
                    .get(&node_id)
                    .cloned()
                    .ok_or_else(|| format!("spilled to {node_address}, which is gone"))?;
                request.allow_spill = false;
            }
            Ok(LeaseOutcome::Canceled { reason, .. }) => return Err(reason),
            Err(error) => return Err(error.to_string()),
        }
    }
    Err("spilled back twice".into())
}

/// Runs the constructor on the leased worker. `Err(Some(cause))`: it failed
/// for good (panicked, returned an error); `Err(None)`: the worker went away.
async fn construct(
    net: &std::sync::Arc<net::NetConfig>,
    address: &str,
    spec: manta_proto::task::ActorSpec,
) -> Result<(), Option<String>> {
    let service = std::sync::Arc::new(net::NoService);
    let worker = net::connect(address, net.clone(), service, None, Duration::from_secs(5)).await.map_err(|_| None)?;
    let reply = WorkerClient::new(worker.clone(), CREATE_TIMEOUT).call(CreateActorRequest { spec }).await;
    worker.close();
    match reply {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(failure)) => Err(Some(format!("its constructor failed on restart: {}", failure.message))),
        Err(error @ manta_proto::net::CallError::UnexpectedReply { .. }) => Err(Some(error.to_string())),
        Err(_) => Err(None),
    }
}
