//! `kato sockets` on a terminal: the columns that fit its width, each as
//! wide as its content, long values cut with `…` (never misaligned), empty
//! columns left out, rows that need attention coloured, and a summary line
//! like `ss -s`. Pipes keep the fixed netstat layout of [`super::sockets`]
//! that scripts split on.

use std::{collections::HashMap, fmt::Write as _, net::SocketAddr};

use super::{sockets as fixed, SocketView};
use crate::{policy::Risk, tcp::TcpState, text::printable};

/// A column of the table, in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Netns,
    Proto,
    RecvQ,
    SendQ,
    Local,
    Foreign,
    State,
    Process,
    Timer,
    Keepalive,
    Idle,
    Unans,
    Ct,
    Workload,
    Risk,
}

impl Column {
    pub const ALL: [Column; 15] = [
        Column::Netns,
        Column::Proto,
        Column::RecvQ,
        Column::SendQ,
        Column::Local,
        Column::Foreign,
        Column::State,
        Column::Process,
        Column::Timer,
        Column::Keepalive,
        Column::Idle,
        Column::Unans,
        Column::Ct,
        Column::Workload,
        Column::Risk,
    ];

    /// Its name in `--columns`.
    pub fn name(self) -> &'static str {
        match self {
            Column::Netns => "netns",
            Column::Proto => "proto",
            Column::RecvQ => "recv-q",
            Column::SendQ => "send-q",
            Column::Local => "local",
            Column::Foreign => "foreign",
            Column::State => "state",
            Column::Process => "process",
            Column::Timer => "timer",
            Column::Keepalive => "keepalive",
            Column::Idle => "idle",
            Column::Unans => "unans",
            Column::Ct => "ct",
            Column::Workload => "workload",
            Column::Risk => "risk",
        }
    }

    pub fn parse(s: &str) -> Option<Column> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s || (s == "remote" && *c == Column::Foreign))
    }

    fn header(self) -> &'static str {
        match self {
            Column::Netns => "Netns",
            Column::Proto => "Proto",
            Column::RecvQ => "Recv-Q",
            Column::SendQ => "Send-Q",
            Column::Local => "Local Address",
            Column::Foreign => "Foreign Address",
            Column::State => "State",
            Column::Process => "PID/Program",
            Column::Timer => "Timer",
            Column::Keepalive => "Keepalive",
            Column::Idle => "Idle",
            Column::Unans => "Unans",
            Column::Ct => "CT",
            Column::Workload => "Workload",
            Column::Risk => "Risk",
        }
    }

    fn right_aligned(self) -> bool {
        matches!(
            self,
            Column::RecvQ | Column::SendQ | Column::Idle | Column::Unans | Column::Ct
        )
    }

    /// The most a cell takes (longer values are cut).
    fn max(self) -> usize {
        match self {
            // `[ffff:...:ffff]:65535`
            Column::Local | Column::Foreign => 47,
            Column::Process | Column::Netns => 20,
            Column::Workload => 32,
            Column::Risk => 40,
            _ => 28,
        }
    }

    /// What goes first when the terminal is too narrow (highest first).
    fn drop_rank(self) -> u8 {
        match self {
            Column::Local | Column::Foreign | Column::State => 0,
            Column::Keepalive | Column::Risk => 1,
            Column::Idle | Column::Unans => 2,
            Column::Process => 3,
            Column::Netns => 4,
            Column::Workload => 5,
            Column::Timer => 6,
            Column::Ct => 7,
            Column::RecvQ | Column::SendQ => 8,
            Column::Proto => 9,
        }
    }

    /// Left out of the default table when no row has a value.
    fn hides_when_empty(self) -> bool {
        matches!(self, Column::Ct | Column::Workload | Column::Netns)
    }
}

/// Namespace inodes to their `ip netns` names, for the Netns column.
pub type NetnsNames = HashMap<u32, String>;

/// `ADDR:PORT`, IPv6 in brackets, `*` for port 0.
fn push_addr(out: &mut String, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v) => {
            let _ = write!(out, "{}", v.ip());
        }
        SocketAddr::V6(v) => {
            let _ = write!(out, "[{}]", v.ip());
        }
    }
    match a.port() {
        0 => out.push_str(":*"),
        p => {
            let _ = write!(out, ":{p}");
        }
    }
}

