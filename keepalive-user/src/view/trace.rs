//! How `kato trace` prints an event: a table line or one JSON object.

use serde::Serialize;

use std::sync::Arc;

use crate::{
    events::{Derived, Kind, Observation},
    policy::Policy,
    text::printable,
    timefmt::{self, Clock},
    workload::{Named, Workload},
};

/// One printed event; also the JSON schema of `kato trace --output json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceLine {
    /// RFC 3339 UTC.
    pub time: String,
    /// Kernel CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub event: Kind,
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
    /// stale_reuse: seconds the connection sat without data before the
    /// write that met the closed connection (null where unknown: a
    /// TIME_WAIT socket keeps no times).
    pub reuse_after_s: Option<f64>,
    /// stale_reuse: `local` (this socket wrote after, or across, the
    /// peer's FIN) or `peer` (the peer wrote after this side closed).
    pub reused_by: Option<&'static str>,
    /// The other end's process, where it is a socket on this host (a
    /// stale reuse names both ends).
    pub peer_pid: Option<u32>,
    pub peer_comm: Option<String>,
    /// What the evidence does not settle, in words (a keepalive timeout
    /// after a silence longer than the path's idle timeout: a dead peer,
    /// or a path that forgot the flow first).
    pub note: Option<String>,
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
    /// The socket cookie (`ss -e` prints it in hex as `sk:`), where one
    /// was generated already (a snapshot, ss, sock_diag).
    pub cookie: Option<u64>,
    /// The kernel address, only with `--show-kernel-addresses`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The socket's cgroup v2 id, and who that is (null where unknown).
    pub cgroup_id: Option<u64>,
    #[serde(flatten)]
    pub workload: Named,
}

pub struct Formatter<'a> {
    pub clock: Clock,
    pub policy: &'a Policy,
    /// Whether send/recv turns are being counted.
    pub turns: bool,
    /// Show kernel socket addresses (`--show-kernel-addresses`).
    pub addresses: bool,
}

impl Formatter<'_> {
    /// `workload`: the socket's, where the caller named it.
    pub fn event(
        &self,
        obs: &Observation<'_>,
        d: Derived,
        workload: Option<Arc<Workload>>,
    ) -> TraceLine {
        let rec = obs.record;
        let closed = self.turns && d.kind == Kind::Closed;
        TraceLine {
            time: timefmt::rfc3339(self.clock.unix_ns(rec.ts_ns)),
            ts_ns: rec.ts_ns,
            event: d.kind,
            family: if rec.local.is_ipv4() { "inet" } else { "inet6" },
            local: rec.local.to_string(),
            remote: rec.remote.to_string(),
            state: rec.state.name(),
            probes: d.probes,
            timer_remaining_s: obs.timer_remaining_s().map(round3),
            idle_s: obs.idle_s.map(round3),
            data_idle_s: obs.data_idle_s.map(round3),
            reuse_after_s: (d.kind == Kind::StaleReuse)
                .then(|| obs.reuse_gap_s().map(round3))
                .flatten(),
            reused_by: (d.kind == Kind::StaleReuse)
                .then(|| obs.reuse.map(|r| r.by.name()))
                .flatten(),
            peer_pid: obs.peer.as_ref().map(|o| o.pid),
            peer_comm: obs.peer.as_ref().map(|o| o.comm.to_string()),
            note: (d.kind == Kind::KeepaliveTimeout && obs.timeout_ambiguous()).then(|| {
                format!(
                    "silent {:.1}s, longer than the path's idle timeout ({}s): the peer is dead, \
                     or the path forgot the flow before the first probe",
                    obs.idle_s.unwrap_or_default(),
                    obs.path_timeout_s.unwrap_or_default()
                )
            }),
            idle_timeout: (d.kind == Kind::IdleKillSuspected)
                .then(|| {
                    self.policy
                        .lookup(rec.local, rec.remote)
                        .map(|r| r.text.clone())
                })
                .flatten(),
            turns_out: closed.then_some(rec.turns_out),
            turns_in: closed.then_some(rec.turns_in),
            reset_reason: obs.reset.as_ref().map(|r| r.name.clone().into_owned()),
            reset_reason_code: rec.reason,
            reset_reason_inferred: obs.reset.as_ref().is_some_and(|r| r.inferred),
            sk_err: rec.sk_err,
            error: (d.kind == Kind::SocketError)
                .then(|| obs.error.map(|e| e.to_string()))
                .flatten(),
            netns: rec.netns,
            inode: rec.ino,
            cookie: rec.cookie,
            sock: self.addresses.then(|| format!("{:#x}", rec.sk)),
            pid: obs.owner.as_ref().map(|o| o.pid),
            comm: obs.owner.as_ref().map(|o| o.comm.to_string()),
            cgroup_id: rec.cgroup_id,
            workload: Named(workload),
        }
    }
}

