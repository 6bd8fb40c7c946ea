//! [`Raylet`]: the node's agent towards the cluster. It keeps the node
//! registered (re-registering after a reconnect, and under a new id when the
//! GCS has fenced the old one), reports resources, and holds the latest
//! cluster view pushed by the GCS. Leases and the worker pool join it later.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use manta_proto::gcs::{Channel, ClusterViewEvent, RegisterNodeRequest, ReportResourcesRequest};
use manta_proto::net::CallError;
use manta_proto::node::GetNodeStatsReply;
use manta_proto::resources::ResourceSet;
use manta_proto::{ErrorCode, NodeId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::gcs_client::GcsClient;

/// The node's current id, shared by the raylet and the health-check responder.
#[derive(Clone, Debug)]
pub struct NodeIdentity(Arc<RwLock<NodeId>>);

impl NodeIdentity {
    /// Starts as `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self(Arc::new(RwLock::new(node_id)))
    }

    /// The current id.
    pub fn get(&self) -> NodeId {
        *self.0.read().expect("identity lock")
    }

    fn set(&self, node_id: NodeId) {
        *self.0.write().expect("identity lock") = node_id;
    }
}

/// The raylet actor. Stateless; see [`RayletState`].
#[derive(Debug, Default)]
pub struct Raylet;

/// Messages to the [`Raylet`].
#[derive(Debug)]
pub enum RayletMsg {
    /// The GCS link is up again: register (fenced → new id) and resubscribe.
    GcsReconnected,
    /// The GCS no longer knows this node as alive: register as a new node.
    Fenced,
    /// Timer: report resources if they changed.
    ReportTick,
    /// A cluster view pushed by the GCS.
    ClusterView(ClusterViewEvent),
    /// This node's own view.
    GetStats(RpcReplyPort<GetNodeStatsReply>),
}

/// Start-up arguments of the [`Raylet`].
pub struct RayletArgs {
    /// The node's id, shared with the health-check responder.
    pub identity: NodeIdentity,
    /// The GCS.
    pub gcs: GcsClient,
    /// What the node registers with (the id is taken from `identity`).
    pub registration: RegisterNodeRequest,
    /// Resource report period.
    pub report_interval: Duration,
}

/// State of the [`Raylet`].
pub struct RayletState {
    identity: NodeIdentity,
    gcs: GcsClient,
    registration: RegisterNodeRequest,
    available: ResourceSet,
    last_reported: Option<ResourceSet>,
    view: Option<ClusterViewEvent>,
    ticker: JoinHandle<()>,
}

impl Drop for RayletState {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// The channels a raylet listens to.
pub const RAYLET_CHANNELS: [Channel; 2] = [Channel::ClusterView, Channel::NodeChanges];

impl Actor for Raylet {
    type Msg = RayletMsg;
    type State = RayletState;
    type Arguments = RayletArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RayletMsg>,
        args: RayletArgs,
    ) -> Result<RayletState, ActorProcessingErr> {
        let ticker = myself.send_interval(args.report_interval, || RayletMsg::ReportTick);
        Ok(RayletState {
            available: args.registration.resources_available.clone(),
            last_reported: Some(args.registration.resources_available.clone()),
            identity: args.identity,
            gcs: args.gcs,
            registration: args.registration,
            view: None,
            ticker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RayletMsg>,
        message: RayletMsg,
        state: &mut RayletState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RayletMsg::GcsReconnected => reregister(state, false).await,
            RayletMsg::Fenced => reregister(state, true).await,
            RayletMsg::ReportTick => {
                if state.last_reported.as_ref() == Some(&state.available) {
                    return Ok(());
                }
                state.last_reported = Some(state.available.clone());
                let report = ReportResourcesRequest {
                    node_id: state.identity.get(),
                    resources_total: state.registration.resources_total.clone(),
                    resources_available: state.available.clone(),
                };
                let gcs = state.gcs.clone();
                tokio::spawn(async move {
                    if let Err(error) = gcs.report_resources(report).await
                        && error.code() == ErrorCode::NodeFenced
                    {
                        let _ = myself.cast(RayletMsg::Fenced);
                    }
                });
            }
            RayletMsg::ClusterView(view) => {
                if state.view.as_ref().is_none_or(|current| view.version > current.version) {
                    state.view = Some(view);
                }
            }
            RayletMsg::GetStats(reply) => {
                let _ = reply.send(GetNodeStatsReply {
                    node_id: state.identity.get(),
                    resources_total: state.registration.resources_total.clone(),
                    resources_available: state.available.clone(),
                    cluster_view_version: state.view.as_ref().map_or(0, |view| view.version),
                    cluster_view_nodes: state.view.as_ref().map_or(0, |view| view.nodes.len()),
                });
            }
        }
        Ok(())
    }
}

/// Registers again after a reconnect. A fenced node takes a fresh id, so no
/// work ever runs under an identity the cluster has declared dead.
async fn reregister(state: &mut RayletState, known_fenced: bool) {
    let mut fenced = known_fenced;
    for _attempt in 0..2 {
        if fenced {
            let old = state.identity.get();
            let new = NodeId::random();
            state.identity.set(new);
            warn!(%old, %new, "the GCS declared this node dead; rejoining as a new node");
        }
        let mut request = state.registration.clone();
        request.node_id = state.identity.get();
        request.resources_available = state.available.clone();
        match state.gcs.register_node(request).await {
            Ok(reply) => {
                info!(node_id = %reply.node.node_id, reattached = reply.reattached, "registered with the GCS");
                state.last_reported = Some(state.available.clone());
                if let Err(error) = state.gcs.subscribe(RAYLET_CHANNELS.to_vec()).await {
                    warn!(%error, "could not resubscribe to the GCS");
                }
                return;
            }
            Err(error) if error.code() == ErrorCode::NodeFenced => fenced = true,
            Err(error) => {
                log_registration_error(&error);
                return;
            }
        }
    }
}

fn log_registration_error(error: &CallError) {
    warn!(%error, "could not register with the GCS; will retry on the next reconnect");
}
