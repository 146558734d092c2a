//! A short-connection web server, for real: Debian's nginx (one worker,
//! `return 200`) under wrk in a benchmark namespace, with `Connection: close`
//! (a connection per request, none with keepalive) and with HTTP keep-alive.
//! Conditions interleaved: nothing attached, `kato agent --netns <it>`, and
//! the agent recording every close (`--http-keepalive`, the pre-quiet
//! behaviour plus turn counting). Also: ring records per connection.

use std::{
    fmt::Write as _,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::harness::{bpf_stats, http_get, Netns, Running};

const REPS: usize = 7;
const PORT: u16 = 8080;

pub const CONDITIONS: [&str; 4] = ["none", "floor", "kato", "kato --http-keepalive"];
pub const MODES: [&str; 2] = ["Connection: close", "keep-alive"];

pub(crate) struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master, which stops its worker (SIGKILL would
        // orphan the worker, still serving and spinning).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first two CPUs this process may run on, where there are two: wrk
/// goes on the first, nginx's worker on the second. Unpinned, the scheduler
/// moving them made runs of one condition spread 23% (pinned: 5.5%; 8 runs
/// each, by hand).
fn pinned() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t is valid; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is the set's.
    if unsafe { libc::sched_getaffinity(0, size_of_val(&set), &raw mut set) } != 0 {
        return None;
    }
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| {
        // SAFETY: c is below CPU_SETSIZE.
        unsafe { libc::CPU_ISSET(c, &set) }
    });
    Some((cpus.next()?, cpus.next()?))
}

/// nginx's `worker_cpu_affinity` mask for one CPU: a binary string.
fn affinity_mask(cpu: usize) -> String {
    format!("1{}", "0".repeat(cpu))
}

