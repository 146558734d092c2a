//! `kato trace`: live keepalive and reset events.

use std::{
    io::{self, Write},
    ops::ControlFlow,
};

use anyhow::Context as _;
use clap::Args;
use keepalive_user::{
    bpf::{Bpf, Iterators, LoadOptions},
    events::{Kind, Observation, Pipeline, Record, ResetReasons, Sink},
    filter::Filter,
    owner::{Owner, OwnerCache},
    timefmt::Clock,
    view::trace::{table_line, Formatter, TABLE_HEADER},
};

use super::{KernelArgs, Output, WorkloadArgs};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
sudo kato trace                                   every keepalive and reset event, one line each\n  \
sudo kato trace --port 5432                       only connections to or from port 5432\n  \
sudo kato trace --event keepalive_timeout --event reset_sent    dead peers and resets only\n  \
sudo kato trace --netns blue --count 10 -o json   ten events of namespace blue, one JSON object per line\n  \
sudo kato trace --idle-timeout 10.0.0.0/8=350s    name idle kills against a NAT's 350 s timeout")]
pub struct TraceArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    /// Only sockets held by this process ID (repeatable).
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only sockets held by a process with this command name (repeatable).
    #[arg(long, value_name = "COMM")]
    pub comm: Vec<String>,
    #[command(flatten)]
    pub ends: super::EndsArgs,
    /// Only sockets in this network namespace (repeatable): an `ip netns`
    /// name, a path, `self`, or an inode (`ls -l /proc/PID/ns/net`).
    #[arg(long, value_name = "NETNS")]
    pub netns: Vec<String>,
    /// Also print fin_sent, fin_received and closed for every TCP connection
    /// that ends (busy hosts: many).
    #[arg(long)]
    pub closes: bool,
    /// Without --closes, the kernel records the end of a connection without
    /// keepalive only when it sat idle at least this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = keepalive_user::duration::parse)]
    pub idle_kill_min: std::time::Duration,
    /// Middlebox idle timeouts (repeatable; as for `kato sockets`): a reset
    /// after a silence longer than its path's, or a first send after one
    /// that never gets through, is idle_kill_suspected.
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// Count request/response turns per connection (shown on `closed` with
    /// --closes; costs a little on every socket syscall).
    #[arg(long)]
    pub http_keepalive: bool,
    /// Do not assume the idle timeout of the cloud this host runs in.
    #[arg(long)]
    pub no_cloud_defaults: bool,
    /// Also print each socket's kernel address (`sock`, JSON only); root only.
    #[arg(long)]
    pub show_kernel_addresses: bool,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Only events of this kind (repeatable): armed, fired, probe_sent,
    /// peer_answered, keepalive_timeout, disarmed, reset_sent,
    /// reset_received, stale_reuse, idle_kill_suspected, socket_error,
    /// fin_sent, fin_received, closed (the last three need --closes).
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub event: Vec<Kind>,
    /// Only events of sockets in these TCP states when the event happened
    /// (repeatable, or comma-separated; ss's names and groups, as for
    /// `kato sockets --state`): `--state established` leaves out what
    /// happens as connections close.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = super::parse_states)]
    pub state: Vec<super::States>,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::ALL
        .into_iter()
        .find(|k| k.name() == s.replace('-', "_"))
        .ok_or_else(|| {
            let all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown event `{s}` (one of {})", all.join(", "))
        })
}

/// Prints what the filter lets through, until `--count` or a closed pipe.
struct Printer<'a, W: Write> {
    out: W,
    output: Output,
    fmt: Formatter<'a>,
    filter: Filter,
    owners: OwnerCache,
    workloads: keepalive_user::workload::Resolver,
    closes: bool,
    /// `--event`: only these kinds (empty: all).
    kinds: Vec<Kind>,
    /// On a terminal: the columns that fit it (None: the fixed layout).
    fitted: Option<keepalive_user::view::trace_fit::Plan>,
    seen: u64,
    count: Option<u64>,
    /// A write failure other than a closed pipe.
    failed: Option<io::Error>,
}

impl<W: Write> Printer<'_, W> {
    fn write(
        &mut self,
        obs: &Observation<'_>,
        d: keepalive_user::events::Derived,
        workload: Option<std::sync::Arc<keepalive_user::workload::Workload>>,
    ) -> io::Result<()> {
        let ev = self.fmt.event(obs, d, workload);
        match self.output {
            Output::Table => match &self.fitted {
                Some(plan) => writeln!(self.out, "{}", plan.line(&ev)),
                None => writeln!(self.out, "{}", table_line(&ev)),
            },
            Output::Json => serde_json::to_writer(&mut self.out, &ev)
                .map_err(io::Error::from)
                .and_then(|()| writeln!(self.out)),
        }
    }
}

impl<W: Write> Sink for Printer<'_, W> {
    fn owner(&mut self, rec: &Record) -> Option<Owner> {
        self.owners.lookup(rec.ino)
    }

    fn path_timeout(&mut self, rec: &Record) -> Option<f64> {
        self.fmt
            .policy
            .lookup(rec.local, rec.remote)
            .map(|r| r.timeout.as_secs_f64())
    }

    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
        if !self.filter.matches_event(obs) {
            return ControlFlow::Continue(());
        }
        // From the socket's cgroup, cached per cgroup: no lookup per event.
        let workload = obs.record.cgroup_id.map(|id| self.workloads.resolve(id));
        if !self.filter.matches_workload(workload.as_deref()) {
            return ControlFlow::Continue(());
        }
        for &d in obs.events {
            if d.kind.is_lifecycle() && !self.closes {
                continue;
            }
            if !self.kinds.is_empty() && !self.kinds.contains(&d.kind) {
                continue;
            }
            if let Err(e) = self.write(obs, d, workload.clone()) {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    self.failed = Some(e);
                }
                return ControlFlow::Break(());
            }
            self.seen += 1;
            if self.count.is_some_and(|n| self.seen >= n) {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}