/// One cell's text; `brief`: the risk class without its rule (a
/// terminal too narrow for both).
fn cell(out: &mut String, c: Column, v: &SocketView<'_>, names: &NetnsNames, brief: bool) {
    let s = v.socket;
    match c {
        Column::Netns => match names.get(&s.netns) {
            Some(n) => out.push_str(n),
            None => {
                let _ = write!(out, "{}", s.netns);
            }
        },
        Column::Proto => out.push_str(s.proto),
        Column::RecvQ => {
            let _ = write!(out, "{}", s.recv_q);
        }
        Column::SendQ => {
            let _ = write!(out, "{}", s.send_q);
        }
        Column::Local => push_addr(out, &s.local),
        Column::Foreign => push_addr(out, &s.remote),
        Column::State => out.push_str(s.state.name()),
        Column::Process => match (s.pid, &s.comm) {
            (Some(p), Some(comm)) => {
                let _ = write!(out, "{p}/{}", printable(comm));
            }
            _ => out.push('-'),
        },
        Column::Timer => s.timer.write_into(out),
        Column::Keepalive => out.push_str(&fixed::keepalive_cell(s)),
        Column::Idle => match s.idle_s {
            Some(i) => {
                fixed::push_fixed(out, i, 1);
                out.push('s');
            }
            None => out.push('-'),
        },
        Column::Unans => match s.keepalive {
            Some(_) => {
                let _ = write!(out, "{}", s.probes_unanswered);
            }
            None => out.push('-'),
        },
        Column::Ct => match s.conntrack {
            Some(t) => {
                let _ = write!(out, "{}s", t.remaining_s);
            }
            None => out.push('-'),
        },
        Column::Workload => match &s.workload.0 {
            Some(w) => w.short_into(out),
            None => out.push('-'),
        },
        Column::Risk => match (&v.risk, &v.idle_timeout) {
            (Some(r), Some(rule)) if !brief => {
                let _ = write!(out, "{} ({rule})", r.name());
            }
            (Some(r), _) => out.push_str(r.name()),
            (None, _) => out.push('-'),
        },
    }
}

/// The columns chosen and how wide each is.
#[derive(Debug)]
pub struct Plan {
    cols: Vec<(Column, usize)>,
    /// Risk without its rule (fitted to a terminal).
    brief: bool,
    /// Columns left out for the terminal's width (say so: `--wide`).
    pub dropped: Vec<Column>,
}

/// Rows whose cells size the columns (later rows are cut to fit).
const SAMPLE: usize = 2000;

/// Chooses and sizes the columns for `rows`: `wanted` in order; unless
/// `explicit` (`--columns`, `--wide`), columns with nothing to show are
/// left out, and so are the least needed ones until the table fits
/// `width` (a terminal's; None: no limit).
/// Risk's rules go (only the class stays) before any column would.
pub fn plan(
    rows: &[SocketView<'_>],
    wanted: &[Column],
    width: Option<usize>,
    explicit: bool,
    names: &NetnsNames,
) -> Plan {
    let full = plan_with(rows, wanted, width, explicit, names, false);
    if full.dropped.is_empty() || explicit {
        return full;
    }
    plan_with(rows, wanted, width, explicit, names, true)
}

fn plan_with(
    rows: &[SocketView<'_>],
    wanted: &[Column],
    width: Option<usize>,
    explicit: bool,
    names: &NetnsNames,
    brief: bool,
) -> Plan {
    let sample = &rows[..rows.len().min(SAMPLE)];
    let mut buf = String::new();
    let mut cols: Vec<(Column, usize)> = vec![];
    for &c in wanted {
        let mut w = c.header().chars().count();
        let mut empty = true;
        for v in sample {
            buf.clear();
            cell(&mut buf, c, v, names, brief);
            empty &= buf == "-";
            w = w.max(buf.chars().count());
        }
        if !explicit && empty && c.hides_when_empty() {
            continue;
        }
        cols.push((c, w.min(c.max())));
    }
    let mut dropped = vec![];
    if let Some(limit) = width {
        let total = |cols: &[(Column, usize)]| {
            cols.iter()
                .map(|(_, w)| w + 1)
                .sum::<usize>()
                .saturating_sub(1)
        };
        // Columns asked for by name stay: only their cells give way.
        while !explicit && total(&cols) > limit {
            let Some(i) = (0..cols.len())
                .filter(|&i| cols[i].0.drop_rank() > 0)
                .max_by_key(|&i| (cols[i].0.drop_rank(), i))
            else {
                break;
            };
            dropped.push(cols.remove(i).0);
        }
        // Still too wide (long IPv6 addresses, --columns): the widest
        // cells give way.
        while total(&cols) > limit {
            let Some(widest) = cols.iter_mut().max_by_key(|(_, w)| *w) else {
                break;
            };
            if widest.1 <= 12 {
                break;
            }
            widest.1 -= 1;
        }
    }
    Plan {
        cols,
        brief,
        dropped,
    }
}

/// `text` padded (or cut with `…`) to `width` characters.
fn fit_into(out: &mut String, text: &str, width: usize, right: bool) {
    let n = text.chars().count();
    if n > width {
        out.extend(text.chars().take(width.saturating_sub(1)));
        out.push('…');
        return;
    }
    if right {
        out.extend(std::iter::repeat_n(' ', width - n));
        out.push_str(text);
    } else {
        out.push_str(text);
        out.extend(std::iter::repeat_n(' ', width - n));
    }
}

pub fn header(plan: &Plan) -> String {
    let mut out = String::new();
    for (i, &(c, w)) in plan.cols.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        fit_into(&mut out, c.header(), w, c.right_aligned());
    }
    out.trim_end().to_owned()
}

/// What draws the eye to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// Already forgotten, or probing a peer that does not answer (red).
    Now,
    /// A middlebox will forget it: keepalive off or too slow (yellow).
    Soon,
}

