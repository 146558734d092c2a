//! `kato sockets`: every TCP socket's keepalive state, like `netstat -tnop`.

use std::{io::Write, time::Duration};

use clap::{Args, ValueEnum};
use keepalive_user::{
    bpf::{Bpf, LoadOptions},
    filter::{Filter, SortKey},
    netns,
    policy::Risk,
    sockets::{
        snapshot::{Listing, Snapshotter, Targets},
        table::Counts,
        Socket,
    },
    tcp::TcpState,
};

use super::{
    listing::{ignore_broken_pipe, no_timeout, view_of},
    table::{print, Frame, Style},
    KernelArgs, Output, WorkloadArgs,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Where the socket list comes from.
#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum ListingArg {
    /// BPF iterators, or sock_diag if the kernel cannot load them.
    #[default]
    Auto,
    /// BPF iterators (iter/tcp, iter/task_file): everything, including keepalive settings.
    Iter,
    /// NETLINK_SOCK_DIAG, like ss: no keepalive settings; needs no eBPF.
    Diag,
}

#[derive(Debug, Args)]
pub struct SocketsArgs {
    /// Output format (json: one array of sockets; with --watch, one array
    /// per refresh). `-o` is ss's timers flag, not this.
    #[arg(long, short = 'O', value_enum, default_value_t)]
    pub output: Output,
    /// Same as --output json.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
    /// Only sockets in these TCP states (repeatable, or comma-separated),
    /// as ss names them: established (estab), syn-sent, syn-recv,
    /// fin-wait-1, fin-wait-2, time-wait, closed, close-wait, last-ack,
    /// listening, closing; or ss's groups: all, connected (all but
    /// listening and closed), synchronized (connected but syn-sent),
    /// bucket (syn-recv, time-wait), big (all but bucket).
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = super::parse_states)]
    pub state: Vec<super::States>,
    /// Only listening sockets (ss -l).
    #[arg(
        short = 'l',
        long = "listening",
        help_heading = "ss and netstat habits"
    )]
    pub listening: bool,
    /// Leave out the header line (ss -H).
    #[arg(
        short = 'H',
        long = "no-header",
        help_heading = "ss and netstat habits"
    )]
    pub no_header: bool,
    /// Accepted, like -n -a -p -o -e below: `kato sockets -tnoap` works as
    /// it does for ss and netstat (kato lists TCP only).
    #[arg(short = 't', long = "tcp", help_heading = "ss and netstat habits")]
    pub tcp: bool,
    /// Accepted: kato never resolves names.
    #[arg(short = 'n', long = "numeric", help_heading = "ss and netstat habits")]
    pub numeric: bool,
    /// Accepted: kato lists every state unless --state or -l says otherwise.
    #[arg(short = 'a', long = "all", help_heading = "ss and netstat habits")]
    pub all: bool,
    /// Accepted: kato always shows the owning process.
    #[arg(
        short = 'p',
        long = "processes",
        help_heading = "ss and netstat habits"
    )]
    pub processes: bool,
    /// Accepted: kato always shows the timers (ss -o).
    #[arg(short = 'o', long = "options", help_heading = "ss and netstat habits")]
    pub timers: bool,
    /// Accepted: the cookie and inode are in --json.
    #[arg(short = 'e', long = "extended", help_heading = "ss and netstat habits")]
    pub extended: bool,
    /// Print the column legend after the table even when stdout is not a
    /// terminal (on a terminal it is printed, to a pipe it is not; -H
    /// leaves it out either way).
    #[arg(long)]
    pub legend: bool,
    /// Every column, each as wide as its content, nothing cut (on a
    /// terminal the table fits its width; to a pipe it keeps netstat's
    /// fixed layout).
    #[arg(long, conflicts_with = "columns")]
    pub wide: bool,
    /// These columns, in this order (comma-separated): netns, proto,
    /// recv-q, send-q, local, foreign, state, process, timer, keepalive,
    /// idle, unans, ct, workload, risk.
    #[arg(long, value_name = "LIST", value_parser = super::table::parse_columns)]
    pub columns: Option<super::table::Columns>,
    /// Colour rows that need attention (red: probing a silent peer, or
    /// already forgotten by a middlebox; yellow: keepalive off or too slow
    /// for the path): auto (on a terminal, unless NO_COLOR is set),
    /// always, never.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t)]
    pub color: super::table::ColorWhen,
    #[command(flatten)]
    pub ends: super::EndsArgs,
    /// Only sockets held by this process (repeatable).
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only sockets held by a process with this command name (repeatable).
    #[arg(long, value_name = "COMM")]
    pub comm: Vec<String>,
    /// Only sockets with SO_KEEPALIVE on, or off.
    #[arg(long, value_enum, value_name = "on|off")]
    pub keepalive: Option<OnOff>,
    /// Network namespace to list (repeatable): an inode (`ls -l /proc/PID/ns/net`),
    /// an `ip netns` name, or a path. Default: kato's own, like netstat and ss.
    #[arg(long, value_name = "NETNS", conflicts_with = "all_netns")]
    pub netns: Vec<String>,
    /// List every network namespace on the host.
    #[arg(long)]
    pub all_netns: bool,
    /// Sort by: local, remote, state, pid, timer, idle (longest first), probes
    /// (most first), or none: the kernel's order, each socket printed as it
    /// is read and none held (a pipe or JSON; for 100,000s of sockets).
    #[arg(long, value_name = "KEY", default_value = "local")]
    pub sort: SortKey,
    /// The sort order reversed.
    #[arg(long)]
    pub reverse: bool,
    /// A middlebox idle timeout (repeatable): `350s` for every path, or
    /// `CIDR[:PORT]=DURATION` (`10.0.0.0/8:5432=350s`, `:443=4m`). Adds the
    /// Risk column: safe, at-risk (keepalive too slow), unprotected
    /// (keepalive off), unknown (no rule for the path).
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// Only connections in this idle-timeout risk class (repeatable):
    /// safe, at-risk, unprotected, unknown.
    #[arg(long, value_name = "CLASS", value_parser = parse_risk)]
    pub risk: Vec<Risk>,
    /// Where to read sockets from.
    #[arg(long, value_enum, default_value_t)]
    pub source: ListingArg,
    /// Refresh every SECS seconds (or a duration: 2s, 500ms), clearing the
    /// screen like `watch` on a terminal, until Ctrl-C.
    /// Keepalive events are traced meanwhile, so probes sent/answered are counted.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub watch: Option<Duration>,
    /// Do not assume the idle timeout of the cloud this host runs in (AWS
    /// 350 s, Azure 4 min, Google Cloud 10 min; from DMI).
    #[arg(long)]
    pub no_cloud_defaults: bool,
    /// Also print each socket's kernel address (`sock`), as `ss -e` did
    /// before cookies; root only.
    #[arg(long)]
    pub show_kernel_addresses: bool,
    /// Each socket's story, from the agent running on this host: its last
    /// events, the silences between them (`kato history` for one socket).
    #[arg(long, conflicts_with = "watch")]
    pub history: bool,
    /// With --history and no agent: trace for this long (2s, 1m, or
    /// seconds) and tell each listed socket's story from what was seen.
    #[arg(long = "for", value_name = "DURATION", requires = "history", value_parser = keepalive_user::duration::parse)]
    pub for_: Option<Duration>,
    /// The agent --history reads (plain HTTP; its --listen address).
    #[arg(long, value_name = "ADDR", default_value = keepalive_user::agent::config::DEFAULT_LISTEN)]
    pub agent: std::net::SocketAddr,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn parse_risk(s: &str) -> Result<Risk, String> {
    Risk::parse(s)
        .ok_or_else(|| format!("unknown risk class `{s}` (safe, at-risk, unprotected, unknown)"))
}

