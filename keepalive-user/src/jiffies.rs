//! Kernel time in jiffies: 64-bit counters (deadlines) and the 32-bit
//! activity stamps TCP keeps (`lrcvtime`, `rcv_tstamp`, `lsndtime`). Both
//! wrap; differences are taken the way the kernel's `time_after()` does.

/// Seconds from `from` to `to` (64-bit jiffies), signed.
pub fn until64(from: u64, to: u64, hz: u32) -> f64 {
    to.wrapping_sub(from).cast_signed() as f64 / f64::from(hz)
}

/// Seconds from the 32-bit stamp `then` to `now` (the low 32 bits are
/// compared), never negative.
pub fn since32(now: u64, then: u32, hz: u32) -> f64 {
    f64::from((now as u32).wrapping_sub(then).cast_signed().max(0)) / f64::from(hz)
}

/// Seconds from stamp `a` to stamp `b`, never negative.
pub fn between32(a: u32, b: u32, hz: u32) -> f64 {
    f64::from(b.wrapping_sub(a).cast_signed().max(0)) / f64::from(hz)
}

/// Is stamp `a` after stamp `b`?
pub fn after32(a: u32, b: u32) -> bool {
    a.wrapping_sub(b).cast_signed() > 0
}

/// The later of two 32-bit stamps.
pub fn later32(a: u32, b: u32) -> u32 {
    if after32(a, b) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_like_the_kernel() {
        assert_eq!(until64(u64::MAX - 124, 125, 250), 1.0);
        assert_eq!(until64(250, 0, 250), -1.0);
        assert_eq!(since32(u64::from(u32::MAX) + 250, u32::MAX, 250), 1.0);
        assert_eq!(since32(100, 200, 250), 0.0, "never negative");
        assert_eq!(between32(500, 999, 250), 1.996);
        assert_eq!(later32(u32::MAX, 3), 3, "3 is after the wrap");
        assert!(after32(3, u32::MAX));
    }
}
