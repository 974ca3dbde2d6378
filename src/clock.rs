//! Where the loop gets its time from. Production hands it [`SystemClock`];
//! tests hand it a [`ManualClock`] and move time forward themselves, so a
//! 30 s grace window or a 60 s heartbeat runs in microseconds and gives the
//! same result every time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic time source.
pub trait Clock: Send {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Whether time passes by itself. A real clock's loop sleeps in `poll`
    /// until the next deadline; a manual clock's deadlines only come due
    /// when someone moves the clock ([`Clock::manual`]).
    fn is_real(&self) -> bool;
    /// The clock itself when time only moves when told to: what the
    /// relay's `advance` and its `/clock` control endpoint move.
    fn manual(&self) -> Option<&ManualClock> {
        None
    }
}

/// The operating system's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn is_real(&self) -> bool {
        true
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    start: Instant,
    elapsed_nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at an arbitrary fixed instant.
    pub fn new() -> Self {
        ManualClock {
            start: Instant::now(),
            elapsed_nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves time forward by `by`. (A relay's own `advance` does this step
    /// by step and fires each deadline on the way: prefer it.)
    ///
    /// # Panics
    ///
    /// If the clock would pass 584 years: time never wraps around.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).expect("a manual clock moves less than 584 years");
        let before = self.elapsed_nanos.fetch_add(by, Ordering::SeqCst);
        assert!(
            before.checked_add(by).is_some(),
            "a manual clock moves less than 584 years"
        );
    }

    /// Time passed since the clock was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos.load(Ordering::SeqCst))
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn is_real(&self) -> bool {
        false
    }
    fn manual(&self) -> Option<&ManualClock> {
        Some(self)
    }
}