/// Seconds to the millisecond, as kato's JSON gives them.
pub(crate) fn round3(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

pub const TABLE_HEADER: &str = "TIME(UTC)       EVENT               LOCAL                  REMOTE                 STATE        PROBES TIMER     REASON                 PID/COMM             WORKLOAD";

/// A line's cells, in [`TABLE_HEADER`]'s order (the time in full).
pub fn cells(e: &TraceLine) -> [String; 10] {
    let timer = e
        .timer_remaining_s
        .map(|s| format!("{s:.2}s"))
        .unwrap_or_else(|| "-".into());
    let dash = || "-".to_owned();
    let reason = match (e.event, &e.reset_reason, e.idle_s, e.reuse_after_s) {
        (Kind::StaleReuse, _, _, gap) => match (e.reused_by, gap) {
            (Some("peer"), Some(g)) => format!("peer wrote after {g:.2}s"),
            (Some("peer"), None) => "peer wrote after close".into(),
            (_, Some(g)) => format!("wrote after {g:.2}s idle"),
            (_, None) => "wrote after the FIN".into(),
        },
        (Kind::KeepaliveTimeout, _, _, _) if e.note.is_some() => "dead, or path forgot".into(),
        (_, Some(r), _, _) => r.clone(),
        (Kind::IdleKillSuspected, _, Some(idle), _) => match &e.idle_timeout {
            Some(rule) => format!("idle {idle:.1}s ({rule})"),
            None => format!("idle {idle:.1}s"),
        },
        (Kind::FinSent | Kind::FinReceived, _, _, _) => e
            .data_idle_s
            .map_or_else(dash, |i| format!("after {i:.2}s idle")),
        (Kind::SocketError, _, _, _) => e.error.clone().unwrap_or_else(dash),
        (Kind::Closed, _, _, _) => match (e.turns_out, e.turns_in) {
            (Some(o), Some(i)) => format!("turns {o} out/{i} in"),
            _ => dash(),
        },
        _ => dash(),
    };
    let owner = match (&e.pid, &e.comm) {
        (Some(p), Some(c)) => format!("{p}/{}", printable(c)),
        _ => "-".into(),
    };
    [
        e.time.get(11..26).unwrap_or_default().to_owned(),
        e.event.name().to_owned(),
        e.local.clone(),
        e.remote.clone(),
        e.state.to_owned(),
        e.probes.to_string(),
        timer,
        reason,
        owner,
        e.workload
            .0
            .as_ref()
            .map_or_else(|| "-".to_owned(), |w| w.short()),
    ]
}

/// One table line, columns aligned with [`TABLE_HEADER`].
pub fn table_line(e: &TraceLine) -> String {
    let [time, event, local, remote, state, probes, timer, reason, owner, workload] = cells(e);
    format!(
        "{time:<15} {event:<19} {local:<22} {remote:<22} {state:<12} {probes:<6} {timer:<9} {reason:<22} {owner:<20} {workload}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{
            fixture::{bytes, raw},
            Pipeline, Record, ResetReasons, Sink,
        },
        owner::Owner,
    };
    use keepalive_common::{flags, kind};
    use std::ops::ControlFlow;

    struct One(Option<TraceLine>);

    impl Sink for One {
        fn owner(&mut self, _: &Record) -> Option<Owner> {
            Some(Owner {
                pid: 42,
                comm: "client".into(),
            })
        }
        fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
            let policy = Policy::default();
            let f = Formatter {
                clock: Clock::new(),
                policy: &policy,
                turns: false,
                addresses: false,
            };
            self.0 = Some(f.event(
                obs,
                Derived {
                    kind: Kind::ResetSent,
                    probes: 3,
                },
                None,
            ));
            ControlFlow::Continue(())
        }
    }

    fn sample() -> TraceLine {
        let mut e = raw(kind::RESET_SENT);
        e.flags = flags::HAS_REASON | flags::TIMER_PENDING;
        e.reason = 15;
        e.expires = 1500;
        e.state = 7;
        let reasons = ResetReasons([(15, "TCP_KEEPALIVE_TIMEOUT".to_owned())].into());
        let mut p = Pipeline::new(250, reasons);
        let mut sink = One(None);
        let _ = p.feed(&mut vec![Record::decode(&bytes(&e))], &mut sink);
        sink.0.unwrap()
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
        let unknown = TraceLine {
            reset_reason: None,
            pid: None,
            timer_remaining_s: None,
            ..sample()
        };
        assert!(table_line(&unknown).contains(" - "));
    }
}
