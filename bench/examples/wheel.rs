//! The timer wheel under connection churn, against the designs issue #14
//! weighed: what each costs per timer, how often it allocates, how much it
//! holds at the peak and how much it keeps once the churn is over.
//!
//! ```text
//! cargo run --release -p relay-bench --example wheel [-- RATE SECONDS]
//! ```
//!
//! The workload is the relay's in a `relay-bench churn`: RATE connections
//! a second (23,000 by default, this machine's full rate), each leaving its
//! handshake deadline (+5 s) in the wheel, lazily cancelled; with
//! `--ping-interval 1s` also a ping deadline (+1 s). Sixteen binaries keep
//! a 30 s ping deadline each. Every 10 ms tick: the new deadlines, one
//! `expire`, one `next_deadline` (the loop asks before each poll). Then
//! 10 s at rest: binaries only. Time is simulated, so the figures do not
//! depend on the machine's load except the nanoseconds per timer.
//!
//! Designs:
//! * `4ec35aa`: every slot keeps its vector (the wheel before the issue);
//! * `free-on-drain`: a drained slot's vector is freed (no spares);
//! * `spares` (the relay's): drained vectors go to a bounded spare list;
//! * `linked`: one slab of entries with a list per slot (entries reused
//!   through a free list; the slab is freed only when it empties).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use pyrycode_relay::timer::{TimerWheel, SPARE_ENTRIES, TICK};

/// The system allocator, counting calls and live bytes.
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        let live = LIVE.fetch_add(new_size, Relaxed) + new_size;
        LIVE.fetch_sub(layout.size(), Relaxed);
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The relay's timer key has this size (a 32-byte enum).
type Key = [u64; 4];

trait Wheel {
    fn schedule(&mut self, at: Instant, key: Key);
    fn expire(&mut self, now: Instant, fired: &mut Vec<Key>);
    fn next_deadline(&self) -> Option<Instant>;
    /// What the loop's trim timer does (nothing for most designs).
    fn trim(&mut self) {}
}

impl Wheel for TimerWheel<Key> {
    fn schedule(&mut self, at: Instant, key: Key) {
        TimerWheel::schedule(self, at, key)
    }
    fn expire(&mut self, now: Instant, fired: &mut Vec<Key>) {
        TimerWheel::expire(self, now, fired)
    }
    fn next_deadline(&self) -> Option<Instant> {
        TimerWheel::next_deadline(self)
    }
    fn trim(&mut self) {
        self.shrink()
    }
}

const SLOTS: usize = 4096;

fn tick_ceil(epoch: Instant, at: Instant) -> u64 {
    (at.saturating_duration_since(epoch).as_nanos()).div_ceil(TICK.as_nanos()) as u64
}

fn tick_floor(epoch: Instant, at: Instant) -> u64 {
    (at.saturating_duration_since(epoch).as_nanos() / TICK.as_nanos()) as u64
}

fn instant_of(epoch: Instant, tick: u64) -> Instant {
    epoch + Duration::from_nanos(tick * TICK.as_nanos() as u64)
}

/// What an `expire` at `now` sweeps on a wheel whose next tick is
/// `next_tick`: `now`'s tick and the ticks up to it, at most one turn of
/// the wheel; `None` while `now` is still before `next_tick`.
fn ticks_due(epoch: Instant, next_tick: u64, now: Instant) -> Option<(u64, Range<u64>)> {
    let now_tick = tick_floor(epoch, now);
    if now_tick < next_tick {
        return None;
    }
    let span = (now_tick - next_tick + 1).min(SLOTS as u64);
    Some((now_tick, next_tick..next_tick + span))
}

/// The next deadline of a non-empty wheel: the first tick of the coming
/// turn whose slot holds an entry due in that turn (`due_at(tick)`), or
/// one whole turn on when none does.
fn first_due(epoch: Instant, next_tick: u64, mut due_at: impl FnMut(u64) -> bool) -> Instant {
    let tick = (next_tick..next_tick + SLOTS as u64)
        .find(|&tick| due_at(tick))
        .unwrap_or(next_tick + SLOTS as u64);
    instant_of(epoch, tick)
}

/// The wheel of 4ec35aa: a vector per slot, never given back.
struct Kept {
    epoch: Instant,
    slots: Vec<Vec<(u64, Key)>>,
    next_tick: u64,
    len: usize,
}

impl Kept {
    fn new(epoch: Instant) -> Self {
        Kept {
            epoch,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            len: 0,
        }
    }
}

