//! `kato top`: a full-screen view of a host's connections, the ones
//! probing a silent peer first, refreshed every interval, with the last
//! keepalive events below and keys to sort, filter and pause. In a pipe it
//! is `kato sockets --watch` with the same selection.

mod app;
mod draw;

use std::{ops::ControlFlow, time::Duration};

use clap::{Args, Parser as _};
use keepalive_user::{
    bpf::{Bpf, LoadOptions},
    events::{Observation, Sink},
    policy::Policy,
    sockets::{
        snapshot::{Listing, Snapshotter},
        table::Counts,
        Socket,
    },
    timefmt::Clock,
    view::{trace::Formatter, SocketView},
};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use super::{sockets::SocketsArgs, watch::Watch, Cli, Command};
use app::{Action, App};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
sudo kato top                              this namespace, every 2 s\n  \
sudo kato top --all-netns --interval 5s    every namespace, every 5 s\n  \
sudo kato top --idle-timeout 350s          with the risk against a 350 s NAT\n  \
sudo kato top -- --port 5432               only what `kato sockets --port 5432` lists\n\n\
Keys: s/S order (unanswered probes, idle, timer, addresses, state, pid), r reverse, \
p pause, / filter by text, c clear, ? help, q quit.\n\
Rows in red probe a silent peer or were forgotten by a middlebox; yellow ones will be.\n\
After `--`, `kato sockets` filters (--port, --addr, --pid, --comm, --state, --risk, \
workloads) narrow the rows and the events; the order, columns and format are the keys'. \
In a pipe it prints `kato sockets --watch INTERVAL --sort probes --state connected` \
with the flags after `--`.")]
pub struct TopArgs {
    /// How often to refresh (2s, 500ms, or seconds).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub interval: String,
    /// Network namespace (name, path, self or inode; repeatable).
    #[arg(long, value_name = "NETNS")]
    pub netns: Vec<String>,
    /// Every network namespace on the host.
    #[arg(long, conflicts_with = "netns")]
    pub all_netns: bool,
    /// A middlebox idle timeout (repeatable), as for `kato sockets`.
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// More `kato sockets` flags.
    #[arg(last = true, value_name = "SOCKETS FLAGS")]
    pub more: Vec<String>,
}

/// The `kato sockets` arguments `kato top` stands for.
pub fn sockets_args(a: &TopArgs) -> Result<SocketsArgs, clap::Error> {
    let mut argv: Vec<String> = [
        "kato",
        "sockets",
        "--watch",
        &a.interval,
        "--sort",
        "probes",
    ]
    .map(str::to_owned)
    .into();
    argv.extend(["--state".into(), "connected".into()]);
    for n in &a.netns {
        argv.extend(["--netns".into(), n.clone()]);
    }
    if a.all_netns {
        argv.push("--all-netns".into());
    }
    for r in &a.idle_timeout {
        argv.extend(["--idle-timeout".into(), r.clone()]);
    }
    argv.extend(a.more.iter().cloned());
    match Cli::try_parse_from(argv)?.command {
        Command::Sockets(s) => Ok(s),
        _ => unreachable!("parsed as sockets"),
    }
}

/// What the key thread hands the screen.
enum Input {
    Key(event::KeyEvent),
    Resize,
}

/// Reads the terminal's keys on a thread of its own (crossterm's read
/// blocks), for as long as the process lives.
fn keys() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<Input>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("kato-top-keys".into())
        .spawn(move || loop {
            let input = match event::read() {
                Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => Input::Key(k),
                Ok(Event::Resize(..)) => Input::Resize,
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.send(input).is_err() {
                return;
            }
        })?;
    Ok(rx)
}

/// Collects each event as a line for the lower pane: the last
/// [`app::EVENTS`] while the screen is paused, the older ones counted.
struct Events<'a> {
    fmt: Formatter<'a>,
    lines: std::collections::VecDeque<String>,
    dropped: u64,
    /// What `kato sockets` flags after `--` select (ports, addresses...).
    filter: &'a keepalive_user::filter::Filter,
}

impl Sink for Events<'_> {
    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
        if !self.filter.matches_event(obs) {
            return ControlFlow::Continue(());
        }
        for &d in obs.events {
            // As `kato trace` without --closes.
            if !d.kind.is_lifecycle() {
                if self.lines.len() == app::EVENTS {
                    self.lines.pop_front();
                    self.dropped += 1;
                }
                self.lines
                    .push_back(app::event_line(&self.fmt.event(obs, d, None)));
            }
        }
        ControlFlow::Continue(())
    }
}

