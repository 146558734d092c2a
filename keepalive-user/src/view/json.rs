//! `kato sockets --output json`'s rows written by hand: the same bytes as
//! serde's `Serialize` of a timed [`SocketView`] (a unit test holds them
//! equal), without escaping ~45 constant keys and the addresses per row.
//! serde_json spent a quarter of a 100,000-socket JSON listing there
//! (`format_escaped_str` alone 11%, `perf`); values that may need escaping
//! (names, rules, reasons) still go through serde_json.

use std::{io::Write as _, net::SocketAddr};

use serde::Serialize;

use super::SocketView;
use crate::sockets::{Effective, Keepalive, Timer};

/// A listing's rows, elements of one JSON array, each stamped with the
/// listing's time.
pub struct Rows {
    /// `{"time":"…",`: the same for every row, escaped once.
    head: Vec<u8>,
}

impl Rows {
    pub fn new(time: &str) -> Self {
        let mut head = b"{\"time\":".to_vec();
        value(&mut head, time);
        head.push(b',');
        Rows { head }
    }

    /// Appends `v` to `out`, after a comma unless it is the array's first.
    pub fn push(&self, out: &mut Vec<u8>, first: bool, v: &SocketView<'_>) {
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(&self.head);
        row(out, v);
    }
}

/// Any value as serde_json writes it.
fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing into a Vec fails only for a value that refuses to serialize,
    // which none of the row's types do.
    let _ = serde_json::to_writer(&mut *out, v);
}

fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_int(out: &mut Vec<u8>, n: Option<impl itoa::Integer>) {
    match n {
        Some(n) => int(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// An address needs no escaping: digits, dots, colons, brackets, `%`.
/// IPv4 as `SocketAddr` displays it, without `fmt` (two a row; through
/// `write!`, a tenth of the samples of a 1M-socket JSON listing).
fn addr(out: &mut Vec<u8>, a: &SocketAddr) {
    out.push(b'"');
    match a {
        SocketAddr::V4(v) => {
            for (i, octet) in v.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                int(out, octet);
            }
            out.push(b':');
            int(out, v.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
    out.push(b'"');
}

fn row(out: &mut Vec<u8>, v: &SocketView<'_>) {
    let s = v.socket;
    if let Some(sock) = &v.sock {
        key(out, "sock");
        value(out, sock);
        out.push(b',');
    }
    key(out, "cookie");
    opt_int(out, s.cookie);
    out.push(b',');
    key(out, "cgroup_id");
    opt_int(out, s.cgroup_id);
    let w = s.workload.0.as_deref();
    for (k, text) in [
        ("cgroup", w.and_then(|w| w.cgroup.as_deref())),
        ("unit", w.and_then(|w| w.unit.as_deref())),
        ("container_id", w.and_then(|w| w.container_id.as_deref())),
    ] {
        out.push(b',');
        key(out, k);
        value(out, &text);
    }
    out.push(b',');
    key(out, "runtime");
    value(out, &w.and_then(|w| w.runtime));
    for (k, text) in [
        ("pod", w.and_then(|w| w.pod.as_deref())),
        ("pod_namespace", w.and_then(|w| w.pod_namespace.as_deref())),
        ("container", w.and_then(|w| w.container.as_deref())),
        ("pod_uid", w.and_then(|w| w.pod_uid.as_deref())),
    ] {
        out.push(b',');
        key(out, k);
        value(out, &text);
    }
    out.extend_from_slice(b",\"netns\":");
    int(out, s.netns);
    out.extend_from_slice(b",\"proto\":\"");
    out.extend_from_slice(s.proto.as_bytes());
    out.extend_from_slice(b"\",\"local\":");
    addr(out, &s.local);
    out.extend_from_slice(b",\"remote\":");
    addr(out, &s.remote);
    out.extend_from_slice(b",\"state\":");
    value(out, &s.state);
    out.extend_from_slice(b",\"recv_q\":");
    int(out, s.recv_q);
    out.extend_from_slice(b",\"send_q\":");
    int(out, s.send_q);
    out.extend_from_slice(b",\"uid\":");
    int(out, s.uid);
    out.extend_from_slice(b",\"inode\":");
    int(out, s.inode);
    out.extend_from_slice(b",\"pid\":");
    opt_int(out, s.pid);
    out.extend_from_slice(b",\"comm\":");
    value(out, &s.comm.as_deref());
    out.extend_from_slice(b",\"timer\":");
    timer(out, &s.timer);
    out.extend_from_slice(b",\"keepalive\":");
    match &s.keepalive {
        Some(k) => keepalive(out, k),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"probes_unanswered\":");
    int(out, s.probes_unanswered);
    out.extend_from_slice(b",\"retransmits\":");
    int(out, s.retransmits);
    for (k, secs) in [
        ("idle_s", s.idle_s),
        ("last_data_recv_s", s.last_data_recv_s),
        ("last_data_sent_s", s.last_data_sent_s),
    ] {
        out.push(b',');
        key(out, k);
        value(out, &secs);
    }
    out.extend_from_slice(b",\"conntrack\":");
    value(out, &s.conntrack);
    out.extend_from_slice(b",\"side\":");
    value(out, &s.side);
    out.extend_from_slice(b",\"segs_in\":");
    opt_int(out, s.segs_in);
    out.extend_from_slice(b",\"segs_out\":");
    opt_int(out, s.segs_out);
    out.extend_from_slice(b",\"probes_sent\":");
    opt_int(out, v.probes_sent);
    out.extend_from_slice(b",\"probes_answered\":");
    opt_int(out, v.probes_answered);
    out.extend_from_slice(b",\"last_reset\":");
    value(out, &v.last_reset);
    out.extend_from_slice(b",\"risk\":");
    value(out, &v.risk);
    out.extend_from_slice(b",\"idle_timeout\":");
    value(out, &v.idle_timeout);
    out.extend_from_slice(b",\"idle_timeout_source\":");
    value(out, &v.idle_timeout_source);
    out.push(b'}');
}

fn timer(out: &mut Vec<u8>, t: &Timer) {
    out.extend_from_slice(b"{\"kind\":");
    value(out, &t.kind);
    out.extend_from_slice(b",\"remaining_s\":");
    value(out, &t.remaining_s);
    out.extend_from_slice(b",\"retransmits\":");
    int(out, t.retransmits);
    out.extend_from_slice(b",\"probes\":");
    int(out, t.probes);
    out.push(b'}');
}

fn keepalive(out: &mut Vec<u8>, k: &Keepalive) {
    out.extend_from_slice(if k.enabled {
        b"{\"enabled\":true"
    } else {
        b"{\"enabled\":false"
    });
    for (name, e) in [
        ("idle_s", &k.idle_s),
        ("interval_s", &k.interval_s),
        ("count", &k.count),
    ] {
        out.push(b',');
        key(out, name);
        effective(out, e);
    }
    out.extend_from_slice(b",\"user_timeout_ms\":");
    opt_int(out, k.user_timeout_ms);
    out.push(b'}');
}

fn effective(out: &mut Vec<u8>, e: &Effective) {
    out.extend_from_slice(b"{\"value\":");
    int(out, e.value);
    out.extend_from_slice(b",\"source\":");
    value(out, &e.source);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        conntrack::{CtState, Tracked},
        policy::{Risk, RuleSource},
        sockets::{Side, Socket, TimerKind, ValueSource},
        tcp::TcpState,
        workload::{Named, Runtime, Workload},
    };

    /// What serde writes for a row of the listing (cli's `Timed`: the time,
    /// then the view's fields flattened).
    fn by_serde(time: &str, v: &SocketView<'_>) -> String {
        let view = serde_json::to_string(v).unwrap();
        format!(
            "{{\"time\":{},{}",
            serde_json::to_string(time).unwrap(),
            &view[1..]
        )
    }

    fn bare() -> Socket {
        Socket::bare(
            0xffff_8880_1234_5678,
            4026531840,
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            TcpState::Established,
            123,
            Timer {
                kind: TimerKind::Off,
                remaining_s: 0.0,
                retransmits: 0,
                probes: 0,
            },
        )
    }

    fn full() -> Socket {
        let e = |value, source| Effective { value, source };
        Socket {
            cookie: Some(u64::MAX),
            cgroup_id: Some(7),
            workload: Named(Some(Arc::new(Workload {
                cgroup: Some("/kubepods/pod\"x\"/c\n1".into()),
                unit: None,
                container_id: Some("abc".into()),
                runtime: Some(Runtime::Containerd),
                pod_uid: Some("u-1".into()),
                qos: None,
                pod: Some("web-0".into()),
                pod_namespace: Some("prod".into()),
                container: Some("nginx".into()),
            }))),
            sock: 1,
            netns: 1,
            proto: "tcp6",
            local: "[fe80::1%3]:443".parse().unwrap(),
            remote: "[2001:db8::2]:51234".parse().unwrap(),
            state: TcpState::CloseWait,
            recv_q: u32::MAX,
            send_q: 5,
            uid: 1000,
            inode: u64::MAX,
            pid: Some(42),
            comm: Some(Arc::from("ngi\\nx\u{7f}é")),
            timer: Timer {
                kind: TimerKind::Keepalive,
                remaining_s: 7198.14,
                retransmits: 1,
                probes: 2,
            },
            keepalive: Some(Keepalive {
                enabled: true,
                idle_s: e(60, ValueSource::Socket),
                interval_s: e(75, ValueSource::Sysctl),
                count: e(9, ValueSource::Kato),
                user_timeout_ms: Some(30000),
            }),
            probes_unanswered: 2,
            retransmits: 1,
            idle_s: Some(0.1 + 0.2),
            last_data_recv_s: Some(f64::NAN),
            last_data_sent_s: Some(1e21),
            conntrack: Some(Tracked {
                remaining_s: 431999,
                state: CtState::Established,
                netns: 9,
            }),
            side: Some(Side::Server),
            segs_in: Some(0),
            segs_out: Some(u32::MAX),
        }
    }

    #[test]
    fn addresses_are_written_as_they_display() {
        for a in [
            "0.0.0.0:0",
            "10.0.0.1:9",
            "127.0.0.1:40000",
            "255.255.255.255:65535",
            "[::]:0",
            "[fe80::1%3]:443",
            "[::ffff:10.1.2.3]:80",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = vec![];
            addr(&mut out, &a);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{a}\""));
        }
    }

    #[test]
    fn rows_are_the_bytes_serde_writes() {
        let time = "2026-12-06T20:11:48.201319Z";
        let (b, f) = (bare(), full());
        let mut views = vec![SocketView {
            sock: None,
            socket: &b,
            probes_sent: None,
            probes_answered: None,
            last_reset: None,
            risk: None,
            idle_timeout: None,
            idle_timeout_source: None,
        }];
        for (risk, src) in [
            (Risk::Forgotten, RuleSource::CloudAssumed),
            (Risk::AtRisk, RuleSource::Learned),
        ] {
            views.push(SocketView {
                sock: Some("0x1".into()),
                socket: &f,
                probes_sent: Some(3),
                probes_answered: Some(u64::MAX),
                last_reset: Some("TCP_KEEPALIVE_TIMEOUT \"x\""),
                risk: Some(risk),
                idle_timeout: Some("10.0.0.0/8=350s"),
                idle_timeout_source: Some(src),
            });
        }
        let rows = Rows::new(time);
        let mut got = vec![b'['];
        let mut want = String::from("[");
        for (i, v) in views.iter().enumerate() {
            let mut one = vec![];
            rows.push(&mut one, true, v);
            assert_eq!(String::from_utf8(one).unwrap(), by_serde(time, v));
            rows.push(&mut got, i == 0, v);
            want += &by_serde(time, v);
            want += if i + 1 < views.len() { "," } else { "]" };
        }
        got.push(b']');
        assert_eq!(String::from_utf8(got).unwrap(), want);
        let _: serde_json::Value = serde_json::from_str(&want).unwrap();
    }
}
