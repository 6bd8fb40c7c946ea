//! [`Pubsub`]: delivers events to the links subscribed to their channel.
//!
//! Node-change, job and autoscaler events go to each subscriber as they come. A
//! channel with a feed (the cluster view) is followed instead: each subscriber's
//! link takes the feed's latest frames when it gets to them (`net::Feed`).

use std::collections::{BTreeMap, HashMap};

use manta_proto::frame::{Frame, encode_shared};
use manta_proto::gcs::Channel;
use manta_proto::message::Event;
use manta_proto::net::{LinkId, PeerHandle, SharedFeed};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, warn};

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
    /// A channel's feed changed: its subscribers' links take the news.
    FeedChanged(Channel),
    /// A link closed: drop its subscriptions.
    LinkClosed(LinkId),
}

/// Subscribers per channel, keyed by link id.
#[derive(Debug, Default)]
pub struct PubsubState {
    subscribers: BTreeMap<Channel, HashMap<LinkId, PeerHandle>>,
    feeds: BTreeMap<Channel, SharedFeed>,
}

impl PubsubState {
    /// Subscribers of `channel` follow `feed` rather than get its events.
    pub fn with_feed(mut self, channel: Channel, feed: SharedFeed) -> Self {
        self.feeds.insert(channel, feed);
        self
    }
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
                    // A subscription asks for the feed's state whole.
                    if let Some(feed) = state.feeds.get(&channel) {
                        peer.follow(feed, true);
                    }
                    state.subscribers.entry(channel).or_default().insert(peer.id(), peer.clone());
                }
                let _ = reply.send(());
            }
            PubsubMsg::Publish(event) => {
                let Some(subscribers) = event.channel().and_then(|channel| state.subscribers.get_mut(&channel)) else {
                    return Ok(());
                };
                // Encoded once: each subscriber's link gets a reference to the same bytes.
                let frame = match encode_shared(&Frame::Event(event)) {
                    Ok(frame) => frame,
                    Err(error) => {
                        warn!(%error, "an event could not be encoded; not published");
                        return Ok(());
                    }
                };
                subscribers.retain(|_, peer| {
                    if peer.is_closed() {
                        return false;
                    }
                    if let Err(error) = peer.send_encoded(frame.clone()) {
                        debug!(peer = %peer.label(), %error, "event not delivered");
                    }
                    true
                });
            }
            PubsubMsg::FeedChanged(channel) => {
                let state = &mut *state;
                let (Some(feed), Some(subscribers)) = (state.feeds.get(&channel), state.subscribers.get_mut(&channel))
                else {
                    return Ok(());
                };
                subscribers.retain(|_, peer| {
                    peer.follow(feed, false);
                    !peer.is_closed()
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
