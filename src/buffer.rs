//! Byte buffers that exist only while bytes are in flight.
//!
//! An idle connection holds no buffer at all: reads land in one shared
//! scratch buffer, and only a partial frame or unsent output borrows a
//! buffer from the [`BufferPool`]. When the bytes are gone the buffer goes
//! back to the pool, which keeps at most [`MAX_POOLED_BYTES`] of them:
//! enough that a busy connection's queue does not go back to the allocator
//! (and the kernel, page by page) between two loop turns.
//!
//! The pool follows its load down as well as up: [`BufferPool::trim`],
//! called by the loop every few seconds, frees the buffers that sat in the
//! pool through the whole period since the last trim. Under steady load
//! that is the surplus over what the load really borrows; once the load is
//! gone, it is everything, two periods later.

use std::time::Instant;

use crate::metrics::Direction;

/// Capacity of a fresh pooled buffer.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// The pool never holds more than this many bytes of idle buffers.
pub const MAX_POOLED_BYTES: usize = 16 * 1024 * 1024;
/// At most this many idle buffers are kept.
const MAX_POOLED: usize = 1024;

/// A free list of byte buffers.
#[derive(Default)]
pub struct BufferPool {
    /// A stack: `get` takes from the top, so the bottom `low_water`
    /// buffers have not been taken since the last trim.
    free: Vec<Vec<u8>>,
    idle_bytes: usize,
    /// The fewest idle buffers the pool held since the last trim.
    low_water: usize,
}

impl BufferPool {
    /// An empty buffer with at least [`BUFFER_SIZE`] capacity.
    pub fn get(&mut self) -> Vec<u8> {
        let buf = match self.free.pop() {
            Some(buf) => {
                self.idle_bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(BUFFER_SIZE),
        };
        self.low_water = self.low_water.min(self.free.len());
        buf
    }

    /// Frees the buffers no `get` needed since the last trim (those below
    /// the low-water mark of the period) and starts a new period. Returns
    /// the bytes freed.
    pub fn trim(&mut self) -> usize {
        let unused = self.low_water.min(self.free.len());
        let freed: usize = self.free.drain(..unused).map(|buf| buf.capacity()).sum();
        self.idle_bytes -= freed;
        if self.free.is_empty() {
            self.free = Vec::new();
        }
        self.low_water = self.free.len();
        freed
    }

    /// Gives a buffer back; it is freed if the pool is full.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        let fits = self.idle_bytes + buf.capacity() <= MAX_POOLED_BYTES;
        if fits && self.free.len() < MAX_POOLED && buf.capacity() > 0 {
            buf.clear();
            self.idle_bytes += buf.capacity();
            self.free.push(buf);
        }
    }

    /// Number of idle buffers held.
    pub fn idle(&self) -> usize {
        self.free.len()
    }

    /// Bytes allocated by the idle buffers (at most [`MAX_POOLED_BYTES`]).
    pub fn idle_bytes(&self) -> usize {
        self.idle_bytes
    }
}

/// Where a reader gets a buffer when bytes must outlive a read (a partial
/// frame, a fragmented message) and gives it back afterwards. The relay
/// passes its [`BufferPool`]; tests and the benchmark pass [`Unpooled`].
pub trait Buffers {
    /// An empty buffer.
    fn get(&mut self) -> Vec<u8>;
    /// A buffer that is no longer needed.
    fn put(&mut self, buf: Vec<u8>);
}

impl Buffers for BufferPool {
    fn get(&mut self) -> Vec<u8> {
        BufferPool::get(self)
    }
    fn put(&mut self, buf: Vec<u8>) {
        BufferPool::put(self, buf)
    }
}

/// Plain allocation: a new `Vec` each time, dropped when given back.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unpooled;

impl Buffers for Unpooled {
    fn get(&mut self) -> Vec<u8> {
        Vec::new()
    }
    fn put(&mut self, _buf: Vec<u8>) {}
}

/// Output waiting for the socket: bytes `sent..` of `buf` are unsent.
///
/// One frame at a time may be *timed*: the queue remembers where it ends
/// and when the read that produced it completed, and [`OutQueue::consume`]
/// hands that back once the frame is fully written (the frame-latency
/// histogram). Timing costs no allocation; while a frame is timed, frames
/// queued behind it are not, so under load the histogram samples frames.
pub struct OutQueue {
    buf: Vec<u8>,
    sent: usize,
    timed: Option<Timed>,
}

/// A frame being timed through an output queue (24 bytes: every
/// connection has room for one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timed {
    /// When the read that completed the frame's source happened.
    pub read_at: Instant,
    /// Where the frame ends in the queue's buffer.
    end: u32,
    pub direction: Direction,
}

impl OutQueue {
    /// A queue writing into `buf`.
    pub fn new(buf: Vec<u8>) -> Self {
        OutQueue {
            buf,
            sent: 0,
            timed: None,
        }
    }

