//! How long a thread that waits for a result spins before it parks.
//!
//! Parking costs a wake-up when the result comes: on a virtual machine whose
//! other cores are idle, tens of microseconds, as much as the round trip that
//! brings the result. A `get` whose answer is about to come therefore spins a
//! moment first. The spin adapts per thread: full again after a short wait (up
//! to [`SHORT_WAIT`] times the longest spin: parking itself makes a wait longer
//! than the spin would have, so the test is not the spin's length), halved after
//! each longer one, so a thread that waits for long tasks soon parks at once and
//! burns next to nothing. A `get` whose value is already there did not wait and
//! changes nothing.
//! `MANTA_GET_SPIN_US` sets the longest spin (default 200 µs; 0 turns spinning
//! off); with one core there is no spinning, as the spinner would hold the core
//! the result needs.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

/// The default longest spin.
const DEFAULT_SPIN: Duration = Duration::from_micros(200);

/// A wait up to this many times the longest spin counts as short.
const SHORT_WAIT: u32 = 4;

/// A spin shorter than this is not worth its check: the thread parks at once.
const SHORTEST_SPIN: Duration = Duration::from_micros(5);

/// One thread's spin: how long the next wait spins, from how long the last ones took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spin {
    longest: Duration,
    next: Duration,
}

impl Spin {
    pub(crate) fn new(longest: Duration) -> Self {
        Self { longest, next: longest }
    }

    /// How long the next wait spins before it parks.
    pub(crate) fn next(&self) -> Duration {
        self.next
    }

    /// Records that a wait took `waited` in all: a short wait earns the full
    /// spin again; a longer one halves it.
    pub(crate) fn waited(&mut self, waited: Duration) {
        self.next = if waited <= self.longest * SHORT_WAIT {
            self.longest
        } else if self.next / 2 < SHORTEST_SPIN {
            Duration::ZERO
        } else {
            self.next / 2
        };
    }
}

/// The longest spin for this process (see the module's docs).
fn longest() -> Duration {
    static LONGEST: OnceLock<Duration> = OnceLock::new();
    *LONGEST.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
        if cores < 2 {
            return Duration::ZERO;
        }
        match std::env::var("MANTA_GET_SPIN_US") {
            Ok(value) => match value.trim().parse::<u64>() {
                Ok(micros) => Duration::from_micros(micros.min(10_000)),
                Err(_) => {
                    tracing::warn!(%value, "MANTA_GET_SPIN_US is not a number of microseconds; using the default");
                    DEFAULT_SPIN
                }
            },
            Err(_) => DEFAULT_SPIN,
        }
    })
}

thread_local! {
    static SPIN: Cell<Option<Spin>> = const { Cell::new(None) };
}

/// This thread's next spin.
pub(crate) fn next() -> Duration {
    SPIN.with(|spin| spin.get().unwrap_or_else(|| Spin::new(longest())).next())
}

/// Records how long this thread's last wait took.
pub(crate) fn waited(waited: Duration) {
    SPIN.with(|spin| {
        let mut current = spin.get().unwrap_or_else(|| Spin::new(longest()));
        current.waited(waited);
        spin.set(Some(current));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_micros(100);

    #[test]
    fn short_waits_keep_the_full_spin_and_long_ones_wear_it_down_to_nothing() {
        let mut spin = Spin::new(LONGEST);
        assert_eq!(spin.next(), LONGEST);
        spin.waited(Duration::from_micros(40));
        assert_eq!(spin.next(), LONGEST);
        // Parked, a wait that the spin would have covered takes longer than the spin.
        spin.waited(Duration::from_micros(350));
        assert_eq!(spin.next(), LONGEST);
        let mut spins = Vec::new();
        for _ in 0..6 {
            spin.waited(Duration::from_millis(5));
            spins.push(spin.next().as_micros());
        }
        assert_eq!(spins, [50, 25, 12, 6, 0, 0]);
        // A short wait again: the spin is back in full.
        spin.waited(Duration::from_micros(190));
        assert_eq!(spin.next(), LONGEST);
    }

    #[test]
    fn a_zero_longest_spin_never_spins() {
        let mut spin = Spin::new(Duration::ZERO);
        spin.waited(Duration::ZERO);
        assert_eq!(spin.next(), Duration::ZERO);
        spin.waited(Duration::from_secs(1));
        assert_eq!(spin.next(), Duration::ZERO);
    }
}