/// Seconds (`2`, `0.5`) or a duration (`2s`, `500ms`, `1m`), 0.1 s to a day.
fn parse_secs(s: &str) -> Result<Duration, String> {
    match keepalive_user::duration::parse(s) {
        Ok(d) if (Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&d) => Ok(d),
        _ => Err(format!(
            "`{s}` is not an interval from 0.1 s to a day (seconds, or 2s, 500ms, 1m)"
        )),
    }
}

/// The namespaces to list; `None` is kato's own (no namespace switch).
pub(super) fn targets(args: &SocketsArgs) -> anyhow::Result<Targets> {
    if args.all_netns {
        return Ok(netns::list().namespaces.into_iter().map(Some).collect());
    }
    if args.netns.is_empty() {
        return Ok(vec![None]);
    }
    args.netns
        .iter()
        .map(|s| Ok(Some(netns::resolve(s)?)))
        .collect()
}

/// The sockets the flags select.
pub(super) fn filter_of(args: &SocketsArgs) -> Filter {
    let mut states = super::states(&args.state);
    if args.listening {
        states.push(TcpState::Listen);
        states.sort_unstable();
        states.dedup();
    }
    let mut filter = Filter {
        states,
        pids: args.pid.clone(),
        comms: args.comm.clone(),
        keepalive: args.keepalive.map(|k| matches!(k, OnOff::On)),
        risks: args.risk.clone(),
        ..Filter::default()
    };
    args.ends.filter(&mut filter);
    args.workload.filter(&mut filter);
    filter
}

/// The namespaces a watch shows (None: every one, `--all-netns`, new ones
/// included): the table also learns of sockets from events, which come
/// from every namespace.
pub(super) fn watched(args: &SocketsArgs, targets: &Targets) -> anyhow::Result<Option<Vec<u32>>> {
    if args.all_netns {
        return Ok(None);
    }
    targets
        .iter()
        .map(|t| match t {
            Some(n) => Ok(n.inode),
            None => Ok(netns::current()?.inode),
        })
        .collect::<anyhow::Result<Vec<u32>>>()
        .map(Some)
}

