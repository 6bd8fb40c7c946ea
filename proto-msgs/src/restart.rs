//! The one restart policy every manta supervisor uses: at most `max_restarts`
//! restarts within a sliding `window`, each after an exponential backoff that
//! starts at `base_backoff` and is capped at `max_backoff`. One more failure
//! within the window gives up (the supervisor escalates to its own parent).
//!
//! Pure: the caller passes the clock in, so the policy is tested without time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a supervisor restarts a failed child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `window`.
    pub max_restarts: usize,
    /// The sliding window restarts are counted in (`None`: for ever).
    pub window: Option<Duration>,
    /// Pause before the first restart in a window.
    pub base_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
}

impl RestartPolicy {
    /// Restart up to `max_restarts` times in `window`, with backoff from 10 ms to 1 s.
    pub const fn within(max_restarts: usize, window: Duration) -> Self {
        Self {
            max_restarts,
            window: Some(window),
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }

    /// Restart up to `max_restarts` times over the child's whole life, at once
    /// (a user's actor: `max_restarts`; a negative count means for ever).
    pub fn lifetime(max_restarts: i32) -> Self {
        Self {
            max_restarts: if max_restarts < 0 { usize::MAX } else { max_restarts as usize },
            window: None,
            base_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }
}

/// What to do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after this pause; `attempt` counts restarts in the window, from 1.
    Restart { after: Duration, attempt: usize },
    /// Too many failures: give up and escalate.
    GiveUp { restarts: usize },
}

/// The failure history of one supervised child (or of a supervisor's children together).
#[derive(Clone, Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    restarts: VecDeque<Instant>,
    used: usize,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub fn new(policy: RestartPolicy) -> Self {
        Self { policy, restarts: VecDeque::new(), used: 0 }
    }

    /// A tracker that has already used `used` restarts (a child restarted elsewhere before).
    pub fn with_used(policy: RestartPolicy, used: usize) -> Self {
        Self { used, ..Self::new(policy) }
    }

    /// Restarts counted so far (over the window, or the whole life).
    pub fn restarts(&self) -> usize {
        match self.policy.window {
            Some(_) => self.restarts.len(),
            None => self.used,
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        if let Some(window) = self.policy.window {
            while self.restarts.front().is_some_and(|at| now.duration_since(*at) >= window) {
                self.restarts.pop_front();
            }
        }
        let counted = self.restarts();
        if counted >= self.policy.max_restarts {
            return RestartDecision::GiveUp { restarts: counted };
        }
        self.restarts.push_back(now);
        self.used += 1;
        let attempt = counted + 1;
        let doublings = (attempt - 1).min(20) as u32;
        let after = self.policy.base_backoff.saturating_mul(1 << doublings).min(self.policy.max_backoff);
        RestartDecision::Restart { after, attempt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up_within_the_window() {
        let mut tracker = RestartTracker::new(RestartPolicy::within(3, Duration::from_secs(60)));
        let start = Instant::now();
        let pauses: Vec<_> = (0..3)
            .map(|second| match tracker.on_failure(start + Duration::from_secs(second)) {
                RestartDecision::Restart { after, .. } => after,
                other => panic!("expected a restart, got {other:?}"),
            })
            .collect();
        assert_eq!(pauses, [Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(40)]);
        assert_eq!(tracker.on_failure(start + Duration::from_secs(4)), RestartDecision::GiveUp { restarts: 3 });
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut tracker = RestartTracker::new(RestartPolicy::within(2, Duration::from_secs(10)));
        let start = Instant::now();
        tracker.on_failure(start);
        tracker.on_failure(start + Duration::from_secs(1));
        assert!(matches!(tracker.on_failure(start + Duration::from_secs(11)), RestartDecision::Restart { .. }));
    }

    #[test]
    fn backoff_is_capped() {
        let mut tracker = RestartTracker::new(RestartPolicy::within(50, Duration::from_secs(3600)));
        let start = Instant::now();
        let mut last = Duration::ZERO;
        for second in 0..50 {
            if let RestartDecision::Restart { after, .. } = tracker.on_failure(start + Duration::from_secs(second)) {
                last = after;
            }
        }
        assert_eq!(last, Duration::from_secs(1));
    }

    #[test]
    fn lifetime_budgets_count_earlier_restarts_and_negative_means_forever() {
        let mut tracker = RestartTracker::with_used(RestartPolicy::lifetime(2), 1);
        let now = Instant::now();
        assert_eq!(tracker.on_failure(now), RestartDecision::Restart { after: Duration::ZERO, attempt: 2 });
        assert_eq!(tracker.on_failure(now), RestartDecision::GiveUp { restarts: 2 });
        let mut forever = RestartTracker::new(RestartPolicy::lifetime(-1));
        assert!((0..1000).all(|_| matches!(forever.on_failure(now), RestartDecision::Restart { .. })));
        assert_eq!(
            RestartTracker::new(RestartPolicy::lifetime(0)).on_failure(now),
            RestartDecision::GiveUp { restarts: 0 }
        );
    }
}
