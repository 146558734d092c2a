//! `kato protect`: keep connections alive through middleboxes without
//! touching the application.

use std::{collections::HashSet, io::Write as _, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use keepalive_common::protect::{ProtectConf, MAX_RULES, MAX_SCOPE};
use keepalive_user::{
    agent::config::ConfigError,
    bpf::{Bpf, Iterators, LoadOptions},
    filter::Filter,
    netns::{self, NetnsRef},
    policy::Policy,
    protect::{self, plan::Planned, Change, Origin, Outcome},
    sockets::snapshot::{Listing, Snapshotter},
    timefmt::{self, Clock},
    workload::Resolver,
};
use serde_json::json;

use super::{KernelArgs, Output, WorkloadArgs};

#[derive(Debug, Args)]
#[command(
    about = "Keep connections alive through NATs, conntrack and load balancers without touching the application",
    long_about = "Switches keepalive on, or tightens it, on TCP connections whose path \
forgets idle flows sooner than their keepalive would probe: idle and interval become a \
third of the path's idle timeout (at least 1 s), so the first probe and its retry both \
land before the middlebox forgets. Never loosens: each value is the smaller of the \
socket's own and that. Both the connections open now (walked once at start, and again \
every --rescan) and every new one (a sock_ops program on the cgroup hierarchy, at \
connection establishment) in the network namespace it runs in (`ip netns exec NS kato \
protect`, or --netns).\n\n\
Idle timeouts: --idle-timeout rules, the config file's [idle_timeouts], this host's \
cloud default, and what kato finds by itself (conntrack's established timeout, IPVS \
services); a declared rule wins.\n\n\
Runs until SIGINT/SIGTERM; then every program is detached. Settings already applied \
stay on those sockets until they close. Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN \
for the cgroup attach). One line per change; --output json: one object per line."
)]
pub struct ProtectArgs {
    /// A middlebox idle timeout (repeatable): `350s` for every path, or
    /// `CIDR[:PORT]=DURATION` (`10.0.0.0/8:5432=350s`, `:443=4m`).
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// Read idle timeouts from the agent's config file ([idle_timeouts]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Do not assume the idle timeout of the cloud this host runs in.
    #[arg(long)]
    pub no_cloud_defaults: bool,
    /// The network namespace to protect connections in: an inode, an `ip
    /// netns` name or a path [default: kato's own].
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,
    /// Only connections with this local or remote port (repeatable, at most 8).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Only connections to this remote address (repeatable, at most 8).
    #[arg(long, value_name = "IP")]
    pub addr: Vec<IpAddr>,
    /// Only connections held by this process (repeatable). Existing
    /// connections only: a new one is matched when it is established, in
    /// the kernel, where its process is not known; scope new ones by
    /// --unit, --pod or --container.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only connections of processes of this name (repeatable; existing
    /// connections only, as --pid).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Change nothing: print what would be set.
    #[arg(long)]
    pub dry_run: bool,
    /// How often to walk the existing connections again (idle timeouts
    /// found since: conntrack, IPVS; workloads started since).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub rescan: Duration,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=86_400.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "`{s}` is not a number of seconds between 1 and 86400"
        )),
    }
}

fn usage(key: &str, message: impl Into<String>) -> anyhow::Error {
    ConfigError {
        origin: "command line".into(),
        key: key.into(),
        message: message.into(),
    }
    .into()
}

/// The kernel-side scope: namespace filter, ports, addresses.
fn kernel_conf(args: &ProtectArgs, hz: u32) -> ProtectConf {
    let mut c = ProtectConf {
        on: 1,
        netns_filter: 1,
        hz,
        dry_run: u32::from(args.dry_run),
        n_ports: args.port.len() as u32,
        n_addrs: args.addr.len() as u32,
        ..ProtectConf::default()
    };
    for (i, p) in args.port.iter().enumerate() {
        c.ports[i] = *p;
    }
    for (i, a) in args.addr.iter().enumerate() {
        c.addrs[i] = protect::rules::mapped(*a);
    }
    c
}

/// Prints changes as they come: lines or JSON objects.
struct Printer {
    output: Output,
    clock: Clock,
    shown: u64,
}

