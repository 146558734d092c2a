//! `kato sockets` as a table that reads like `netstat -tnop`, plus kato's
//! own columns.

use std::{
    fmt::{self, Write as _},
    net::SocketAddr,
};

use super::SocketView;
use crate::{sockets::Socket, text::printable};

/// netstat's address notation: no brackets for IPv6, `*` for port 0.
pub fn netstat_addr(a: &SocketAddr) -> String {
    NetstatAddr(a).to_string()
}

struct NetstatAddr<'a>(&'a SocketAddr);

impl fmt::Display for NetstatAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.port() {
            0 => write!(f, "{}:*", self.0.ip()),
            p => write!(f, "{}:{p}", self.0.ip()),
        }
    }
}

pub const HEADER: &str = "Proto Recv-Q Send-Q Local Address           Foreign Address         State        PID/Program name     Timer                        Keepalive         Idle      Unans CT    Workload";

/// The Workload column's width (longer names push Risk right).
const WORKLOAD_WIDTH: usize = 24;

/// The header, with the Risk column when an idle-timeout policy is given.
pub fn header(with_risk: bool) -> String {
    if with_risk {
        format!(
            "{HEADER}{:width$} Risk",
            "",
            width = WORKLOAD_WIDTH - "Workload".len()
        )
    } else {
        HEADER.to_owned()
    }
}

/// `idle/intvl/cnt` with `*` on sysctl defaults, `off`, or `-`.
pub fn keepalive_cell(s: &Socket) -> String {
    KeepaliveCell(s).to_string()
}

struct KeepaliveCell<'a>(&'a Socket);

impl fmt::Display for KeepaliveCell<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.keepalive {
            None => f.write_str("-"),
            Some(k) if !k.enabled => f.write_str("off"),
            Some(k) => write!(f, "{}/{}/{}", k.idle_s, k.interval_s, k.count),
        }
    }
}

pub fn row(v: &SocketView<'_>, with_risk: bool) -> String {
    let mut line = String::with_capacity(200);
    write_row(&mut line, v, with_risk);
    line
}

/// Pads what was written since `start` with spaces to `width` characters.
fn pad(out: &mut String, start: usize, width: usize) {
    const SPACES: &str = "                                ";
    let mut n = width.saturating_sub(out[start..].chars().count());
    while n > 0 {
        let k = n.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// A left-aligned cell of at least `width` characters and a separating space.
fn cell(out: &mut String, width: usize, content: impl FnOnce(&mut String)) {
    let start = out.len();
    content(out);
    pad(out, start, width);
    out.push(' ');
}

/// One row, appended to `out` (no newline). The listing writes 100,000s of
/// these: cells go straight into one buffer, nothing is allocated per cell.
pub fn write_row(out: &mut String, v: &SocketView<'_>, with_risk: bool) {
    let s = v.socket;
    let _ = write!(out, "{:<5} {:>6} {:>6} ", s.proto, s.recv_q, s.send_q);
    cell(out, 23, |o| {
        let _ = write!(o, "{}", NetstatAddr(&s.local));
    });
    cell(out, 23, |o| {
        let _ = write!(o, "{}", NetstatAddr(&s.remote));
    });
    cell(out, 12, |o| o.push_str(s.state.name()));
    cell(out, 20, |o| match (s.pid, &s.comm) {
        (Some(p), Some(c)) => {
            let _ = write!(o, "{p}/{}", printable(c));
        }
        _ => o.push('-'),
    });
    cell(out, 28, |o| {
        let _ = write!(o, "{}", s.timer);
    });
    cell(out, 17, |o| {
        let _ = write!(o, "{}", KeepaliveCell(s));
    });
    cell(out, 9, |o| match s.idle_s {
        Some(i) => {
            let _ = write!(o, "{i:.1}s");
        }
        None => o.push('-'),
    });
    cell(out, 5, |o| {
        if s.keepalive.is_some() {
            let _ = write!(o, "{}", s.probes_unanswered);
        } else {
            o.push('-');
        }
    });
    cell(out, 5, |o| match s.conntrack {
        Some(c) => {
            let _ = write!(o, "{}s", c.remaining_s);
        }
        None => o.push('-'),
    });
    let start = out.len();
    match &s.workload.0 {
        Some(w) => w.short_into(out),
        None => out.push('-'),
    }
    pad(out, start, WORKLOAD_WIDTH);
    match (with_risk, &v.risk, &v.idle_timeout) {
        (false, _, _) => {}
        (true, Some(r), Some(rule)) => {
            let _ = write!(out, " {} ({rule})", r.name());
        }
        (true, Some(r), None) => {
            let _ = write!(out, " {}", r.name());
        }
        (true, None, _) => out.push_str(" -"),
    }
}

pub const FOOTNOTE: &str = "Keepalive: idle/interval/count in seconds/seconds/probes; * = the namespace's net.ipv4.tcp_keepalive_* default. Idle: since the peer was last heard from. Unans: keepalive probes not yet answered. CT: seconds until conntrack forgets the flow without a packet (- untracked). Workload: pod namespace/pod/container, runtime:container-id, or systemd unit, from the socket's cgroup.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        owner::Owner,
        policy::{Policy, Rule},
        sockets::{tests::record, Socket},
    };
    use keepalive_common::SockRecord;

    #[test]
    fn addresses_like_netstat() {
        assert_eq!(netstat_addr(&"0.0.0.0:0".parse().unwrap()), "0.0.0.0:*");
        assert_eq!(netstat_addr(&"[::1]:22".parse().unwrap()), "::1:22");
    }

    #[test]
    fn row_aligns_with_header() {
        let owner = Owner {
            pid: 812,
            comm: "postgres".into(),
        };
        let s = Socket::from_record(&record(), 250, Some(&owner)).unwrap();
        let p = Policy {
            rules: vec![Rule::parse("10.0.0.2:5432=350s").unwrap()],
            ..Policy::default()
        };
        let line = row(&SocketView::new(&s, None, &p), true);
        for (col, value) in [
            ("Recv-Q", "     0"),
            ("Local Address", "10.0.0.1:40000"),
            ("Foreign Address", "10.0.0.2:5432"),
            ("State", "ESTABLISHED"),
            ("PID/Program name", "812/postgres"),
            ("Timer", "keepalive (7198.14/0/0)"),
            ("Keepalive", "7200*/10/9*"),
            ("Idle", "1.0s"),
            ("Unans", "0"),
            ("CT", "-"),
            ("Workload", "-"),
            ("Risk", "at-risk (10.0.0.2:5432=350s)"),
        ] {
            let h = header(true);
            let at = h.find(col).unwrap();
            assert!(line[at..].starts_with(value), "{col}:\n{h}\n{line}");
        }
        let tw = Socket::from_record(
            &SockRecord {
                state: 6,
                flags: 0,
                ..record()
            },
            250,
            None,
        )
        .unwrap();
        let none = Policy::default();
        assert!(row(&SocketView::new(&tw, None, &none), false).contains(" - "));
        assert!(row(&SocketView::new(&tw, None, &none), true).ends_with(" -"));
        assert_eq!(keepalive_cell(&tw), "-");
    }
}