pub fn attention(v: &SocketView<'_>) -> Option<Attention> {
    let probing = v.socket.keepalive.is_some() && v.socket.probes_unanswered > 0;
    match v.risk {
        _ if probing => Some(Attention::Now),
        Some(Risk::Forgotten) => Some(Attention::Now),
        Some(Risk::AtRisk | Risk::Unprotected) => Some(Attention::Soon),
        _ => None,
    }
}

fn colour(v: &SocketView<'_>) -> Option<&'static str> {
    attention(v).map(|a| match a {
        Attention::Now => "\x1b[31m",
        Attention::Soon => "\x1b[33m",
    })
}

/// One row (no newline), coloured when `color`.
pub fn row(out: &mut String, plan: &Plan, v: &SocketView<'_>, names: &NetnsNames, color: bool) {
    let paint = color.then(|| colour(v)).flatten();
    if let Some(p) = paint {
        out.push_str(p);
    }
    let start = out.len();
    let mut text = String::new();
    for (i, &(c, w)) in plan.cols.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        text.clear();
        cell(&mut text, c, v, names, plan.brief);
        fit_into(out, &text, w, c.right_aligned());
    }
    let end = out[start..].trim_end().len();
    out.truncate(start + end);
    if paint.is_some() {
        out.push_str("\x1b[0m");
    }
}

/// One line like `ss -s`: how many, in which states, how many have
/// keepalive, and how many need attention.
pub fn summary(rows: &[SocketView<'_>]) -> String {
    let count = |f: &dyn Fn(&SocketView<'_>) -> bool| rows.iter().filter(|v| f(v)).count();
    let est = count(&|v| v.socket.state == TcpState::Established);
    let ka_on = count(&|v| {
        v.socket.state == TcpState::Established && v.socket.keepalive.is_some_and(|k| k.enabled)
    });
    let listen = count(&|v| v.socket.state == TcpState::Listen);
    let tw = count(&|v| v.socket.state == TcpState::TimeWait);
    let other = rows.len() - est - listen - tw;
    let probing = count(&|v| v.socket.keepalive.is_some() && v.socket.probes_unanswered > 0);
    let mut s = format!(
        "{} sockets: {est} established ({ka_on} with keepalive, {} without), {listen} listening, {tw} time-wait, {other} other; {probing} probing a silent peer",
        rows.len(),
        est - ka_on
    );
    let risky = count(&|v| matches!(v.risk, Some(Risk::AtRisk | Risk::Unprotected)));
    let forgotten = count(&|v| v.risk == Some(Risk::Forgotten));
    if rows
        .iter()
        .any(|v| v.risk.is_some_and(|r| r != Risk::Unknown))
    {
        let _ = write!(
            s,
            "; {risky} a middlebox will forget, {forgotten} forgotten"
        );
    }
    s
}

/// `text` in lines of at most `width` characters, broken at spaces.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ') {
        let n = word.chars().count();
        if line > 0 && line + 1 + n > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += n;
    }
    out
}

