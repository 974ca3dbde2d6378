//! Giving freed heap memory back to the kernel, and faulting it in ahead
//! of a burst that must be quick.
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
//!
//! The opposite need comes once per upgrade: the snapshot of every
//! connection is a burst of allocation inside the pause, and on a VM the
//! first touch of each fresh page costs microseconds. [`prefault`] makes
//! those pages resident beforehand, while the loop still serves.

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

/// Makes the next `bytes` of heap allocations land on pages that are
/// already resident, so that they cost no page fault: allocations up to
/// glibc's largest mmap threshold (32 MiB) come from the heap from now
/// on, a block of `bytes` is allocated, every page of it touched and freed
/// again, and the heap keeps it (its trim threshold is raised above it)
/// until [`release_free_pages`] returns it. For a burst of allocation that
/// must be quick — the upgrade's snapshot — prepared while there is time.
/// A no-op where the allocator has no such knobs.
pub fn prefault(bytes: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 << 20;
        let keep = libc::c_int::try_from(bytes.saturating_mul(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets glibc's tunables; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, keep.max(MMAP_THRESHOLD_MAX));
        }
        let mut block: Vec<u8> = Vec::with_capacity(bytes);
        let start = block.as_mut_ptr();
        for offset in (0..bytes).step_by(4096) {
            // SAFETY: within the capacity just allocated; one volatile
            // write per page faults it in and cannot be optimized away.
            unsafe { start.add(offset).write_volatile(0) };
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
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

    /// Minor page faults of this thread so far.
    fn page_faults() -> i64 {
        // SAFETY: rusage is plain data, filled in by getrusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        usage.ru_minflt
    }

    fn touch(block: &mut Vec<u8>) {
        block.resize(block.capacity(), 1);
    }

    #[test]
    fn allocations_after_a_prefault_cost_no_page_fault() {
        // Without the prefault, 4 MiB would be a fresh mapping: 1,024 faults.
        prefault(8 << 20);
        let before = page_faults();
        let mut block = Vec::with_capacity(4 << 20);
        touch(&mut block);
        let faults = page_faults() - before;
        assert!(
            faults < 64,
            "{faults} page faults for 4 MiB after a prefault"
        );
    }
}
