//! Exponential backoff with jitter, as a plain value (actors retry through timers).

use std::time::Duration;

/// Doubles the delay on every failure up to `max`, with ±20 % jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Starts at `initial`, never exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, current: initial }
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        base.mul_f64(jitter).min(self.max)
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(60));
        assert!(delays.iter().all(|delay| *delay <= Duration::from_secs(1)));
        assert!(delays[9] >= Duration::from_millis(800));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(60));
    }
}
