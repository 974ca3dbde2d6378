//! Who may send a wake now: a token bucket per server-id (1 wake per 10 s,
//! burst 6) and a relay-wide cap on wakes in flight (32), as in the Go
//! relay. A refused wake is dropped, never queued. The loop owns this
//! state alone, so it needs no lock; time is the loop's `now`.
//!
//! Memory stays bounded as server-ids come and go: [`Gate::sweep`] forgets
//! every server-id whose bucket has refilled to full, since such a bucket
//! is indistinguishable from one never seen.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The admission limits; [`Limits::default`] is the Go relay's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wakes a server-id may send at once.
    pub burst: u32,
    /// One more wake per this much time, up to `burst`.
    pub refill_every: Duration,
    /// Wakes admitted and not yet finished, relay-wide.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            burst: 6,
            refill_every: Duration::from_secs(10),
            max_in_flight: 32,
        }
    }
}

/// Why a wake was dropped. Each is counted as `outcome="dropped"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Push is not configured (no credentials).
    PushOff,
    /// The `push_wake` value is not an object of string fields.
    Malformed,
    /// A platform other than `fcm`.
    UnsupportedPlatform,
    /// No token, or an empty one.
    EmptyToken,
    /// A token longer than any FCM token.
    TokenTooLong,
    /// The server-id's bucket is empty.
    RateLimited,
    /// The relay-wide in-flight cap is reached.
    InFlightCap,
    /// The worker threads are gone (they only end if one panicked).
    WorkersGone,
}

