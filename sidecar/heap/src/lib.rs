//! Gives the system back the heap pages glibc's allocator keeps after they were freed.
//!
//! Why: glibc returns freed memory to the system only from the top of a heap. After a burst
//! (a thousand streams, a few hundred connections' buffers) most of the heap is free, but a
//! few live allocations above it pin every page below: the sidecar then stays resident at the
//! burst's high-water mark (measured: 37 MiB resident with 2.6 MiB in use after 1,000 held
//! streams), and the next burst adds to it instead of reusing it. `malloc_trim(0)` walks the
//! free chunks and hands their whole pages back (`madvise`), which is what brings the resident
//! size back down; allocation then reuses the same address space.
//!
//! Contract: [`release`] is safe to call at any time from any thread; it takes glibc's arena
//! locks while it walks, so it belongs on a low-frequency timer, not on the request path.
//! Elsewhere than Linux with glibc (musl, macOS) it does nothing: those allocators return
//! memory themselves or have no such call.

/// Asks glibc to return the free pages of every arena to the system. Returns whether any
/// memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release() -> bool {
    #[expect(unsafe_code, reason = "glibc's malloc_trim has no Rust binding")]
    // SAFETY: `malloc_trim` takes no pointer and touches only the allocator's own state, under
    // the allocator's own locks; any thread may call it at any time (glibc 2.0 and later).
    let released = unsafe { libc::malloc_trim(0) };
    released == 1
}

/// Does nothing: this allocator has no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Resident bytes of this process (`/proc/self/statm`, in pages of 4 KiB).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
    }

    /// A freed 16 MiB burst that a live allocation above it keeps glibc from trimming stays
    /// resident until `release`, which gives (almost) all of it back.
    #[test]
    fn a_freed_burst_pinned_by_a_live_allocation_is_given_back() {
        // Through `black_box`, so that no optimisation leaves the allocations out.
        let burst: Vec<Vec<u8>> = std::hint::black_box((0..4096).map(|_| vec![7u8; 4096]).collect());
        // Made after the burst, so it sits above it: glibc cannot trim the top of the heap.
        let pin = std::hint::black_box(vec![1u8; 40_000]);
        drop(burst);
        let before = resident();
        assert!(super::release());
        let after = resident();
        assert!(
            after + 12 * 1024 * 1024 < before,
            "resident {before} bytes before, {after} after"
        );
        assert_eq!(pin[0], 1);
    }
}
