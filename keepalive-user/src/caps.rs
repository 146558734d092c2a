//! The capabilities kato needs, checked up front so a missing one is named
//! instead of surfacing as EPERM from deep inside a BPF syscall.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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