impl Wheel for Kept {
    fn schedule(&mut self, at: Instant, key: Key) {
        let tick = tick_ceil(self.epoch, at).max(self.next_tick);
        self.slots[(tick % SLOTS as u64) as usize].push((tick, key));
        self.len += 1;
    }
    fn expire(&mut self, now: Instant, fired: &mut Vec<Key>) {
        let Some((now_tick, ticks)) = ticks_due(self.epoch, self.next_tick, now) else {
            return;
        };
        for tick in ticks {
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
    fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        Some(first_due(self.epoch, self.next_tick, |tick| {
            let slot = &self.slots[(tick % SLOTS as u64) as usize];
            slot.iter().any(|(due, _)| *due <= tick)
        }))
    }
}

const NIL: u32 = u32::MAX;

struct Node {
    tick: u64,
    key: Key,
    next: u32,
}

/// One slab of entries, a singly linked list per slot, a free list.
struct Linked {
    epoch: Instant,
    heads: Vec<u32>,
    nodes: Vec<Node>,
    free: u32,
    next_tick: u64,
    len: usize,
}

impl Linked {
    fn new(epoch: Instant) -> Self {
        Linked {
            epoch,
            heads: vec![NIL; SLOTS],
            nodes: Vec::new(),
            free: NIL,
            next_tick: 0,
            len: 0,
        }
    }
}

impl Wheel for Linked {
    fn schedule(&mut self, at: Instant, key: Key) {
        let tick = tick_ceil(self.epoch, at).max(self.next_tick);
        let slot = (tick % SLOTS as u64) as usize;
        let node = Node {
            tick,
            key,
            next: self.heads[slot],
        };
        let index = if self.free == NIL {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        } else {
            let index = self.free;
            self.free = self.nodes[index as usize].next;
            self.nodes[index as usize] = node;
            index
        };
        self.heads[slot] = index;
        self.len += 1;
    }
    fn expire(&mut self, now: Instant, fired: &mut Vec<Key>) {
        let Some((now_tick, ticks)) = ticks_due(self.epoch, self.next_tick, now) else {
            return;
        };
        for tick in ticks {
            let slot = (tick % SLOTS as u64) as usize;
            let mut prev = NIL;
            let mut at = self.heads[slot];
            while at != NIL {
                let next = self.nodes[at as usize].next;
                if self.nodes[at as usize].tick <= now_tick {
                    fired.push(self.nodes[at as usize].key);
                    if prev == NIL {
                        self.heads[slot] = next;
                    } else {
                        self.nodes[prev as usize].next = next;
                    }
                    self.nodes[at as usize].next = self.free;
                    self.free = at;
                    self.len -= 1;
                } else {
                    prev = at;
                }
                at = next;
            }
        }
        self.next_tick = now_tick + 1;
        if self.len == 0 {
            self.nodes = Vec::new();
            self.free = NIL;
        }
    }
    fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        Some(first_due(self.epoch, self.next_tick, |tick| {
            let mut at = self.heads[(tick % SLOTS as u64) as usize];
            while at != NIL {
                if self.nodes[at as usize].tick <= tick {
                    return true;
                }
                at = self.nodes[at as usize].next;
            }
            false
        }))
    }
}

/// Builds one design's empty wheel from its epoch.
type MakeWheel = fn(Instant) -> Box<dyn Wheel>;

/// What one design did under the workload.
struct Figures {
    ns_per_timer: f64,
    allocs_per_1k_timers: f64,
    peak_bytes: usize,
    rest_bytes: usize,
}

fn run(mut wheel: Box<dyn Wheel>, epoch: Instant, rate: u64, seconds: u64, ping: bool) -> Figures {
    let mut fired = Vec::with_capacity(4096);
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let per_tick = rate / 100;
    let load_ticks = seconds * 100;
    let mut timers = 0u64;
    let mut busy = Duration::ZERO;
    let allocs = ALLOCS.load(Relaxed);
    for tick in 0..load_ticks + 1000 {
        let now = instant_of(epoch, tick);
        let started = Instant::now();
        if tick < load_ticks {
            for i in 0..per_tick {
                let key = [tick, i, 0, 0];
                wheel.schedule(now + Duration::from_secs(5), key);
                if ping {
                    wheel.schedule(now + Duration::from_secs(1), key);
                }
            }
            timers += per_tick * if ping { 2 } else { 1 };
        }
        if tick % 3000 < 16 {
            // Sixteen binaries re-arm their 30 s ping.
            wheel.schedule(now + Duration::from_secs(30), [u64::MAX, tick, 0, 0]);
        }
        wheel.expire(now, &mut fired);
        fired.clear();
        std::hint::black_box(wheel.next_deadline());
        if tick % 400 == 0 {
            wheel.trim(); // the loop's trim timer, every 4 s
        }
        if tick < load_ticks {
            busy += started.elapsed();
        }
    }
    let allocs = ALLOCS.load(Relaxed) - allocs;
    let peak_bytes = PEAK.load(Relaxed) - base;
    wheel.trim();
    let rest_bytes = LIVE.load(Relaxed) - base;
    drop(wheel);
    Figures {
        ns_per_timer: busy.as_nanos() as f64 / timers as f64,
        allocs_per_1k_timers: allocs as f64 * 1000.0 / timers as f64,
        peak_bytes,
        rest_bytes,
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("RATE SECONDS: two numbers"))
        .collect();
    let rate = args.first().copied().unwrap_or(23_000);
    let seconds = args.get(1).copied().unwrap_or(60);
    println!(
        "{rate} connections/s for {seconds} s, then 10 s at rest; entries of {} B",
        std::mem::size_of::<(u64, Key)>()
    );
    println!(
        "{:<15} {:<14} {:>10} {:>14} {:>10} {:>10}",
        "design", "deadlines", "ns/timer", "allocs/1k", "peak MiB", "rest KiB"
    );
    let mib = |b: usize| b as f64 / 1048576.0;
    for ping in [false, true] {
        for round in 0..3 {
            let designs: [(&str, MakeWheel); 4] = [
                ("4ec35aa", |e| Box::new(Kept::new(e))),
                ("free-on-drain", |e| {
                    Box::new(TimerWheel::<Key>::with_spare_budget(e, 0))
                }),
                ("spares", |e| {
                    Box::new(TimerWheel::<Key>::with_spare_budget(e, SPARE_ENTRIES))
                }),
                ("linked", |e| Box::new(Linked::new(e))),
            ];
            for (name, make) in designs {
                let epoch = Instant::now();
                let f = run(make(epoch), epoch, rate, seconds, ping);
                println!(
                    "{:<15} {:<14} {:>10.1} {:>14.2} {:>10.2} {:>10.1}",
                    name,
                    if ping { "+1 s and +5 s" } else { "+5 s" },
                    f.ns_per_timer,
                    f.allocs_per_1k_timers,
                    mib(f.peak_bytes),
                    f.rest_bytes as f64 / 1024.0,
                );
            }
            if round < 2 {
                println!();
            }
        }
    }
}