pub(crate) fn nginx(ns: &Netns) -> Result<Nginx> {
    let dir = std::env::temp_dir().join(format!("kato-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\n{1}daemon off;\npid {0}/nginx.pid;\nerror_log {0}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{PORT} backlog=4096 reuseport; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            dir.display(),
            pinned().map_or(String::new(), |(_, n)| format!(
                "worker_cpu_affinity {};\n",
                affinity_mask(n)
            )),
        ),
    )?;
    let child = ns
        .cmd("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nginx (cargo xtask setup installs it)")?;
    // Up when a request answers.
    for _ in 0..100 {
        let ok = ns
            .cmd("wrk")
            .args(["-t1", "-c1", "-d1s", &format!("http://127.0.0.1:{PORT}/")])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Requests/sec"));
        if ok {
            return Ok(Nginx { child, dir });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nginx did not answer on port {PORT}")
}

/// wrk's (requests/s, requests) for one run.
pub(crate) fn wrk(ns: &Netns, close: bool, secs: u64) -> Result<(f64, u64)> {
    let mut cmd = if let Some((w, _)) = pinned() {
        let mut c = ns.cmd("taskset");
        c.args(["-c", &w.to_string(), "wrk"]);
        c
    } else {
        ns.cmd("wrk")
    };
    cmd.args(["-t1", "-c16", &format!("-d{secs}s")]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(format!("http://127.0.0.1:{PORT}/")).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split(" requests in")
                .next()
                .filter(|_| l.contains(" requests in"))
        })
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    Ok((rps, requests))
}

fn agent(kato: &str, ns: &Netns, all: bool) -> Result<(Running, String)> {
    let extra: &[&str] = if all { &["--http-keepalive"] } else { &[] };
    crate::harness::spawn_agent_with(kato, ns, "30s", extra)
}

fn metric(addr: &str, name: &str) -> Result<f64> {
    let (_, text) = http_get(addr, "/metrics")?;
    Ok(crate::harness::metric(&text, name))
}

pub struct Cell {
    pub rps: f64,
    /// Slowest and fastest run: how far apart runs of one condition land.
    pub spread: (f64, f64),
    /// Median over repetitions of this run's throughput over the same
    /// repetition's run with nothing attached (adjacent runs: drift over
    /// the whole bench cancels).
    pub paired: f64,
    /// The lowest and highest of those ratios: what one repetition can
    /// resolve.
    pub paired_range: (f64, f64),
    /// Ring records the agent processed per wrk request (= per connection
    /// with `Connection: close`).
    pub records_per_request: Option<f64>,
}

pub struct Web {
    pub secs: u64,
    /// (mode, condition) -> median over the repetitions.
    pub cells: Vec<((usize, usize), Cell)>,
}

/// One run: requests/s, and ring records per request where an agent ran.
type Sample = (f64, Option<f64>);

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(kato: &str, secs: u64) -> Result<Web> {
    // Statistics cost every program run two clock reads: not paid here.
    bpf_stats(false);
    let ns = Netns::new("web")?;
    let _nginx = nginx(&ns)?;
    let mut samples: std::collections::BTreeMap<(usize, usize), Vec<Sample>> = Default::default();
    for rep in 0..REPS {
        for (mi, mode) in MODES.iter().enumerate() {
            for k in 0..CONDITIONS.len() {
                let ci = (k + rep) % CONDITIONS.len();
                eprintln!(
                    "xtask bench: nginx + wrk, {mode}, {}, repetition {}",
                    CONDITIONS[ci],
                    rep + 1
                );
                let floor = (ci == 1)
                    .then(|| crate::harness::start("floor", kato))
                    .transpose()?
                    .flatten();
                let watcher = match ci {
                    0 | 1 => None,
                    _ => Some(agent(kato, &ns, ci == 3)?),
                };
                // Start-up (the first snapshot, loading) is not what a
                // running agent costs: every condition settles alike.
                std::thread::sleep(Duration::from_secs(1));
                let before = match &watcher {
                    Some((_, addr)) => metric(addr, "kato_events_processed_total")?,
                    None => 0.0,
                };
                let (rps, requests) = wrk(&ns, mi == 0, secs)?;
                let per = match &watcher {
                    Some((_, addr)) => {
                        // The reader drains at least every 100 ms.
                        std::thread::sleep(Duration::from_millis(300));
                        Some(
                            (metric(addr, "kato_events_processed_total")? - before)
                                / requests.max(1) as f64,
                        )
                    }
                    None => None,
                };
                drop(watcher);
                drop(floor);
                eprintln!("xtask bench:   {rps:.0} requests/s");
                samples.entry((mi, ci)).or_default().push((rps, per));
            }
        }
    }
    let cells = samples
        .iter()
        .map(|(&k, v)| {
            let none = &samples[&(k.0, 0)];
            let ratios: Vec<f64> = v.iter().zip(none).map(|(x, n)| x.0 / n.0).collect();
            let paired_range = (
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
            let paired = median(ratios);
            let rps = median(v.iter().map(|x| x.0).collect());
            let lo = v.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
            let hi = v.iter().map(|x| x.0).fold(0.0, f64::max);
            let per: Vec<f64> = v.iter().filter_map(|x| x.1).collect();
            (
                k,
                Cell {
                    rps,
                    spread: (lo, hi),
                    paired,
                    paired_range,
                    records_per_request: (!per.is_empty()).then(|| median(per)),
                },
            )
        })
        .collect();
    Ok(Web { secs, cells })
}

pub fn report(w: &Web) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## A short-connection web server: nginx + wrk\n\nDebian's nginx (one worker, `return 200`) and `wrk -t1 -c16 -d{}s` in a benchmark namespace{}, with `-H 'Connection: close'` (one connection per request; none has keepalive, none idles) and with HTTP keep-alive. Conditions interleaved, {REPS} repetitions, medians; *paired*: the median of each repetition's ratio to that repetition's *none* run (drift across the bench cancels), and the lowest and highest of those ratios. Every condition settles 1 s before wrk starts. *floor*: empty programs on all seven of kato's tracepoints (`kato bench-floor`: what attaching alone costs); *kato*: `kato agent --netns <it>` (quiet: the kernel makes no records of such connections, it counts them; no arming hooks, so five of the seven tracepoints); *kato --http-keepalive*: the agent recording every FIN and close and counting request/response turns on every send and receive. Target: under 1% throughput loss with the agent; at most 0.2 ring records per connection.\n",
        w.secs,
        if pinned().is_some() {
            " (nginx's worker pinned to one CPU, wrk to another)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| load | condition | requests/s | vs none | runs' spread | vs none, paired by repetition | paired, lowest to highest | ring records per request |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (mi, mode) in MODES.iter().enumerate() {
        let none = w
            .cells
            .iter()
            .find(|(k, _)| *k == (mi, 0))
            .map_or(1.0, |(_, c)| c.rps);
        for (ci, cond) in CONDITIONS.iter().enumerate() {
            let Some((_, c)) = w.cells.iter().find(|(k, _)| *k == (mi, ci)) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {mode} | {cond} | {:.0} | {:.3}× ({:+.2}%) | {:.0}–{:.0} | {:+.2}% | {:+.2}% to {:+.2}% | {} |",
                c.rps,
                c.rps / none,
                (c.rps / none - 1.0) * 100.0,
                c.spread.0,
                c.spread.1,
                (c.paired - 1.0) * 100.0,
                (c.paired_range.0 - 1.0) * 100.0,
                (c.paired_range.1 - 1.0) * 100.0,
                c.records_per_request
                    .map_or("-".into(), |r| format!("{r:.3}"))
            );
        }
    }
    s
}
