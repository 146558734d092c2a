//! Event timestamps: kernel CLOCK_MONOTONIC turned into UTC wall time.

use std::cell::Cell;

/// How old the monotonic-to-wall offset may get before it is taken again:
/// a long-running agent or trace follows NTP steps within this.
const REFRESH_NS: i128 = 1_000_000_000;

/// Maps CLOCK_MONOTONIC to the Unix epoch, re-reading the wall clock at
/// most once a second.
#[derive(Debug, Clone)]
pub struct Clock {
    /// (offset, monotonic time it was taken at).
    offset: Cell<(i128, i128)>,
}

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn offset_now() -> (i128, i128) {
    let mono = monotonic_ns();
    (jiff::Timestamp::now().as_nanosecond() - mono, mono)
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset: Cell::new(offset_now()),
        }
    }

    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        let (mut offset, taken) = self.offset.get();
        if monotonic_ns() - taken > REFRESH_NS {
            let fresh = offset_now();
            self.offset.set(fresh);
            offset = fresh.0;
        }
        i128::from(mono_ns) + offset
    }

    /// Monotonic nanoseconds now, on the kernel's `bpf_ktime_get_ns` clock.
    pub fn now_mono_ns() -> u64 {
        u64::try_from(monotonic_ns()).unwrap_or(0)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 3339 UTC with microseconds: `2026-11-22T03:04:05.123456Z`.
pub fn rfc3339(unix_ns: i128) -> String {
    let Ok(t) = jiff::Timestamp::from_nanosecond(unix_ns) else {
        return "invalid-time".to_owned();
    };
    let micros = unix_ns.rem_euclid(1_000_000_000) / 1000;
    format!("{}.{micros:06}Z", t.strftime("%Y-%m-%dT%H:%M:%S"))
}

/// `03:04:05.123456` (UTC), for the table.
pub fn clock_time(unix_ns: i128) -> String {
    rfc3339(unix_ns)[11..26].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-22T03:04:05.123456Z
        assert_eq!(
            rfc3339(1_795_316_645_123_456_789),
            "2026-11-22T03:04:05.123456Z"
        );
        // Leap day.
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(clock_time(1_795_316_645_123_456_789), "03:04:05.123456");
    }

    #[test]
    fn clock_maps_now_to_now() {
        let c = Clock::new();
        let now_unix = jiff::Timestamp::now().as_nanosecond();
        let mapped = c.unix_ns(Clock::now_mono_ns());
        assert!(
            (mapped - now_unix).abs() < 1_000_000_000,
            "{mapped} vs {now_unix}"
        );
    }
}
