//! The capabilities kato needs, checked up front so a missing one is named
//! instead of surfacing as EPERM from deep inside a BPF syscall.

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capability mask from /proc/self/status text.
pub fn effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Names of the capabilities missing from `eff` for loading tracing
/// programs: CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN (kernels before 5.8).
pub fn missing_for_tracing(eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| eff & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return vec![];
    }
    let mut missing = vec![];
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Checks this process; `Err` is one sentence naming what is missing.
pub fn require_tracing() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = effective(&status) else {
        return Ok(()); // cannot tell; let the kernel decide
    };
    let missing = missing_for_tracing(eff);
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "kato needs {} to load its eBPF programs (it has none of them); run it as root, e.g. with sudo",
        missing.join(" and ")
    ))
}

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYSLOG: u32 = 34;

/// Capability names for messages and docs.
pub fn name(cap: u32) -> &'static str {
    match cap {
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYSLOG => "CAP_SYSLOG",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
}

/// Does this process have `cap` in its effective set?
pub fn has(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective(&status).is_some_and(|e| e & (1 << cap) != 0)
}

/// Keeps only `keep` in the effective and permitted sets, empties the
/// inheritable, ambient and bounding sets, and sets no_new_privs: after
/// this the process can never regain what it dropped.
pub fn keep_only(keep: &[u32]) -> std::io::Result<()> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let mask: u64 = keep.iter().fold(0, |m, c| m | 1 << c);
    // SAFETY: prctl/capset with valid arguments and local structs.
    unsafe {
        // The bounding set first, while CAP_SETPCAP is still held.
        for cap in 0..=last {
            if mask & (1 << cap) == 0 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            }
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let lo = Data {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        };
        let hi = Data {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        };
        let data = [lo, hi];
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tkato\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        assert!(missing_for_tracing(0x1ff_ffff_ffff).is_empty());
        assert!(missing_for_tracing(1 << CAP_SYS_ADMIN).is_empty());
        assert_eq!(missing_for_tracing(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_for_tracing(1 << CAP_BPF), ["CAP_PERFMON"]);
        assert!(missing_for_tracing((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
    }
}
