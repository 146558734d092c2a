//! How `kato sockets` prints: JSON; on a terminal, a table fitted to its
//! width (`view::fit`); to a pipe, the fixed netstat layout that scripts
//! split on; `--wide` and `--columns` choose for themselves.

use std::io::Write;

use clap::ValueEnum;
use keepalive_user::view::{
    fit::{self, Column, NetnsNames},
    json, sockets as render, SocketView,
};

use super::Output;

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    Always,
    Never,
}

/// What frames a table: header, legend, summary.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub header: bool,
    pub legend: bool,
    /// The `ss -s`-like line after the table (on a terminal).
    pub summary: bool,
}

#[derive(Debug)]
pub enum Layout {
    /// netstat's columns at fixed widths (pipes).
    Fixed,
    /// These columns sized to their content; cut to `width`, and empty
    /// ones left out, unless `explicit`.
    Fit {
        cols: Vec<Column>,
        width: Option<usize>,
        explicit: bool,
    },
}

#[derive(Debug)]
pub struct Style {
    pub layout: Layout,
    pub color: bool,
    pub names: NetnsNames,
    pub frame: Frame,
}

impl Style {
    /// Is `output` the fitted table, which measures every row first?
    pub fn fits(&self, output: Output) -> bool {
        output == Output::Table && matches!(self.layout, Layout::Fit { .. })
    }

    /// `columns`: `--columns`; `several`: more than one namespace listed.
    pub fn choose(
        columns: Option<Vec<Column>>,
        wide: bool,
        color: ColorWhen,
        tty: bool,
        several: bool,
        names: NetnsNames,
        frame: Frame,
    ) -> Self {
        let all = || -> Vec<Column> {
            Column::ALL
                .into_iter()
                .filter(|c| several || *c != Column::Netns)
                .collect()
        };
        let width = tty.then(fit::terminal_width).flatten();
        let layout = match columns {
            Some(cols) => Layout::Fit {
                cols,
                width,
                explicit: true,
            },
            // Every column, unfitted: asked for, or a pipe where
            // namespaces mix (netstat's layout has no NETNS).
            None if wide || (several && !tty) => Layout::Fit {
                cols: all(),
                width: None,
                explicit: true,
            },
            None if tty => Layout::Fit {
                cols: all(),
                width,
                explicit: false,
            },
            None => Layout::Fixed,
        };
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match color {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => tty && !no_color,
        };
        Style {
            layout,
            color,
            names,
            frame: Frame {
                summary: frame.summary && tty,
                ..frame
            },
        }
    }
}

/// Prints `items` as views made one at a time (`view`): in the fixed
/// layout and JSON, 100,000s of sockets never have their views in memory
/// at once.
pub fn print<'a, T: Copy + Sync>(
    out: &mut impl Write,
    output: Output,
    items: &[T],
    view: &(impl Fn(T) -> SocketView<'a> + Sync),
    with_risk: bool,
    style: &Style,
) -> std::io::Result<()> {
    if style.fits(output) {
        let views: Vec<SocketView<'a>> = items.iter().map(|t| view(*t)).collect();
        return fitted(out, &views, with_risk, style);
    }
    let views = |part: &[T], f: RowView<'_>| part.iter().for_each(|t| f(&view(*t)));
    print_rows(out, output, items, &views, with_risk, style)
}