impl Refusal {
    /// The `reason=` value of the log line.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PushOff => "push_not_configured",
            Refusal::Malformed => "malformed",
            Refusal::UnsupportedPlatform => "unsupported_platform",
            Refusal::EmptyToken => "empty_token",
            Refusal::TokenTooLong => "token_too_long",
            Refusal::RateLimited => "rate_limited",
            Refusal::InFlightCap => "in_flight_cap",
            Refusal::WorkersGone => "workers_gone",
        }
    }

    /// Logs the one warning line for a wake dropped from `server_id`.
    pub fn log(self, server_id: &str) {
        log::warn!(
            "push_wake_dropped server_id={server_id} reason={}",
            self.reason()
        );
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// One server-id's bucket, refilled in whole tokens: `refilled_at`
/// advances by whole intervals, so a fraction of one is never lost.
struct Bucket {
    tokens: u32,
    refilled_at: Instant,
}

/// The admission state the loop owns.
pub(crate) struct Gate {
    limits: Limits,
    buckets: HashMap<String, Bucket>,
    in_flight: usize,
}

impl Gate {
    pub(crate) fn new(limits: Limits) -> Gate {
        Gate {
            limits,
            buckets: HashMap::new(),
            in_flight: 0,
        }
    }

    /// Admits one wake from `server_id` at `now`, or says why not. The
    /// in-flight cap is checked first so that a wake refused for it does
    /// not cost the server-id a token.
    pub(crate) fn admit(&mut self, server_id: &str, now: Instant) -> Result<(), Refusal> {
        if self.in_flight >= self.limits.max_in_flight {
            return Err(Refusal::InFlightCap);
        }
        let limits = self.limits;
        let bucket = match self.buckets.get_mut(server_id) {
            Some(bucket) => bucket,
            None => self.buckets.entry(server_id.to_owned()).or_insert(Bucket {
                tokens: limits.burst,
                refilled_at: now,
            }),
        };
        refill(bucket, limits, now);
        if bucket.tokens == 0 {
            return Err(Refusal::RateLimited);
        }
        bucket.tokens -= 1;
        self.in_flight += 1;
        Ok(())
    }

    /// Takes back an admission whose job could not be handed over.
    pub(crate) fn undo(&mut self, server_id: &str) {
        self.finished();
        if let Some(bucket) = self.buckets.get_mut(server_id) {
            bucket.tokens = (bucket.tokens + 1).min(self.limits.burst);
        }
    }

    /// One admitted wake has finished (its outcome reached the loop).
    pub(crate) fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Forgets server-ids whose bucket is full again.
    pub(crate) fn sweep(&mut self, now: Instant) {
        let limits = self.limits;
        self.buckets.retain(|_, bucket| {
            refill(bucket, limits, now);
            bucket.tokens < limits.burst
        });
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

fn refill(bucket: &mut Bucket, limits: Limits, now: Instant) {
    if bucket.tokens >= limits.burst || limits.refill_every.is_zero() {
        bucket.tokens = limits.burst;
        bucket.refilled_at = now;
        return;
    }
    let elapsed = now.saturating_duration_since(bucket.refilled_at);
    let whole = elapsed.as_nanos() / limits.refill_every.as_nanos();
    if whole == 0 {
        return;
    }
    let added = u32::try_from(whole).unwrap_or(u32::MAX);
    bucket.tokens = bucket.tokens.saturating_add(added).min(limits.burst);
    bucket.refilled_at = if bucket.tokens == limits.burst {
        now
    } else {
        bucket.refilled_at + limits.refill_every * added
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn admit_n(gate: &mut Gate, id: &str, n: usize, now: Instant) -> Vec<Result<(), Refusal>> {
        (0..n).map(|_| gate.admit(id, now)).collect()
    }

    #[test]
    fn burst_of_six_then_one_per_ten_seconds() {
        let t0 = Instant::now();
        let mut gate = Gate::new(Limits::default());
        assert!(admit_n(&mut gate, "a", 6, t0).iter().all(Result::is_ok));
        for _ in 0..6 {
            gate.finished();
        }
        assert_eq!(gate.admit("a", t0), Err(Refusal::RateLimited));
        assert_eq!(gate.admit("a", t0 + 9 * SECOND), Err(Refusal::RateLimited));
        assert_eq!(gate.admit("a", t0 + 10 * SECOND), Ok(()));
        assert_eq!(gate.admit("a", t0 + 19 * SECOND), Err(Refusal::RateLimited));
        // The fraction of an interval that passed is not lost.
        assert_eq!(gate.admit("a", t0 + 20 * SECOND), Ok(()));
        assert_eq!(
            gate.admit("b", t0),
            Ok(()),
            "another server-id has its own bucket"
        );
    }

    #[test]
    fn in_flight_cap_refuses_without_costing_a_token() {
        let t0 = Instant::now();
        let limits = Limits {
            max_in_flight: 2,
            ..Limits::default()
        };
        let mut gate = Gate::new(limits);
        assert_eq!(
            admit_n(&mut gate, "a", 3, t0),
            [Ok(()), Ok(()), Err(Refusal::InFlightCap)]
        );
        assert_eq!(gate.admit("b", t0), Err(Refusal::InFlightCap));
        gate.finished();
        assert_eq!(gate.in_flight(), 1);
        assert_eq!(gate.admit("b", t0), Ok(()));
        for _ in 0..2 {
            gate.finished();
        }
        // "a" spent 2 of its 6, whatever the cap refused: 4 more, no 5th.
        for _ in 0..4 {
            assert_eq!(gate.admit("a", t0), Ok(()));
            gate.finished();
        }
        assert_eq!(gate.admit("a", t0), Err(Refusal::RateLimited));
    }

    #[test]
    fn undo_returns_the_token_and_the_slot() {
        let t0 = Instant::now();
        let mut gate = Gate::new(Limits {
            burst: 1,
            ..Limits::default()
        });
        gate.admit("a", t0).unwrap();
        gate.undo("a");
        assert_eq!(gate.in_flight(), 0);
        assert_eq!(gate.admit("a", t0), Ok(()));
    }

    #[test]
    fn sweep_forgets_only_full_buckets() {
        let t0 = Instant::now();
        let mut gate = Gate::new(Limits::default());
        gate.admit("idle", t0).unwrap();
        gate.admit("busy", t0 + 55 * SECOND).unwrap();
        gate.sweep(t0 + 60 * SECOND);
        assert_eq!(gate.tracked(), 1, "idle refilled in 10 s; busy has not");
        gate.sweep(t0 + 65 * SECOND);
        assert_eq!(gate.tracked(), 0);
    }
}
