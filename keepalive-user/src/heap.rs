//! Handing freed heap back to the kernel. Loading parses the kernel's BTF
//! twice (kato's reader and aya's, ~20 MiB) and drops both; glibc keeps
//! the freed pages in its arenas, so a long-running command would carry
//! them as resident memory for its whole life.

/// Returns the heap's free pages to the kernel (glibc's `malloc_trim`);
/// a no-op elsewhere.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
