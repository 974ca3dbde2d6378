//! A fixed-bucket latency histogram of plain integers: recording a value is
//! a binary search over 17 bounds and two additions, cheap enough for every
//! frame. The Prometheus client sees it only at scrape time.

use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 50 µs to 10 s. A frame that
/// is forwarded at once takes tens of microseconds inside the relay; one
/// held back by backpressure or a slow reader can take seconds.
pub const LATENCY_BOUNDS_SECONDS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds, for the integer comparison.
const BOUNDS_NANOS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Counts per bucket (not cumulative; the last one is over 10 s) and the
/// sum of every observation in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u64; BOUNDS_NANOS.len() + 1],
    sum_nanos: u64,
}

impl LatencyHistogram {
    /// The bucket counts and the sum, for [`super::Metrics::export`].
    pub fn export(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().copied().chain([self.sum_nanos])
    }

    /// Takes back what [`LatencyHistogram::export`] gave, one value at a time.
    pub fn import(&mut self, next: &mut impl FnMut() -> u64) {
        for count in &mut self.counts {
            *count = next();
        }
        self.sum_nanos = next();
    }

    /// Records one observation. A bound is inclusive (`le`).
    pub fn observe(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[bucket] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// `(upper bound in seconds, observations in that bucket alone)` for
    /// each finite bucket; what is over the last bound is only in
    /// [`LatencyHistogram::count`].
    pub fn buckets(&self) -> [(f64, u64); LATENCY_BOUNDS_SECONDS.len()] {
        std::array::from_fn(|i| (LATENCY_BOUNDS_SECONDS[i], self.counts[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_bound_tables_agree() {
        for (seconds, nanos) in LATENCY_BOUNDS_SECONDS.iter().zip(BOUNDS_NANOS) {
            assert_eq!((seconds * 1e9).round() as u64, nanos);
        }
    }

    #[test]
    fn observations_fall_in_the_first_bucket_that_holds_them() {
        let mut histogram = LatencyHistogram::default();
        histogram.observe(Duration::ZERO);
        histogram.observe(Duration::from_nanos(50_000));
        histogram.observe(Duration::from_nanos(50_001));
        histogram.observe(Duration::from_secs(11));
        histogram.observe(Duration::MAX);
        let buckets = histogram.buckets();
        assert_eq!(buckets[0], (0.00005, 2));
        assert_eq!(buckets[1], (0.0001, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 3);
        assert_eq!(histogram.count(), 5);
        assert_eq!(histogram.sum_nanos, u64::MAX, "the sum saturates");
    }
}