/// The terminal's width, when stdout is one.
fn fitted_width() -> Option<usize> {
    use std::io::IsTerminal as _;
    io::stdout()
        .is_terminal()
        .then(keepalive_user::view::fit::terminal_width)
        .flatten()
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let stop = super::signals::shutdown()?;
    super::check_show_addresses(args.show_kernel_addresses)?;
    let policy = super::policy(
        super::agent::idle_timeout_flags(&args.idle_timeout)?,
        args.no_cloud_defaults,
    );
    // Names, paths, `self` or inodes; one that does not exist is an error
    // now, not a trace that never prints.
    let netns = args
        .netns
        .iter()
        .map(|s| Ok(keepalive_user::netns::resolve(s)?.inode))
        .collect::<anyhow::Result<std::collections::HashSet<u32>>>()?;
    // --netns: the kernel drops other namespaces' events before the ring.
    let opts = LoadOptions {
        tracing: true,
        turns: args.http_keepalive,
        netns_filter: !args.netns.is_empty(),
        // Without --closes (or turns), FINs and closes of short, keepalive-less
        // connections would only be read and dropped: the kernel skips them.
        quiet: (!args.closes && !args.http_keepalive).then_some(args.idle_kill_min),
        ..args.kernel.load_options()
    };
    let mut bpf = Bpf::open(&LoadOptions {
        // One task walk at start: sockets that exist now are named in the
        // kernel, and so are their records after their owner lets go.
        iterators: Iterators::Try,
        ..opts.clone()
    })?;
    if opts.netns_filter {
        bpf.watch_netns(&netns)?;
    }
    let owners = match bpf.owners() {
        Ok(owners) => {
            bpf.seed_owners(&owners)?;
            owners
        }
        Err(e) => {
            log::info!("no task walk to name existing sockets' owners: {e}");
            vec![]
        }
    };
    let mut stream = bpf.events()?;
    let banner = format!(
        "kato trace: watching keepalive timers and resets on {} (via {}); Ctrl-C to stop",
        bpf.kernel.release,
        bpf.attach.as_ref().map_or("none", |a| a.kind.name())
    );
    // Broken at spaces to fit a terminal, never wrapped by it.
    match fitted_width() {
        Some(w) => eprintln!("{}", keepalive_user::view::fit::wrap(&banner, w)),
        None => eprintln!("{banner}"),
    }
    let mut pipeline = Pipeline::new(
        bpf.kernel.hz,
        ResetReasons(bpf.kernel.reset_reasons.clone()),
    );
    pipeline.know_listeners(&owners);
    let stdout = io::stdout();
    let mut printer = Printer {
        out: io::BufWriter::new(stdout.lock()),
        output: args.output,
        fmt: Formatter {
            clock: Clock::new(),
            policy: &policy,
            turns: args.http_keepalive,
            addresses: args.show_kernel_addresses,
        },
        filter: {
            let mut f = Filter {
                states: super::states(&args.state),
                pids: args.pid.clone(),
                comms: args.comm.clone(),
                netns: netns.iter().copied().collect(),
                ..Filter::default()
            };
            args.ends.filter(&mut f);
            args.workload.filter(&mut f);
            f
        },
        owners: OwnerCache::default(),
        workloads: args.workload.resolver(),
        closes: args.closes,
        kinds: args.event.clone(),
        fitted: fitted_width().map(keepalive_user::view::trace_fit::Plan::fit),
        seen: 0,
        count: args.count,
        failed: None,
    };
    if args.output == Output::Table {
        match &printer.fitted {
            Some(plan) => writeln!(printer.out, "{}", plan.header())?,
            None => writeln!(printer.out, "{TABLE_HEADER}")?,
        }
        printer.out.flush()?;
    }

    let mut batch = Vec::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            r = stream.next_batch(&mut batch) => r.context("reading the event ring buffer")?,
        }
        let mut flow = pipeline.feed(&mut batch, &mut printer);
        if flow.is_continue() {
            flow = pipeline.settle_now(&mut printer);
        }
        if let Some(e) = printer.failed.take() {
            return Err(e.into());
        }
        if flow.is_break() {
            break;
        }
        if let Err(e) = printer.out.flush() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
    }
    let _ = printer.out.flush();
    let c = bpf.counters();
    let lost = c.lost + c.shed + c.read_failed + pipeline.undecodable;
    let mut line = format!("kato trace: {} events seen, {lost} lost", printer.seen);
    if lost > 0 {
        line += &format!(
            " ({} ring buffer full, {} routine records shed to keep room for verdicts, {} unreadable kernel memory{}, {} undecodable)",
            c.lost,
            c.shed,
            c.read_failed,
            c.last_failed_offset
                .map(|o| format!(" (last at field offset {o})"))
                .unwrap_or_default(),
            pipeline.undecodable
        );
    }
    eprintln!("{line}");
    Ok(())
}
