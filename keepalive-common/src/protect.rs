//! `kato protect`'s ABI: the rules the sock_ops program matches new
//! connections against, the plan the iterator applies to existing ones,
//! and the record of each change.

use core::mem::size_of;

/// Rules the kernel holds at most (declared, learned, assumed, IPVS).
pub const MAX_RULES: u32 = 32;
/// Ports and addresses a scope names at most (`--port`, `--addr`).
pub const MAX_SCOPE: usize = 8;
/// Existing sockets one iterator pass may change; more take more passes.
pub const MAX_PLAN: u32 = 65_536;
/// Sockets remembered as protected (for `kato sockets`, the metrics).
pub const MAX_PROTECTED: u32 = 262_144;

/// Where a change came from.
pub mod origin {
    /// A new connection (sock_ops, at ACTIVE/PASSIVE_ESTABLISHED).
    pub const NEW: u8 = 1;
    /// A connection that existed when protect started (`iter/tcp`).
    pub const EXISTING: u8 = 2;
}

/// What happened to one socket (`ProtectRecord::outcome`).
pub mod outcome {
    /// Keepalive switched on or tightened.
    pub const SET: u8 = 1;
    /// Its own settings were as tight already: left alone.
    pub const TIGHT_ALREADY: u8 = 2;
    /// `bpf_setsockopt` refused (its errno in `error`).
    pub const FAILED: u8 = 3;
    /// Would have been set (dry run).
    pub const WOULD_SET: u8 = 4;
}

/// One idle-timeout rule as the kernel matches it: the remote address
/// within `addr` under `mask` (IPv4 as `::ffff:a.b.c.d`; an all-zero mask
/// matches any address) and the remote or local port `port` (0: any). The
/// most specific match wins, declared rules over every other source
/// (`policy::Rule::specificity`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectRule {
    pub addr: [u8; 16],
    /// The prefix as a mask, computed by userspace (no bit loop in the
    /// kernel: the verifier walks every rule).
    pub mask: [u8; 16],
    pub port: u16,
    /// `policy::RuleSource` as a number (userspace names it).
    pub source: u8,
    pub _pad: u8,
    /// The path's idle timeout, milliseconds.
    pub timeout_ms: u32,
    /// Higher wins: (declared << 16) | (port << 8) | (prefix + has_addr).
    pub specificity: u32,
    pub _pad2: u32,
}

pub const PROTECT_RULE_SIZE: usize = 48;
const _: () = assert!(size_of::<ProtectRule>() == PROTECT_RULE_SIZE);

/// Protect's run-time settings, slot 0 of `PROTECT_CONF` (userspace
/// rewrites it when rules or scope change).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectConf {
    /// 0: the sock_ops program changes nothing (off, or not yet ready).
    pub on: u32,
    /// Rules in `PROTECT_RULES` (at most [`MAX_RULES`]).
    pub rules: u32,
    /// 1: only sockets of namespaces in `WATCHED_NETNS` (the agent's
    /// scope, or the namespace `kato protect` runs in).
    pub netns_filter: u32,
    /// The kernel's CONFIG_HZ (keepalive settings are kept in jiffies).
    pub hz: u32,
    /// 1: record what would change, change nothing.
    pub dry_run: u32,
    /// Scope: ports (local or remote) and remote addresses; 0 entries: any.
    pub n_ports: u32,
    pub ports: [u16; MAX_SCOPE],
    pub n_addrs: u32,
    /// Namespaces with a conntrack timeout in `PROTECT_CT` (0: no lookup).
    pub n_ct: u32,
    pub addrs: [[u8; 16]; MAX_SCOPE],
}

pub const PROTECT_CONF_SIZE: usize = 176;
const _: () = assert!(size_of::<ProtectConf>() == PROTECT_CONF_SIZE);

/// What userspace asks the iterator to set on one existing socket (by
/// cookie): it chose the socket (owner, workload, rule) from its census.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectPlan {
    /// Keepalive idle and interval to set at most, seconds.
    pub idle_s: u32,
    pub intvl_s: u32,
    pub timeout_ms: u32,
    pub source: u8,
    pub dry_run: u8,
    pub _pad: [u8; 2],
}

pub const PROTECT_PLAN_SIZE: usize = 16;
const _: () = assert!(size_of::<ProtectPlan>() == PROTECT_PLAN_SIZE);

