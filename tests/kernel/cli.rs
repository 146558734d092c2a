//! The `kato` binary as a user runs it.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::{
    agent_support::tcpext,
    support::{pair, require_root, Netns},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// `kato trace --output json` shows the dead-peer sequence, and Ctrl-C ends
/// it cleanly with a summary line.
#[test]
fn trace_json_shows_dead_peer_and_exits_on_sigint() {
    require_root();
    let ns = Netns::new("cli");
    let mut kato = Command::new(KATO)
        .args([
            "trace",
            "--output",
            "json",
            "--netns",
            &ns.inode.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kato");
    let mut stderr = BufReader::new(kato.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert!(
        banner.starts_with("kato trace: watching"),
        "kato did not start: {banner}"
    );

    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = BufReader::new(kato.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });

    // The kernel's own count of the probes it sends, to hold kato's to.
    let probes = || tcpext(&ns.exec(&["cat", "/proc/net/netstat"]), "TCPKeepAlive");
    let probes_before = probes();
    let (tx, rx) = mpsc::channel();
    let worker = ns.spawn(move || {
        let (mut client, server) = pair(false, 1, 1, 2);
        tx.send((client.local_addr().unwrap(), server.local_addr().unwrap()))
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let r = std::io::Read::read(&mut client, &mut [0u8; 1]);
        drop(server);
        r
    });
    let (local, remote) = rx.recv().unwrap();
    ns.drop_from_port(remote.port());

    let mut events = vec![];
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(15)) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let done = v["event"] == "keepalive_timeout";
        events.push(v);
        if done {
            break;
        }
    }
    assert!(worker.join().unwrap().is_err());
    let sent = probes() - probes_before;
    // Stopped here, so that each assertion below can say whether kato
    // lost records.
    unsafe { libc::kill(kato.id() as i32, libc::SIGINT) };
    let status = kato.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let summary = rest.trim();
    assert!(
        events
            .iter()
            .all(|v| v.get("sock").is_none() && v.get("cookie").is_some()),
        "cookies, never kernel addresses: {events:?}"
    );
    let names: Vec<&str> = events
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    let tail: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| *n != "armed" && *n != "fired")
        .collect();
    let shown = tail.iter().filter(|n| **n == "probe_sent").count() as u64;
    assert_eq!(
        shown, sent,
        "probes shown against the kernel's TCPKeepAlive: {names:?}; {summary}"
    );
    assert_eq!(
        tail,
        [
            "probe_sent",
            "probe_sent",
            "reset_sent",
            "socket_error",
            "keepalive_timeout"
        ],
        "{names:?}; {summary}"
    );
    let error = events
        .iter()
        .find(|v| v["event"] == "socket_error")
        .unwrap();
    assert_eq!(error["error"], "ETIMEDOUT (keepalive)");
    for v in &events {
        assert_eq!(v["local"], local.to_string());
        assert_eq!(v["remote"], remote.to_string());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
    let reset = events.iter().find(|v| v["event"] == "reset_sent").unwrap();
    assert_eq!(reset["reset_reason"], "TCP_KEEPALIVE_TIMEOUT");
    assert_eq!(events.last().unwrap()["state"], "CLOSE");
    assert_eq!(events.last().unwrap()["sk_err"], 110);

    assert!(status.success(), "kato exited with {status}: {rest}");
    // Events kato printed after the last one read here (the server's
    // reset_received) count too.
    let seen: usize = summary
        .strip_prefix("kato trace: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary: {summary}"));
    assert!(seen >= events.len(), "summary: {summary}");
    assert!(
        summary.ends_with("events seen, 0 lost"),
        "summary: {summary}"
    );
}

/// Without privileges kato names what is missing in one sentence.
#[test]
fn unprivileged_trace_names_missing_capabilities() {
    require_root();
    let out = crate::support::unprivileged(&["trace"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("root"),
        "{err}"
    );
}

/// A missing or truncated BTF file is one clear error, not a panic.
#[test]
fn bad_btf_is_a_clear_error() {
    require_root();
    let truncated = std::env::temp_dir().join(format!("kato-btf-{}", std::process::id()));
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    std::fs::write(&truncated, &btf[..btf.len() / 3]).unwrap();
    for (path, want) in [
        (
            "/nonexistent/vmlinux",
            "cannot read BTF from /nonexistent/vmlinux",
        ),
        (truncated.to_str().unwrap(), "BTF is truncated"),
    ] {
        let out = Command::new(KATO)
            .args(["trace", "--btf", path])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("kato: ") && err.contains(want), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let _ = std::fs::remove_file(truncated);
}
