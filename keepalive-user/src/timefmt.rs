//! Event timestamps: kernel CLOCK_MONOTONIC turned into UTC wall time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Offset from CLOCK_MONOTONIC to the Unix epoch, taken once at start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    mono_to_unix_ns: i128,
}

fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self {
            mono_to_unix_ns: unix - monotonic_ns(),
        }
    }

    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        mono_ns as i128 + self.mono_to_unix_ns
    }

    /// Monotonic nanoseconds now, on the kernel's `bpf_ktime_get_ns` clock.
    pub fn now_mono_ns() -> u64 {
        monotonic_ns() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// (year, month, day) from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 UTC with microseconds: `2026-11-22T03:04:05.123456Z`.
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let micros = (unix_ns.rem_euclid(1_000_000_000) / 1000) as u32;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
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
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let mapped = c.unix_ns(Clock::now_mono_ns());
        assert!(
            (mapped - now_unix).abs() < 1_000_000_000,
            "{mapped} vs {now_unix}"
        );
    }
}
