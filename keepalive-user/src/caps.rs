//! The capabilities kato needs, checked up front so a missing one is named
//! instead of surfacing as EPERM from deep inside a BPF syscall, and
//! dropped (with the `caps` crate) once start-up is done.

pub use caps::Capability;
use caps::{CapSet, CapsHashSet};

pub const CAP_SYS_ADMIN: Capability = Capability::CAP_SYS_ADMIN;
pub const CAP_SYS_PTRACE: Capability = Capability::CAP_SYS_PTRACE;
pub const CAP_SYSLOG: Capability = Capability::CAP_SYSLOG;
pub const CAP_PERFMON: Capability = Capability::CAP_PERFMON;
pub const CAP_BPF: Capability = Capability::CAP_BPF;
/// Optional: reading conntrack over ctnetlink (every nfnetlink request needs it).
pub const CAP_NET_ADMIN: Capability = Capability::CAP_NET_ADMIN;

/// Names of the capabilities missing from `has` for loading tracing
/// programs: CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN (kernels before 5.8).
pub fn missing_for_tracing(has: impl Fn(Capability) -> bool) -> Vec<&'static str> {
    if has(CAP_SYS_ADMIN) {
        return vec![];
    }
    [CAP_BPF, CAP_PERFMON]
        .into_iter()
        .filter(|&c| !has(c))
        .map(name)
        .collect()
}

/// The capabilities kato lacks to load its eBPF programs.
#[derive(Debug, thiserror::Error)]
#[error("kato needs {} to load its eBPF programs (it has none of them); run it as root, e.g. with sudo", .0.join(" and "))]
pub struct MissingCapabilities(pub Vec<&'static str>);

/// Checks this process; `Err` names what is missing.
pub fn require_tracing() -> Result<(), MissingCapabilities> {
    let Ok(eff) = caps::read(None, CapSet::Effective) else {
        return Ok(()); // cannot tell; let the kernel decide
    };
    let missing = missing_for_tracing(|c| eff.contains(&c));
    if missing.is_empty() {
        return Ok(());
    }
    Err(MissingCapabilities(missing))
}

/// Capability names for messages and docs (`CAP_BPF`).
pub fn name(cap: Capability) -> &'static str {
    match cap {
        Capability::CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        Capability::CAP_SYSLOG => "CAP_SYSLOG",
        Capability::CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        Capability::CAP_PERFMON => "CAP_PERFMON",
        Capability::CAP_BPF => "CAP_BPF",
        Capability::CAP_SETPCAP => "CAP_SETPCAP",
        Capability::CAP_NET_ADMIN => "CAP_NET_ADMIN",
        Capability::CAP_SETUID => "CAP_SETUID",
        Capability::CAP_SETGID => "CAP_SETGID",
        _ => "CAP_?",
    }
}

/// Does this thread have `cap` in its effective set?
pub fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// What [`keep_only`] did with the bounding set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounding {
    /// Reduced to what a program this process starts may need: not even
    /// an exec can bring anything else back.
    Reduced,
    /// Left as the process was started with: reducing it needs
    /// CAP_SETPCAP, which this process lacks (no_new_privs still blocks
    /// every gain through exec).
    LeftWithoutSetpcap,
}

/// Keeps only `keep` in the effective and permitted sets, reduces the
/// bounding set (where CAP_SETPCAP allows) to `for_exec`, the
/// capabilities a program it starts may keep (the agent's HTTP process
/// needs CAP_SETUID and CAP_SETGID to switch users, CAP_SETPCAP to empty
/// its own bounding set), empties the
/// inheritable and ambient sets, and sets no_new_privs: after this the
/// process can never regain what it dropped. Every failure is an error.
/// Applies to the calling thread and the threads it starts afterwards.
pub fn keep_only(
    keep: &[Capability],
    for_exec: &[Capability],
) -> Result<Bounding, caps::errors::CapsError> {
    let bounding = if has(Capability::CAP_SETPCAP) {
        // First, while CAP_SETPCAP is still held.
        for c in caps::all() {
            if !for_exec.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
        Bounding::Reduced
    } else {
        Bounding::LeftWithoutSetpcap
    };
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let keep: CapsHashSet = keep.iter().copied().collect();
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    // SAFETY: prctl with constant arguments; affects only this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error()).into());
    }
    Ok(bounding)
}

/// Empties the calling thread's own effective, permitted and inheritable
/// sets and sets its no_new_privs: for helper threads that start before the
/// process drops what it keeps (capabilities are per thread) and need none
/// (containerd's client: its socket is open to uid 0 without any).
pub fn drop_all_on_this_thread() -> Result<(), caps::errors::CapsError> {
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set)?;
    }
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(caps::errors::CapsError::from(format!(
            "no_new_privs: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let set = |caps: &[Capability]| {
            let caps = caps.to_vec();
            move |c| caps.contains(&c)
        };
        assert!(missing_for_tracing(set(&[CAP_SYS_ADMIN])).is_empty());
        assert_eq!(missing_for_tracing(set(&[])), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_for_tracing(set(&[CAP_BPF])), ["CAP_PERFMON"]);
        assert!(missing_for_tracing(set(&[CAP_BPF, CAP_PERFMON])).is_empty());
    }
}
