//! How `kato trace` prints an event: a table line or one JSON object.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    event::{Derived, Kind, Record},
    owner::Owner,
    timefmt::{self, Clock},
};

/// One printed event; also the JSON schema of `kato trace --output json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceEvent {
    /// RFC 3339 UTC.
    pub time: String,
    /// Kernel CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub event: &'static str,
    pub family: &'static str,
    pub local: String,
    pub remote: String,
    pub state: &'static str,
    /// Unanswered probes after the event; for `peer_answered`, how many were
    /// out when the peer answered.
    pub probes: u8,
    /// Seconds until the keepalive timer fires (null when not pending).
    pub timer_remaining_s: Option<f64>,
    /// Seconds since the peer was last heard from (timer runs, resets, FINs).
    pub idle_s: Option<f64>,
    /// Seconds since data last moved either way (FINs, resets).
    pub data_idle_s: Option<f64>,
    /// stale_reuse: seconds between the last data received and the write
    /// that met the reset.
    pub reuse_after_s: Option<f64>,
    /// idle_kill_suspected: the idle-timeout rule for the path, if declared.
    pub idle_timeout: Option<String>,
    /// closed (with --http-keepalive): receive-then-send and
    /// send-then-receive turns (a server's / a client's exchanges).
    pub turns_out: Option<u32>,
    pub turns_in: Option<u32>,
    pub reset_reason: Option<String>,
    pub reset_reason_code: Option<u32>,
    /// The kernel gave no reason (before 6.12); kato named it from where
    /// the reset was sent.
    pub reset_reason_inferred: bool,
    /// socket_error: the errno and, for ETIMEDOUT, which timer gave up.
    pub error: Option<String>,
    pub sk_err: i32,
    pub netns: u32,
    pub inode: u64,
    /// Kernel socket address, as `ss -e` prints it.
    pub sock: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

pub struct Formatter<'a> {
    pub clock: Clock,
    pub hz: u32,
    pub reasons: &'a BTreeMap<u32, String>,
    pub policy: &'a crate::policy::Policy,
    /// Whether send/recv turns are being counted.
    pub turns: bool,
}

impl Formatter<'_> {
    pub fn event(&self, rec: &Record, d: Derived, owner: Option<&Owner>) -> TraceEvent {
        let reason = rec.reset_reason(|r| {
            self.reasons
                .get(&r)
                .cloned()
                .unwrap_or_else(|| format!("UNKNOWN_{r}"))
        });
        TraceEvent {
            time: timefmt::rfc3339(self.clock.unix_ns(rec.ts_ns)),
            ts_ns: rec.ts_ns,
            event: d.kind.name(),
            family: if rec.local.is_ipv4() { "inet" } else { "inet6" },
            local: rec.local.to_string(),
            remote: rec.remote.to_string(),
            state: rec.state.name(),
            probes: d.probes,
            timer_remaining_s: rec.timer_remaining(self.hz).map(round3),
            idle_s: rec.idle_secs(self.hz).map(round3),
            data_idle_s: rec.data_idle_secs(self.hz).map(round3),
            reuse_after_s: (d.kind == Kind::StaleReuse)
                .then(|| round3(rec.reuse_gap_secs(self.hz))),
            idle_timeout: (d.kind == Kind::IdleKillSuspected)
                .then(|| {
                    self.policy
                        .lookup(rec.local, rec.remote)
                        .map(|r| r.text.clone())
                })
                .flatten(),
            turns_out: (self.turns && d.kind == Kind::Closed).then_some(rec.turns_out),
            turns_in: (self.turns && d.kind == Kind::Closed).then_some(rec.turns_in),
            reset_reason: reason.as_ref().map(|r| r.0.clone()),
            reset_reason_code: rec.reason,
            reset_reason_inferred: reason.is_some_and(|r| r.1),
            sk_err: rec.sk_err,
            error: (d.kind == Kind::SocketError).then(|| rec.error_text()),
            netns: rec.netns,
            inode: rec.ino,
            sock: format!("{:#x}", rec.sk),
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.clone()),
        }
    }
}

