//! The node's fence: a pure rule for when this node's actors may run calls.
//!
//! The GCS declares a node dead only after `threshold × period` of failed health
//! checks, then restarts its actors elsewhere. A node cut off from the GCS but
//! still reachable by drivers must not keep serving those actors meanwhile, or an
//! actor would run twice. So a node lets actor calls run only while the GCS has
//! answered a request it sent less than `after` ago (`after` is half the GCS's
//! least time to declare it dead, sent at registration). It probes the GCS every
//! `after / 4`; when the answers stop, the gate closes (calls wait in the actors'
//! queues) well before the GCS can have given up on the node, and it opens again
//! once an answer comes back. A node the GCS declared dead learns it when it
//! registers again, and ends its workers (`LeaseLedger::fenced`) before any call
//! runs.

use std::time::{Duration, Instant};

/// When this node's actor calls may run.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Silence after which the gate closes (`None`: never).
    after: Option<Duration>,
    /// When the newest request the GCS answered was sent.
    answered_sent_at: Instant,
    /// When the last probe was sent.
    probed_at: Instant,
    open: bool,
}

impl Fence {
    /// A fence that closes after `after` of silence, open at `now`.
    pub fn new(after: Option<Duration>, now: Instant) -> Self {
        Self { after, answered_sent_at: now, probed_at: now, open: true }
    }

    /// The GCS sent a new window (at registration).
    pub fn set_after(&mut self, after: Option<Duration>) {
        self.after = after;
    }

    /// The GCS answered a request this node sent at `sent_at`.
    pub fn answered(&mut self, sent_at: Instant) {
        self.answered_sent_at = self.answered_sent_at.max(sent_at);
    }

    /// True when a probe is due at `now` (one every quarter of the window); records it.
    pub fn probe_due(&mut self, now: Instant) -> bool {
        let Some(after) = self.after else { return false };
        if now.saturating_duration_since(self.probed_at) < after / 4 {
            return false;
        }
        self.probed_at = now;
        true
    }

    /// The gate at `now`: `Some(open)` when it changed.
    pub fn check(&mut self, now: Instant) -> Option<bool> {
        let open = self.after.is_none_or(|after| now.saturating_duration_since(self.answered_sent_at) < after);
        (open != self.open).then(|| {
            self.open = open;
            open
        })
    }

    /// Whether calls may run now (as of the last check).
    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_closes_after_the_window_of_silence_and_opens_on_a_fresh_answer() {
        let start = Instant::now();
        let ms = |millis| start + Duration::from_millis(millis);
        let mut fence = Fence::new(Some(Duration::from_millis(1000)), start);
        assert_eq!(fence.check(ms(900)), None, "open, unchanged");
        assert!(fence.probe_due(ms(300)) && !fence.probe_due(ms(400)), "a probe every quarter window");
        fence.answered(ms(300));
        assert_eq!(fence.check(ms(1200)), None, "the answer to the probe sent at 300 ms keeps it open");
        assert_eq!(fence.check(ms(1300)), Some(false), "1 s after the newest answered probe was sent");
        fence.answered(ms(200));
        assert_eq!(fence.check(ms(1400)), None, "an answer to an older request proves nothing new");
        fence.answered(ms(1350));
        assert_eq!(fence.check(ms(1400)), Some(true));
        assert!(fence.is_open());
    }

    #[test]
    fn without_a_window_the_gate_never_closes() {
        let start = Instant::now();
        let mut fence = Fence::new(None, start);
        assert!(!fence.probe_due(start + Duration::from_secs(60)));
        assert_eq!(fence.check(start + Duration::from_secs(3600)), None);
    }
}
