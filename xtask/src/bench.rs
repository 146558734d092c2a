//! `cargo xtask bench`: kato's numbers next to the tools people use today,
//! measured in the same run on the same machine, written to
//! docs/benchmarks.md as ratios.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::harness::{
    agent_pss_kib, agent_rss_kib, hold_with, http_get, spawn_agent_with, Holders, Netns,
};

fn hold(ns: &Netns, sockets: usize) -> Result<Holders> {
    hold_with(ns, sockets, &["--keepalive"])
}

/// One run of a listing tool: wall time and peak RSS.
#[derive(Clone, Copy)]
pub struct Measured {
    pub wall: Duration,
    pub maxrss_kib: u64,
}

/// Runs `program args` once in `ns` (stdout discarded) under GNU time for
/// its peak RSS. Not wait4 from here: a child forked from this process
/// inherits its high-water RSS (the kernel keeps it across exec), and this
/// process holds the parsed JSON of 100,000s of sockets.
fn run_measured(ns: &Netns, program: &str, args: &[&str]) -> Result<Measured> {
    let out = std::env::temp_dir().join(format!("kato-bench-rss-{}", std::process::id()));
    let mut cmd = ns.cmd("/usr/bin/time");
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&out)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let st = cmd.status().with_context(|| format!("{cmd:?}"))?;
    let wall = start.elapsed();
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    let text = std::fs::read_to_string(&out)?;
    let maxrss_kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("GNU time wrote {text:?}"))?;
    Ok(Measured { wall, maxrss_kib })
}

/// The tools the listing is compared with, in the order they are run in
/// each round: (label, program, args).
pub const TOOLS: [(&str, &str, &[&str]); 7] = [
    ("kato sockets", "", &["sockets"]),
    ("kato sockets --json", "", &["sockets", "--output", "json"]),
    ("ss -tnoa", "ss", &["-tnoa"]),
    ("ss -tnoap", "ss", &["-tnoap"]),
    ("netstat -tnoa", "netstat", &["-tnoa"]),
    ("netstat -tnoap", "netstat", &["-tnoap"]),
    // Printed as read, in the kernel's order like ss: no row held.
    (
        "kato sockets --sort none",
        "",
        &["sockets", "--sort", "none"],
    ),
];

/// [`TOOLS`] indices the report's ratios use.
const KATO: usize = 0;
const JSON: usize = 1;
const SS: usize = 2;
const SSP: usize = 3;
const NETSTATP: usize = 5;
const UNSORTED: usize = 6;

/// Medians of each tool's runs, the tools interleaved round by round so
/// that machine noise falls on all of them alike.
fn measure_tools(ns: &Netns, kato: &str, rounds: usize) -> Result<Vec<Tool>> {
    let mut runs: Vec<Vec<Measured>> = vec![vec![]; TOOLS.len()];
    for _ in 0..rounds {
        for (i, (_, program, args)) in TOOLS.iter().enumerate() {
            let program = if program.is_empty() { kato } else { program };
            runs[i].push(run_measured(ns, program, args)?);
        }
    }
    Ok(runs
        .into_iter()
        .map(|mut r| {
            let n = r.len();
            r.sort_by_key(|m| m.wall);
            let wall = r[n / 2].wall;
            r.sort_by_key(|m| m.maxrss_kib);
            Tool {
                wall,
                maxrss_kib: r[n / 2].maxrss_kib,
            }
        })
        .collect())
}

/// A tool's median wall time and median peak RSS at one socket count.
#[derive(Clone, Copy)]
pub struct Tool {
    pub wall: Duration,
    pub maxrss_kib: u64,
}

