//! A small hashed timer wheel: every deadline of the relay (a connection's,
//! a grace window's end, the shutdown drain, and the periodic sweep, trim,
//! accept back-off and upgrade steps) is one entry here.
//!
//! Time is cut into 10 ms ticks; an entry sits in slot `tick % SLOTS` and
//! fires once the clock has reached its tick. Cancelling is lazy: the owner
//! of a key checks, when it fires, whether the deadline still stands (a
//! connection's key carries its handle, which finds nothing once the
//! connection is gone, and compares the instant it was armed for; a grace
//! window's key carries the window's generation), so re-arming never
//! searches the wheel.
//!
//! Memory follows the entries, not their peak. A slot's vector holds the
//! entries of one tick for at most one revolution; once its tick has fired
//! and it is empty, the vector leaves the slot. A few emptied vectors (at
//! most [`SPARE_ENTRIES`] entries of capacity in all, each one that was at
//! least a quarter full) are kept for the next slots to fill, so steady
//! load allocates nothing; the rest are freed. Without this, every one of
//! the 4,096 slots kept the capacity of the busiest tick it ever saw:
//! ~40 MB after a minute of connection churn.

use std::time::{Duration, Instant};

/// Resolution of every deadline.
pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 4096;
/// Emptied slot vectors kept for reuse hold at most this many entries of
/// capacity in all (160 KiB with the relay's 40-byte entries); a bigger
/// vector is freed when its slot drains.
pub const SPARE_ENTRIES: usize = 4096;
/// A slot that still holds entries (due in a later revolution) gives back
/// capacity once it uses at most a quarter of it, keeping this much at least.
const MIN_SLOT_CAPACITY: usize = 8;

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
    /// Empty vectors of drained slots, for the next empty slot to fill.
    spare: Vec<Vec<(u64, K)>>,
    /// Capacity of the vectors in `spare`, in entries.
    spare_entries: usize,
    /// The most `spare_entries` may be.
    spare_budget: usize,
}

