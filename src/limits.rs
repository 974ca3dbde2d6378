//! Per-client-IP admission (SPEC §7): the upgrade rate limit (a token
//! bucket: `burst` attempts at once, one more every `interval`) and the
//! count of live connections per IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Rounding slack when comparing a bucket's tokens against one attempt.
const TOKEN_EPSILON: f64 = 1e-9;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    live: usize,
}

/// Rate and connection limits keyed by client IP.
pub struct IpLimits {
    burst: f64,
    interval: Duration,
    per_ip: HashMap<IpAddr, Bucket>,
}

impl IpLimits {
    /// Limits allowing `burst` attempts at once and one per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        IpLimits {
            burst: f64::from(burst),
            interval,
            per_ip: HashMap::new(),
        }
    }

    /// Takes one upgrade attempt from `ip`'s bucket; false when empty.
    pub fn allow_attempt(&mut self, ip: IpAddr, now: Instant) -> bool {
        let bucket = self.bucket(ip, now);
        // Refills are summed in f64 (six sixths make 0.999…): allow for
        // the rounding, or a client polling on the interval waits one more.
        if bucket.tokens >= 1.0 - TOKEN_EPSILON {
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }

    /// Live connections of `ip`.
    pub fn live(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).map_or(0, |bucket| bucket.live)
    }

    /// Counts one more live connection for `ip`.
    pub fn connection_opened(&mut self, ip: IpAddr, now: Instant) {
        self.bucket(ip, now).live += 1;
    }

    /// Counts one live connection of `ip` less.
    pub fn connection_closed(&mut self, ip: IpAddr) {
        if let Some(bucket) = self.per_ip.get_mut(&ip) {
            bucket.live = bucket.live.saturating_sub(1);
        }
    }

    /// Forgets IPs with no live connection and a full bucket: they are
    /// indistinguishable from IPs never seen. A map left mostly empty by
    /// a burst of addresses gives its capacity back.
    pub fn sweep(&mut self, now: Instant) {
        let (burst, interval) = (self.burst, self.interval);
        self.per_ip.retain(|_, bucket| {
            refill(bucket, burst, interval, now);
            bucket.live > 0 || bucket.tokens < burst
        });
        if self.per_ip.len() * 4 <= self.per_ip.capacity() {
            self.per_ip.shrink_to(self.per_ip.len() * 2);
        }
    }

    /// Buckets the map has room for (each ~64 bytes with its key).
    pub fn capacity(&self) -> usize {
        self.per_ip.capacity()
    }

    /// IPs currently tracked.
    pub fn tracked(&self) -> usize {
        self.per_ip.len()
    }

    fn bucket(&mut self, ip: IpAddr, now: Instant) -> &mut Bucket {
        let (burst, interval) = (self.burst, self.interval);
        let bucket = self.per_ip.entry(ip).or_insert(Bucket {
            tokens: burst,
            refilled_at: now,
            live: 0,
        });
        refill(bucket, burst, interval, now);
        bucket
    }
}

/// Hand-over of an upgrade (`handover/snapshot.rs`): each tracked IP's
/// tokens, refilled to `now`; live counts follow from the connections.
impl IpLimits {
    pub fn export(&self, now: Instant) -> Vec<(IpAddr, f64)> {
        let (burst, interval) = (self.burst, self.interval);
        self.per_ip
            .iter()
            .map(|(ip, bucket)| {
                let mut bucket = *bucket;
                refill(&mut bucket, burst, interval, now);
                (*ip, bucket.tokens)
            })
            .collect()
    }

    /// Sets `ip`'s tokens as they were at the hand-over (within the burst).
    pub fn import(&mut self, ip: IpAddr, tokens: f64, now: Instant) {
        let burst = self.burst;
        let bucket = self.bucket(ip, now);
        bucket.tokens = if tokens.is_finite() {
            tokens.clamp(0.0, burst)
        } else {
            burst
        };
    }
}

fn refill(bucket: &mut Bucket, burst: f64, interval: Duration, now: Instant) {
    let elapsed = now.saturating_duration_since(bucket.refilled_at);
    if interval.is_zero() {
        bucket.tokens = burst;
    } else {
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() / interval.as_secs_f64()).min(burst);
    }
    bucket.refilled_at = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_interval() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut limits = IpLimits::new(3, Duration::from_secs(6));
        assert!((0..3).all(|_| limits.allow_attempt(ip, t0)));
        assert!(!limits.allow_attempt(ip, t0));
        assert!(!limits.allow_attempt(ip, t0 + Duration::from_secs(5)));
        assert!(limits.allow_attempt(ip, t0 + Duration::from_secs(6)));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limits.allow_attempt(other, t0));
    }

    #[test]
    fn sweep_forgets_only_idle_full_buckets() {
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut limits = IpLimits::new(2, Duration::from_secs(1));
        limits.allow_attempt(a, t0);
        limits.connection_opened(b, t0);
        limits.sweep(t0 + Duration::from_secs(10));
        assert_eq!(limits.tracked(), 1);
        assert_eq!(limits.live(b), 1);
    }

    #[test]
    fn sweep_gives_back_the_room_of_a_burst_of_addresses() {
        let t0 = Instant::now();
        let mut limits = IpLimits::new(2, Duration::from_secs(1));
        for i in 0..10_000u32 {
            limits.allow_attempt(IpAddr::from(i.to_be_bytes()), t0);
        }
        let kept: IpAddr = "192.0.2.9".parse().unwrap();
        limits.connection_opened(kept, t0);
        assert!(limits.capacity() >= 10_000);
        limits.sweep(t0 + Duration::from_secs(10));
        assert_eq!(limits.tracked(), 1);
        assert!(limits.capacity() < 16, "capacity {}", limits.capacity());
        assert_eq!(limits.live(kept), 1);
    }
}
