//! [`Pubsub`]: delivers events to the links subscribed to their channel.
//!
//! Node-change and cluster-view events today; actor, job and log channels reuse it.

use std::collections::{BTreeMap, HashMap};

use manta_proto::gcs::Channel;
use manta_proto::message::Event;
use manta_proto::net::{LinkId, PeerHandle};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::debug;

use crate::Shared;

/// The pubsub actor. Stateless; see [`PubsubState`].
#[derive(Debug, Default)]
pub struct Pubsub;

/// Messages to the [`Pubsub`] actor.
#[derive(Debug)]
pub enum PubsubMsg {
    /// Subscribe a link to channels.
    Subscribe(PeerHandle, Vec<Channel>, RpcReplyPort<()>),
    /// Deliver an event to its channel's subscribers.
    Publish(Event),
    /// A link closed: drop its subscriptions.
    LinkClosed(LinkId),
}

/// Subscribers per channel, keyed by link id.
#[derive(Debug, Default)]
pub struct PubsubState {
    subscribers: BTreeMap<Channel, HashMap<LinkId, PeerHandle>>,
}

impl Actor for Pubsub {
    type Msg = PubsubMsg;
    type State = Shared<PubsubState>;
    type Arguments = Shared<PubsubState>;

    async fn pre_start(
        &self,
        _myself: ActorRef<PubsubMsg>,
        state: Shared<PubsubState>,
    ) -> Result<Shared<PubsubState>, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PubsubMsg>,
        message: PubsubMsg,
        state: &mut Shared<PubsubState>,
    ) -> Result<(), ActorProcessingErr> {
        let mut state = state.lock();
        match message {
            PubsubMsg::Subscribe(peer, channels, reply) => {
                for channel in channels {
                    state.subscribers.entry(channel).or_default().insert(peer.id(), peer.clone());
                }
                let _ = reply.send(());
            }
            PubsubMsg::Publish(event) => {
                let Some(subscribers) = event.channel().and_then(|channel| state.subscribers.get_mut(&channel)) else {
                    return Ok(());
                };
                subscribers.retain(|_, peer| {
                    if peer.is_closed() {
                        return false;
                    }
                    if let Err(error) = peer.send_event(event.clone()) {
                        debug!(peer = %peer.label(), %error, "event not delivered");
                    }
                    true
                });
            }
            PubsubMsg::LinkClosed(link_id) => {
                for subscribers in state.subscribers.values_mut() {
                    subscribers.remove(&link_id);
                }
            }
        }
        Ok(())
    }
}
