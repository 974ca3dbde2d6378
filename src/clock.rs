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
    /// Whether the loop should sleep in `poll` until the next deadline
    /// (real time) or only look for ready sockets (simulated time).
    fn is_real(&self) -> bool;
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

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.elapsed_nanos
            .fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
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
}
