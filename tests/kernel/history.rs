//! Each connection's story in the agent (`/sockets/COOKIE/history`),
//! checked against what the test did to the connection and the client's
//! own error; and the history's budget under a flood.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::{
    agent_support::{sample, Agent},
    support::{require_root, DeadPeer, Netns},
};

fn story(agent: &Agent, cookie: u64) -> (u16, Value) {
    let (status, body) = agent.get(&format!("/sockets/{cookie}/history"));
    let v = if status == 200 {
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    } else {
        Value::Null
    };
    (status, v)
}

fn events(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_dead_peers_story_is_told_in_order_and_kept_after_the_close() {
    require_root();
    let ns = Netns::new("story");
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--snapshot-interval",
        "1s",
        "--history-retention",
        "2m",
    ]);
    let peer = DeadPeer::start(&ns, false);
    let (local, remote) = (peer.local.to_string(), peer.remote.to_string());
    // Its cookie, as /sockets shows it while the connection lives.
    let row = agent.wait_sockets_where(Duration::from_secs(4), |s| {
        s["local"] == local.as_str() && s["cookie"].is_u64()
    });
    let cookie = row["cookie"].as_u64().unwrap();
    let err = peer.wait();
    assert_eq!(err.raw_os_error(), Some(110), "ETIMEDOUT: {err}");
    let mut v = Value::Null;
    for _ in 0..50 {
        let (status, s) = story(&agent, cookie);
        if status == 200 && events(&s).iter().any(|e| e == "closed") {
            v = s;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !v.is_null(),
        "no story of {cookie} with its close: {:?}",
        agent.get(&format!("/sockets/{cookie}/history"))
    );
    let kinds = events(&v);
    assert_eq!(v["local"], local.as_str());
    assert_eq!(v["remote"], remote.as_str());
    let at = |k: &str| {
        kinds
            .iter()
            .position(|e| e == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    // In the kernel's order: unanswered probes (the first counted in the
    // kernel, the next ones recorded: the peer is quiet), the kernel's
    // reset, the close, then the owner's ETIMEDOUT (reported after
    // tcp_done), which names the keepalive timeout.
    assert!(at("probe_sent") < at("reset_sent"), "{kinds:?}");
    assert!(at("reset_sent") < at("closed"), "{kinds:?}");
    assert!(at("closed") < at("keepalive_timeout"), "{kinds:?}");
    let evs = v["events"].as_array().unwrap();
    let reset = &evs[at("reset_sent")];
    assert_eq!(reset["reset_reason"], "TCP_KEEPALIVE_TIMEOUT", "{v}");
    assert!(
        evs.iter().any(|e| e["event"] == "socket_error"
            && e["error"].as_str().is_some_and(|x| x.contains("ETIMEDOUT"))),
        "the application's error: {v}"
    );
    let times: Vec<&str> = evs.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "newest last: {times:?}"
    );
    let last_probe = evs.iter().rfind(|e| e["event"] == "probe_sent").unwrap();
    assert_eq!(last_probe["probes"], 3, "{v}");
    assert!(v["closed_s_ago"].is_f64(), "{v}");

    // `kato history` tells the same story as a timeline, by its cookie and
    // by its ends (what `kato sockets` shows).
    let history = |socket: &str| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kato"))
            .args(["history", socket, "--agent", &agent.addr.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = history(&cookie.to_string());
    eprintln!("{text}");
    assert!(
        text.starts_with(&format!("socket {cookie} {local} -> {remote}")),
        "{text}"
    );
    assert!(
        text.contains("TCP_KEEPALIVE_TIMEOUT") && text.contains("ETIMEDOUT (keepalive)"),
        "{text}"
    );
    let ends_text = history(&format!("{local}-{remote}"));
    assert!(
        ends_text.starts_with(&format!("socket {cookie} {local} -> {remote}")),
        "{ends_text}"
    );
    assert_eq!(
        ends_text.lines().skip(1).collect::<Vec<_>>(),
        text.lines().skip(1).collect::<Vec<_>>()
    );
    // The ends are ordered, local first: reversed, they name the peer's
    // socket (on this host too), whose story is its own.
    let (status, body) = agent.get(&format!("/history?local={remote}&remote={local}"));
    if status == 200 {
        let peer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(peer["local"], remote.as_str(), "{peer}");
        assert_ne!(peer["cookie"], cookie, "{peer}");
    } else {
        assert_eq!(status, 404, "{body}");
    }
    let (status, body) = agent.get("/history?local=nonsense");
    assert_eq!(status, 400, "{body}");
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_kato"))
        .args([
            "history",
            &u64::MAX.to_string(),
            "--agent",
            &agent.addr.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains(&format!("no history of a socket with cookie {}", u64::MAX)));

    // Still there 30 s after the close, unchanged.
    std::thread::sleep(Duration::from_secs(30));
    let (status, later) = story(&agent, cookie);
    assert_eq!(status, 200);
    assert_eq!(events(&later), kinds);
    assert!(later["closed_s_ago"].as_f64().unwrap() >= 30.0, "{later}");
    // Cookies count up from 1 per boot: none is this.
    let (status, _) = agent.get(&format!("/sockets/{}/history", u64::MAX));
    assert_eq!(status, 404);
}

#[test]
fn a_flood_of_short_connections_stays_within_the_history_budget() {
    require_root();
    let ns = Netns::new("storyflood");
    // Snapshots every second: after each, the agent gives freed memory
    // back, so its RSS follows what it holds.
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--history-events",
        "2000",
        "--snapshot-interval",
        "1s",
    ]);
    // Until the agent has read every record (a slow VM reads for a while).
    let settled = || {
        let last = std::cell::Cell::new(-1.0);
        agent.wait_metrics(Duration::from_secs(30), |m| {
            let n = sample(m, "kato_events_processed_total");
            let done = n == last.get();
            std::thread::sleep(Duration::from_millis(1500));
            last.set(n);
            done
        })
    };
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    // 10,000 connections refused with a reset: each a story of its own.
    let flood = || {
        ns.spawn(|| {
            let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
            for _ in 0..10_000 {
                assert!(TcpStream::connect(to).is_err());
            }
        })
        .join()
        .unwrap();
    };
    flood();
    let m = settled();
    assert!(sample(&m, "kato_history_events_dropped_total") > 0.0);
    let held = sample(&m, "kato_history_events");
    assert!(held <= 2000.0, "{held} events held, budget 2000");
    assert!(held >= 1500.0, "the budget is used, not emptied: {held}");
    // Bounded: a second flood as large leaves the agent where the first
    // did (what one flood grows, allocator arenas and all, is reused).
    let after_one = rss();
    let dropped = sample(&m, "kato_history_events_dropped_total");
    flood();
    let m = settled();
    assert!(sample(&m, "kato_history_events_dropped_total") >= dropped + 10_000.0);
    assert!(sample(&m, "kato_history_events") <= 2000.0);
    let grown_kib = rss().saturating_sub(after_one);
    assert!(
        grown_kib < 4 << 10,
        "a second flood grew the agent {grown_kib} KiB more (history budget 2,000 events)"
    );
}

#[test]
fn a_socket_first_seen_through_an_event_has_its_cookie() {
    require_root();
    let ns = Netns::new("cookie");
    // One snapshot, at start: the connection below is made after it.
    let agent = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "10m"]);
    let (client, server) = ns
        .spawn(|| crate::support::pair(false, 600, 60, 5))
        .join()
        .unwrap();
    let local = client.local_addr().unwrap().to_string();
    // The peer closes: a FIN record for the keepalive socket is how the
    // agent first sees it.
    drop(server);
    let row = agent.wait_sockets_where(Duration::from_secs(5), |s| s["local"] == local.as_str());
    let cookie = row["cookie"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cookie: {row}"));
    // ss -e prints the same cookie, in hex, as sk:.
    let ss = ns.exec(&["ss", "-tenH", "state", "close-wait"]);
    assert!(
        ss.contains(&format!("sk:{cookie:x}")),
        "cookie {cookie} ({cookie:x}) not in ss -e: {ss}"
    );
    let (status, story) = story(&agent, cookie);
    assert_eq!(status, 200);
    assert!(
        events(&story).iter().any(|e| e == "fin_received"),
        "{story}"
    );
    drop(client);
}

/// A live socket's story in its `/sockets?history=1` row and under its
/// row in `kato sockets --history` (the agent's, or traced by kato itself
/// with --for): a peer that stops answering, probed for ~17 s (keepalive
/// 1 s, then every 2 s, 8 probes).
#[test]
fn a_live_sockets_story_is_in_its_row_and_under_it_in_kato_sockets() {
    require_root();
    let ns = Netns::new("rowstory");
    let agent = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "1s"]);
    let peer = DeadPeer::start_with(&ns, false, 1, 2, 8);
    let (local, remote) = (peer.local, peer.remote);
    let local_s = local.to_string();
    // Probes go unanswered: the second one is recorded, and the row has a story.
    let mut row = Value::Null;
    for _ in 0..80 {
        let (status, body) = agent.get(&format!("/sockets?history=1&port={}", remote.port()));
        assert_eq!(status, 200, "{body}");
        let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
        if let Some(r) = rows.into_iter().find(|r| {
            r["local"] == local_s.as_str()
                && r["history"]["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["event"] == "probe_sent"))
        }) {
            row = r;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !row.is_null(),
        "no row of {local} with its probes in history"
    );
    assert_eq!(row["history"]["cookie"], row["cookie"], "{row}");
    assert_eq!(row["history"]["remote"], remote.to_string().as_str());
    // Without the parameter, no history field.
    let (_, body) = agent.get(&format!("/sockets?port={}", remote.port()));
    assert!(!body.contains("\"history\""), "{body}");
    let (status, body) = agent.get("/sockets?history=yes");
    assert_eq!(status, 400, "{body}");

    // kato sockets --history: the row, then its story indented under it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kato"))
        .args(["sockets", "--netns", &ns.name, "--history", "--agent"])
        .arg(agent.addr.to_string())
        .args(["--port", &remote.port().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.split_whitespace().nth(3) == Some(local_s.as_str()))
        .unwrap_or_else(|| panic!("no row for {local}:\n{text}"));
    assert!(
        lines[at + 1..]
            .iter()
            .take_while(|l| l.starts_with("    "))
            .any(|l| l.contains("probe_sent")),
        "no story under the row:\n{text}"
    );
    // And in JSON, as the row's `history`.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kato"))
        .args([
            "sockets",
            "--netns",
            &ns.name,
            "--history",
            "--json",
            "--agent",
        ])
        .arg(agent.addr.to_string())
        .args(["--port", &remote.port().to_string()])
        .output()
        .unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mine = rows
        .iter()
        .find(|r| r["local"] == local_s.as_str())
        .unwrap();
    assert!(mine["history"]["events"].is_array(), "{mine}");
    // No agent, traced for 3 s instead: the probes in the story.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kato"))
        .args([
            "sockets",
            "--netns",
            &ns.name,
            "--history",
            "--for",
            "3s",
            "--json",
        ])
        .args([
            "--agent",
            "127.0.0.1:1",
            "--port",
            &remote.port().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mine = rows
        .iter()
        .find(|r| r["local"] == local_s.as_str())
        .unwrap();
    let events = mine["history"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["event"] == "probe_sent"), "{mine}");
    // No agent: one line, exit 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kato"))
        .args([
            "sockets",
            "--netns",
            &ns.name,
            "--history",
            "--agent",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no kato agent answers at 127.0.0.1:1"),
        "{err}"
    );
    let _ = peer.wait();
}
