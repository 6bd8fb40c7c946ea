//! [`ViewFeed`]: the cluster view as the GCS's links follow it.
//!
//! Each publication is encoded once, as a delta on top of the one before, and
//! every link's writer takes the bytes it needs when it gets to them (see
//! `manta_proto::net::Feed`): a link one publication behind gets the delta, a
//! link further behind the missing deltas or, when those weigh more, the whole
//! view (encoded at most once per version), and a new link the whole view.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use manta_proto::frame::{Frame, encode_shared};
use manta_proto::gcs::ClusterViewEvent;
use manta_proto::message::Event;
use manta_proto::net::Feed;
use tracing::warn;

/// Deltas kept for links that fell behind; further behind, a link gets the whole view.
const KEPT_DELTAS: usize = 16;

/// One encoded delta, on top of version `base`.
#[derive(Debug)]
struct Delta {
    base: u64,
    frame: Bytes,
}

/// The published views, as frames. Pure: no locks, no clocks.
#[derive(Debug, Default)]
pub struct ViewLog {
    /// The latest published view, whole.
    whole: Option<ClusterViewEvent>,
    /// Its encoding, made when a link first needs it.
    whole_frame: Option<Bytes>,
    /// The latest deltas, oldest first, each on top of the one before.
    deltas: VecDeque<Delta>,
}

impl ViewLog {
    /// Publishes `whole`, the view now; `delta` brings the previous
    /// publication to it (`None` for the first, or when none can).
    pub fn publish(&mut self, whole: ClusterViewEvent, delta: Option<ClusterViewEvent>) {
        let chained = delta.filter(|delta| {
            delta.base_version.is_some()
                && self.whole.as_ref().is_some_and(|previous| Some(previous.version) == delta.base_version)
        });
        match chained.and_then(|delta| Some((delta.base_version?, encode(delta)?))) {
            Some((base, frame)) => {
                self.deltas.push_back(Delta { base, frame });
                if self.deltas.len() > KEPT_DELTAS {
                    self.deltas.pop_front();
                }
            }
            None => self.deltas.clear(),
        }
        self.whole = Some(whole);
        self.whole_frame = None;
    }

    /// The frames that bring a link at `cursor` (a version it has, or none)
    /// to the latest publication, and its new cursor.
    pub fn frames_after(&mut self, cursor: Option<u64>) -> (Vec<Bytes>, Option<u64>) {
        let Some(latest) = self.whole.as_ref().map(|whole| whole.version) else {
            return (Vec::new(), cursor);
        };
        if cursor == Some(latest) {
            return (Vec::new(), cursor);
        }
        let missing = cursor.and_then(|at| self.deltas.iter().position(|delta| delta.base == at));
        if let Some(first) = missing {
            let deltas: Vec<Bytes> = self.deltas.range(first..).map(|delta| delta.frame.clone()).collect();
            let weight: usize = deltas.iter().map(Bytes::len).sum();
            if deltas.len() == 1 || weight <= self.whole_frame().map_or(usize::MAX, |whole| whole.len()) {
                return (deltas, Some(latest));
            }
        }
        match self.whole_frame() {
            Some(frame) => (vec![frame], Some(latest)),
            None => (Vec::new(), cursor),
        }
    }

    fn whole_frame(&mut self) -> Option<Bytes> {
        if self.whole_frame.is_none() {
            self.whole_frame = self.whole.clone().and_then(encode);
        }
        self.whole_frame.clone()
    }
}

fn encode(view: ClusterViewEvent) -> Option<Bytes> {
    encode_shared(&Frame::Event(Event::ClusterView(view)))
        .inspect_err(|error| warn!(%error, "the cluster view could not be encoded; links keep the previous one"))
        .ok()
}

/// The [`ViewLog`] as links follow it, counting the bytes it hands them.
#[derive(Debug, Default)]
pub struct ViewFeed {
    log: Mutex<ViewLog>,
    served: AtomicU64,
}

impl ViewFeed {
    /// See [`ViewLog::publish`].
    pub fn publish(&self, whole: ClusterViewEvent, delta: Option<ClusterViewEvent>) {
        self.log.lock().expect("view log lock").publish(whole, delta);
    }

