//! Handing freed heap back to the kernel. Loading parses the kernel's BTF
//! (kato's reader; stock aya's loader parsed it too, which vendor/aya no
//! longer does) and drops it; glibc keeps
//! the freed pages in its arenas, so a long-running command would carry
//! them as resident memory for its whole life.

/// Returns the heap's free pages to the kernel (glibc's `malloc_trim`);
/// a no-op elsewhere. With debug logging, says what the heap holds.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim and mallinfo2 only walk the allocator's own lists.
    unsafe {
        libc::malloc_trim(0);
        if log::log_enabled!(log::Level::Debug) {
            let m = libc::mallinfo2();
            log::debug!(
                "heap: {} KiB in use, {} KiB free in arenas, {} KiB mmapped",
                m.uordblks / 1024,
                m.fordblks / 1024,
                m.hblkhd / 1024
            );
        }
    }
}

/// Large allocations straight from the kernel and back on free: glibc
/// otherwise raises its mmap threshold after the first large free (up to
/// 32 MiB), so every snapshot's 10-30 MB vectors came from arenas that
/// never shrank back (an agent at 100,000 sockets grew 50 -> 66 MB over
/// three snapshots), and at most two arenas for kato's few threads.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; called first
    // thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
