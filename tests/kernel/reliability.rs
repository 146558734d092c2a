//! Faults and floods: SIGKILL leaves nothing behind, a ring-buffer overrun
//! is counted and survived, probes are shed before timeouts are lost, bad
//! flags are usage errors.

use std::{
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    agent_support::{sample, Agent},
    support::{dead_peer, keepalive, require_root, run, DeadPeer, Netns},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// Opens `pairs` loopback connections in `ns`, then closes them all at once:
/// a burst of FIN and close records.
fn close_burst(ns: &Netns, pairs: usize) {
    ns.spawn(move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let held: Vec<_> = (0..pairs)
            .flat_map(|_| {
                [
                    std::net::TcpStream::connect(to).unwrap(),
                    l.accept().unwrap().0,
                ]
            })
            .collect();
        drop(held);
    })
    .join()
    .unwrap();
}

/// Starts `kato trace ARGS` and waits for its banner on stderr.
pub(crate) fn start_trace(
    args: &[&str],
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
) {
    let mut trace = Command::new(KATO)
        .args(["trace"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(trace.stderr.take().unwrap());
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut err, &mut banner).unwrap();
    assert!(
        banner.contains("watching"),
        "kato trace did not start: {banner}"
    );
    (trace, err)
}

fn prog_ids_of(pid: u32) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix("prog_id:").map(|v| v.trim().to_owned()))
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn loaded(id: &str) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", id])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn sigkill_leaves_nothing_attached() {
    require_root();
    let bpffs = || run(Command::new("sh").args(["-c", "ls -A /sys/fs/bpf 2>/dev/null"]));
    let pinned_before = bpffs();
    let mut agent = Agent::start(&["--netns", "self"]);
    let ids = prog_ids_of(agent.child.id());
    assert!(ids.len() >= 7, "{ids:?}");
    assert!(ids.iter().all(|i| loaded(i)));
    agent.child.kill().unwrap(); // SIGKILL: no cleanup code runs
    agent.child.wait().unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    while ids.iter().any(|i| loaded(i)) {
        assert!(
            Instant::now() < end,
            "programs survive their process: {:?}",
            ids.iter().filter(|i| loaded(i)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing was pinned either (bpffs holds only what it held before).
    assert_eq!(bpffs(), pinned_before, "kato pins nothing");
}

#[test]
fn ring_overrun_is_counted_and_the_agent_catches_up() {
    require_root();
    let ns = Netns::new("flood");
    // A 4 KiB ring holds ~30 records: a burst of closes must overrun it
    // (recorded with the HTTP keep-alive view: by default the kernel makes
    // no records of short connections at all).
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--ring-bytes",
        "4096",
        "--http-keepalive",
    ]);
    close_burst(&ns, 2000); // ~6,000 FIN and close records at once
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        sample(m, "kato_events_lost_total{cause=\"ring_full\"}") > 0.0
    });
    let lost = sample(&m, "kato_events_lost_total{cause=\"ring_full\"}");
    assert!(lost > 0.0, "{m}");
    // Still working: a dead peer afterwards is counted exactly.
    dead_peer(&ns);
    agent.wait_metrics(Duration::from_secs(10), |m| {
        sample(m, "kato_keepalive_timeouts_total") == 1.0
            && sample(m, "kato_keepalive_probes_sent_total") == 3.0
    });
    let (code, _) = agent.get("/healthz");
    assert_eq!(code, 200);
}

/// Holds `pairs` loopback connections in `ns` probing every second, opened
/// over about a second so that their timer runs fill every slot of the
/// wheel: a steady stream of routine records. Dropped when `stop` is sent.
fn probing_crowd(ns: &Netns, pairs: usize) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let (ready, up) = mpsc::channel();
    let holder = ns.spawn(move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let mut held = Vec::with_capacity(pairs * 2);
        for _ in 0..pairs {
            let c = std::net::TcpStream::connect(to).unwrap();
            let s = l.accept().unwrap().0;
            keepalive(&c, 1, 1, 9);
            keepalive(&s, 1, 1, 9);
            held.extend([c, s]);
            std::thread::sleep(Duration::from_micros(1_000_000 / pairs as u64));
        }
        ready.send(()).unwrap();
        let _ = stopped.recv();
    });
    up.recv().expect("crowd connected");
    (stop, holder)
}

/// Probe records that overflow the ring are shed first: the last quarter
/// is kept for verdicts, so dead peers' timeouts among 3,000 sockets
/// probing every second (a record each, with the HTTP keep-alive view)
/// are every one reported through a ring that holds ~180 records.
#[test]
fn probes_are_shed_before_a_timeout_is_lost() {
    require_root();
    let ns = Netns::new("shed");
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--ring-bytes",
        "32768",
        "--http-keepalive",
    ]);
    let (stop, holder) = probing_crowd(&ns, 1500);
    let dead: Vec<_> = (0..6).map(|_| DeadPeer::start(&ns, false)).collect();
    for d in dead {
        d.wait();
    }
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        sample(m, "kato_keepalive_timeouts_total") >= 6.0
            && sample(m, "kato_events_lost_total{cause=\"shed\"}") > 0.0
    });
    assert_eq!(sample(&m, "kato_keepalive_timeouts_total"), 6.0, "{m}");
    assert!(
        sample(&m, "kato_events_lost_total{cause=\"shed\"}") > 0.0,
        "the crowd never filled the ring: {m}"
    );
    let _ = stop.send(());
    holder.join().unwrap();
}

