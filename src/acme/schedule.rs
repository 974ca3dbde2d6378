//! When the ACME thread acts next: renewal at two thirds of a
//! certificate's lifetime, and exponential back-off after failures.
//!
//! Pure functions of the time and a random number, so the policy is
//! tested without waiting: the thread only sleeps for what they return.
//!
//! The back-off starts at 10 minutes and doubles up to 4 hours, each
//! delay drawn from ±25 % around its nominal value so that many relays
//! never retry in step. With that start at most four validations fail
//! within any hour, even at the shortest jitter: under Let's Encrypt's
//! limit of five failed validations per account, hostname and hour. A
//! CA's `rateLimited` answer waits at least an hour. Within the last third
//! of a 90-day certificate that still leaves over a hundred tries before
//! it expires.

use std::time::{Duration, SystemTime};

use super::cache::CertInfo;

/// The back-off after failed attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest nominal delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(10 * 60),
            max: Duration::from_secs(4 * 60 * 60),
        }
    }
}

/// The least wait after a CA said `rateLimited`.
pub const RATE_LIMITED_WAIT: Duration = Duration::from_secs(60 * 60);

impl Backoff {
    /// The wait after `failures` consecutive failures (at least 1):
    /// `initial · 2^(failures-1)`, capped at `max`, then scaled by a
    /// factor in [0.75, 1.25) chosen by `unit`, a number in [0, 1).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        let nominal = self
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        nominal.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// When to renew: two thirds of the way from `not_before` to `not_after`.
pub fn renew_at(info: &CertInfo) -> SystemTime {
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    info.not_before + lifetime * 2 / 3
}

/// How long from `now` until `at` (zero if it has passed).
pub fn until(now: SystemTime, at: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or_default()
}

/// A random number in [0, 1) for the jitter.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn backoff_doubles_from_ten_minutes_up_to_four_hours() {
        let backoff = Backoff::default();
        let nominal: Vec<u64> = (1..=9)
            .map(|n| backoff.delay(n, 0.5).as_secs() / 60)
            .collect();
        assert_eq!(nominal, [10, 20, 40, 80, 160, 240, 240, 240, 240]);
        assert_eq!(backoff.delay(u32::MAX, 0.5), backoff.max);
    }

    #[test]
    fn jitter_stays_within_a_quarter_of_the_nominal_delay() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1, 0.0), MINUTE * 30 / 4);
        assert!(backoff.delay(1, 0.999_999) < MINUTE * 50 / 4);
        assert!(backoff.delay(9, 0.999_999) < backoff.max * 5 / 4);
        for _ in 0..100 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }

    #[test]
    fn at_most_four_failures_in_any_hour() {
        // Attempt times with the shortest jitter, from a first failure at 0.
        let backoff = Backoff::default();
        let mut at = Duration::ZERO;
        let mut failures_at = vec![at];
        for n in 1..12 {
            at += backoff.delay(n, 0.0);
            failures_at.push(at);
        }
        for (i, start) in failures_at.iter().enumerate() {
            let in_hour = failures_at[i..]
                .iter()
                .take_while(|t| **t < *start + MINUTE * 60)
                .count();
            assert!(
                in_hour <= 4,
                "{in_hour} failures within an hour of {start:?}"
            );
        }
    }

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let info = CertInfo {
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86_400),
            dns_names: vec![],
        };
        assert_eq!(renew_at(&info), start + Duration::from_secs(60 * 86_400));
        assert_eq!(
            until(start, renew_at(&info)),
            Duration::from_secs(60 * 86_400)
        );
        assert_eq!(until(renew_at(&info), start), Duration::ZERO);
    }
}