    /// Times the frame that was just appended (it ends at the end of the
    /// queue), unless a frame is being timed already.
    pub fn time_last_frame(&mut self, read_at: Instant, direction: Direction) {
        // A queue past 4 GiB (only with limits raised that far) is not timed.
        if let (None, Ok(end)) = (self.timed, u32::try_from(self.buf.len())) {
            self.timed = Some(Timed {
                read_at,
                end,
                direction,
            });
        }
    }

    /// Bytes not yet written to the socket.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// The unsent bytes.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Marks `n` more bytes as written; returns the timed frame if these
    /// bytes finished it.
    pub fn consume(&mut self, n: usize) -> Option<Timed> {
        self.sent += n;
        let finished = self.timed.filter(|timed| timed.end as usize <= self.sent);
        if finished.is_some() {
            self.timed = None;
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
        finished
    }

    /// The buffer to append to; sent bytes are dropped first once they
    /// make up most of it, so a queue that keeps moving stays small.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        if self.sent > 0 && self.sent >= self.buf.len() / 2 {
            self.buf.drain(..self.sent);
            if let Some(timed) = self.timed.as_mut() {
                timed.end -= self.sent as u32; // below `end`, so it fits
            }
            self.sent = 0;
        }
        &mut self.buf
    }

    /// The underlying buffer, for returning to the pool.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes allocated for the queue (sent, unsent and spare).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_tracks_what_is_left_to_send() {
        let mut queue = OutQueue::new(Vec::new());
        queue.tail().extend_from_slice(b"hello world");
        let _ = queue.consume(6);
        assert_eq!(queue.unsent(), b"world");
        queue.tail().extend_from_slice(b"!");
        assert_eq!(queue.unsent(), b"world!");
        assert_eq!(queue.pending(), 6);
        let _ = queue.consume(6);
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn a_timed_frame_comes_back_once_its_last_byte_is_written() {
        let (t0, t1) = (
            Instant::now(),
            Instant::now() + std::time::Duration::from_secs(1),
        );
        let mut queue = OutQueue::new(Vec::new());
        queue.tail().extend_from_slice(b"first");
        queue.time_last_frame(t0, Direction::PhoneToBinary);
        queue.time_last_frame(t1, Direction::BinaryToPhone); // one at a time
        assert_eq!(queue.consume(3), None);
        // Appending drops the 3 sent bytes from the buffer: the timed
        // frame's end moves with them.
        queue.tail().extend_from_slice(b"second");
        let timed = queue.consume(2).expect("first is out");
        assert_eq!(
            (timed.read_at, timed.direction),
            (t0, Direction::PhoneToBinary)
        );
        queue.time_last_frame(t1, Direction::BinaryToPhone);
        assert_eq!(queue.consume(5), None);
        assert!(queue.consume(1).is_some(), "second is out");
    }

    #[test]
    fn pool_reuses_buffers_within_its_byte_budget() {
        let mut pool = BufferPool::default();
        let buf = pool.get();
        pool.put(buf);
        assert_eq!(pool.idle(), 1);
        pool.put(Vec::with_capacity(1 << 20));
        assert_eq!(pool.idle(), 2);
        pool.put(Vec::with_capacity(MAX_POOLED_BYTES));
        assert_eq!(pool.idle(), 2, "over the byte budget: freed");
        let big = pool.get();
        assert_eq!(big.capacity(), 1 << 20);
        assert_eq!(pool.idle_bytes(), pool.get().capacity());
    }

    #[test]
    fn trim_frees_what_sat_idle_through_a_whole_period() {
        let mut pool = BufferPool::default();
        let burst: Vec<Vec<u8>> = (0..8).map(|_| pool.get()).collect();
        burst.into_iter().for_each(|buf| pool.put(buf));
        assert_eq!(pool.trim(), 0, "every buffer was in use this period");
        assert_eq!(pool.idle(), 8);

        // Steady load borrowing two at a time: six are surplus.
        let (a, b) = (pool.get(), pool.get());
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.trim(), 6 * BUFFER_SIZE);
        assert_eq!(pool.idle(), 2);

        // The load is gone: the rest go one period later.
        assert_eq!(pool.trim(), 2 * BUFFER_SIZE);
        assert_eq!((pool.idle(), pool.idle_bytes()), (0, 0));
    }

    #[test]
    fn a_buffer_borrowed_before_a_trim_is_not_counted_idle() {
        let mut pool = BufferPool::default();
        pool.put(Vec::with_capacity(BUFFER_SIZE));
        pool.put(Vec::with_capacity(BUFFER_SIZE));
        pool.trim();
        let held = pool.get();
        assert_eq!(pool.trim(), BUFFER_SIZE, "only the untouched one goes");
        pool.put(held);
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.trim(), 0, "returned during this period");
    }
}
