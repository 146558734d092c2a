//! `kato top`'s state and keys, apart from the terminal: what is sorted,
//! filtered, paused, and the last events.

use std::collections::VecDeque;

use keepalive_user::{filter::SortKey, view::trace::TraceLine};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Events kept for the lower pane.
pub const EVENTS: usize = 200;

/// The orders `s` steps through: what needs attention first.
pub const SORTS: [(SortKey, &str); 7] = [
    (SortKey::Probes, "unanswered probes"),
    (SortKey::Idle, "idle"),
    (SortKey::Timer, "timer"),
    (SortKey::Remote, "foreign address"),
    (SortKey::Local, "local address"),
    (SortKey::State, "state"),
    (SortKey::Pid, "pid"),
];

#[derive(Debug)]
pub struct App {
    /// An index into [`SORTS`].
    pub sort: usize,
    pub reverse: bool,
    pub paused: bool,
    /// Rows shown contain this text (empty: all).
    pub filter: String,
    /// The filter being typed after `/`.
    pub editing: Option<String>,
    pub help: bool,
    /// The last events, newest last.
    pub events: VecDeque<String>,
    pub events_seen: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// The view changed: draw again.
    Redraw,
    Nothing,
}

impl App {
    pub fn new() -> Self {
        App {
            sort: 0,
            reverse: false,
            paused: false,
            filter: String::new(),
            editing: None,
            help: false,
            events: VecDeque::with_capacity(EVENTS),
            events_seen: 0,
        }
    }

    pub fn sort_key(&self) -> SortKey {
        SORTS[self.sort].0
    }

    pub fn sort_name(&self) -> &'static str {
        SORTS[self.sort].1
    }

    pub fn push_event(&mut self, line: String) {
        if self.events.len() == EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(line);
        self.events_seen += 1;
    }

    /// Whether a row's text passes the filter (case-insensitive).
    pub fn shows(&self, row: &str) -> bool {
        self.filter.is_empty() || row.to_lowercase().contains(&self.filter.to_lowercase())
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && k.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(text) = &mut self.editing {
            match k.code {
                KeyCode::Enter => {
                    self.filter = std::mem::take(text).trim().to_owned();
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !ctrl && text.chars().count() < 64 => text.push(c),
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('s') | KeyCode::Right => self.sort = (self.sort + 1) % SORTS.len(),
            KeyCode::Char('S') | KeyCode::Left => {
                self.sort = (self.sort + SORTS.len() - 1) % SORTS.len();
            }
            KeyCode::Char('r') => self.reverse = !self.reverse,
            KeyCode::Char('p' | ' ') => self.paused = !self.paused,
            KeyCode::Char('/') => self.editing = Some(String::new()),
            KeyCode::Char('c') => self.filter.clear(),
            KeyCode::Char('?' | 'h') => self.help = !self.help,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }
}

/// One event as a line of the lower pane: time of day, kind, ends, and
/// what explains it (the reset's reason, the error, the probes).
pub fn event_line(ev: &TraceLine) -> String {
    // RFC 3339: HH:MM:SS sits at 11..19.
    let clock = ev.time.get(11..19).unwrap_or("--:--:--");
    let mut line = format!(
        "{clock} {:<19} {} > {}",
        ev.event.name(),
        ev.local,
        ev.remote
    );
    if let Some(r) = &ev.reset_reason {
        line += &format!("  {r}");
    }
    if let Some(e) = &ev.error {
        line += &format!("  {e}");
    }
    if ev.probes > 0 {
        line += &format!("  probes {}", ev.probes);
    }
    if let (Some(pid), Some(comm)) = (ev.pid, &ev.comm) {
        line += &format!("  {pid}/{comm}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(app: &mut App, keys: &str) -> Action {
        let mut last = Action::Nothing;
        for c in keys.chars() {
            let code = match c {
                '\n' => KeyCode::Enter,
                '\x1b' => KeyCode::Esc,
                '\x08' => KeyCode::Backspace,
                c => KeyCode::Char(c),
            };
            last = app.key(KeyEvent::new(code, KeyModifiers::NONE));
        }
        last
    }

    #[test]
    fn keys_sort_pause_filter_and_quit() {
        let mut app = App::new();
        assert_eq!(app.sort_key(), SortKey::Probes);
        press(&mut app, "s");
        assert_eq!(app.sort_key(), SortKey::Idle);
        press(&mut app, "S");
        press(&mut app, "S");
        assert_eq!(app.sort_key(), SortKey::Pid, "S goes back, around");
        press(&mut app, "r p");
        assert!(app.reverse && !app.paused, "p then space: paused twice");
        // Typed, edited, applied; q inside the filter is text.
        press(&mut app, "/5432q\x08\n");
        assert_eq!(app.filter, "5432");
        assert!(app.shows("127.0.0.1:5432 ESTABLISHED") && !app.shows("10.0.0.1:80"));
        press(&mut app, "/xyz\x1b");
        assert_eq!(app.filter, "5432", "Esc cancels the edit");
        press(&mut app, "c");
        assert!(app.shows("anything"));
        assert_eq!(press(&mut app, "x"), Action::Nothing);
        assert_eq!(press(&mut app, "q"), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(App::new().key(ctrl_c), Action::Quit);
    }

    #[test]
    fn the_event_pane_keeps_the_last_events() {
        let mut app = App::new();
        for i in 0..EVENTS + 5 {
            app.push_event(i.to_string());
        }
        assert_eq!(app.events.len(), EVENTS);
        assert_eq!(app.events.front().map(String::as_str), Some("5"));
        assert_eq!(app.events_seen, (EVENTS + 5) as u64);
    }
}