impl<K> TimerWheel<K> {
    /// An empty wheel whose tick 0 is `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self::with_spare_budget(epoch, SPARE_ENTRIES)
    }

    /// An empty wheel keeping at most `entries` entries of capacity in
    /// spare slot vectors (0: every drained slot's vector is freed).
    pub fn with_spare_budget(epoch: Instant, entries: usize) -> Self {
        TimerWheel {
            epoch,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            overdue: Vec::new(),
            last_now: epoch,
            len: 0,
            spare: Vec::new(),
            spare_entries: 0,
            spare_budget: entries,
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
        let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
        if slot.capacity() == 0 {
            if let Some(spare) = self.spare.pop() {
                self.spare_entries -= spare.capacity();
                *slot = spare;
            }
        }
        slot.push((tick, key));
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
            let index = (tick % SLOTS as u64) as usize;
            let slot = &mut self.slots[index];
            let held = slot.len();
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now_tick {
                    fired.push(slot.swap_remove(i).1);
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
            self.release(index, held);
        }
        self.next_tick = now_tick + 1;
    }

    /// Gives back the capacity a slot no longer needs, once its tick has
    /// fired (it `held` that many entries then). An emptied vector goes to
    /// the spares if it was at least a quarter full, or is freed: a vector
    /// sized by a burst and then handed to a quiet slot does not circulate
    /// for ever. A slot left mostly empty by a later revolution shrinks.
    fn release(&mut self, index: usize, held: usize) {
        let slot = &mut self.slots[index];
        let capacity = slot.capacity();
        if slot.is_empty() {
            if capacity == 0 {
                return;
            }
            let vector = std::mem::take(slot);
            let well_used = held * 4 >= capacity;
            if well_used && self.spare_entries + capacity <= self.spare_budget {
                self.spare_entries += capacity;
                self.spare.push(vector);
            }
        } else if capacity > MIN_SLOT_CAPACITY && slot.len() * 4 <= capacity {
            slot.shrink_to(MIN_SLOT_CAPACITY.max(slot.len() * 2));
        }
    }

    /// Frees the spare vectors and any surplus capacity of the overdue
    /// list: for a loop that has been idle for a while.
    pub fn shrink(&mut self) {
        self.spare = Vec::new();
        self.spare_entries = 0;
        if self.overdue.is_empty() {
            self.overdue = Vec::new();
        }
    }

    /// Bytes allocated by the wheel: the slot table, every slot's vector,
    /// the spares and the overdue list.
    pub fn allocated_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u64, K)>();
        let slots: usize = self.slots.iter().map(Vec::capacity).sum();
        self.slots.capacity() * std::mem::size_of::<Vec<(u64, K)>>()
            + (slots + self.spare_entries) * entry
            + self.spare.capacity() * std::mem::size_of::<Vec<(u64, K)>>()
            + self.overdue.capacity() * std::mem::size_of::<K>()
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

    /// Bytes of the wheel's fixed slot table.
    fn table_bytes() -> usize {
        SLOTS * std::mem::size_of::<Vec<(u64, u32)>>()
    }

    /// `per_tick` entries a tick, each due `delay` later, for `ticks` ticks.
    fn churn(wheel: &mut TimerWheel<u32>, t0: Instant, ticks: u32, per_tick: u32, delay: Duration) {
        for tick in 0..ticks {
            let now = t0 + TICK * tick;
            for i in 0..per_tick {
                wheel.schedule(now + delay, i);
            }
            fire(wheel, now);
        }
    }

    #[test]
    fn capacity_follows_the_entries_not_the_busiest_tick() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let entry = std::mem::size_of::<(u64, u32)>();
        // A full revolution of busy ticks: every slot sees 300 entries.
        churn(
            &mut wheel,
            t0,
            SLOTS as u32 + 600,
            300,
            Duration::from_secs(5),
        );
        // Only the ~5 s of slots holding entries keep a vector.
        let live_slots = 501;
        assert!(
            wheel.allocated_bytes() <= table_bytes() + (live_slots * 512 + SPARE_ENTRIES) * entry
        );
        // The load is gone: once the last entries fire, only the slot
        // table and the bounded spares are left; `shrink` drops the spares.
        fire(
            &mut wheel,
            t0 + TICK * (SLOTS as u32 + 600) + Duration::from_secs(5),
        );
        assert!(wheel.is_empty());
        let spares = wheel.spare.capacity() * std::mem::size_of::<Vec<(u64, u32)>>();
        assert!(wheel.allocated_bytes() <= table_bytes() + SPARE_ENTRIES * entry + spares);
        wheel.shrink();
        assert_eq!(wheel.allocated_bytes(), table_bytes());
    }

    #[test]
    fn a_slot_still_holding_a_later_revolution_gives_back_its_surplus() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let revolution = TICK * SLOTS as u32;
        for i in 0..1000 {
            wheel.schedule(t0 + Duration::from_secs(1), i);
        }
        wheel.schedule(t0 + Duration::from_secs(1) + revolution, 7);
        assert_eq!(fire(&mut wheel, t0 + Duration::from_secs(1)).len(), 1000);
        assert_eq!(wheel.len(), 1);
        let entry = std::mem::size_of::<(u64, u32)>();
        assert!(
            wheel.allocated_bytes() <= table_bytes() + (MIN_SLOT_CAPACITY + SPARE_ENTRIES) * entry
        );
        assert_eq!(
            fire(&mut wheel, t0 + Duration::from_secs(1) + revolution),
            vec![7]
        );
    }

    #[test]
    fn emptied_slot_vectors_are_reused_up_to_the_spare_budget() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        for tick in 1..=20u32 {
            for i in 0..64 {
                wheel.schedule(t0 + TICK * tick, i);
            }
        }
        fire(&mut wheel, t0 + TICK * 20);
        let spare = wheel.spare_entries;
        assert!(spare > 0 && spare <= SPARE_ENTRIES);
        wheel.schedule(t0 + TICK * 30, 1);
        assert!(wheel.spare_entries < spare, "an empty slot takes a spare");
        // A vector bigger than the whole budget is freed, not kept.
        for i in 0..(SPARE_ENTRIES as u32 + 1) {
            wheel.schedule(t0 + TICK * 40, i);
        }
        let before = wheel.spare_entries;
        fire(&mut wheel, t0 + TICK * 40);
        assert!(wheel.spare_entries <= before + 64);
    }

    #[test]
    fn a_burst_sized_vector_does_not_circulate_among_quiet_slots() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let entry = std::mem::size_of::<(u64, u32)>();
        // A burst: 400 entries a tick for 2 s, each due 1 s later.
        churn(&mut wheel, t0, 200, 400, Duration::from_secs(1));
        // Then quiet traffic for two revolutions: one entry a tick, due
        // 30 s later, so some slot takes a spare every tick.
        let quiet = t0 + TICK * 200;
        churn(
            &mut wheel,
            quiet,
            2 * SLOTS as u32,
            1,
            Duration::from_secs(30),
        );
        // ~3,000 slots hold one entry each: without the quarter rule they
        // would keep the burst's 512-entry vectors (60 MB in the relay).
        let per_slot = wheel.allocated_bytes().saturating_sub(table_bytes()) / wheel.len();
        assert!(per_slot <= 8 * entry, "{per_slot} bytes per entry");
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
