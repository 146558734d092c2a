//! `kato agent --log-events json`: reported events as JSON lines on
//! stdout, checked against what the test did, and the rate limit under a
//! reset flood.

use std::{
    net::{SocketAddr, TcpStream},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent_support::{sample, Agent},
    support::{dead_peer, require_root, Netns},
};

/// Lines received until `done` holds for one, each parsed (a line that is
/// not JSON fails the test).
fn until(lines: &Receiver<String>, limit: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let end = Instant::now() + limit;
    let mut seen = vec![];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let stop = done(&v);
        seen.push(v);
        if stop {
            return seen;
        }
    }
    panic!("no expected line in {limit:?}: {seen:#?}");
}

#[test]
fn reported_events_are_json_lines_with_their_fields() {
    require_root();
    let ns = Netns::new("evlog");
    let (agent, lines) = Agent::start_stdout(&[
        "--netns",
        &ns.name,
        "--log-events",
        "json",
        "--snapshot-interval",
        "1s",
    ]);
    let (local, remote) = dead_peer(&ns);
    let (local, remote) = (local.to_string(), remote.to_string());
    let seen = until(&lines, Duration::from_secs(10), |v| {
        v["event"] == "keepalive_timeout" && v["local"] == local.as_str()
    });
    let timeout = seen
        .iter()
        .find(|v| v["event"] == "keepalive_timeout")
        .unwrap_or_else(|| panic!("no keepalive_timeout line: {seen:#?}"));
    eprintln!("{timeout}");
    assert_eq!(timeout["remote"], remote.as_str());
    assert_eq!(timeout["netns"], ns.inode);
    let time = timeout["time"].as_str().unwrap();
    assert!(
        time.len() >= 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339: {time}"
    );
    let reset = seen
        .iter()
        .find(|v| v["event"] == "reset_sent" && v["local"] == local.as_str())
        .unwrap_or_else(|| panic!("no reset_sent line: {seen:#?}"));
    // The kernel names its reason from 6.10 on; kato infers it before.
    assert_eq!(reset["reset_reason"], "TCP_KEEPALIVE_TIMEOUT", "{reset}");
    for v in &seen {
        assert!(
            !matches!(
                v["event"].as_str(),
                Some("probe_sent" | "fired" | "peer_answered")
            ),
            "probes are not logged: {v}"
        );
        for key in [
            "time",
            "event",
            "local",
            "remote",
            "pid",
            "comm",
            "reset_reason",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
    }
    let m = agent.metrics();
    assert!(sample(&m, "kato_log_events_total") >= seen.len() as f64);
}

#[test]
fn a_reset_flood_is_rate_limited_and_counted() {
    require_root();
    let ns = Netns::new("evflood");
    let started = Instant::now();
    let (agent, lines) = Agent::start_stdout(&["--netns", &ns.name, "--log-events", "json"]);
    // 3,000 connections to a port nobody listens on: each refused with a
    // reset (sent by the kernel, received by the connecting socket).
    let refused = ns
        .spawn(|| {
            let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
            (0..3000)
                .filter(|_| TcpStream::connect(to).is_err())
                .count()
        })
        .join()
        .unwrap();
    assert_eq!(refused, 3000);
    // Until the agent has read every record of the flood.
    let last = std::cell::Cell::new(-1.0);
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        let n = sample(m, "kato_events_processed_total");
        let settled = n == last.get() && n > 0.0;
        std::thread::sleep(Duration::from_millis(800));
        last.set(n);
        settled
    });
    let dropped = sample(&m, "kato_log_events_dropped_total{cause=\"rate_limit\"}")
        + sample(&m, "kato_log_events_dropped_total{cause=\"queue_full\"}");
    let logged = sample(&m, "kato_log_events_total");
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let written: Vec<String> = lines.try_iter().collect();
    assert_eq!(
        logged,
        written.len() as f64,
        "every line written is counted"
    );
    for line in &written {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            matches!(
                v["event"].as_str(),
                Some("reset_sent" | "reset_received" | "socket_error")
            ),
            "{v}"
        );
        // Never connected: nothing was heard, no idle time to tell.
        assert!(v["idle_s"].is_null() && v["data_idle_s"].is_null(), "{v}");
    }
    // No silent loss: every reported event the metrics counted was
    // written or counted as dropped.
    let reported = family(&m, "kato_resets_sent_total")
        + family(&m, "kato_resets_received_total")
        + family(&m, "kato_socket_errors_total");
    assert!(
        reported >= 3000.0,
        "{reported} reported events for 3,000 refusals"
    );
    assert_eq!(logged + dropped, reported, "written + dropped");
    assert!(dropped > 0.0, "the flood exceeds the bucket");
    // The bucket: 1,000 at once, then 200 a second.
    let most = 1000.0 + 200.0 * elapsed;
    assert!(
        (written.len() as f64) <= most,
        "{} lines in {elapsed:.1}s (at most {most:.0})",
        written.len()
    );
    assert!(
        written.len() >= 1000,
        "the burst is written: {}",
        written.len()
    );
}

/// The sum of every series of metric `name`.
fn family(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
