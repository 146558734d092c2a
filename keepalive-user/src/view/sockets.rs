//! `kato sockets` as a table that reads like `netstat -tnop`, plus kato's
//! own columns.

use std::net::SocketAddr;

use super::SocketView;
use crate::{sockets::Socket, text::printable};

/// netstat's address notation: no brackets for IPv6, `*` for port 0.
pub fn netstat_addr(a: &SocketAddr) -> String {
    let port = if a.port() == 0 {
        "*".to_owned()
    } else {
        a.port().to_string()
    };
    format!("{}:{port}", a.ip())
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
    match &s.keepalive {
        None => "-".into(),
        Some(k) if !k.enabled => "off".into(),
        Some(k) => format!(
            "{}/{}/{}",
            k.idle_s.short(),
            k.interval_s.short(),
            k.count.short()
        ),
    }
}

pub fn row(v: &SocketView<'_>, with_risk: bool) -> String {
    let s = v.socket;
    let owner = match (s.pid, &s.comm) {
        (Some(p), Some(c)) => format!("{p}/{}", printable(c)),
        _ => "-".into(),
    };
    let idle = s
        .idle_s
        .map(|i| format!("{i:.1}s"))
        .unwrap_or_else(|| "-".into());
    let unans = if s.keepalive.is_some() {
        s.probes_unanswered.to_string()
    } else {
        "-".into()
    };
    let ct = s
        .conntrack
        .map(|c| format!("{}s", c.remaining_s))
        .unwrap_or_else(|| "-".into());
    let risk = match (with_risk, &v.risk, &v.idle_timeout) {
        (false, _, _) => String::new(),
        (true, Some(r), Some(rule)) => format!(" {} ({rule})", r.name()),
        (true, Some(r), None) => format!(" {}", r.name()),
        (true, None, _) => " -".into(),
    };
    format!(
        "{:<5} {:>6} {:>6} {:<23} {:<23} {:<12} {:<20} {:<28} {:<17} {:<9} {:<5} {:<5} {:<ww$}{risk}",
        s.proto,
        s.recv_q,
        s.send_q,
        netstat_addr(&s.local),
        netstat_addr(&s.remote),
        s.state.name(),
        owner,
        s.timer.netstat(),
        keepalive_cell(s),
        idle,
        unans,
        ct,
        s.workload.0.as_ref().map_or_else(|| "-".to_owned(), |w| w.short()),
        ww = WORKLOAD_WIDTH
    )
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
