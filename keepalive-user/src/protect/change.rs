//! A change protect made (or would make), decoded from its kernel record:
//! length-checked, unknown values are errors.

use std::{net::SocketAddr, time::Duration};

use keepalive_common::protect::{self as abi, ProtectRecord, PROTECT_RECORD_SIZE};
use serde::Serialize;
use thiserror::Error;

use super::rules::source_of;
use crate::policy::RuleSource;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("a protect record of {0} bytes (expected {PROTECT_RECORD_SIZE})")]
    Length(usize),
    #[error("a protect record with unknown {what} {value}")]
    Unknown { what: &'static str, value: u32 },
}

/// A new connection (sock_ops) or one that existed (the iterator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    New,
    Existing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Keepalive switched on or tightened.
    Set,
    /// Its own settings were as tight already.
    TightAlready,
    /// The kernel refused (errno).
    Failed,
    /// `--dry-run`: what would have been set.
    WouldSet,
}

/// Keepalive settings in force, seconds (a socket's own, or its
/// namespace's sysctls: `own` says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub keepalive: bool,
    pub idle_s: u32,
    pub interval_s: u32,
    pub count: u8,
    /// Values the socket set itself (or kato did): idle, interval, count.
    #[serde(skip)]
    pub own: u8,
}

impl Settings {
    fn of(k: abi::Keepalive) -> Self {
        Settings {
            keepalive: k.on != 0,
            idle_s: k.idle_s,
            interval_s: k.intvl_s,
            count: k.cnt,
            own: k.own,
        }
    }
}

impl std::fmt::Display for Settings {
    /// `off` or `idle/interval/count` (`7200/75/9`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.keepalive {
            write!(f, "{}/{}/{}", self.idle_s, self.interval_s, self.count)
        } else {
            write!(f, "off")
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub origin: Origin,
    pub outcome: Outcome,
    /// The kernel's errno with [`Outcome::Failed`].
    pub errno: Option<i32>,
    pub cookie: u64,
    pub netns: u32,
    pub cgroup_id: Option<u64>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The path's idle timeout and where it came from.
    pub timeout: Duration,
    pub source: RuleSource,
    pub before: Settings,
    pub after: Settings,
}

fn addr(family: u16, bytes: [u8; 16], port: u16) -> Result<SocketAddr, ChangeError> {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match family {
        2 => Ok(SocketAddr::new(
            v6.to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            port,
        )),
        10 => Ok(SocketAddr::new(crate::ip::canonical(v6.into()), port)),
        f => Err(ChangeError::Unknown {
            what: "family",
            value: u32::from(f),
        }),
    }
}

impl Change {
    pub fn decode(bytes: &[u8]) -> Result<Self, ChangeError> {
        if bytes.len() != PROTECT_RECORD_SIZE {
            return Err(ChangeError::Length(bytes.len()));
        }
        // SAFETY: the length is the record's; it is repr(C) plain data.
        let r: ProtectRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_record(&r)
    }

    pub fn from_record(r: &ProtectRecord) -> Result<Self, ChangeError> {
        let unknown = |what, value: u8| ChangeError::Unknown {
            what,
            value: u32::from(value),
        };
        let origin = match r.origin {
            abi::origin::NEW => Origin::New,
            abi::origin::EXISTING => Origin::Existing,
            o => return Err(unknown("origin", o)),
        };
        let outcome = match r.outcome {
            abi::outcome::SET => Outcome::Set,
            abi::outcome::TIGHT_ALREADY => Outcome::TightAlready,
            abi::outcome::FAILED => Outcome::Failed,
            abi::outcome::WOULD_SET => Outcome::WouldSet,
            o => return Err(unknown("outcome", o)),
        };
        Ok(Change {
            ts_ns: r.ts_ns,
            origin,
            outcome,
            errno: (outcome == Outcome::Failed).then_some(-r.error),
            cookie: r.cookie,
            netns: r.netns,
            cgroup_id: (r.cgroup_id != 0).then_some(r.cgroup_id),
            local: addr(r.family, r.saddr, r.sport)?,
            remote: addr(r.family, r.daddr, r.dport)?,
            timeout: Duration::from_millis(u64::from(r.timeout_ms)),
            source: source_of(r.source).ok_or(unknown("rule source", r.source))?,
            before: Settings::of(r.before),
            after: Settings::of(r.after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ProtectRecord {
        ProtectRecord {
            ts_ns: 5,
            cookie: 77,
            saddr: super::super::rules::mapped("10.0.0.1".parse().unwrap()),
            daddr: super::super::rules::mapped("10.0.0.2".parse().unwrap()),
            sport: 40000,
            dport: 5432,
            family: 2,
            netns: 9,
            timeout_ms: 3000,
            origin: abi::origin::NEW,
            outcome: abi::outcome::SET,
            before: abi::Keepalive {
                idle_s: 7200,
                intvl_s: 75,
                cnt: 9,
                ..Default::default()
            },
            after: abi::Keepalive {
                idle_s: 1,
                intvl_s: 1,
                cnt: 9,
                on: 1,
                own: 3,
                _pad: 0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn decodes_and_refuses_unknown_values() {
        let c = Change::from_record(&record()).unwrap();
        assert_eq!(c.local.to_string(), "10.0.0.1:40000");
        assert_eq!(c.remote.to_string(), "10.0.0.2:5432");
        assert_eq!(
            (c.origin, c.outcome, c.source),
            (Origin::New, Outcome::Set, RuleSource::Declared)
        );
        assert_eq!(
            (c.before.to_string(), c.after.to_string()),
            ("off".into(), "1/1/9".into())
        );
        for (field, r) in [
            (
                "origin",
                ProtectRecord {
                    origin: 9,
                    ..record()
                },
            ),
            (
                "outcome",
                ProtectRecord {
                    outcome: 0,
                    ..record()
                },
            ),
            (
                "rule source",
                ProtectRecord {
                    source: 99,
                    ..record()
                },
            ),
            (
                "family",
                ProtectRecord {
                    family: 1,
                    ..record()
                },
            ),
        ] {
            assert!(
                matches!(Change::from_record(&r), Err(ChangeError::Unknown { what, .. }) if what == field),
                "{field}"
            );
        }
        assert_eq!(Change::decode(&[0; 3]), Err(ChangeError::Length(3)));
    }
}
