//! Giving freed heap memory back to the kernel.
//!
//! Freeing a buffer returns it to the allocator, not to the kernel: glibc
//! gives pages back only from the top of the heap, only past a threshold
//! that rises to 64 MiB once large buffers have been freed, and never from
//! between live allocations. After a burst, a relay whose own structures
//! have shrunk can still show its peak RSS. [`release_free_pages`] asks the
//! allocator to return every free page (glibc's `malloc_trim(0)`, which
//! also reaches free runs in the middle of the heap). It costs ~10 µs when
//! there is nothing to return, and time in proportion to the pages
//! returned otherwise; the loop calls it every few seconds.

/// Returns the allocator's free pages to the kernel; whether any went.
/// A no-op (false) where the allocator has no such call.
pub fn release_free_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases glibc's own free
        // lists; it takes the arena locks itself.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn free_runs_between_live_allocations_are_released() {
        // 64 KiB buffers come from the heap (below glibc's mmap threshold);
        // every freed one lies between two live ones, so no heap top to trim.
        let (mut live, mut freed) = (Vec::new(), Vec::new());
        for i in 0..=255u8 {
            freed.push(vec![i; 64 * 1024]);
            live.push(vec![i; 64]);
        }
        drop(freed);
        assert!(release_free_pages());
        assert!(live.iter().enumerate().all(|(i, b)| b[0] == i as u8));
    }
}
