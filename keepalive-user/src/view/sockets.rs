//! `kato sockets` as a table that reads like `netstat -tnop`, plus kato's
//! own columns.

use std::{
    fmt::{self, Write as _},
    net::SocketAddr,
};

use super::SocketView;
use crate::{
    sockets::{Effective, Socket, Timer, ValueSource},
    text::printable,
};

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
    let mut out = String::new();
    match &s.keepalive {
        None => out.push('-'),
        Some(k) if !k.enabled => out.push_str("off"),
        Some(k) => {
            k.idle_s.write_into(&mut out);
            out.push('/');
            k.interval_s.write_into(&mut out);
            out.push('/');
            k.count.write_into(&mut out);
        }
    }
    out
}

pub fn row(v: &SocketView<'_>, with_risk: bool) -> String {
    let mut line = String::with_capacity(200);
    write_row(&mut line, v, with_risk);
    line
}

/// Characters written since `start` (bytes, for the ASCII that almost
/// every cell is).
fn width_since(out: &str, start: usize) -> usize {
    let s = &out[start..];
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// Pads what was written since `start` with spaces to `width` characters.
fn pad(out: &mut String, start: usize, width: usize) {
    const SPACES: &str = "                                ";
    let mut n = width.saturating_sub(width_since(out, start));
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

/// A number right-aligned in `width` characters, and a separating space.
fn right(out: &mut String, width: usize, v: u64) {
    let mut b = itoa::Buffer::new();
    let digits = b.format(v);
    for _ in digits.len()..width {
        out.push(' ');
    }
    out.push_str(digits);
    out.push(' ');
}

fn push_uint(out: &mut String, v: u64) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// `x` (not negative) with `decimals` (1 or 2) digits after the point,
/// rounded half away from zero: what `{:.N}` prints but for exact ties,
/// which times counted in jiffies at HZ 100, 250 or 1000 never make. The
/// listing prints two of these per row, 100,000s of rows: no `fmt` machinery.
pub(crate) fn push_fixed(out: &mut String, x: f64, decimals: u32) {
    let scale = 10u64.pow(decimals);
    if !(0.0..1e15).contains(&x) {
        // Negative, NaN or absurd: rare enough for fmt.
        let _ = write!(out, "{x:.prec$}", prec = decimals as usize);
        return;
    }
    let n = (x * scale as f64).round() as u64;
    push_uint(out, n / scale);
    out.push('.');
    let frac = n % scale;
    let mut b = itoa::Buffer::new();
    let digits = b.format(frac);
    for _ in digits.len()..decimals as usize {
        out.push('0');
    }
    out.push_str(digits);
}

/// [`NetstatAddr`], IPv4 without `fmt`.
fn push_addr(out: &mut String, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v) => {
            for (i, o) in v.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_uint(out, u64::from(*o));
            }
            match v.port() {
                0 => out.push_str(":*"),
                p => {
                    out.push(':');
                    push_uint(out, u64::from(p));
                }
            }
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{}", NetstatAddr(a));
        }
    }
}

/// One row, appended to `out` (no newline). The listing writes 100,000s of
/// these: cells go straight into one buffer, nothing is allocated per cell.
pub fn write_row(out: &mut String, v: &SocketView<'_>, with_risk: bool) {
    let s = v.socket;
    cell(out, 5, |o| o.push_str(s.proto));
    right(out, 6, u64::from(s.recv_q));
    right(out, 6, u64::from(s.send_q));
    cell(out, 23, |o| push_addr(o, &s.local));
    cell(out, 23, |o| push_addr(o, &s.remote));
    cell(out, 12, |o| o.push_str(s.state.name()));
    cell(out, 20, |o| match (s.pid, &s.comm) {
        (Some(p), Some(c)) => {
            push_uint(o, u64::from(p));
            o.push('/');
            o.push_str(&printable(c));
        }
        _ => o.push('-'),
    });
    cell(out, 28, |o| s.timer.write_into(o));
    cell(out, 17, |o| match &s.keepalive {
        None => o.push('-'),
        Some(k) if !k.enabled => o.push_str("off"),
        Some(k) => {
            k.idle_s.write_into(o);
            o.push('/');
            k.interval_s.write_into(o);
            o.push('/');
            k.count.write_into(o);
        }
    });
    cell(out, 9, |o| match s.idle_s {
        Some(i) => {
            push_fixed(o, i, 1);
            o.push('s');
        }
        None => o.push('-'),
    });
    cell(out, 5, |o| {
        if s.keepalive.is_some() {
            push_uint(o, u64::from(s.probes_unanswered));
        } else {
            o.push('-');
        }
    });
    cell(out, 5, |o| match s.conntrack {
        Some(c) => {
            push_uint(o, u64::from(c.remaining_s));
            o.push('s');
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

// netstat's notation for the model's timers and settings: text is the
// view's business, not the model's.

impl Timer {
    /// `keepalive (7198.14/0/0)`, like `netstat -o`.
    pub fn netstat(&self) -> String {
        self.to_string()
    }

    /// [`Timer::netstat`], appended to `out` without `fmt` (the listing
    /// writes one per row).
    pub fn write_into(&self, out: &mut String) {
        out.push_str(self.kind.netstat_name());
        out.push_str(" (");
        push_fixed(out, self.remaining_s, 2);
        out.push('/');
        push_uint(out, u64::from(self.retransmits));
        out.push('/');
        push_uint(out, u64::from(self.probes));
        out.push(')');
    }
}

impl fmt::Display for Timer {
    /// netstat's notation (see [`Timer::netstat`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(32);
        self.write_into(&mut s);
        f.write_str(&s)
    }
}

impl Effective {
    /// `75` or `75*` (the star marks a sysctl default).
    pub fn short(&self) -> String {
        self.to_string()
    }

    /// [`Effective::short`], appended to `out`.
    pub fn write_into(&self, out: &mut String) {
        push_uint(out, u64::from(self.value));
        if self.source == ValueSource::Sysctl {
            out.push('*');
        }
    }
}

impl fmt::Display for Effective {
    /// See [`Effective::short`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(12);
        self.write_into(&mut s);
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        owner::Owner,
        policy::{Policy, Rule},
        sockets::{
            tests::{record, timewait},
            Socket,
        },
    };

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
        let tw = timewait();
        let none = Policy::default();
        assert!(row(&SocketView::new(&tw, None, &none), false).contains(" - "));
        assert!(row(&SocketView::new(&tw, None, &none), true).ends_with(" -"));
        assert_eq!(keepalive_cell(&tw), "-");
    }
}