#[test]
fn trace_summary_counts_ring_overrun() {
    require_root();
    let ns = Netns::new("floodtrace");
    let (mut trace, mut err) = start_trace(&[
        "--ring-bytes",
        "4096",
        "--closes",
        "--netns",
        &ns.inode.to_string(),
        "--output",
        "json",
    ]);
    // Output is discarded, as with a null stdout.
    let mut out = trace.stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    close_burst(&ns, 2000);
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };
    assert!(trace.wait().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let summary = rest.trim();
    let lost: u64 = summary
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        lost > 0 && summary.contains("ring buffer full"),
        "summary: {summary}"
    );
}

#[test]
fn malformed_flags_are_usage_errors() {
    for args in [
        vec!["trace", "--port", "http"],
        vec!["trace", "--idle-kill-min", "soon"],
        vec!["sockets", "--state", "napping"],
        vec!["sockets", "--watch", "0"],
        vec!["sockets", "--risk", "doomed", "--idle-timeout", "5s"],
        vec!["sockets", "--sort", "colour"],
        vec!["doctor", "--idle-timeout", "10.0.0.0/40=5s"],
        vec!["agent", "--snapshot-interval", "10ms"],
        vec!["bogus-command"],
    ] {
        let out = Command::new(KATO).args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

/// An agent and `kato trace` at once: both see the same dead peer.
#[test]
fn agent_and_trace_coexist() {
    require_root();
    let ns = Netns::new("coexist");
    let agent = Agent::start(&["--netns", &ns.name]);
    let (mut trace, _err) = start_trace(&["--output", "json", "--netns", &ns.inode.to_string()]);
    let out = std::io::BufReader::new(trace.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(out) {
            let _ = tx.send(l.unwrap());
        }
    });
    dead_peer(&ns);
    let mut probes = 0;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("trace output");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "probe_sent" {
            probes += 1;
        }
        if v["event"] == "keepalive_timeout" {
            break;
        }
    }
    assert_eq!(probes, 3, "kato trace");
    agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, "kato_keepalive_timeouts_total") == 1.0
            && sample(m, "kato_keepalive_probes_sent_total") == 3.0
    });
    let _ = trace.kill();
    let _ = trace.wait();
}

/// A full table evicts, counts it, and keeps the most recently updated.
#[test]
fn full_table_evicts_and_counts() {
    require_root();
    let ns = Netns::new("evict");
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = ns.spawn(move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let held: Vec<_> = (0..50)
            .flat_map(|_| {
                [
                    std::net::TcpStream::connect(to).unwrap(),
                    l.accept().unwrap().0,
                ]
            })
            .collect();
        tx.send(()).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop(held);
    });
    rx.recv().unwrap();
    let agent = Agent::start(&["--netns", &ns.name, "--table-capacity", "20"]);
    let m = agent.metrics();
    assert!(sample(&m, "kato_table_sockets") <= 20.0, "{m}");
    assert!(
        sample(&m, "kato_table_evictions_total") >= 81.0,
        "101 sockets into 20 places: {m}"
    );
    done_tx.send(()).unwrap();
    holder.join().unwrap();
}

/// Short connections without keepalive make no ring records: the kernel
/// counts their closes instead. A reset still is one, idle or not.
#[test]
fn short_connections_make_no_records_only_a_count() {
    require_root();
    let ns = Netns::new("quiet");
    let agent = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "1h"]);
    let before = agent.metrics();
    let processed0 = sample(&before, "kato_events_processed_total");
    close_burst(&ns, 500);
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        sample(m, "kato_connections_closed_quietly_total") >= 1000.0
    });
    let records = sample(&m, "kato_events_processed_total") - processed0;
    eprintln!(
        "500 quiet connections: {records} records, {} quiet closes",
        sample(&m, "kato_connections_closed_quietly_total")
    );
    assert!(
        records <= 0.2 * 500.0,
        "{records} records for 500 quiet connections (target at most 0.2 each):\n{m}"
    );
    // A reset is always a record, and its socket's close too.
    ns.spawn(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(linger).cast(),
                size_of::<libc::linger>() as u32,
            )
        };
        drop(s);
        let mut buf = [0u8; 1];
        let _ = std::io::Read::read(&mut &c, &mut buf);
    })
    .join()
    .unwrap();
    agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, "kato_resets_received_total") >= 1.0
    });
}
