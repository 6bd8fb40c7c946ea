//! Feeds: state that many links follow (the cluster view), encoded once and
//! pulled by each link's writer when it gets to it.
//!
//! A publisher marks a feed due on every link that follows it; that queues at
//! most one wake-up per link. The writer then asks the feed for the frames that
//! bring the link from its cursor to the latest. A link that fell behind gets
//! what the feed chooses for it (the missing deltas, or one whole view), never a
//! queue of every change: the fan-out costs one encoding per change, and a slow
//! link costs no memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// State that links follow. Frames are encoded once, length prefix included
/// (see [`crate::frame::encode_shared`]), and shared by every link that sends them.
pub trait Feed: Send + Sync {
    /// The frames that bring a follower from `cursor` (`None`: it has nothing
    /// yet) to the latest, and its new cursor.
    fn frames_after(&self, cursor: Option<u64>) -> (Vec<Bytes>, Option<u64>);
}

/// A feed as links hold it. Two are the same feed when they share the allocation.
#[derive(Clone)]
pub struct SharedFeed(Arc<dyn Feed>);

impl SharedFeed {
    /// Wraps a feed.
    pub fn new(feed: Arc<dyn Feed>) -> Self {
        Self(feed)
    }

    fn same(&self, other: &SharedFeed) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl std::fmt::Debug for SharedFeed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SharedFeed")
    }
}

struct FollowedFeed {
    feed: SharedFeed,
    cursor: Option<u64>,
    due: bool,
}

/// The feeds one link follows, with its cursor in each.
#[derive(Default)]
pub(crate) struct Followed {
    feeds: Mutex<Vec<FollowedFeed>>,
    /// A wake-up is in the writer's queue (at most one at a time).
    queued: AtomicBool,
}

impl Followed {
    /// Marks `feed` due (following it from nothing if new, or if `restart`).
    /// True when the writer must be woken: no wake-up is queued yet.
    pub(crate) fn mark_due(&self, feed: &SharedFeed, restart: bool) -> bool {
        {
            let mut feeds = self.feeds.lock().expect("feeds lock");
            match feeds.iter_mut().find(|followed| followed.feed.same(feed)) {
                Some(followed) => {
                    followed.due = true;
                    if restart {
                        followed.cursor = None;
                    }
                }
                None => feeds.push(FollowedFeed { feed: feed.clone(), cursor: None, due: true }),
            }
        }
        !self.queued.swap(true, Ordering::AcqRel)
    }

    /// The writer's side of a wake-up: the frames of every due feed, in order.
    pub(crate) fn take_due(&self) -> Vec<Bytes> {
        // Cleared first: a feed marked due from here on queues a new wake-up.
        self.queued.store(false, Ordering::Release);
        let mut feeds = self.feeds.lock().expect("feeds lock");
        let mut frames = Vec::new();
        for followed in feeds.iter_mut().filter(|followed| followed.due) {
            followed.due = false;
            let (more, cursor) = followed.feed.0.frames_after(followed.cursor);
            followed.cursor = cursor;
            frames.extend(more);
        }
        frames
    }

    /// A new socket under the same handle: it has been sent nothing.
    pub(crate) fn reset(&self) {
        self.feeds.lock().expect("feeds lock").clear();
        self.queued.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed whose state is a number; each frame is the version, and a
    /// follower more than one behind gets one frame with the latest.
    struct Counter(Mutex<u64>);

    impl Feed for Counter {
        fn frames_after(&self, cursor: Option<u64>) -> (Vec<Bytes>, Option<u64>) {
            let latest = *self.0.lock().unwrap();
            match cursor {
                Some(at) if at == latest => (Vec::new(), cursor),
                _ => (vec![Bytes::from(latest.to_string())], Some(latest)),
            }
        }
    }

    #[test]
    fn a_follower_is_woken_once_and_gets_only_the_latest() {
        let counter = Arc::new(Counter(Mutex::new(1)));
        let feed = SharedFeed::new(counter.clone());
        let followed = Followed::default();
        assert!(followed.mark_due(&feed, false), "the first mark queues a wake-up");
        *counter.0.lock().unwrap() = 2;
        assert!(!followed.mark_due(&feed, false), "one wake-up at a time");
        *counter.0.lock().unwrap() = 3;
        assert!(!followed.mark_due(&feed, false));
        assert_eq!(followed.take_due(), vec![Bytes::from("3")]);
        assert!(followed.take_due().is_empty(), "nothing due after a take");
        assert!(followed.mark_due(&feed, false), "after a take, a mark wakes again");
        assert!(followed.take_due().is_empty(), "the cursor is at the latest");
        followed.mark_due(&feed, true);
        assert_eq!(followed.take_due(), vec![Bytes::from("3")], "a restart sends the latest again");
        followed.reset();
        assert!(followed.mark_due(&feed, false));
        assert_eq!(followed.take_due(), vec![Bytes::from("3")], "a new socket starts from nothing");
    }
}
