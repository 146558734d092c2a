//! `kato trace`: live keepalive and reset events.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use anyhow::Context as _;
use clap::Args;
use keepalive_user::{
    event::{Derived, Deriver},
    filter::Filter,
    format::{table_line, Formatter, TABLE_HEADER},
    loader::{LoadOptions, Probes},
    owner::OwnerCache,
    timefmt::Clock,
};
use log::debug;

use super::{KernelArgs, Output};

#[derive(Debug, Args)]
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
    /// Only connections with this local or remote port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Only connections with this local or remote IP address (repeatable).
    #[arg(long, value_name = "IP")]
    pub addr: Vec<IpAddr>,
    /// Only sockets in the network namespace with this inode (see `ls -l /proc/PID/ns/net`).
    #[arg(long, value_name = "INODE")]
    pub netns: Vec<u32>,
    /// Also print fin_sent, fin_received and closed for every TCP connection
    /// that ends (busy hosts: many).
    #[arg(long)]
    pub closes: bool,
    /// Report resets and keepalive timeouts after at least this much idle
    /// time as idle_kill_suspected (a NAT or load balancer forgot the flow).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = keepalive_user::duration::parse)]
    pub idle_kill_min: std::time::Duration,
    /// Middlebox idle timeouts (repeatable; as for `kato sockets`), named on
    /// idle_kill_suspected events.
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// Count request/response turns per connection (shown on `closed` with
    /// --closes; costs a little on every socket syscall).
    #[arg(long)]
    pub http_keepalive: bool,
    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let stop = super::signals::shutdown()?;
    let policy = keepalive_user::policy::Policy {
        rules: super::agent::idle_timeout_flags(&args.idle_timeout)?,
    };
    // --netns: the kernel drops other namespaces' events before the ring.
    let opts = LoadOptions {
        netns_filter: !args.netns.is_empty(),
        ..args.kernel.load_options(true)
    };
    let mut probes = Probes::load(&opts)?;
    if opts.netns_filter {
        probes.watch_netns(&args.netns.iter().copied().collect())?;
    }
    if args.http_keepalive {
        probes.attach_turns()?;
    }
    let mut stream = probes.events()?;
    eprintln!(
        "kato trace: watching keepalive timers and resets on {} (via {}); Ctrl-C to stop",
        probes.kernel.release,
        probes.attach.as_ref().map_or("none", |a| a.kind)
    );
    let filter = Filter {
        pids: args.pid.clone(),
        comms: args.comm.clone(),
        ports: args.port.clone(),
        addrs: args.addr.clone(),
        netns: args.netns.clone(),
    };
    let fmt = Formatter {
        clock: Clock::new(),
        hz: probes.kernel.hz,
        reasons: &probes.kernel.reset_reasons,
        policy: &policy,
        turns: args.http_keepalive,
    };
    let mut deriver = Deriver::with_idle_kill(probes.kernel.hz, args.idle_kill_min.as_secs_f64());
    let mut owners = OwnerCache::default();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if args.output == Output::Table {
        writeln!(out, "{TABLE_HEADER}")?;
        out.flush()?;
    }

    let (mut seen, mut undecodable) = (0u64, 0u64);
    let mut batch = Vec::new();
    let mut derived: Vec<Derived> = Vec::new();
    tokio::pin!(stop);
    'outer: loop {
        tokio::select! {
            _ = &mut stop => break,
            r = stream.next_batch(&mut batch) => r.context("reading the event ring buffer")?,
        }
        for rec in batch.drain(..) {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    undecodable += 1;
                    debug!("undecodable event: {e}");
                    continue;
                }
            };
            derived.clear();
            deriver.derive(&rec, &mut derived);
            let owner = owners.lookup(rec.ino);
            if !filter.matches(&rec, owner.as_ref()) {
                continue;
            }
            for d in &derived {
                if d.kind.is_lifecycle() && !args.closes {
                    continue;
                }
                let ev = fmt.event(&rec, *d, owner.as_ref());
                let written = match args.output {
                    Output::Table => writeln!(out, "{}", table_line(&ev)),
                    Output::Json => serde_json::to_writer(&mut out, &ev)
                        .map_err(io::Error::from)
                        .and_then(|()| writeln!(out)),
                };
                if let Err(e) = written {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        break 'outer;
                    }
                    return Err(e.into());
                }
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    break 'outer;
                }
            }
        }
        if let Err(e) = out.flush() {
            if e.kind() == io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
    }
    let _ = out.flush();
    let c = probes.counters()?;
    let lost = c.lost + c.read_failed + undecodable;
    let mut line = format!("kato trace: {seen} events seen, {lost} lost");
    if lost > 0 {
        line += &format!(
            " ({} ring buffer full, {} unreadable kernel memory{}, {} undecodable)",
            c.lost,
            c.read_failed,
            c.last_failed_offset
                .map(|o| format!(" (last at field offset {o})"))
                .unwrap_or_default(),
            undecodable
        );
    }
    eprintln!("{line}");
    Ok(())
}
