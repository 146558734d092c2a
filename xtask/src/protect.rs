//! What `kato protect` costs a short-connection web server: nginx + wrk
//! with `Connection: close` (a connection per request, each running the
//! sock_ops program at establishment, twice: both ends are local), with
//! nothing attached, the empty sock_ops program (the floor), protect with a
//! rule that matches no connection, and one that matches every connection
//! (three `bpf_setsockopt` calls each). Conditions interleaved, paired
//! ratios against the same repetition's *none*; then the program's own
//! time per run from BPF run-time statistics.

use std::{fmt::Write as _, process::Command, process::Stdio, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    harness::{bpf_stats, wait_for, Netns, Running},
    web::{median, nginx, wrk},
};

const REPS: usize = 7;
pub const CONDITIONS: [&str; 4] = [
    "none",
    "floor",
    "protect, no match",
    "protect, every connection",
];

pub struct Cell {
    pub rps: f64,
    /// Median of each repetition's ratio to its *none* run.
    pub paired: f64,
    pub paired_range: (f64, f64),
    /// Nanoseconds per program run (bpf_stats), where a program ran.
    pub ns_per_run: Option<f64>,
    pub runs_per_request: Option<f64>,
}

pub struct Protect {
    pub secs: u64,
    pub cells: Vec<Cell>,
}

fn start(kato: &str, ns: &Netns, cond: usize) -> Result<Option<Running>> {
    let args: Vec<String> = match cond {
        0 => return Ok(None),
        1 => vec!["bench-floor".into(), "--sock-ops".into()],
        _ => {
            let rule = if cond == 2 {
                // TEST-NET-1: no connection of the bench goes there.
                "192.0.2.1/32=350s"
            } else {
                "350s"
            };
            vec![
                "protect".into(),
                "--netns".into(),
                ns.0.clone(),
                "--no-cloud-defaults".into(),
                "--idle-timeout".into(),
                rule.into(),
                "--rescan".into(),
                "3600".into(),
            ]
        }
    };
    let mut c = Running(
        Command::new(kato)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{kato} {}", args.join(" ")))?,
    );
    wait_for(
        &mut c,
        true,
        if cond == 1 {
            "attached"
        } else {
            "kato protect:"
        },
    )?;
    Ok(Some(c))
}

/// (run_cnt, run_time_ns) of the sock_ops programs loaded now.
fn sock_ops_stats() -> Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut cnt = 0;
    let mut ns = 0;
    for p in progs.as_array().into_iter().flatten() {
        if p["type"] == "sock_ops"
            && p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kato_protect") || n.starts_with("floor_sock"))
        {
            cnt += p["run_cnt"].as_u64().unwrap_or(0);
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
        }
    }
    Ok((cnt, ns))
}

pub fn run(kato: &str, secs: u64) -> Result<Protect> {
    let ns = Netns::new("protect")?;
    let _nginx = nginx(&ns)?;
    let mut rps: Vec<Vec<f64>> = vec![vec![]; CONDITIONS.len()];
    bpf_stats(false);
    for rep in 0..REPS {
        for k in 0..CONDITIONS.len() {
            let ci = (k + rep) % CONDITIONS.len();
            eprintln!(
                "xtask bench: protect, {}, repetition {}",
                CONDITIONS[ci],
                rep + 1
            );
            let running = start(kato, &ns, ci)?;
            std::thread::sleep(Duration::from_secs(1));
            let (r, _) = wrk(&ns, true, secs)?;
            drop(running);
            eprintln!("xtask bench:   {r:.0} requests/s");
            rps[ci].push(r);
        }
    }
    // The program's own cost, measured apart: statistics cost every run two
    // clock reads.
    let mut per = vec![(None, None); CONDITIONS.len()];
    bpf_stats(true);
    for (ci, slot) in per.iter_mut().enumerate().skip(1) {
        let running = start(kato, &ns, ci)?;
        std::thread::sleep(Duration::from_secs(1));
        let (c0, t0) = sock_ops_stats()?;
        let (_, requests) = wrk(&ns, true, secs)?;
        let (c1, t1) = sock_ops_stats()?;
        drop(running);
        let runs = c1.saturating_sub(c0);
        if runs > 0 {
            *slot = (
                Some(t1.saturating_sub(t0) as f64 / runs as f64),
                Some(runs as f64 / requests.max(1) as f64),
            );
        }
    }
    bpf_stats(false);
    let cells = (0..CONDITIONS.len())
        .map(|ci| {
            let ratios: Vec<f64> = rps[ci].iter().zip(&rps[0]).map(|(x, n)| x / n).collect();
            Cell {
                rps: median(rps[ci].clone()),
                paired_range: (
                    ratios.iter().copied().fold(f64::INFINITY, f64::min),
                    ratios.iter().copied().fold(0.0, f64::max),
                ),
                paired: median(ratios),
                ns_per_run: per[ci].0,
                runs_per_request: per[ci].1,
            }
        })
        .collect();
    Ok(Protect { secs, cells })
}

pub fn report(p: &Protect) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## What kato protect costs new connections: nginx + wrk\n\nDebian's nginx (one worker, `return 200`) and `wrk -t1 -c16 -d{}s -H 'Connection: close'` in a benchmark namespace: a connection per request, each running the sock_ops program on both of its (local) ends at establishment. *floor*: an empty sock_ops program on the cgroup root (`kato bench-floor --sock-ops`); *protect, no match*: `kato protect --netns <it> --idle-timeout 192.0.2.1/32=350s` (every connection checked, none changed); *protect, every connection*: `--idle-timeout 350s` (keepalive switched on, idle and interval set: three `bpf_setsockopt` calls per end). Conditions interleaved, {REPS} repetitions, medians; paired: each repetition's ratio to its own *none*. ns per run: BPF run-time statistics (`kernel.bpf_stats_enabled`) over one more run per condition. Targets: *no match* within 1% of the floor's throughput, and at most 1.3× the empty program's time per run.\n",
        p.secs
    );
    let _ = writeln!(
        s,
        "| condition | requests/s | vs none, paired | paired, lowest to highest | program ns per run | runs per request |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (c, name) in p.cells.iter().zip(CONDITIONS) {
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:+.2}% | {:+.2}% to {:+.2}% | {} | {} |",
            c.rps,
            (c.paired - 1.0) * 100.0,
            (c.paired_range.0 - 1.0) * 100.0,
            (c.paired_range.1 - 1.0) * 100.0,
            c.ns_per_run.map_or("-".into(), |v| format!("{v:.0}")),
            c.runs_per_request.map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    let (floor, none_match) = (&p.cells[1], &p.cells[2]);
    if let (Some(f), Some(n)) = (floor.ns_per_run, none_match.ns_per_run) {
        let _ = writeln!(
            s,
            "\n*No match* against the floor: {:+.2}% throughput (paired medians), {:.2}× the empty program's time per run.",
            (none_match.paired / floor.paired - 1.0) * 100.0,
            n / f
        );
    }
    s
}