/// A row's text for `/`: its ends, state, process.
fn haystack(s: &Socket) -> String {
    format!(
        "{} {} {} {} {}",
        s.local,
        s.remote,
        s.state.name(),
        s.pid.map(|p| p.to_string()).unwrap_or_default(),
        s.comm.as_deref().unwrap_or("")
    )
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let s = match sockets_args(&args) {
        Ok(s) => s,
        Err(e) => e.exit(),
    };
    if !std::io::stdout().is_terminal() {
        return super::sockets::run(s).await;
    }
    let period = s.watch.unwrap_or(Duration::from_secs(2));
    let policy = super::policy(
        super::agent::idle_timeout_flags(&s.idle_timeout)?,
        s.no_cloud_defaults,
    );
    let targets = super::sockets::targets(&s)?;
    let names = super::sockets::netns_names(&targets);
    let several = targets.len() > 1;
    let filter = super::sockets::filter_of(&s);
    // Events of every state: a connection's end (CLOSE) is what matters most.
    let events_filter = keepalive_user::filter::Filter {
        states: vec![],
        ..filter.clone()
    };
    let only = super::sockets::watched(&s, &targets)?;
    let bpf = Bpf::open(&LoadOptions {
        tracing: true,
        iterators: Listing::Auto.iterators(),
        ..s.kernel.load_options()
    })?;
    let snap = Snapshotter::new(Listing::Auto, Some(&bpf));
    let mut w = Watch::new(bpf, snap, (targets, only), s.workload.resolver(), policy)?;
    let shown_policy: Policy = w.policy.clone();
    let mut events = Events {
        fmt: Formatter {
            clock: Clock::new(),
            policy: &shown_policy,
            turns: false,
            addresses: false,
        },
        lines: std::collections::VecDeque::new(),
        dropped: 0,
        filter: &events_filter,
    };
    w.census(&mut events)?;
    let input = keys()?;
    let stop = super::signals::shutdown()?;
    let mut term = ratatui::init();
    let r = screen(
        &mut term,
        &mut w,
        &mut events,
        input,
        stop,
        |w: &Watch| w.rows(&filter, keepalive_user::filter::SortKey::Local, false),
        &View {
            period,
            names: &names,
            several,
        },
    )
    .await;
    ratatui::restore();
    r
}

struct View<'a> {
    period: Duration,
    names: &'a keepalive_user::view::fit::NetnsNames,
    several: bool,
}

/// Draws and refreshes until a quit key or a signal.
async fn screen(
    term: &mut ratatui::DefaultTerminal,
    w: &mut Watch,
    events: &mut Events<'_>,
    mut input: tokio::sync::mpsc::UnboundedReceiver<Input>,
    stop: impl std::future::Future<Output = ()>,
    select: impl Fn(&Watch) -> Vec<(Socket, Counts)>,
    view: &View<'_>,
) -> anyhow::Result<()> {
    let mut app = App::new();
    let mut rows = select(w);
    let mut tick = tokio::time::interval(view.period);
    // Events redraw at most this often.
    let mut redraw = tokio::time::interval(Duration::from_millis(500));
    let mut dirty = true;
    tokio::pin!(stop);
    loop {
        if dirty {
            let mut order: Vec<&(Socket, Counts)> = rows.iter().collect();
            app.sort_key().sort(&mut order, |r| &r.0);
            if app.reverse {
                order.reverse();
            }
            let views: Vec<SocketView<'_>> = order
                .iter()
                .filter(|r| app.shows(&haystack(&r.0)))
                .map(|r| SocketView::new(&r.0, Some(&r.1), &w.policy))
                .collect();
            let screen = draw::Screen {
                rows: &views,
                tracked: w.table.len(),
                summary: keepalive_user::view::fit::summary(&views),
                names: view.names,
                several: view.several,
                with_risk: !w.policy.is_empty(),
                clock: keepalive_user::timefmt::rfc3339(jiff::Timestamp::now().as_nanosecond())
                    .get(11..19)
                    .unwrap_or_default()
                    .to_owned(),
            };
            term.draw(|f| draw::draw(f, &app, &screen))?;
            dirty = false;
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            k = input.recv() => match k {
                Some(Input::Key(k)) => match app.key(k) {
                    Action::Quit => return Ok(()),
                    Action::Redraw => dirty = true,
                    Action::Nothing => {}
                },
                Some(Input::Resize) => dirty = true,
                None => return Ok(()),
            },
            r = w.wait() => {
                r?;
                w.apply(events);
            }
            _ = tick.tick() => {
                w.census(events)?;
                if !app.paused {
                    rows = select(w);
                    dirty = true;
                }
            }
            _ = redraw.tick() => {
                // Events go to the pane unless paused (then they wait).
                if !app.paused && !events.lines.is_empty() {
                    app.events_seen += std::mem::take(&mut events.dropped);
                    for line in events.lines.drain(..) {
                        app.push_event(line);
                    }
                    dirty = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_is_a_watching_listing_of_connections_probing_first() {
        let Command::Top(t) =
            Cli::try_parse_from(["kato", "top", "--netns", "blue", "--", "--port", "5432"])
                .unwrap()
                .command
        else {
            panic!("not top")
        };
        let s = sockets_args(&t).unwrap();
        assert_eq!(s.watch, Some(Duration::from_secs(2)));
        assert_eq!(s.netns, ["blue"]);
        assert_eq!(s.ends.port, [5432]);
        assert_eq!(s.sort, keepalive_user::filter::SortKey::Probes);
        let bad = Cli::try_parse_from(["kato", "top", "--interval", "soon"]).unwrap();
        let Command::Top(t) = bad.command else {
            panic!()
        };
        assert!(sockets_args(&t).is_err());
    }
}