fn round3(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

pub const TABLE_HEADER: &str = "TIME(UTC)       EVENT               LOCAL                  REMOTE                 STATE        PROBES TIMER     REASON                 PID/COMM";

/// One table line, columns aligned with [`TABLE_HEADER`].
pub fn table_line(e: &TraceEvent) -> String {
    let timer = e
        .timer_remaining_s
        .map(|s| format!("{s:.2}s"))
        .unwrap_or_else(|| "-".into());
    let reason = match (e.event, &e.reset_reason, e.idle_s, e.reuse_after_s) {
        (_, Some(r), _, _) => r.clone(),
        ("stale_reuse", _, _, Some(gap)) => format!("reused after {gap:.2}s idle"),
        ("idle_kill_suspected", _, Some(idle), _) => match &e.idle_timeout {
            Some(rule) => format!("idle {idle:.1}s ({rule})"),
            None => format!("idle {idle:.1}s"),
        },
        ("fin_sent" | "fin_received", _, _, _) => e
            .data_idle_s
            .map(|i| format!("after {i:.2}s idle"))
            .unwrap_or_else(|| "-".into()),
        ("socket_error", _, _, _) => e.error.clone().unwrap_or_else(|| "-".into()),
        ("closed", _, _, _) => match (e.turns_out, e.turns_in) {
            (Some(o), Some(i)) => format!("turns {o} out/{i} in"),
            _ => "-".into(),
        },
        _ => "-".into(),
    };
    let owner = match (&e.pid, &e.comm) {
        (Some(p), Some(c)) => format!("{p}/{c}"),
        _ => "-".into(),
    };
    format!(
        "{:<15} {:<19} {:<22} {:<22} {:<12} {:<6} {:<9} {:<22} {}",
        &e.time[11..26],
        e.event,
        e.local,
        e.remote,
        e.state,
        e.probes,
        timer,
        reason,
        owner
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        tests::{bytes, raw},
        Kind,
    };
    use keepalive_common::{flags, kind};

    fn sample() -> TraceEvent {
        let mut e = raw(kind::RESET_SENT);
        e.flags = flags::HAS_REASON | flags::TIMER_PENDING;
        e.reason = 15;
        e.expires = 1500;
        e.state = 7;
        let rec = Record::decode(&bytes(&e)).unwrap();
        let reasons = BTreeMap::from([(15, "TCP_KEEPALIVE_TIMEOUT".to_owned())]);
        let policy = crate::policy::Policy::default();
        let f = Formatter {
            clock: Clock::new(),
            hz: 250,
            reasons: &reasons,
            policy: &policy,
            turns: false,
        };
        let owner = Owner {
            pid: 42,
            comm: "client".into(),
        };
        f.event(
            &rec,
            Derived {
                kind: Kind::ResetSent,
                probes: 3,
            },
            Some(&owner),
        )
    }

    #[test]
    fn json_fields() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["event"], "reset_sent");
        assert_eq!(v["local"], "127.0.0.1:41234");
        assert_eq!(v["remote"], "127.0.0.2:8080");
        assert_eq!(v["state"], "CLOSE");
        assert_eq!(v["reset_reason"], "TCP_KEEPALIVE_TIMEOUT");
        assert_eq!(v["reset_reason_code"], 15);
        assert_eq!(v["timer_remaining_s"], 2.0);
        assert_eq!(v["probes"], 3);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["family"], "inet");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn table_columns_line_up_with_header() {
        let line = table_line(&sample());
        for (col, value) in [
            ("EVENT", "reset_sent"),
            ("LOCAL", "127.0.0.1:41234"),
            ("REMOTE", "127.0.0.2:8080"),
            ("STATE", "CLOSE"),
            ("PROBES", "3"),
            ("TIMER", "2.00s"),
            ("REASON", "TCP_KEEPALIVE_TIMEOUT"),
            ("PID/COMM", "42/client"),
        ] {
            let at = TABLE_HEADER.find(col).unwrap();
            assert!(
                line[at..].starts_with(value),
                "column {col}:\n{TABLE_HEADER}\n{line}"
            );
        }
        let unknown = TraceEvent {
            reset_reason: None,
            pid: None,
            timer_remaining_s: None,
            ..sample()
        };
        assert!(table_line(&unknown).contains(" - "));
    }
}
