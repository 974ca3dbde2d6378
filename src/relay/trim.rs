//! Giving memory back once the load is gone (issue #14).
//!
//! Every [`TRIM_INTERVAL`](super::TRIM_INTERVAL) the loop trims what grew
//! with load and is idle now: pooled buffers no connection borrowed during
//! the whole last period, the timer wheel's spare slot vectors, the
//! registry's maps and the connection slab once a burst has left them
//! mostly empty. Then the allocator is asked to return its free pages to
//! the kernel. Nothing here runs per frame or per timer; the wheel gives
//! back its drained slots by itself as they fire.

use log::debug;

use super::Relay;
use crate::heap;

impl Relay {
    /// Trims idle capacity and returns free heap pages to the kernel.
    pub(super) fn trim_idle_memory(&mut self) {
        if self.upgrading() {
            return; // the pause is about to use what it would give back
        }
        let pool_bytes = self.conns.pool.trim();
        self.timers.shrink();
        self.registry.shrink();
        self.conns.shrink();
        let released = heap::release_free_pages();
        if pool_bytes > 0 || released {
            debug!("memory_trimmed pool_bytes={pool_bytes} heap_released={released}");
        }
    }
}