/// A row's view, handed to `f` (it may borrow what the row makes for it).
pub type RowView<'f> = &'f mut dyn FnMut(&SocketView<'_>);

/// [`print`] for rows that are made into sockets only to be printed (a
/// listing's compact rows): `views(block, f)` makes each item's view of a
/// block in order and hands it to `f`, in the thread that prints it (a
/// block at once: rows visited out of their packed order can be fetched
/// together first). Not for the fitted layout ([`Style::fits`]), which
/// measures every row before it prints one.
pub fn print_rows<T: Copy + Sync>(
    out: &mut impl Write,
    output: Output,
    items: &[T],
    views: &(impl Fn(&[T], RowView<'_>) + Sync),
    with_risk: bool,
    style: &Style,
) -> std::io::Result<()> {
    debug_assert!(
        !style.fits(output),
        "the fitted table measures its rows first"
    );
    let frame = style.frame;
    match output {
        Output::Json => {
            let rows = json::Rows::new(&listed_at());
            out.write_all(b"[")?;
            in_blocks(out, items, |part, at, text| {
                let mut first = at == 0;
                views(part, &mut |v| {
                    rows.push(text, first, v);
                    first = false;
                });
            })?;
            writeln!(out, "]")
        }
        Output::Table => {
            if frame.header {
                writeln!(out, "{}", render::header(with_risk))?;
            }
            in_blocks(out, items, |part, _, text| {
                // The buffer comes empty: taken as a String (nothing to
                // check) and given back, its capacity kept.
                let mut lines = String::from_utf8(std::mem::take(text)).unwrap_or_default();
                views(part, &mut |v| {
                    render::write_row(&mut lines, v, with_risk);
                    lines.push('\n');
                });
                *text = lines.into_bytes();
            })?;
            if frame.legend {
                writeln!(out, "\n{}", render::FOOTNOTE)?;
            }
            Ok(())
        }
    }
}

/// The fitted table: every view measured, then printed.
pub fn fitted(
    out: &mut impl Write,
    views: &[SocketView<'_>],
    with_risk: bool,
    style: &Style,
) -> std::io::Result<()> {
    let frame = style.frame;
    let Layout::Fit {
        cols,
        width,
        explicit,
    } = &style.layout
    else {
        unreachable!("fitted() is called for the fitted layout");
    };
    let cols: Vec<Column> = cols
        .iter()
        .copied()
        .filter(|c| with_risk || *explicit || *c != Column::Risk)
        .collect();
    let plan = fit::plan(views, &cols, *width, *explicit, &style.names);
    if frame.header {
        writeln!(out, "{}", fit::header(&plan))?;
    }
    let mut line = String::with_capacity(160);
    for v in views {
        line.clear();
        fit::row(&mut line, &plan, v, &style.names, style.color);
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    let wrapped = |text: &str| match width {
        Some(w) => fit::wrap(text, *w),
        None => text.to_owned(),
    };
    if frame.summary {
        writeln!(out, "\n{}", wrapped(&fit::summary(views)))?;
        if !plan.dropped.is_empty() {
            let names: Vec<&str> = plan.dropped.iter().map(|c| c.name()).collect();
            let note = format!(
                "(left out to fit: {}; --wide or --columns shows them)",
                names.join(", ")
            );
            writeln!(out, "{}", wrapped(&note))?;
        }
    }
    if frame.legend {
        writeln!(out, "\n{}", wrapped(render::FOOTNOTE))?;
    }
    Ok(())
}

/// Writes what `render(block, offset, text)` appends to `text` for blocks
/// of `items` in order, two threads rendering alternate blocks into two
/// buffers kept from block to block (a fresh megabyte a block was paged
/// in, zeroed and handed back each time). 1,024 rows: a JSON row is ~900
/// bytes, and a listing's peak memory is its held rows plus these two
/// buffers; a thread per 2,048 rows costs well under a millisecond at
/// 100,000.
fn in_blocks<T: Sync>(
    out: &mut impl Write,
    items: &[T],
    render: impl Fn(&[T], usize, &mut Vec<u8>) + Sync,
) -> std::io::Result<()> {
    const BLOCK: usize = 1024;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for (n, pair) in items.chunks(2 * BLOCK).enumerate() {
        let (a, b) = pair.split_at(pair.len().min(BLOCK));
        let at = n * 2 * BLOCK;
        first.clear();
        second.clear();
        std::thread::scope(|s| {
            let b = s.spawn(|| render(b, at + BLOCK, &mut second));
            render(a, at, &mut first);
            b.join().expect("formatting rows panicked");
        });
        out.write_all(&first)?;
        out.write_all(&second)?;
    }
    Ok(())
}

/// When a listing was taken, for the `time` field of its rows.
pub fn listed_at() -> String {
    keepalive_user::timefmt::rfc3339(jiff::Timestamp::now().as_nanosecond())
}

/// A socket's JSON object with the time of its listing (a `--watch` row
/// says which refresh it belongs to).
#[derive(serde::Serialize)]
pub struct Timed<'t, 'a> {
    pub time: &'t str,
    #[serde(flatten)]
    pub view: SocketView<'a>,
}

/// `--columns local,foreign,state` (one value: clap would split a `Vec`).
#[derive(Debug, Clone)]
pub struct Columns(pub Vec<Column>);

pub fn parse_columns(s: &str) -> Result<Columns, String> {
    s.split(',')
        .map(|c| {
            Column::parse(c).ok_or_else(|| {
                let all: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
                format!("unknown column `{c}` (one of {})", all.join(", "))
            })
        })
        .collect::<Result<_, _>>()
        .map(Columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keepalive_user::{
        policy::{Policy, Rule},
        sockets::{compact::Compact, Effective, Keepalive, Socket, Timer, TimerKind, ValueSource},
        tcp::TcpState,
    };

    /// More rows than two blocks, with what varies between rows: keepalive
    /// on, off or unknown, probes, times, owners.
    fn sockets() -> Vec<Socket> {
        let setting = |value, source| Effective { value, source };
        (0..9000u64)
            .map(|i| {
                let timer = Timer {
                    kind: TimerKind::Keepalive,
                    // Jiffies at HZ 250, as the kernel's records give them.
                    remaining_s: (375 + i) as f64 / 250.0,
                    retransmits: 0,
                    probes: (i % 3) as u8,
                };
                let local = format!("10.0.{}.1:{}", i % 200, 1024 + i).parse().unwrap();
                let remote = "10.9.0.2:5432".parse().unwrap();
                let state = TcpState::Established;
                let mut s = Socket::bare(i, 7, local, remote, state, 100 + i, timer);
                s.pid = (i % 5 != 0).then_some(4242);
                s.comm = s.pid.map(|_| "psql".into());
                s.idle_s = Some(i as f64 * 0.25);
                s.cookie = Some(i + 1);
                s.keepalive = (i % 3 != 0).then_some(Keepalive {
                    enabled: i % 2 == 0,
                    idle_s: setting(7200, ValueSource::Sysctl),
                    interval_s: setting(30, ValueSource::Socket),
                    count: setting(9, ValueSource::Sysctl),
                    user_timeout_ms: (i % 7 == 0).then_some(20_000),
                });
                s
            })
            .collect()
    }

    /// The listing's `time` fields, blanked: each print takes its own.
    fn timeless(out: Vec<u8>) -> String {
        let text = String::from_utf8(out).unwrap();
        let mut rest = text.as_str();
        let mut kept = String::new();
        while let Some(at) = rest.find("{\"time\":\"") {
            let value = at + "{\"time\":\"".len();
            kept.push_str(&rest[..value]);
            let end = value + rest[value..].find('"').unwrap();
            rest = &rest[end..];
        }
        kept.push_str(rest);
        kept
    }

    #[test]
    fn compact_rows_print_the_bytes_their_sockets_do() {
        let mut policy = Policy::default();
        policy.rules.push(Rule::parse("10.9.0.0/16=350s").unwrap());
        let full = sockets();
        let compact: Vec<Compact> = full.iter().map(Compact::of).collect();
        let style = Style {
            layout: Layout::Fixed,
            color: false,
            names: NetnsNames::default(),
            frame: Frame {
                header: true,
                legend: true,
                summary: false,
            },
        };
        for (output, with_risk) in [
            (Output::Table, false),
            (Output::Table, true),
            (Output::Json, true),
        ] {
            let (mut a, mut b) = (vec![], vec![]);
            let refs: Vec<&Socket> = full.iter().collect();
            let view = |s| SocketView::new(s, None, &policy);
            print(&mut a, output, &refs, &view, with_risk, &style).unwrap();
            let rows: Vec<&Compact> = compact.iter().collect();
            let views = |part: &[&Compact], f: RowView<'_>| {
                for c in part {
                    f(&SocketView::new(&c.socket(), None, &policy));
                }
            };
            print_rows(&mut b, output, &rows, &views, with_risk, &style).unwrap();
            let (a, b) = (timeless(a), timeless(b));
            assert_eq!(a.matches("10.9.0.2:5432").count(), 9000, "{output:?}");
            if let Some(at) = a.bytes().zip(b.bytes()).position(|(x, y)| x != y) {
                let near = |t: &str| t[at.saturating_sub(150)..(at + 60).min(t.len())].to_owned();
                panic!("{output:?} differs: {:?}\nagainst {:?}", near(&a), near(&b));
            }
            assert_eq!(a.len(), b.len(), "{output:?}");
        }
    }
}
