//! What each of kato's hooks costs when it has nothing to record: every
//! program's run time (`kernel.bpf_stats_enabled`) under loads made of the
//! invocations kato filters out, against the empty program on the same
//! tracepoint (`kato bench-floor`), the two conditions alternated.
//! `xtask trickle` makes the first load: timers of other kinds.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::harness::{hold_with, prog_stats, start_in, Netns};

/// `xtask trickle`: `conns` loopback connections, each carrying one byte
/// every `every_ms` one way only, for `secs`. The receiver has nothing to
/// send back, so each byte's ACK waits on its delayed-ACK timer, which
/// expires (TCP's minimum ATO is 40 ms): `conns * 1000 / every_ms` timer
/// runs a second that are not keepalive timers.
pub fn trickle(conns: usize, every_ms: u64, secs: f64) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    // SAFETY: listen(2) on a socket we own (std's backlog is 128).
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    let addr = l.local_addr()?;
    let accepted = std::thread::spawn(move || -> Result<Vec<TcpStream>> {
        (0..conns).map(|_| Ok(l.accept()?.0)).collect()
    });
    let mut out: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(addr))
        .collect::<std::io::Result<_>>()?;
    // Held unread: the kernel ACKs whether or not the receiver reads.
    let _held = accepted.join().expect("accept thread")?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let every = Duration::from_millis(every_ms);
    let mut next = Instant::now();
    while Instant::now() < end {
        for s in &mut out {
            s.write_all(b"x")?;
        }
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// A load of invocations kato filters out.
#[derive(Clone, Copy)]
enum Load {
    /// Delayed-ACK timers (`xtask trickle`) in the watched namespace.
    OtherTimers,
    /// Keepalive timers (1 s) of sockets in a namespace the agent does not watch.
    UnwatchedKeepalive,
    /// Short connections without keepalive in the watched namespace: quiet closes.
    QuietCloses,
    /// Short connections in a namespace the agent does not watch.
    UnwatchedCloses,
}

/// Each load, what it is, and the programs whose invocations it filters
/// out (a short connection's aborting reset is a record in a watched
/// namespace: kept, so not shown there).
const LOADS: [(Load, &str, &[&str]); 4] = [
    (
        Load::OtherTimers,
        "other timers: 400 connections trickling one byte per 50 ms (delayed-ACK timers), watched namespace",
        &["timer_expire_entry", "timer_expire_exit"],
    ),
    (
        Load::UnwatchedKeepalive,
        "keepalive timers of an unwatched namespace: 8,000 sockets, 1 s keepalive",
        &["timer_expire_entry", "timer_expire_exit"],
    ),
    (
        Load::QuietCloses,
        "25,000 short connections, watched namespace (no keepalive, never idle: counted, not recorded)",
        &["inet_sock_set_state"],
    ),
    (
        Load::UnwatchedCloses,
        "25,000 short connections (aborted: a reset each) of an unwatched namespace",
        &[
            "inet_sock_set_state",
            "tcp_send_reset",
            "tcp_receive_reset",
            "inet_sk_error_report",
        ],
    ),
];
const CONDITIONS: [&str; 2] = ["floor", "kato"];
const REPS: usize = 3;

/// Condition -> (ns, runs), summed.
type ByCondition = BTreeMap<&'static str, (u64, u64)>;

/// (load, program) -> its costs under each condition.
pub struct HookCosts {
    pub secs: f64,
    pub cells: BTreeMap<(usize, String), ByCondition>,
}

fn xtask_in(ns: &Netns, args: &[&str]) -> Result<()> {
    let me = std::env::current_exe()?;
    let out = ns.cmd(me.to_str().context("path")?).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "xtask {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `load`: `secs` for the timers, 25,000 connections for the closes.
fn drive(load: Load, watched: &Netns, other: &Netns, secs: f64) -> Result<()> {
    // A count, so that it ends: a few seconds here, well inside the
    // namespace's 64k ephemeral ports (aborted, so none in TIME_WAIT).
    let churn = "25000";
    match load {
        Load::OtherTimers => xtask_in(
            watched,
            &[
                "trickle",
                "--conns",
                "400",
                "--every-ms",
                "50",
                "--secs",
                &secs.to_string(),
            ],
        ),
        Load::UnwatchedKeepalive => {
            std::thread::sleep(Duration::from_secs_f64(secs));
            Ok(())
        }
        Load::QuietCloses => xtask_in(watched, &["churn", "--count", churn]),
        Load::UnwatchedCloses => xtask_in(other, &["churn", "--count", churn]),
    }
}

pub fn run(kato: &str, secs: f64) -> Result<HookCosts> {
    crate::harness::bpf_stats(true);
    let watched = Netns::new("hooks")?;
    let other = Netns::new("hooks-other")?;
    let mut cells: BTreeMap<(usize, String), ByCondition> = BTreeMap::new();
    for (li, (load, _, _)) in LOADS.iter().enumerate() {
        // Keepalive timers fire every second: held only for their load.
        let _keepalive = matches!(load, Load::UnwatchedKeepalive)
            .then(|| hold_with(&other, 8000, &["--ka-secs", "1"]))
            .transpose()?;
        for rep in 0..REPS {
            for k in 0..CONDITIONS.len() {
                let cond = CONDITIONS[(k + rep) % CONDITIONS.len()];
                eprintln!(
                    "xtask bench: hook costs, load {li}, {cond}, repetition {}",
                    rep + 1
                );
                let child = start_in(cond, kato, Some(&watched))?;
                // Settled: the agent's start-up snapshot is not the load.
                std::thread::sleep(Duration::from_secs(1));
                let pid = child.as_ref().context("a condition with programs")?.id();
                let before = prog_stats(pid);
                drive(*load, &watched, &other, secs)?;
                let after = prog_stats(pid);
                drop(child);
                for (name, (ns1, c1)) in after {
                    let (ns0, c0) = before.get(&name).copied().unwrap_or((0, 0));
                    // The floor's programs are kato's names with `floor_`.
                    let hook = name.strip_prefix("floor_").unwrap_or(&name).to_owned();
                    let e = cells
                        .entry((li, hook))
                        .or_default()
                        .entry(cond)
                        .or_insert((0, 0));
                    e.0 += ns1 - ns0;
                    e.1 += c1 - c0;
                }
            }
        }
    }
    Ok(HookCosts { secs, cells })
}

pub fn report(h: &HookCosts) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## What each hook costs when it records nothing\n");
    let _ = writeln!(
        s,
        "`kernel.bpf_stats_enabled=1`: run time per invocation of each program while a load made of invocations kato filters out runs for {} s, {REPS} repetitions, *floor* (`kato bench-floor`: empty programs on the same tracepoints) and *kato* (`kato agent --netns <the watched namespace>`) alternated, summed. The agent attaches no arming hooks (`timer_start`/`timer_cancel`: `kato trace` only, measured in the request/response section). Target: every hook's filtered-out invocation at most 1.2× the empty program on the same tracepoint.\n",
        h.secs
    );
    let _ = writeln!(
        s,
        "| load | program | floor ns/run | kato ns/run | kato / floor | runs (kato) |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: |");
    for ((li, name), by) in &h.cells {
        let per = |c: &str| {
            by.get(c)
                .filter(|(_, n)| *n > 0)
                .map(|(t, n)| *t as f64 / *n as f64)
        };
        let (Some(floor), Some(kato)) = (per("floor"), per("kato")) else {
            continue;
        };
        let runs = by.get("kato").map_or(0, |x| x.1);
        if !LOADS[*li].2.contains(&name.as_str()) {
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {name} | {floor:.1} | {kato:.1} | {:.2}× | {runs} |",
            LOADS[*li].1,
            kato / floor
        );
    }
    s
}
