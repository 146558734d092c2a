//! The cost of observing: request/response throughput and latency with
//! nothing attached, with empty programs on kato's tracepoints (the floor),
//! with kato's agent, and with an equivalent bpftrace script (the peer);
//! per-program run time from `kernel.bpf_stats_enabled`; and how many
//! events per second the agent takes from 100k keepalive sockets.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::harness::{
    bpf_stats, cpu_ticks, events_lost, hold_with, http_get, metric, metric_sum, prog_stats,
    rss_kib, spawn_agent, spawn_agent_with, start, tcpext, Netns,
};

/// *kato* is the agent (no arming hooks); *trace* is `kato trace`, which
/// attaches every hook, so every program's filtered cost is measured.
const CONDITIONS: [&str; 5] = ["none", "floor", "kato", "trace", "bpftrace"];
const REPS: usize = 3;
/// (name, connections): a 2-connection ping-pong, and a 64-connection one
/// whose many sockets arm and re-arm many distinct kernel timers.
const LOADS: [(&str, usize); 2] = [
    ("request/response, 2 connections", 2),
    ("timer-heavy, 64 connections", 64),
];

fn rr(ns: &Netns, conns: usize, secs: f64) -> Result<(u64, u64, u64)> {
    let me = std::env::current_exe()?;
    let out = ns
        .cmd(me.to_str().context("path")?)
        .args([
            "rr",
            "--conns",
            &conns.to_string(),
            "--secs",
            &secs.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!("rr failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Ok((v[0], v[1], v[2]))
}

pub struct Cell {
    pub rts_per_s: f64,
    pub p99_us: u64,
}

pub struct Overhead {
    pub secs: f64,
    /// (load, condition) -> median of the repetitions.
    pub cells: BTreeMap<(usize, &'static str), Cell>,
    /// program -> (kato ns/run, runs) and floor the same, over every rr run.
    pub kato_cost: BTreeMap<String, (u64, u64)>,
    pub trace_cost: BTreeMap<String, (u64, u64)>,
    pub floor_cost: BTreeMap<String, (u64, u64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(kato: &str, secs: f64) -> Result<Overhead> {
    bpf_stats(true);
    let ns = Netns::new("rr")?;
    let mut samples: BTreeMap<(usize, &'static str), Vec<(f64, u64)>> = BTreeMap::new();
    let (mut kato_cost, mut trace_cost, mut floor_cost) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for rep in 0..REPS {
        for (li, (_, conns)) in LOADS.iter().enumerate() {
            // Rotate the order each repetition so drift spreads evenly.
            for k in 0..CONDITIONS.len() {
                let cond = CONDITIONS[(k + rep) % CONDITIONS.len()];
                eprintln!(
                    "xtask bench: rr {conns} conns, {cond}, repetition {}",
                    rep + 1
                );
                let child = start(cond, kato)?;
                let (rts, _p50, p99) = rr(&ns, *conns, secs)?;
                if let Some(c) = &child {
                    let into = match cond {
                        "kato" => Some(&mut kato_cost),
                        "trace" => Some(&mut trace_cost),
                        "floor" => Some(&mut floor_cost),
                        _ => None,
                    };
                    if let Some(into) = into {
                        for (name, (ns_, cnt)) in prog_stats(c.id()) {
                            let e = into.entry(name).or_insert((0u64, 0u64));
                            e.0 += ns_;
                            e.1 += cnt;
                        }
                    }
                }
                drop(child);
                samples
                    .entry((li, cond))
                    .or_default()
                    .push((rts as f64 / secs, p99));
            }
        }
    }
    let cells = samples
        .into_iter()
        .map(|(k, v)| {
            let rts = median(v.iter().map(|x| x.0).collect());
            let p99 = median(v.iter().map(|x| x.1 as f64).collect()) as u64;
            (
                k,
                Cell {
                    rts_per_s: rts,
                    p99_us: p99,
                },
            )
        })
        .collect();
    Ok(Overhead {
        secs,
        cells,
        kato_cost,
        trace_cost,
        floor_cost,
    })
}

pub struct Throughput {
    pub sockets: usize,
    pub secs: u64,
    /// One per agent of [`RINGS`], then [`ALL_ANSWERED`].
    pub runs: Vec<ThroughputRun>,
    /// The default agent again, a tenth of the peers dead.
    pub dead: crate::deadshare::DeadRun,
}

pub struct ThroughputRun {
    pub ring: &'static str,
    /// Keepalive probes the kernel sent in the namespace (TcpExt
    /// TCPKeepAlive) and kato counted, per second.
    pub kernel_probes_per_s: f64,
    pub kato_probes_per_s: f64,
    /// Probes the peer's kernel discarded unanswered (TcpExt PAWSOldAck,
    /// 6.15 on; None where the kernel has no such counter), per second.
    pub discarded_per_s: Option<f64>,
    /// Packets loopback dropped (`softnet_stat`, every CPU), per second.
    pub loopback_drops_per_s: f64,
    pub processed_per_s: f64,
    pub lost: f64,
    pub agent_cpu: f64,
    pub agent_rss_kib: u64,
    pub costs: BTreeMap<String, (u64, u64)>,
}

/// The agents the throughput run compares, in one run: the default (probes
/// decided in the kernel), and a record per probe, which a per-socket
/// label (`--label-by local_port`) asks for, with the default ring and a
/// larger one.
const RINGS: [(&str, &[&str]); 3] = [
    ("default: probes in the kernel, 4 MiB ring", &[]),
    (
        "--label-by local_port: a record per probe, 4 MiB ring",
        &["--label-by", "local_port"],
    ),
    (
        "--label-by local_port: a record per probe, 16 MiB ring",
        &["--label-by", "local_port", "--ring-size", "16MiB"],
    ),
];

/// `net.core.netdev_max_backlog` for the throughput run: 200,000 sockets'
/// probes and answers arrive on loopback in bursts, and the default 1,000
/// dropped enough of them that connections died of keepalive timeouts.
const BACKLOG: &str = "65536";

/// The default agent once more, on connections made without TCP
/// timestamps: with them (the default), both ends' probes cross, and the
/// receiver's PAWS check discards ~1% of them as old ACKs, unanswered
/// (TcpExt PAWSOldAck, kernels 6.15 on), which kato rightly records. The
/// target ("all answered") is measured here.
const ALL_ANSWERED: &str = "default, TCP timestamps off in the namespace: every probe answered";

pub fn throughput(kato: &str, sockets: usize, secs: u64) -> Result<Throughput> {
    eprintln!("xtask bench: {sockets} sockets with 1 s keepalive for {secs} s");
    // On, alone or in the full bench: the per-program cost of kept events
    // comes from this run.
    bpf_stats(true);
    let old_backlog = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog")?;
    std::fs::write("/proc/sys/net/core/netdev_max_backlog", BACKLOG)?;
    let runs = (|| -> Result<(Vec<ThroughputRun>, crate::deadshare::DeadRun)> {
        let ns = Netns::new("events")?;
        let holders = hold_with(&ns, sockets, &["--ka-secs", "1"])?;
        let mut runs = RINGS
            .iter()
            .map(|&(ring, extra)| throughput_run(kato, &ns, secs, ring, extra))
            .collect::<Result<Vec<_>>>()?;
        // Last: the rule kills connections for good.
        let dead = crate::deadshare::run(kato, &ns, secs)?;
        drop(holders);
        drop(ns);
        let ns = Netns::new("events-nots")?;
        crate::status(ns.cmd("sysctl").args(["-qw", "net.ipv4.tcp_timestamps=0"]))?;
        let holders = hold_with(&ns, sockets, &["--ka-secs", "1"])?;
        runs.push(throughput_run(kato, &ns, secs, ALL_ANSWERED, &[])?);
        drop(holders);
        Ok((runs, dead))
    })();
    std::fs::write("/proc/sys/net/core/netdev_max_backlog", old_backlog.trim())?;
    let (runs, dead) = runs?;
    Ok(Throughput {
        sockets,
        secs,
        runs,
        dead,
    })
}

fn throughput_run(
    kato: &str,
    ns: &Netns,
    secs: u64,
    ring: &'static str,
    extra: &[&str],
) -> Result<ThroughputRun> {
    eprintln!("xtask bench: event throughput, {ring}");
    let (agent, addr) = spawn_agent_with(kato, ns, "30s", extra)?;
    std::thread::sleep(Duration::from_secs(5));
    let scrape = || -> Result<(f64, f64, f64, u64)> {
        let (_, m) = http_get(&addr, "/metrics")?;
        let lost = events_lost(&m);
        Ok((
            metric(&m, "kato_events_processed_total"),
            lost,
            metric_sum(&m, "kato_keepalive_probes_sent_total"),
            tcpext(ns, "TCPKeepAlive")?,
        ))
    };
    let discarded = || tcpext(ns, "PAWSOldAck").ok();
    let stats0 = prog_stats(agent.id());
    let (d0, drops0) = (discarded(), loopback_drops()?);
    let (p0, l0, k0, t0k) = scrape()?;
    let c0 = cpu_ticks(agent.id())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (p1, l1, k1, t1k) = scrape()?;
    let (d1, drops1) = (discarded(), loopback_drops()?);
    let c1 = cpu_ticks(agent.id())?;
    let dt = t0.elapsed().as_secs_f64();
    let stats1 = prog_stats(agent.id());
    let rss = rss_kib(agent.id())?;
    let hz = 100.0; // USER_HZ for /proc/PID/stat
    let costs = stats1
        .into_iter()
        .map(|(k, (ns1, c1))| {
            let (ns0, c0) = stats0.get(&k).copied().unwrap_or((0, 0));
            (k, (ns1 - ns0, c1 - c0))
        })
        .collect();
    drop(agent);
    Ok(ThroughputRun {
        ring,
        kernel_probes_per_s: (t1k - t0k) as f64 / dt,
        kato_probes_per_s: (k1 - k0) / dt,
        discarded_per_s: d0.zip(d1).map(|(a, b)| (b - a) as f64 / dt),
        loopback_drops_per_s: (drops1 - drops0) as f64 / dt,
        processed_per_s: (p1 - p0) / dt,
        lost: l1 - l0,
        agent_cpu: (c1 - c0) as f64 / hz / dt,
        agent_rss_kib: rss,
        costs,
    })
}

/// Packets dropped on the way into every CPU's backlog (`softnet_stat`'s
/// second column): host-wide, which loopback is here.
fn loopback_drops() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/softnet_stat")?;
    text.lines()
        .map(|l| {
            let hex = l
                .split_whitespace()
                .nth(1)
                .context("short softnet_stat line")?;
            u64::from_str_radix(hex, 16).context("softnet_stat value")
        })
        .sum()
}

fn per_run(c: Option<&(u64, u64)>) -> Option<f64> {
    c.filter(|c| c.1 > 0).map(|c| c.0 as f64 / c.1 as f64)
}

pub fn report(o: &Overhead, t: &Throughput) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Overhead on the observed host\n");
    let _ = writeln!(
        s,
        "Loopback 64-byte ping-pong (`xtask rr`, TCP_NODELAY, one client and one server thread per connection) in a benchmark namespace, {} s per run, median of {REPS} runs per cell, conditions interleaved. \
         *floor*: empty programs on the same seven tracepoints (`kato bench-floor`); *kato*: `kato agent --netns self` (events consumed; no arming hooks: the agent reads timers from snapshots); *trace*: `kato trace --netns self` (every program, timer_start/cancel included); *bpftrace*: the same tracepoints with the same keepalive filter, counting. \
         Added cost = throughput lost against *none*; kato's target is at most 1.3× the floor's added cost and under 1% loss.\n",
        o.secs
    );
    let _ = writeln!(
        s,
        "| load | condition | round trips/s | vs none | p99 | added cost vs floor's |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: |");
    for (li, (name, _)) in LOADS.iter().enumerate() {
        let none = o
            .cells
            .get(&(li, "none"))
            .map(|c| c.rts_per_s)
            .unwrap_or(f64::NAN);
        let floor = o
            .cells
            .get(&(li, "floor"))
            .map(|c| c.rts_per_s)
            .unwrap_or(f64::NAN);
        for cond in CONDITIONS {
            let Some(c) = o.cells.get(&(li, cond)) else {
                continue;
            };
            let vs = c.rts_per_s / none;
            let added = if cond == "none" || cond == "floor" {
                "-".to_owned()
            } else if none - floor > 0.0 {
                format!("{:.2}×", (none - c.rts_per_s) / (none - floor))
            } else {
                "floor within noise".to_owned()
            };
            let _ = writeln!(
                s,
                "| {name} | {cond} | {:.0} | {:.3}× ({:+.2}%) | {} µs | {added} |",
                c.rts_per_s,
                vs,
                (vs - 1.0) * 100.0,
                c.p99_us
            );
        }
    }
    let _ = writeln!(s, "\n## Per-event cost in the kernel\n");
    let _ = writeln!(
        s,
        "`kernel.bpf_stats_enabled=1`: run time per invocation of each program, summed over every request/response run above (where every timer event is filtered out: none of those sockets has keepalive) and, in the last columns, over the event-throughput run below (where most timer runs are keepalive ones and emit a record). Targets: a filtered-out timer event at most 1.2× the empty program; a kept event with its ring-buffer record under 150 ns.\n"
    );
    let _ = writeln!(s, "| program | floor ns/run | agent ns/run (filtered) | ratio | trace ns/run (filtered) | ratio | runs | agent ns/run (keepalive load) | runs |");
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let names: std::collections::BTreeSet<&String> =
        o.kato_cost.keys().chain(o.trace_cost.keys()).collect();
    let show = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
    for name in names {
        let floor_name = format!("floor_{name}");
        let floor = o
            .floor_cost
            .iter()
            .find(|(n, _)| floor_name.starts_with(n.as_str()) || n.starts_with(&floor_name))
            .map(|(_, c)| c);
        let f = per_run(floor);
        let ratio = |k: Option<f64>| match (k, f) {
            (Some(k), Some(f)) => format!("{:.2}×", k / f),
            _ => "-".into(),
        };
        let (agent, trace) = (o.kato_cost.get(name), o.trace_cost.get(name));
        let (a, tr) = (per_run(agent), per_run(trace));
        let runs = agent.or(trace).map_or(0, |c| c.1);
        let tl = t.runs.first().and_then(|r| r.costs.get(name));
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {runs} | {} | {} |",
            show(f),
            agent.map_or("not attached".into(), |_| show(a)),
            ratio(a),
            show(tr),
            ratio(tr),
            show(per_run(tl)),
            tl.map_or(0, |c| c.1)
        );
    }
    s + &throughput_report(t)
}

/// The event-throughput section alone (`cargo xtask bench --events-only`).
pub fn throughput_report(t: &Throughput) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Event throughput\n");
    let _ = writeln!(
        s,
        "{} sockets ({} loopback connections, both ends with TCP_KEEPIDLE = TCP_KEEPINTVL = 1 s: their timers fire in bursts) held by holder processes, `kernel.bpf_stats_enabled=1` (the per-program figures of kept events come from this run), `net.core.netdev_max_backlog` raised to {BACKLOG} for the run (at the default 1,000 loopback dropped enough probes and answers that connections died of keepalive timeouts); `kato agent --netns <that namespace>` consuming, the agents below one after the other, each measured over {} s after 5 s of warm-up. Target: 0 lost at 100,000 records/s or more for 60 s.\n",
        t.sockets,
        t.sockets / 2,
        t.secs
    );
    let _ = writeln!(
        s,
        "Probes: TcpExt TCPKeepAlive in the namespace (the kernel's count) and `kato_keepalive_probes_sent_total` (kato's), each a delta over the same interval, read a moment apart. Discarded unanswered: TcpExt PAWSOldAck in the namespace. Both ends' timers fire in the same wheel slot, so their probes cross, and a probe that reaches the peer after a newer segment from the same end fails the peer's PAWS check: since 6.15 the kernel discards such an \"old ACK\" without a reply, so that probe stays unanswered and kato rightly records it (a record for the probe found unanswered, one for the answer after two). The last agent runs on connections made with `net.ipv4.tcp_timestamps=0` in a second namespace, where every probe is answered. Loopback drops: `softnet_stat`, every CPU. Targets, on the all-answered run with the default agent: at most 0.01 ring records per probe, 0 lost, agent at most 2% of a core.\n"
    );
    let _ = writeln!(
        s,
        "| agent | kernel probes/s | kato probes/s | probes discarded unanswered/s | loopback drops/s | records processed/s | records per probe | lost | agent CPU | agent CPU per 10k records/s | agent RSS |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &t.runs {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.4} | {:.0} | {:.1}% of a core | {} | {} KiB |",
            r.ring,
            r.kernel_probes_per_s,
            r.kato_probes_per_s,
            r.discarded_per_s.map_or("-".into(), |d| format!("{d:.0}")),
            r.loopback_drops_per_s,
            r.processed_per_s,
            r.processed_per_s / r.kernel_probes_per_s.max(1.0),
            r.lost,
            r.agent_cpu * 100.0,
            if r.processed_per_s >= 1.0 {
                format!("{:.2}%", r.agent_cpu * 100.0 / (r.processed_per_s / 10_000.0))
            } else {
                "-".to_owned()
            },
            r.agent_rss_kib
        );
    }
    s += &crate::deadshare::report(&t.dead);
    s
}

pub struct Churn {
    pub connections: usize,
    pub secs: f64,
    pub table_before: f64,
    pub table_after: f64,
    /// TCP sockets the kernel still holds in the namespace (`ss -tan`), read
    /// right after the table: the baseline the table must match.
    pub kernel_after: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub lost: f64,
    pub processed: f64,
}

/// The agent watches `total` connections opened and closed by 4 processes;
/// afterwards its table must be back where it started, with flat memory.
pub fn churn(kato: &str, total: usize) -> Result<Churn> {
    eprintln!("xtask bench: churning {total} connections");
    let ns = Netns::new("churn")?;
    let (agent, addr) = spawn_agent(kato, &ns, "2s")?;
    let read = || -> Result<(f64, f64, f64)> {
        let (_, m) = http_get(&addr, "/metrics")?;
        let lost = events_lost(&m);
        Ok((
            metric(&m, "kato_table_sockets"),
            lost,
            metric(&m, "kato_events_processed_total"),
        ))
    };
    std::thread::sleep(Duration::from_secs(3));
    let (table_before, lost0, p0) = read()?;
    let rss_before = rss_kib(agent.id())?;
    let me = std::env::current_exe()?;
    let me = me.to_str().context("path")?;
    let t = Instant::now();
    let procs: Vec<Child> = (0..4)
        .map(|_| {
            ns.cmd(me)
                .args(["churn", "--count", &(total / 4).to_string()])
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for mut p in procs {
        if !p.wait()?.success() {
            bail!("a churn process failed");
        }
    }
    let secs = t.elapsed().as_secs_f64();
    // Two snapshot intervals: whatever the events missed, a snapshot removes.
    std::thread::sleep(Duration::from_secs(5));
    let (table_after, lost1, p1) = read()?;
    let ss = ns.cmd("ss").args(["-tanH"]).output()?;
    let kernel_after = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let rss_after = rss_kib(agent.id())?;
    drop(agent);
    Ok(Churn {
        connections: total,
        secs,
        table_before,
        table_after,
        kernel_after,
        rss_before,
        rss_after,
        lost: lost1 - lost0,
        processed: p1 - p0,
    })
}

pub fn churn_report(c: &Churn) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## Churn soak\n");
    let _ = writeln!(
        s,
        "{} loopback connections opened and closed (client aborts with SO_LINGER 0, so no TIME_WAIT) by 4 processes in {:.1} s ({:.0}/s), watched by `kato agent --netns <that namespace> --snapshot-interval 2s`; table and RSS read 3 s before and 5 s after. The kernel can still hold a few server sockets then (FIN_WAIT2 after the server's FIN crossed the client's abort, 60 s `tcp_fin_timeout`): the table must equal what `ss -tan` lists in the namespace at that moment.\n",
        c.connections,
        c.secs,
        c.connections as f64 / c.secs
    );
    let _ = writeln!(s, "| table before | table after | kernel after (ss) | RSS before | RSS after | RSS after / before | records processed | lost |");
    let _ = writeln!(
        s,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        s,
        "| {:.0} | {:.0} | {} | {} KiB | {} KiB | {:.2}× | {:.0} | {:.0} |",
        c.table_before,
        c.table_after,
        c.kernel_after,
        c.rss_before,
        c.rss_after,
        c.rss_after as f64 / c.rss_before as f64,
        c.processed,
        c.lost
    );
    s
}