/// Keepalive settings, effective (a socket's own, else its namespace's
/// sysctl), seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub idle_s: u32,
    pub intvl_s: u32,
    pub cnt: u8,
    /// SO_KEEPALIVE.
    pub on: u8,
    /// Which values the socket set itself (bits: 1 idle, 2 interval,
    /// 4 count); the rest are its namespace's sysctls.
    pub own: u8,
    pub _pad: u8,
}

/// One socket protect looked at: a ring record (new connections) or an
/// iterator record (existing ones).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectRecord {
    pub ts_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    pub timeout_ms: u32,
    pub before: Keepalive,
    pub after: Keepalive,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// [`origin`].
    pub origin: u8,
    /// [`outcome`].
    pub outcome: u8,
    pub source: u8,
    pub _pad: [u8; 3],
    /// `bpf_setsockopt`'s error with [`outcome::FAILED`] (negative errno).
    pub error: i32,
}

pub const PROTECT_RECORD_SIZE: usize = 104;
const _: () = assert!(size_of::<ProtectRecord>() == PROTECT_RECORD_SIZE);

/// What `PROTECTED` keeps per socket cookie: the settings protect made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protected {
    pub after: Keepalive,
    pub timeout_ms: u32,
    pub source: u8,
    pub _pad: [u8; 3],
}

pub const PROTECTED_SIZE: usize = 20;
const _: () = assert!(size_of::<Protected>() == PROTECTED_SIZE);

/// The idle and interval to ask for on a path whose idle timeout is
/// `timeout_ms`: a third of it, at least one second. The first probe (at
/// the idle) and its retry (an interval later) both land before the
/// middlebox forgets the flow, with a third to spare (kato's risk verdict
/// calls a socket safe when idle + interval is under the timeout); and the
/// kernel re-arms at the interval even after an answered probe, so the
/// interval matters as much as the idle. Both stay under half the timeout.
pub const fn wanted(timeout_ms: u32) -> u32 {
    let third = timeout_ms / 3000;
    if third == 0 {
        1
    } else {
        third
    }
}

/// `before` tightened towards `want` seconds for idle and interval: each
/// the smaller of the socket's and `want` (never loosened), keepalive on,
/// the count left as it is (with a tighter interval a dead peer is found
/// sooner than before, never later). `None` when nothing would change.
pub const fn tighten(before: Keepalive, want: u32) -> Option<Keepalive> {
    let idle = if before.idle_s != 0 && before.idle_s < want {
        before.idle_s
    } else {
        want
    };
    let intvl = if before.intvl_s != 0 && before.intvl_s < want {
        before.intvl_s
    } else {
        want
    };
    if before.on != 0 && idle == before.idle_s && intvl == before.intvl_s {
        return None;
    }
    let mut own = before.own;
    if idle != before.idle_s {
        own |= 1;
    }
    if intvl != before.intvl_s {
        own |= 2;
    }
    Some(Keepalive {
        idle_s: idle,
        intvl_s: intvl,
        cnt: before.cnt,
        on: 1,
        own,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ka(on: u8, idle_s: u32, intvl_s: u32) -> Keepalive {
        Keepalive {
            idle_s,
            intvl_s,
            cnt: 9,
            on,
            ..Keepalive::default()
        }
    }

    #[test]
    fn a_third_of_the_timeout_at_least_a_second() {
        assert_eq!(wanted(350_000), 116);
        assert_eq!(wanted(240_000), 80);
        assert_eq!(wanted(3_000), 1);
        assert_eq!(wanted(1_500), 1);
        assert_eq!(wanted(0), 1);
    }

    #[test]
    fn never_loosens() {
        // Off with the sysctl defaults: on, both tightened, count kept.
        let t = tighten(ka(0, 7200, 75), 1).unwrap();
        assert_eq!((t.on, t.idle_s, t.intvl_s, t.cnt, t.own), (1, 1, 1, 9, 3));
        // Its own 1/1: nothing to do.
        assert_eq!(tighten(ka(1, 1, 1), 175), None);
        // Idle tight already, interval not: only the interval.
        assert_eq!(tighten(ka(1, 60, 75), 175), None, "both under 175 s");
        let t = tighten(ka(1, 60, 300), 175).unwrap();
        assert_eq!((t.idle_s, t.intvl_s, t.own), (60, 175, 2));
        // Off but its own idle shorter than wanted: on, that idle kept.
        let t = tighten(ka(0, 30, 75), 175).unwrap();
        assert_eq!((t.on, t.idle_s, t.intvl_s), (1, 30, 75));
    }
}
