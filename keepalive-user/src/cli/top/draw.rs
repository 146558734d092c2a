//! `kato top`'s screen: a bar (clock, order, filter, the summary), the
//! sockets fitted to the width as `kato sockets` fits them, the last
//! events, and the keys.

use keepalive_user::view::{
    fit::{self, Attention, Column, NetnsNames},
    SocketView,
};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph},
    Frame,
};

use super::app::App;

/// What one screen shows, made by the caller from the table.
pub struct Screen<'a> {
    /// The rows passing every filter, in order.
    pub rows: &'a [SocketView<'a>],
    /// Sockets in the table.
    pub tracked: usize,
    pub summary: String,
    pub names: &'a NetnsNames,
    /// Whether a NETNS column is needed (several namespaces).
    pub several: bool,
    /// Whether any idle timeout is known (a Risk column).
    pub with_risk: bool,
    pub clock: String,
}

const KEYS: &str = "q quit  s/S sort  r reverse  p pause  / filter  c clear  ? help";

fn bar(app: &App, s: &Screen<'_>) -> Vec<Line<'static>> {
    let mut first = vec![
        Span::styled("kato top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {}  {} of {} sockets  by {}{}",
            s.clock,
            s.rows.len(),
            s.tracked,
            app.sort_name(),
            if app.reverse { " (reversed)" } else { "" }
        )),
    ];
    if !app.filter.is_empty() {
        first.push(Span::raw(format!("  filter \"{}\"", app.filter)));
    }
    if app.paused {
        first.push(Span::styled(
            "  PAUSED",
            Style::new().add_modifier(Modifier::REVERSED),
        ));
    }
    vec![Line::from(first), Line::from(s.summary.clone())]
}

fn table(area: Rect, s: &Screen<'_>) -> Vec<Line<'static>> {
    let fits = usize::from(area.height.saturating_sub(1));
    let rows = &s.rows[..s.rows.len().min(fits)];
    let cols: Vec<Column> = Column::ALL
        .into_iter()
        .filter(|c| (s.several || *c != Column::Netns) && (s.with_risk || *c != Column::Risk))
        .collect();
    let plan = fit::plan(rows, &cols, Some(usize::from(area.width)), false, s.names);
    let mut lines = vec![Line::styled(
        fit::header(&plan),
        Style::new().add_modifier(Modifier::REVERSED),
    )];
    for v in rows {
        let mut text = String::new();
        fit::row(&mut text, &plan, v, s.names, false);
        let style = match fit::attention(v) {
            Some(Attention::Now) => Style::new().fg(Color::Red),
            Some(Attention::Soon) => Style::new().fg(Color::Yellow),
            None => Style::new(),
        };
        lines.push(Line::styled(text, style));
    }
    lines
}

const HELP: &str = "kato top: the connections of the watched namespaces, refreshed every \
interval, with keepalive events as they happen below.\n\n\
Red: probing a peer that does not answer, or already forgotten by a middlebox. \
Yellow: a middlebox will forget it (keepalive off, or slower than the path's idle timeout).\n\n\
s / S   next / previous order (unanswered probes, idle, timer, addresses, state, pid)\n\
r       reverse the order\n\
p       pause the screen (events are still counted)\n\
/       filter rows by text (an address, a port, a command); Enter applies, Esc cancels\n\
c       clear the filter\n\
q       quit (also Esc, Ctrl-C)\n\n\
Columns are those of kato sockets, the least needed left out to fit; \
kato sockets --wide shows them all.";

pub fn draw(f: &mut Frame<'_>, app: &App, s: &Screen<'_>) {
    let area = f.area();
    // The events take a third, between 4 and 12 lines.
    let events_h = (area.height / 3).clamp(4, 12);
    let [top, middle, bottom, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(2),
        Constraint::Length(events_h),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(bar(app, s)), top);
    if app.help {
        f.render_widget(
            Paragraph::new(HELP).wrap(ratatui::widgets::Wrap { trim: false }),
            middle,
        );
    } else {
        f.render_widget(Paragraph::new(table(middle, s)), middle);
    }
    let inner = usize::from(events_h.saturating_sub(2));
    let skip = app.events.len().saturating_sub(inner);
    let events: Vec<Line<'_>> = app
        .events
        .iter()
        .skip(skip)
        .map(|e| Line::from(e.as_str()))
        .collect();
    let title = format!(" last events ({} seen) ", app.events_seen);
    f.render_widget(
        Paragraph::new(events).block(Block::bordered().title(title)),
        bottom,
    );
    let footer = match &app.editing {
        Some(text) => format!("filter: {text}_   Enter apply  Esc cancel"),
        None => KEYS.to_owned(),
    };
    f.render_widget(
        Paragraph::new(footer).style(Style::new().add_modifier(Modifier::DIM)),
        keys,
    );
}
