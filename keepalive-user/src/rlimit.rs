//! File descriptors: the agent raises its soft `RLIMIT_NOFILE` to the hard
//! limit at start, so that sockets, namespace handles and iterator links
//! do not run out at the distribution default of 1024.

/// Raises the soft limit to the hard one; returns (soft, hard) after.
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}