fn count_json(ns: &Netns, kato: &str) -> Result<usize> {
    let out = ns
        .cmd(kato)
        .args(["sockets", "--output", "json"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("kato sockets JSON")?;
    Ok(v.as_array().map_or(0, Vec::len))
}

/// The agent watching one namespace: its RSS once the table is seeded, and
/// `/metrics` scrape latencies.
pub struct AgentRun {
    pub tracked: usize,
    pub rss_kib: u64,
    /// Shared pages counted once (see [`agent_pss_kib`]).
    pub pss_kib: u64,
    pub scrape_p50: Duration,
    pub scrape_p99: Duration,
    pub series: usize,
}

fn agent_run(kato: &str, ns: &Netns, scrapes: usize) -> Result<AgentRun> {
    // The default snapshot interval; stopped on every return below.
    let (agent, addr) = spawn_agent_with(kato, ns, "30s", &[])?;
    let (_, health) = http_get(&addr, "/healthz")?;
    let tracked = health
        .split("\"sockets\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next()?.parse().ok())
        .unwrap_or(0);
    let rss_kib = agent_rss_kib(agent.id())?;
    let pss_kib = agent_pss_kib(agent.id())?;
    let mut lat = Vec::with_capacity(scrapes);
    let mut series = 0;
    for _ in 0..scrapes {
        let t = Instant::now();
        let (status, body) = http_get(&addr, "/metrics")?;
        lat.push(t.elapsed());
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        series = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
    }
    lat.sort();
    Ok(AgentRun {
        tracked,
        rss_kib,
        pss_kib,
        scrape_p50: lat[lat.len() / 2],
        scrape_p99: lat[(lat.len() * 99).div_ceil(100) - 1],
        series,
    })
}

pub struct Row {
    pub sockets: usize,
    pub listed: usize,
    pub rounds: usize,
    /// In [`TOOLS`] order.
    pub tools: Vec<Tool>,
    pub agent: AgentRun,
}

const SCRAPES: usize = 50;

pub fn scale(kato: &str, sizes: &[usize]) -> Result<(Vec<Row>, AgentRun)> {
    let mut rows = vec![];
    let empty = Netns::new("empty")?;
    let baseline = agent_run(kato, &empty, SCRAPES)?;
    drop(empty);
    for &n in sizes {
        eprintln!("xtask bench: holding {n} sockets");
        let ns = Netns::new(&n.to_string())?;
        let holders = hold(&ns, n)?;
        let listed = count_json(&ns, kato)?;
        // A small host's few milliseconds need many rounds for a median.
        let rounds = if n >= 200_000 {
            1
        } else if n >= 50_000 {
            3
        } else if n >= 5_000 {
            5
        } else {
            21
        };
        let tools = measure_tools(&ns, kato, rounds)?;
        let agent = agent_run(kato, &ns, SCRAPES)?;
        rows.push(Row {
            sockets: n,
            listed,
            rounds,
            tools,
            agent,
        });
        drop(holders);
    }
    Ok((rows, baseline))
}

/// The agent at each size, `kato` against `other` (an earlier build),
/// interleaved `rounds` times: medians of RSS (every process of the agent)
/// and of `/metrics` p99.
pub fn agent_ab(kato: &str, other: &str, sizes: &[usize], rounds: usize) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| sockets | {other} RSS | this RSS | difference | {other} p99 | this p99 | p99 ratio |"
    );
    let _ = writeln!(s, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &n in sizes {
        eprintln!("xtask bench: holding {n} sockets");
        let ns = Netns::new(&format!("ab{n}"))?;
        let holders = hold(&ns, n)?;
        let (mut a, mut b) = (vec![], vec![]);
        for _ in 0..rounds {
            b.push(agent_run(other, &ns, SCRAPES)?);
            a.push(agent_run(kato, &ns, SCRAPES)?);
        }
        drop(holders);
        let med = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let rss = |runs: &[AgentRun]| med(&mut runs.iter().map(|r| r.rss_kib).collect());
        let p99 = |runs: &[AgentRun]| {
            med(&mut runs
                .iter()
                .map(|r| r.scrape_p99.as_micros() as u64)
                .collect())
        };
        let (ra, rb, pa, pb) = (rss(&a), rss(&b), p99(&a), p99(&b));
        let _ = writeln!(
            s,
            "| {n} | {rb} KiB | {ra} KiB | {:+} KiB | {:.1} ms | {:.1} ms | {:.2}× |",
            ra as i64 - rb as i64,
            pb as f64 / 1000.0,
            pa as f64 / 1000.0,
            pa as f64 / pb.max(1) as f64
        );
    }
    Ok(s)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn report(rows: &[Row], base: &AgentRun, command: &str) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "# kato benchmarks\n");
    let _ = writeln!(s, "Written by `{command}`; every figure below was measured in that one run. Before/after of each improvement: [benchmarks-history.md](benchmarks-history.md).\n");
    let _ = writeln!(
        s,
        "- date: {date}\n- kernel: {}\n- CPU: {cpu}, {} cores\n",
        kernel.trim(),
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "## Listing sockets: `kato sockets` vs `ss` and `netstat`\n"
    );
    let _ = writeln!(s, "Loopback connections held open by holder processes (at most 12,500 connections each, half the clients with SO_KEEPALIVE) in a benchmark network namespace; every tool runs there through `ip netns exec` with its output discarded. The tools run interleaved, one after another in each round; medians of the rounds (21 below 5k sockets, 5 below 50k, 3 below 200k, 1 above). kato's run includes loading its eBPF object (from the second run on, with the kernel facts the first kept in /run/kato/facts), both BPF iterators (sockets and owners: kato always names the process) and its output; `ss -tnoa` and `netstat -tnoa` print no owners, their `-p` forms do. `kato sockets --sort none` prints each socket as the socket iterator hands it over, in the kernel's order as `ss` does, holding no rows (the owners are read first, then the sockets, not side by side). Peak RSS from GNU time (the time includes its fork and exec, the same for every tool).\n");
    let cols: Vec<&str> = TOOLS.iter().map(|t| t.0).collect();
    let _ = writeln!(
        s,
        "| sockets | kato lists | rounds | {} | kato / ss -tnoa | kato / ss -tnoap | kato / netstat -tnoap | json / ss -tnoa | --sort none / ss -tnoa |",
        cols.join(" | ")
    );
    let _ = writeln!(s, "|{}", " ---: |".repeat(cols.len() + 8));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    for r in rows {
        let t = &r.tools;
        let walls: Vec<String> = t.iter().map(|x| ms(x.wall)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2}× | {:.3}× | {:.3}× | {:.2}× | {:.2}× |",
            r.sockets,
            r.listed,
            r.rounds,
            walls.join(" | "),
            ratio(t[KATO].wall, t[SS].wall),
            ratio(t[KATO].wall, t[SSP].wall),
            ratio(t[KATO].wall, t[NETSTATP].wall),
            ratio(t[JSON].wall, t[SS].wall),
            ratio(t[UNSORTED].wall, t[SS].wall),
        );
    }
    let _ = writeln!(s, "\nPeak RSS (median):\n");
    let _ = writeln!(
        s,
        "| sockets | {} | kato / ss -tnoa | json / ss -tnoa | --sort none / ss -tnoa |",
        cols.join(" | ")
    );
    let _ = writeln!(s, "|{}", " ---: |".repeat(cols.len() + 4));
    for r in rows {
        let t = &r.tools;
        let rss: Vec<String> = t
            .iter()
            .map(|x| format!("{:.1} MiB", x.maxrss_kib as f64 / 1024.0))
            .collect();
        let kib = |i: usize| t[i].maxrss_kib.max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {} | {:.2}× | {:.2}× | {:.2}× |",
            r.sockets,
            rss.join(" | "),
            kib(KATO) / kib(SS),
            kib(JSON) / kib(SS),
            kib(UNSORTED) / kib(SS),
        );
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
        if b.sockets > a.sockets {
            let per = |i: usize| {
                let grew = b.tools[i].maxrss_kib as f64 - a.tools[i].maxrss_kib as f64;
                format!(
                    "{}: {:.0} B",
                    TOOLS[i].0,
                    grew * 1024.0 / (b.sockets - a.sockets) as f64
                )
            };
            let each: Vec<String> = [KATO, JSON, UNSORTED, SS].into_iter().map(per).collect();
            let _ = writeln!(
                s,
                "\nPeak RSS per added socket, {} to {} sockets: {}.",
                a.sockets,
                b.sockets,
                each.join("; ")
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## The agent: memory per tracked socket, `/metrics` scrape time\n"
    );
    let _ = writeln!(s, "`kato agent --netns <bench namespace>` after its start-up snapshot; RSS from /proc, of its engine and its HTTP process added (pages they share, such as the binary's, counted twice); PSS counts each shared page once; {SCRAPES} sequential scrapes of `/metrics` over loopback. Baseline: the same agent watching an empty namespace.\n");
    let _ = writeln!(s, "| sockets tracked | RSS | PSS | bytes per socket above baseline | scrape p50 | scrape p99 | p99 / baseline p99 | series |");
    let _ = writeln!(
        s,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let line = |a: &AgentRun, per: String, ratio: String| {
        format!(
            "| {} | {} KiB | {} KiB | {per} | {} | {} | {ratio} | {} |",
            a.tracked,
            a.rss_kib,
            a.pss_kib,
            ms(a.scrape_p50),
            ms(a.scrape_p99),
            a.series
        )
    };
    let _ = writeln!(s, "{}", line(base, "(baseline)".into(), "1.00×".into()));
    for r in rows {
        let a = &r.agent;
        let per = (a.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64 / a.tracked.max(1) as f64;
        let ratio = a.scrape_p99.as_secs_f64() / base.scrape_p99.as_secs_f64();
        let _ = writeln!(
            s,
            "{}",
            line(a, format!("{per:.0} B"), format!("{ratio:.2}×"))
        );
    }
    s
}