/// Namespace names by inode, for the NETNS column.
pub(super) fn netns_names(targets: &Targets) -> keepalive_user::view::fit::NetnsNames {
    targets
        .iter()
        .flatten()
        .filter_map(|n| Some((n.inode, n.name.clone()?)))
        .collect()
}

pub async fn run(args: SocketsArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let output = if args.json { Output::Json } else { args.output };
    let tty = std::io::stdout().is_terminal();
    let frame = Frame {
        header: !args.no_header,
        legend: !args.no_header && (tty || args.legend),
        summary: !args.no_header,
    };
    let filter = filter_of(&args);
    let mut resolver = args.workload.resolver();
    let sort = args.sort;
    super::check_show_addresses(args.show_kernel_addresses)?;
    let show = args.show_kernel_addresses;
    let targets = targets(&args)?;
    let names = netns_names(&targets);
    let style = Style::choose(
        args.columns.clone().map(|c| c.0),
        args.wide,
        args.color,
        tty,
        targets.len() > 1,
        names,
        frame,
    );
    let mut policy = super::policy(
        super::agent::idle_timeout_flags(&args.idle_timeout)?,
        args.no_cloud_defaults,
    );
    let source = match args.source {
        ListingArg::Auto => Listing::Auto,
        ListingArg::Iter => Listing::Iter,
        ListingArg::Diag => Listing::Diag,
    };
    let watch = args.watch.is_some();
    // Without the privilege to load programs, what ss shows is still
    // there: sock_diag (no keepalive settings; owners only where /proc
    // lets this user see them).
    let source = match (source, keepalive_user::caps::require_tracing()) {
        (Listing::Auto, Err(why)) if !watch && args.for_.is_none() => {
            eprintln!("kato: {why}; listing with sock_diag instead (no keepalive settings; processes only where /proc shows them)");
            Listing::Diag
        }
        (s, _) => s,
    };
    // sock_diag alone needs no eBPF; --watch always traces.
    let traces = watch || args.for_.is_some();
    let mut bpf = if source == Listing::Diag && !traces {
        None
    } else {
        Some(Bpf::open(&LoadOptions {
            tracing: watch || args.for_.is_some(),
            iterators: source.iterators(),
            ..args.kernel.load_options()
        })?)
    };
    let snap = Snapshotter::new(source, bpf.as_ref());
    if let Some(why) = &snap.degraded {
        eprintln!("kato: {why}");
    }
    let stdout = std::io::stdout();
    let Some(period) = args.watch else {
        // Stories traced before the listing, so the listing is of after.
        let traced = match (args.for_, bpf.as_mut()) {
            (Some(d), Some(b)) => Some(super::stories::trace_for(b, d, &policy).await?),
            _ => None,
        };
        let ask = super::listing::Ask {
            output,
            style: &style,
            filter: &filter,
            sort,
            reverse: args.reverse,
            risk: !args.risk.is_empty(),
            show_addresses: show,
            history: args.history.then_some(args.agent),
            traced,
        };
        return match bpf.as_mut() {
            Some(b) if super::stream::streams(&ask) && snap.reads_iterators() => {
                super::stream::print(&ask, b, &targets, &mut resolver, &mut policy)
            }
            b => super::listing::once(ask, &snap, b, &targets, &mut resolver, &mut policy),
        };
    };

    // Watch: snapshots every period, keepalive events in between.
    let bpf = bpf.expect("--watch loads the programs");
    let only = watched(&args, &targets)?;
    let mut w = super::watch::Watch::new(bpf, snap, (targets, only), resolver, policy)?;
    let mut tick = tokio::time::interval(period);
    let stop = super::signals::shutdown()?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            r = w.wait() => {
                r?;
                w.apply(&mut super::watch::Nothing);
            }
            _ = tick.tick() => {
                w.census(&mut super::watch::Nothing)?;
                if !args.risk.is_empty() && w.policy.is_empty() {
                    return Err(no_timeout());
                }
                let with_risk = !w.policy.is_empty();
                let shown = w.rows(&filter, sort, args.reverse);
                let policy = &w.policy;
                let view = |r| { let (s, c): &(Socket, Counts) = r; view_of(s, Some(c), policy, show) };
                let mut out = std::io::BufWriter::new(stdout.lock());
                let r = (|| {
                    if output == Output::Table && style.frame.header {
                        // Drawn in place on a terminal; a pipe gets no escape codes.
                        if tty {
                            write!(out, "\x1b[H\x1b[2J")?;
                        }
                        writeln!(out, "Every {:.1}s: kato sockets ({} shown of {})  {}\n", period.as_secs_f64(), shown.len(), w.table.len(), keepalive_user::timefmt::rfc3339(jiff::Timestamp::now().as_nanosecond()))?;
                    }
                    let items: Vec<&(Socket, Counts)> = shown.iter().collect();
                    print(&mut out, output, &items, &view, with_risk, &style)?;
                    out.flush()
                })();
                if let Err(e) = r {
                    return ignore_broken_pipe(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_takes_seconds_and_durations() {
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_secs("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "10ms", "2d", "-1", "soon", "NaN"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }
}