impl Printer {
    fn print(
        &mut self,
        c: &Change,
        policy: &Policy,
        owner: Option<(u32, &str)>,
        resolver: &mut Resolver,
    ) -> std::io::Result<()> {
        if c.outcome == Outcome::TightAlready {
            return Ok(());
        }
        self.shown += 1;
        let rule = policy
            .rule_for_flow(c.netns, c.local, c.remote, None)
            .filter(|r| r.source == c.source)
            .map_or_else(
                || format!("{}s", c.timeout.as_secs_f64()),
                |r| r.text.clone(),
            );
        let workload = c.cgroup_id.map(|id| resolver.resolve(id));
        let when = self.clock.unix_ns(c.ts_ns);
        let mut out = std::io::stdout().lock();
        match self.output {
            Output::Json => {
                let settings = |s: &protect::Settings, before: Option<&protect::Settings>| {
                    let src = |bit: u8, changed: bool| {
                        if changed {
                            "kato"
                        } else if s.own & bit != 0 {
                            "socket"
                        } else {
                            "sysctl"
                        }
                    };
                    json!({
                        "keepalive": s.keepalive,
                        "idle_s": s.idle_s,
                        "idle_source": src(1, before.is_some_and(|b| b.idle_s != s.idle_s)),
                        "interval_s": s.interval_s,
                        "interval_source": src(2, before.is_some_and(|b| b.interval_s != s.interval_s)),
                        "count": s.count,
                        "count_source": src(4, false),
                    })
                };
                let v = json!({
                    "time": timefmt::rfc3339(when),
                    "event": match c.outcome {
                        Outcome::Set => "keepalive_set",
                        Outcome::WouldSet => "keepalive_would_set",
                        Outcome::Failed => "keepalive_set_failed",
                        Outcome::TightAlready => "keepalive_tight_already",
                    },
                    "origin": c.origin,
                    "local": c.local.to_string(),
                    "remote": c.remote.to_string(),
                    "netns": c.netns,
                    "cookie": c.cookie,
                    "owner": owner.map(|(pid, comm)| json!({"pid": pid, "comm": comm})),
                    "workload": keepalive_user::workload::Named(workload.clone()),
                    "rule": {
                        "rule": rule,
                        "timeout_s": c.timeout.as_secs_f64(),
                        "source": c.source.name(),
                    },
                    "before": settings(&c.before, None),
                    "after": settings(&c.after, Some(&c.before)),
                    "errno": c.errno,
                });
                writeln!(out, "{v}")
            }
            Output::Table => {
                let what = match c.outcome {
                    Outcome::Set => "set",
                    Outcome::WouldSet => "would set",
                    Outcome::Failed => "FAILED",
                    Outcome::TightAlready => "tight",
                };
                let who = match (
                    owner,
                    workload
                        .as_deref()
                        .map(keepalive_user::workload::Workload::short),
                ) {
                    (Some((pid, comm)), _) => {
                        format!("pid {pid} {}", keepalive_user::text::printable(comm))
                    }
                    (None, Some(w)) if !w.is_empty() => w,
                    _ => "-".into(),
                };
                let err = c
                    .errno
                    .map(|e| format!(" ({})", std::io::Error::from_raw_os_error(e)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{} {:<9} {:<8} {} -> {}  keepalive {} -> {}{err}  path {} ({})  {who}",
                    timefmt::clock_time(when),
                    what,
                    match c.origin {
                        Origin::New => "new",
                        Origin::Existing => "existing",
                    },
                    c.local,
                    c.remote,
                    c.before,
                    c.after,
                    rule,
                    c.source.name(),
                )
            }
        }
    }
}

/// The policy: declared rules (flags, then the config file), and the
/// cloud default unless told not to.
fn policy(args: &ProtectArgs) -> anyhow::Result<Policy> {
    let mut rules = super::agent::idle_timeout_flags(&args.idle_timeout)?;
    if let Some(path) = &args.config {
        let file = keepalive_user::agent::config::Overrides::read(path)?;
        rules.extend(file.idle_timeouts.unwrap_or_default());
    }
    Ok(super::policy(rules, args.no_cloud_defaults))
}

pub async fn run(args: ProtectArgs) -> anyhow::Result<()> {
    if args.port.len() > MAX_SCOPE {
        return Err(usage("--port", format!("at most {MAX_SCOPE} ports")));
    }
    if args.addr.len() > MAX_SCOPE {
        return Err(usage("--addr", format!("at most {MAX_SCOPE} addresses")));
    }
    let mut policy = policy(&args)?;
    if policy.rules.len() > MAX_RULES as usize {
        return Err(usage(
            "--idle-timeout",
            format!(
                "{} rules declared; the kernel holds at most {MAX_RULES}",
                policy.rules.len()
            ),
        ));
    }
    let mut filter = Filter {
        ports: args.port.clone(),
        addrs: args
            .addr
            .iter()
            .map(|a| keepalive_user::policy::Cidr::host(*a))
            .collect(),
        pids: args.pid.clone(),
        comms: args.comm.clone(),
        ..Filter::default()
    };
    args.workload.filter(&mut filter);
    let ns: Option<NetnsRef> = args.netns.as_deref().map(netns::resolve).transpose()?;
    let inode = match &ns {
        Some(n) => n.inode,
        None => {
            netns::current()
                .context("this process's network namespace")?
                .inode
        }
    };
    let stop = super::signals::shutdown()?;
    tokio::pin!(stop);
    let mut bpf = Bpf::open(&LoadOptions {
        iterators: Iterators::Require,
        protect: true,
        ..args.kernel.load_options()
    })?;
    let root = protect::cgroup::root().map_err(anyhow::Error::msg)?;
    let mut resolver = args.workload.resolver();
    let scoped = !(filter.pods.is_empty()
        && filter.pod_namespaces.is_empty()
        && filter.containers.is_empty()
        && filter.units.is_empty());
    let cgroups = if scoped {
        let found = protect::cgroup::matching(&root, &filter, &mut resolver);
        if found.is_empty() {
            return Err(usage(
                "--unit/--pod/--container",
                format!("no cgroup under {} matches", root.display()),
            ));
        }
        found
    } else {
        vec![root]
    };
    // Attached first, on before the first walk: a connection established
    // in between is the program's.
    for cg in &cgroups {
        bpf.protect_attach(cg)?;
    }
    bpf.watch_netns(&HashSet::from([inode]))?;
    let pin = protect::pin::bpffs().map(|d| protect::pin::own(&d));
    let mut protector = bpf.protector(pin.as_ref().ok().map(PathBuf::as_path))?;
    if let Err(why) = pin
        .as_ref()
        .map(drop)
        .map_err(ToString::to_string)
        .and(protector.pinned.as_ref().map_err(ToString::to_string))
    {
        log::info!("not pinned: {why}");
    }
    let conf = kernel_conf(&args, bpf.kernel.hz);
    let (rules, ct) = protect::rules::compile_policy(&policy);
    protector.configure(&conf, &rules, &ct)?;
    let snapshotter = Snapshotter::new(Listing::Iter, Some(&bpf));
    let targets = vec![ns.clone()];
    let mut printer = Printer {
        output: args.output,
        clock: Clock::new(),
        shown: 0,
    };
    let mut done: HashSet<u64> = HashSet::new();
    let mut scan = tokio::time::interval(args.rescan);
    let mut drain = tokio::time::interval(Duration::from_millis(200));
    let mut first = true;
    eprintln!(
        "kato protect: {} in network namespace {inode} ({}{}); Ctrl-C stops (settings already made stay)",
        if args.dry_run { "dry run" } else { "protecting" },
        cgroups
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if args.dry_run { "; nothing is changed" } else { "" },
    );
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = drain.tick() => {
                for r in protector.drain() {
                    let c = Change::from_record(&r).context("a protect record")?;
                    if matches!(c.outcome, Outcome::Set | Outcome::WouldSet) {
                        done.insert(c.cookie);
                    }
                    printer.print(&c, &policy, None, &mut resolver)?;
                }
            }
            _ = scan.tick() => {
                let snaps = keepalive_user::census::take(
                    &snapshotter,
                    Some(&mut bpf),
                    &targets,
                    &mut resolver,
                    &mut policy,
                )?;
                if first && policy.is_empty() {
                    return Err(usage(
                        "--idle-timeout",
                        "no idle timeout to protect against: give --idle-timeout (no cloud default, conntrack or IPVS timeout applies here)",
                    ));
                }
                first = false;
                // Timeouts found by the census (conntrack, IPVS) for new ones too.
                let (rules, ct) = protect::rules::compile_policy(&policy);
                protector.configure(&conf, &rules, &ct)?;
                let sockets = snaps.iter().flat_map(|n| &n.sockets);
                let planned: Vec<Planned<'_>> =
                    protect::plan::plan(sockets, &policy, &filter, args.dry_run, &done);
                if planned.is_empty() {
                    continue;
                }
                let plan: Vec<_> = planned.iter().map(|p| (p.cookie, p.plan)).collect();
                let records = bpf.protect_existing(&mut protector, ns.as_ref(), &plan)?;
                for r in records {
                    let c = Change::from_record(&r).context("a protect record")?;
                    let owner = planned
                        .iter()
                        .find(|p| p.cookie == c.cookie)
                        .and_then(|p| Some((p.socket.pid?, p.socket.comm.as_deref().unwrap_or("?"))));
                    if c.outcome != Outcome::Failed {
                        done.insert(c.cookie);
                    }
                    printer.print(&c, &policy, owner, &mut resolver)?;
                }
            }
        }
    }
    if let Ok(p) = &pin {
        let _ = std::fs::remove_file(p);
    }
    drop(bpf);
    eprintln!(
        "kato protect: stopped, every program detached; {} connection{} {} (their settings stay)",
        printer.shown,
        if printer.shown == 1 { "" } else { "s" },
        if args.dry_run {
            "would have been protected"
        } else {
            "protected"
        }
    );
    Ok(())
}
