//! A small hashed timer wheel: every deadline of the relay (handshake,
//! ping, pong, message, output stall, close handshake, conflict probe,
//! grace window, shutdown drain) is one entry here.
//!
//! Time is cut into 10 ms ticks; an entry sits in slot `tick % SLOTS` and
//! fires once the clock has reached its tick. Cancelling is lazy: the owner
//! of a key checks, when it fires, whether the deadline still stands (a
//! connection's key carries its handle, which finds nothing once the
//! connection is gone, and compares the instant it was armed for; a grace
//! window's key carries the window's generation), so re-arming never
//! searches the wheel.

use std::time::{Duration, Instant};

/// Resolution of every deadline.
pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 4096;

/// Deadlines keyed by `K`, fired in tick order.
pub struct TimerWheel<K> {
    epoch: Instant,
    slots: Vec<Vec<(u64, K)>>,
    /// Every tick before this one has been fired.
    next_tick: u64,
    /// Entries whose deadline had already passed when they were scheduled.
    overdue: Vec<K>,
    /// The instant of the last `expire` call.
    last_now: Instant,
    len: usize,
}

impl<K> TimerWheel<K> {
    /// An empty wheel whose tick 0 is `epoch`.
    pub fn new(epoch: Instant) -> Self {
        TimerWheel {
            epoch,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            overdue: Vec::new(),
            last_now: epoch,
            len: 0,
        }
    }

    /// Number of entries, fired or not yet checked.
    pub fn len(&self) -> usize {
        self.len + self.overdue.len()
    }

    /// Whether no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fires `key` once the clock reaches `at` (rounded up to a tick).
    pub fn schedule(&mut self, at: Instant, key: K) {
        if at <= self.last_now {
            self.overdue.push(key);
            return;
        }
        let tick = self.tick_ceil(at).max(self.next_tick);
        self.slots[(tick % SLOTS as u64) as usize].push((tick, key));
        self.len += 1;
    }

    /// Moves every entry due at `now` into `fired`, earliest tick first.
    pub fn expire(&mut self, now: Instant, fired: &mut Vec<K>) {
        fired.append(&mut self.overdue);
        self.last_now = self.last_now.max(now);
        let now_tick = self.tick_floor(now);
        if now_tick < self.next_tick {
            return;
        }
        let span = (now_tick - self.next_tick + 1).min(SLOTS as u64);
        for tick in self.next_tick..self.next_tick + span {
            let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now_tick {
                    fired.push(slot.swap_remove(i).1);
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
        }
        self.next_tick = now_tick + 1;
    }

    /// The earliest instant at which `expire` has something to fire, at
    /// most one wheel revolution ahead.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.overdue.is_empty() {
            return Some(self.last_now);
        }
        if self.len == 0 {
            return None;
        }
        for tick in self.next_tick..self.next_tick + SLOTS as u64 {
            let slot = &self.slots[(tick % SLOTS as u64) as usize];
            if slot.iter().any(|(due, _)| *due <= tick) {
                return Some(self.instant_of(tick));
            }
        }
        Some(self.instant_of(self.next_tick + SLOTS as u64))
    }

    fn tick_floor(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos()) as u64
    }

    fn tick_ceil(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.epoch).as_nanos();
        nanos.div_ceil(TICK.as_nanos()) as u64
    }

    fn instant_of(&self, tick: u64) -> Instant {
        // Not `TICK * tick as u32`: that wraps after 2^32 ticks (497 days
        // of uptime) and made `next_deadline` a past instant from then on.
        self.epoch + Duration::from_nanos(tick.saturating_mul(TICK.as_nanos() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(wheel: &mut TimerWheel<u32>, at: Instant) -> Vec<u32> {
        let mut fired = Vec::new();
        wheel.expire(at, &mut fired);
        fired
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.schedule(t0 + Duration::from_secs(30), 1);
        assert!(fire(&mut wheel, t0 + Duration::from_millis(29_990)).is_empty());
        assert_eq!(fire(&mut wheel, t0 + Duration::from_secs(30)), vec![1]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let far = TICK * (SLOTS as u32 * 3 + 7);
        wheel.schedule(t0 + far, 9);
        assert!(fire(&mut wheel, t0 + far - TICK).is_empty());
        assert_eq!(wheel.next_deadline(), Some(t0 + far));
        assert_eq!(fire(&mut wheel, t0 + far), vec![9]);
    }

    #[test]
    fn a_big_jump_fires_everything_due() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for i in 0..100u32 {
            wheel.schedule(t0 + Duration::from_millis(250 * u64::from(i) + 1), i);
        }
        let mut fired = fire(&mut wheel, t0 + Duration::from_secs(3600));
        fired.sort();
        assert_eq!(fired, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn past_deadlines_fire_on_the_next_expire() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        fire(&mut wheel, t0 + Duration::from_secs(5));
        wheel.schedule(t0 + Duration::from_secs(1), 3);
        assert_eq!(wheel.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(fire(&mut wheel, t0 + Duration::from_secs(5)), vec![3]);
    }

    #[test]
    fn deadlines_after_497_days_of_uptime_are_not_wrapped() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let late = TICK * u32::MAX + TICK * 10;
        fire(&mut wheel, t0 + late);
        wheel.schedule(t0 + late + TICK * 7, 1);
        assert_eq!(wheel.next_deadline(), Some(t0 + late + TICK * 7));
    }

    #[test]
    fn next_deadline_is_the_earliest() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        assert_eq!(wheel.next_deadline(), None);
        wheel.schedule(t0 + Duration::from_secs(20), 1);
        wheel.schedule(t0 + Duration::from_secs(10), 2);
        assert_eq!(wheel.next_deadline(), Some(t0 + Duration::from_secs(10)));
    }
}