/// The terminal's width in columns, if stdout is one.
pub fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills a winsize; a non-terminal fails with ENOTTY.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return Some(usize::from(ws.ws_col));
    }
    std::env::var("COLUMNS").ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        owner::Owner,
        policy::{Policy, Rule},
        sockets::{tests::record, Socket},
    };

    fn socket() -> Socket {
        let owner = Owner {
            pid: 812,
            comm: "a-very-long-process-name-indeed".into(),
        };
        Socket::from_record(&record(), 250, Some(&owner)).unwrap()
    }

    #[test]
    fn columns_fit_the_width_and_cut_what_is_long() {
        let s = socket();
        let p = Policy {
            rules: vec![Rule::parse("10.0.0.2:5432=350s").unwrap()],
            ..Policy::default()
        };
        let rows = [SocketView::new(&s, None, &p)];
        let names = NetnsNames::new();
        // No limit: every column with something to show, CT and Workload
        // (all `-`) left out.
        let wide = plan(&rows, &Column::ALL, None, false, &names);
        let h = header(&wide);
        assert!(
            h.contains("Timer") && !h.contains("CT") && !h.contains("Workload"),
            "{h}"
        );
        for width in [80, 100, 200] {
            let p80 = plan(&rows, &Column::ALL, Some(width), false, &names);
            let mut line = String::new();
            row(&mut line, &p80, &rows[0], &names, false);
            let h = header(&p80);
            assert!(line.chars().count() <= width, "{width}: {line}");
            assert!(h.chars().count() <= width, "{width}: {h}");
            // Local, Foreign and State never go.
            assert!(
                h.starts_with("Local Address") || h.contains(" Local Address"),
                "{h}"
            );
            assert!(h.contains("Foreign Address") && h.contains("State"), "{h}");
            // Each cell starts under its header.
            let at = h.find("State").unwrap();
            assert!(line[at..].starts_with("ESTABLISHED"), "{h}\n{line}");
        }
        let p80 = plan(&rows, &Column::ALL, Some(80), false, &names);
        assert!(!p80.dropped.is_empty());
        // A long program name is cut with a marker, not misaligned.
        let mut line = String::new();
        let cols = plan(&rows, &[Column::Process, Column::State], None, true, &names);
        row(&mut line, &cols, &rows[0], &names, false);
        assert!(line.starts_with("812/a-very-long-pro… "), "{line}");
        assert!(line.ends_with("ESTABLISHED"), "{line}");
        // --columns on a terminal: every column asked for stays, the
        // widest cells give way to the width.
        let asked = [
            Column::Local,
            Column::Foreign,
            Column::Process,
            Column::Keepalive,
        ];
        let narrow = plan(&rows, &asked, Some(50), true, &names);
        assert!(narrow.dropped.is_empty());
        let mut line = String::new();
        row(&mut line, &narrow, &rows[0], &names, false);
        assert!(
            line.chars().count() <= 50 && header(&narrow).chars().count() <= 50,
            "{line}"
        );
        assert!(line.contains("812/"), "{line}");
        // Colour only when asked, reset at the end of the row.
        let mut red = String::new();
        row(&mut red, &cols, &rows[0], &names, true);
        assert!(
            red.starts_with("\x1b[33m") && red.ends_with("\x1b[0m"),
            "{red:?}"
        );
    }

    #[test]
    fn addresses_in_brackets_and_columns_by_name() {
        let mut out = String::new();
        push_addr(&mut out, &"[::1]:22".parse().unwrap());
        push_addr(&mut out, &" 0.0.0.0:0".trim().parse().unwrap());
        assert_eq!(out, "[::1]:220.0.0.0:*");
        assert_eq!(Column::parse("Recv-Q"), Some(Column::RecvQ));
        assert_eq!(Column::parse("remote"), Some(Column::Foreign));
        assert_eq!(Column::parse("nope"), None);
        assert_eq!(wrap("aaa bbb ccc", 7), "aaa bbb\nccc");
    }
}
