//! Byte buffers that exist only while bytes are in flight.
//!
//! An idle connection holds no buffer at all: reads land in one shared
//! scratch buffer, and only a partial frame or unsent output borrows a
//! buffer from the [`BufferPool`]. When the bytes are gone the buffer goes
//! back to the pool (or is freed, if it grew large).

/// Capacity of a fresh pooled buffer.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// A returned buffer larger than this is freed instead of pooled.
const MAX_POOLED_CAPACITY: usize = 64 * 1024;
/// At most this many idle buffers are kept.
const MAX_POOLED: usize = 1024;

/// A free list of byte buffers.
#[derive(Default)]
pub struct BufferPool {
    free: Vec<Vec<u8>>,
}

impl BufferPool {
    /// An empty buffer with at least [`BUFFER_SIZE`] capacity.
    pub fn get(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
    }

    /// Gives a buffer back.
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= MAX_POOLED_CAPACITY && self.free.len() < MAX_POOLED {
            buf.clear();
            self.free.push(buf);
        }
    }

    /// Number of idle buffers held.
    pub fn idle(&self) -> usize {
        self.free.len()
    }

    /// Bytes allocated by the idle buffers (at most 1024 × 64 KiB).
    pub fn idle_bytes(&self) -> usize {
        self.free.iter().map(Vec::capacity).sum()
    }
}

/// Output waiting for the socket: bytes `sent..` of `buf` are unsent.
pub struct OutQueue {
    buf: Vec<u8>,
    sent: usize,
}

impl OutQueue {
    /// A queue writing into `buf`.
    pub fn new(buf: Vec<u8>) -> Self {
        OutQueue { buf, sent: 0 }
    }

    /// Bytes not yet written to the socket.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// The unsent bytes.
    pub fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    /// Marks `n` more bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
    }

    /// The buffer to append to; sent bytes are dropped first once they
    /// make up most of it, so a queue that keeps moving stays small.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        if self.sent > 0 && self.sent >= self.buf.len() / 2 {
            self.buf.drain(..self.sent);
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
        queue.consume(6);
        assert_eq!(queue.unsent(), b"world");
        queue.tail().extend_from_slice(b"!");
        assert_eq!(queue.unsent(), b"world!");
        assert_eq!(queue.pending(), 6);
        queue.consume(6);
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn pool_reuses_and_drops_large_buffers() {
        let mut pool = BufferPool::default();
        let buf = pool.get();
        pool.put(buf);
        assert_eq!(pool.idle(), 1);
        pool.put(Vec::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert_eq!(pool.idle(), 1);
    }
}