    /// Bytes handed to links so far.
    pub fn served_bytes(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Feed for ViewFeed {
    fn frames_after(&self, cursor: Option<u64>) -> (Vec<Bytes>, Option<u64>) {
        let (frames, cursor) = self.log.lock().expect("view log lock").frames_after(cursor);
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        self.served.fetch_add(bytes as u64, Ordering::Relaxed);
        (frames, cursor)
    }
}

/// How long to wait after a publication whose fan-out (every link's copy)
/// weighed `fanout_bytes`, so views go out at no more than `budget` bytes a
/// second in all: a large cluster whose nodes all change gets fewer, not late, views.
pub fn pause_after(fanout_bytes: u64, budget_bytes_per_second: u64) -> Duration {
    Duration::from_secs_f64(fanout_bytes as f64 / budget_bytes_per_second.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use manta_proto::NodeId;
    use manta_proto::frame::decode_body;
    use manta_proto::gcs::NodeResources;
    use manta_proto::resources::{Quantity, ResourceSet};

    use super::*;

    fn node(node_id: NodeId, free: u64) -> NodeResources {
        NodeResources {
            node_id,
            address: "127.0.0.1:1".into(),
            total: ResourceSet::new().with("CPU", Quantity::from_whole(8)),
            available: ResourceSet::new().with("CPU", Quantity::from_whole(free)),
            labels: BTreeMap::new(),
            pending_demand: Vec::new(),
            draining: false,
        }
    }

    fn decoded(frame: &Bytes) -> ClusterViewEvent {
        match decode_body(&frame[4..]).expect("a frame") {
            Frame::Event(Event::ClusterView(view)) => view,
            other => panic!("not a view: {other:?}"),
        }
    }

    /// A follower applying what the log hands it ends at the log's latest view.
    fn follow(log: &mut ViewLog, replica: &mut Option<ClusterViewEvent>, cursor: Option<u64>) -> (usize, Option<u64>) {
        let (frames, cursor) = log.frames_after(cursor);
        for frame in &frames {
            let update = decoded(frame);
            match replica {
                Some(view) => assert_eq!(view.apply(update), manta_proto::gcs::ViewUpdate::Applied),
                None => *replica = Some(update),
            }
        }
        (frames.len(), cursor)
    }

    #[test]
    fn followers_at_any_cursor_reach_the_latest_view() {
        let ids: Vec<NodeId> = (0..40).map(|_| NodeId::random()).collect();
        let mut whole: BTreeMap<NodeId, NodeResources> = ids.iter().map(|id| (*id, node(*id, 8))).collect();
        let mut log = ViewLog::default();
        let view = |version, whole: &BTreeMap<NodeId, NodeResources>| {
            ClusterViewEvent::whole(1, version, whole.values().cloned().collect())
        };
        log.publish(view(1, &whole), None);
        let (mut early, mut late) = (None, None);
        let (sent, mut early_cursor) = follow(&mut log, &mut early, None);
        assert_eq!(sent, 1, "a new follower gets the whole view");
        for version in 2..=30u64 {
            // One node changes per publication; every fifth, one leaves.
            let changed = ids[version as usize % ids.len()];
            whole.insert(changed, node(changed, version % 8));
            let mut removed = Vec::new();
            if version % 5 == 0 {
                let gone = ids[(version as usize * 7) % ids.len()];
                if whole.remove(&gone).is_some() {
                    removed.push(gone);
                }
            }
            let nodes = whole.get(&changed).cloned().into_iter().collect();
            let delta = ClusterViewEvent { incarnation: 1, version, nodes, base_version: Some(version - 1), removed };
            log.publish(view(version, &whole), Some(delta));
            let (sent, cursor) = follow(&mut log, &mut early, early_cursor);
            assert_eq!(sent, 1, "a follower that keeps up gets one delta");
            early_cursor = cursor;
            assert_eq!(early.as_ref(), Some(&view(version, &whole)));
        }
        let (_, cursor) = follow(&mut log, &mut late, None);
        assert_eq!(late.as_ref(), Some(&view(30, &whole)), "a late follower starts from the whole view");
        assert_eq!(log.frames_after(cursor).0.len(), 0, "nothing more for a follower at the latest");
        // Behind by a few small deltas: the deltas, not the whole view.
        let (frames, _) = log.frames_after(Some(27));
        assert_eq!(frames.len(), 3);
        // Behind past the kept deltas: the whole view.
        let (frames, cursor) = log.frames_after(Some(3));
        assert_eq!((frames.len(), cursor), (1, Some(30)));
        assert_eq!(decoded(&frames[0]), view(30, &whole));
    }

    #[test]
    fn a_delta_that_does_not_chain_drops_the_kept_ones() {
        let mut log = ViewLog::default();
        log.publish(ClusterViewEvent::whole(1, 1, vec![]), None);
        let stray = ClusterViewEvent { base_version: Some(7), ..ClusterViewEvent::whole(1, 8, vec![]) };
        log.publish(ClusterViewEvent::whole(1, 8, vec![]), Some(stray));
        let (frames, cursor) = log.frames_after(Some(1));
        assert_eq!((frames.len(), cursor), (1, Some(8)));
        assert!(!decoded(&frames[0]).is_delta(), "no chain from 1: the whole view");
    }

    #[test]
    fn the_pause_keeps_the_fan_out_within_its_budget() {
        assert_eq!(pause_after(0, 1 << 20), Duration::ZERO);
        assert_eq!(pause_after(32 << 20, 16 << 20), Duration::from_secs(2));
    }
}
