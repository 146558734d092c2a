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
    print_rows(out, output, items, &|t, f| f(&view(t)), with_risk, style)
}

/// A row's view, handed to `f` (it may borrow what the row makes for it).
pub type RowView<'f> = &'f mut dyn FnMut(&SocketView<'_>);

/// [`print`] for rows that are made into sockets only to be printed (a
/// listing's compact rows): `row(item, f)` makes the item's view and hands
/// it to `f`, in the block that prints it. Not for the fitted layout
/// ([`Style::fits`]), which measures every row before it prints one.
pub fn print_rows<T: Copy + Sync>(
    out: &mut impl Write,
    output: Output,
    items: &[T],
    row: &(impl Fn(T, RowView<'_>) + Sync),
    with_risk: bool,
    style: &Style,
) -> std::io::Result<()> {
    let frame = style.frame;
    match output {
        Output::Json => {
            let rows = json::Rows::new(&listed_at());
            out.write_all(b"[")?;
            in_blocks(out, items, |part, at| {
                let mut text = Vec::with_capacity(part.len() * 1024);
                for (i, t) in part.iter().enumerate() {
                    row(*t, &mut |v| rows.push(&mut text, at + i == 0, v));
                }
                text
            })?;
            writeln!(out, "]")
        }
        Output::Table => {
            if frame.header {
                writeln!(out, "{}", render::header(with_risk))?;
            }
            in_blocks(out, items, |part, _| {
                let mut text = String::with_capacity(part.len() * 200);
                for t in part {
                    row(*t, &mut |v| render::write_row(&mut text, v, with_risk));
                    text.push('\n');
                }
                text.into_bytes()
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
    let fitted = |text: &str| match width {
        Some(w) => fit::wrap(text, *w),
        None => text.to_owned(),
    };
    if frame.summary {
        writeln!(out, "\n{}", fitted(&fit::summary(views)))?;
        if !plan.dropped.is_empty() {
            let names: Vec<&str> = plan.dropped.iter().map(|c| c.name()).collect();
            let note = format!(
                "(left out to fit: {}; --wide or --columns shows them)",
                names.join(", ")
            );
            writeln!(out, "{}", fitted(&note))?;
        }
    }
    if frame.legend {
        writeln!(out, "\n{}", fitted(render::FOOTNOTE))?;
    }
    Ok(())
}

/// Writes `render(block, offset)` for blocks of `items` in order, two
/// threads rendering alternate blocks; at most two blocks held at once.
fn in_blocks<T: Sync>(
    out: &mut impl Write,
    items: &[T],
    render: impl Fn(&[T], usize) -> Vec<u8> + Sync,
) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    for (n, pair) in items.chunks(2 * BLOCK).enumerate() {
        let (a, b) = pair.split_at(pair.len().min(BLOCK));
        let at = n * 2 * BLOCK;
        let (a, b) = std::thread::scope(|s| {
            let b = s.spawn(|| render(b, at + BLOCK));
            (render(a, at), b.join().expect("formatting rows panicked"))
        });
        out.write_all(&a)?;
        out.write_all(&b)?;
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
