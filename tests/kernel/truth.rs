//! Verdicts checked against the kernel on servers nobody here wrote: who
//! reset whom in nginx's keep-alive race (tcpdump, TcpExt, nginx's log),
//! and owners on every HAProxy event.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent_support::{sample, tcpext, Agent},
    servers::{haproxy, kernel_version, nginx, postgres, Scratch, Tcpdump, Trace},
    support::{require_root, Netns},
};

/// One request on `s`; the response's status.
fn get(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET / HTTP/1.1\r\nHost: kato\r\n\r\n")
        .unwrap();
    read_response(s)
}

/// A response's status, its body read.
fn read_response(s: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One line per event: what a failed assertion needs to say what happened.
fn brief(all: &[Value]) -> String {
    all.iter()
        .map(|v| {
            format!(
                "{} {} {} {} pid={} reason={} by={}\n",
                v["event"],
                v["local"],
                v["remote"],
                v["state"],
                v["pid"],
                v["reset_reason"],
                v["reused_by"]
            )
        })
        .collect()
}

fn events<'a>(all: &'a [Value], event: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| v["event"] == event).collect()
}

/// nginx as a reverse proxy keeping upstream connections alive, in front of
/// a backend nginx that closes idle ones after 1 s. Each round stops the
/// proxy just before the backend's timeout, sends the next request, lets
/// the backend close, and continues the proxy: it writes the request on the
/// connection the backend closed, the backend's kernel answers with a reset,
/// nginx answers 502. The backend's orphan is a full FIN_WAIT2 socket with
/// `tcp_fin_timeout` above 60 s (the kernel aborts it: `tcp_reset()`, then
/// the reply, TCPAbortOnData) and a TIME_WAIT socket otherwise (its reply,
/// which only 6.10+ traces). Every race must be `stale_reuse` on the proxy,
/// `reset_sent` by the backend, never `reset_received` there.
#[test]
fn nginx_keepalive_race_is_named_on_both_ends() {
    require_root();
    let ns = Netns::new("race");
    let dir = Scratch::new("race");
    let backend = nginx(
        &ns,
        &dir.path("b"),
        "  keepalive_timeout 1s;\n  server { listen 127.0.0.1:8081; location / { return 200 \"ok\\n\"; } }",
        "127.0.0.1:8081",
    );
    let proxy = nginx(
        &ns,
        &dir.path("p"),
        "  upstream be { server 127.0.0.1:8081; keepalive 8; }\n  \
         server { listen 127.0.0.1:8080; location / { proxy_pass http://be; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; proxy_next_upstream off; } }",
        "127.0.0.1:8080",
    );
    let agent = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "500ms"]);
    let trace = Trace::start(&["--netns", &ns.inode.to_string()]);
    let dump = Tcpdump::resets(&ns, "lo", dir.path("rst.pcap"));
    let netstat = || ns.exec(&["cat", "/proc/net/netstat"]);
    let aborts_before = tcpext(&netstat(), "TCPAbortOnData");

    let proxy_pid = proxy.pid();
    let round = move || {
        let mut s = TcpStream::connect("127.0.0.1:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(get(&mut s), 200);
        let served = Instant::now();
        std::thread::sleep(Duration::from_millis(600));
        unsafe { libc::kill(proxy_pid as i32, libc::SIGSTOP) };
        s.write_all(b"GET / HTTP/1.1\r\nHost: kato\r\n\r\n")
            .unwrap();
        while served.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(proxy_pid as i32, libc::SIGCONT) };
        // The request already sent: its response, read whole (unread data
        // would make this close a reset of its own).
        let status = read_response(&mut s);
        drop(s);
        status
    };
    let (full, tw) = (2, 2);
    let mut codes = vec![];
    for (rounds, fin_timeout) in [(full, "90"), (tw, "60")] {
        ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.tcp_fin_timeout={fin_timeout}"),
        ]);
        for _ in 0..rounds {
            codes.push(ns.spawn(round).join().unwrap());
        }
    }
    let all = trace.drain(Duration::from_secs(2));
    assert_eq!(codes, [502; 4], "each race is a 502 from nginx");
    let races = codes.len();

    // The kernel's word: every reset came from the backend's port, and the
    // full sockets were aborted for data (TCPAbortOnData).
    let rsts = dump.stop();
    if let Ok(f) = std::env::var("KATO_TEST_DUMP") {
        std::fs::write(f, serde_json::to_string_pretty(&(&all, &rsts)).unwrap()).unwrap();
    }
    let upstream: Vec<_> = rsts
        .iter()
        .filter(|(a, b)| a.ends_with(".8081") || b.ends_with(".8081"))
        .collect();
    assert_eq!(upstream.len(), races, "{rsts:?}");
    assert!(
        upstream.iter().all(|(src, _)| src == "127.0.0.1.8081"),
        "the backend sent every reset: {rsts:?}"
    );
    assert_eq!(
        tcpext(&netstat(), "TCPAbortOnData") - aborts_before,
        full as u64
    );
    let log = std::fs::read_to_string(dir.path("p").join("error.log")).unwrap();
    let logged = log
        .lines()
        .filter(|l| l.contains("upstream prematurely closed") || l.contains("reset by peer"))
        .count();
    assert_eq!(logged, races, "{log}");

    let on = |v: &&Value, port: &str| v["local"].as_str().unwrap().ends_with(port);
    // The proxy reused the connections: its write met the closed one.
    let reused: Vec<_> = events(&all, "stale_reuse")
        .into_iter()
        .filter(|v| v["reused_by"] == "local")
        .collect();
    assert_eq!(reused.len(), races, "{all:#?}");
    for v in &reused {
        assert_eq!(v["remote"], "127.0.0.1:8081", "{v}");
        assert_eq!(v["state"], "CLOSE_WAIT", "the FIN had arrived: {v}");
        assert_eq!(
            (&v["pid"], &v["comm"]),
            (&Value::from(proxy_pid), &Value::from("nginx")),
            "{v}"
        );
        assert_eq!(
            v["peer_pid"],
            backend.pid(),
            "both ends named: {v}\n{}",
            brief(&all)
        );
        let gap = v["reuse_after_s"].as_f64().unwrap();
        assert!((1.3..2.0).contains(&gap), "idle before the reuse: {v}");
    }
    // The backend sent every reset; none arrived there.
    let sent: Vec<_> = events(&all, "reset_sent")
        .into_iter()
        .filter(|v| on(v, ":8081"))
        .collect();
    let traced_tw = if kernel_version() >= (6, 10) { tw } else { 0 };
    assert_eq!(sent.len(), full + traced_tw, "{all:#?}");
    for v in &sent {
        assert_eq!(
            (&v["pid"], &v["comm"]),
            (&Value::from(backend.pid()), &Value::from("nginx")),
            "{v}"
        );
        let reason = v["reset_reason"].as_str().unwrap();
        assert!(
            ["TCP_ABORT_ON_DATA", "TCP_TIMEWAIT_SOCKET"].contains(&reason),
            "{v}"
        );
    }
    assert_eq!(
        sent.iter()
            .filter(|v| v["reset_reason"] == "TCP_ABORT_ON_DATA")
            .count(),
        full,
        "{all:#?}"
    );
    assert!(
        !events(&all, "reset_received")
            .iter()
            .any(|v| on(v, ":8081")),
        "no reset arrived at the backend: {all:#?}"
    );
    let closer_saw = events(&all, "stale_reuse")
        .into_iter()
        .filter(|v| v["reused_by"] == "peer" && on(v, ":8081"))
        .count();
    assert_eq!(closer_saw, full + traced_tw);

    // The same in /metrics: counted once per side, labelled by the
    // service's port, never an ephemeral one.
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        sample(m, "kato_stale_reuse_total{port=\"8081\",side=\"client\"}") == races as f64
    });
    assert_eq!(
        sample(&m, "kato_stale_reuse_total{port=\"8081\",side=\"server\"}"),
        (full + traced_tw) as f64,
        "{m}"
    );
    assert_eq!(
        sample(&m, "kato_resets_sent_total{reason=\"TCP_ABORT_ON_DATA\"}"),
        full as f64,
        "{m}"
    );
    assert_eq!(
        sample(&m, "kato_resets_received_total"),
        races as f64,
        "{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("kato_stale_reuse_total") && !l.contains("port=\"8081\"")),
        "{m}"
    );
}

/// HAProxy in TCP mode with 3 s timeouts between a client and an echo
/// server: every close and reset event of its sockets (accepted and
/// connected, in softirq or after HAProxy let go) names HAProxy.
#[test]
fn every_haproxy_event_names_haproxy() {
    require_root();
    let ns = Netns::new("hap");
    let dir = Scratch::new("hap");
    let echo = ns.spawn(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:9200").unwrap();
        // Three connections: HAProxy's readiness probe's and the two clients'.
        for c in l.incoming().take(3) {
            let mut c = c.unwrap();
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = c.read(&mut b) {
                    if n == 0 || c.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let trace_started = Trace::start(&["--netns", &ns.inode.to_string(), "--closes"]);
    let hap = haproxy(
        &ns,
        &dir.0,
        "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 3s\n  timeout server 3s\n\n\
         frontend f\n  bind 127.0.0.1:9100\n  default_backend b\n\n\
         backend b\n  server s 127.0.0.1:9200\n",
        "127.0.0.1:9100",
    );
    // One client idles past HAProxy's timeouts; one resets its connection.
    ns.spawn(|| {
        let mut idle = TcpStream::connect("127.0.0.1:9100").unwrap();
        idle.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        idle.read_exact(&mut b).unwrap();
        let mut rude = TcpStream::connect("127.0.0.1:9100").unwrap();
        rude.write_all(b"ping").unwrap();
        rude.read_exact(&mut b).unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&rude),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as u32,
            )
        };
        drop(rude);
        // HAProxy closes the idle one after 3 s.
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(idle.read(&mut b).unwrap(), 0, "HAProxy closed it");
    })
    .join()
    .unwrap();
    drop(echo);
    let all = trace_started.drain(Duration::from_secs(2));
    if let Ok(f) = std::env::var("KATO_TEST_DUMP") {
        std::fs::write(f, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    }
    // HAProxy's sockets: accepted on 9100, connected to 9200.
    let haproxys: Vec<&Value> = all
        .iter()
        .filter(|v| {
            v["local"].as_str().unwrap().ends_with(":9100")
                || v["remote"].as_str().unwrap().ends_with(":9200")
        })
        .filter(|v| v["event"] != "armed" && v["event"] != "disarmed")
        // A connection refused before HAProxy listened: no socket, nobody's.
        .filter(|v| v["reset_reason"] != "NO_SOCKET")
        .collect();
    let kinds: std::collections::BTreeSet<&str> = haproxys
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    for k in ["fin_sent", "closed", "reset_received"] {
        assert!(kinds.contains(k), "no {k} on HAProxy's sockets: {all:#?}");
    }
    for v in &haproxys {
        assert_eq!(
            (&v["pid"], &v["comm"]),
            (&Value::from(hap.pid()), &Value::from("haproxy")),
            "every event names HAProxy: {v}"
        );
        assert_ne!(
            v["remote"].as_str().unwrap().rsplit(':').next(),
            Some("0"),
            "remote port known: {v}"
        );
    }
}

/// A real PostgreSQL with server keepalives (2 s idle, 1 s interval, 3
/// probes) whose client vanishes (nothing from the server reaches it): the
/// kernel gives up on the peer, PostgreSQL logs the timeout, and kato names
/// a dead peer (three probes, the reset with its reason, ETIMEDOUT from
/// keepalive) and no idle kill, though a 1 s idle timeout is declared for
/// the path; the learner learns nothing from it.
#[test]
fn a_postgres_client_that_vanished_is_a_dead_peer_not_an_idle_kill() {
    require_root();
    let ns = Netns::new("pg");
    let dir = Scratch::new("pg");
    let _pg = postgres(
        &ns,
        &dir.0,
        5433,
        &[
            "tcp_keepalives_idle=2",
            "tcp_keepalives_interval=1",
            "tcp_keepalives_count=3",
            // GMT needs no zoneinfo (the VM has none); it is UTC.
            "log_timezone=GMT",
        ],
    );
    let state = dir.path("state");
    let rule = "127.0.0.1/32:5433=1s";
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--no-cloud-defaults",
        "--idle-timeout",
        rule,
        "--state-dir",
        state.to_str().unwrap(),
        "--snapshot-interval",
        "500ms",
    ]);
    let trace = Trace::start(&["--netns", &ns.inode.to_string(), "--idle-timeout", rule]);
    // An idle psql session: it waits on its standard input. (Debian's
    // /usr/bin/psql is a Perl wrapper: the binary itself.)
    let psql_bin = crate::servers::postgres_bin().join("psql");
    let mut psql = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            psql_bin.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            "5433",
            "-U",
            "postgres",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let end = Instant::now() + Duration::from_secs(10);
    while !ns
        .exec(&["ss", "-Htn", "state", "established", "sport", "= :5433"])
        .contains("5433")
    {
        assert!(Instant::now() < end, "psql never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The kernel's own count of the probes it sends, to hold kato's to.
    let probes = || tcpext(&ns.exec(&["cat", "/proc/net/netstat"]), "TCPKeepAlive");
    let probes_before = probes();
    // The client vanishes: nothing the server sends reaches it.
    ns.drop_from_port(5433);
    let end = Instant::now() + Duration::from_secs(20);
    let log = dir.path("postgres.log");
    let timed_out = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("could not receive data from client: Connection timed out"))
        {
            break l.to_owned();
        }
        assert!(
            Instant::now() < end,
            "PostgreSQL never gave up on its client:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let all = trace.drain(Duration::from_secs(2));
    let sent = probes() - probes_before;
    let summary = trace.stop();
    let _ = psql.kill();
    let _ = psql.wait();
    let server: Vec<&Value> = all
        .iter()
        .filter(|v| v["local"] == "127.0.0.1:5433")
        .collect();
    let kinds: Vec<&str> = server
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    let shown = kinds.iter().filter(|k| **k == "probe_sent").count();
    assert_eq!(
        (shown as u64, sent),
        (3, 3),
        "probes kato showed, and the kernel's TCPKeepAlive: {kinds:?}; {summary}"
    );
    let timeout = server
        .iter()
        .find(|v| v["event"] == "keepalive_timeout")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(timeout["comm"], "postgres", "{timeout}");
    let reset = server
        .iter()
        .find(|v| v["event"] == "reset_sent")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(reset["reset_reason"], "TCP_KEEPALIVE_TIMEOUT", "{reset}");
    assert!(
        server
            .iter()
            .any(|v| v["event"] == "socket_error" && v["error"] == "ETIMEDOUT (keepalive)"),
        "{all:#?}"
    );
    assert!(
        !all.iter().any(|v| v["event"] == "idle_kill_suspected"),
        "a dead peer is not an idle kill: {all:#?}"
    );
    // Silent longer than the declared 1 s: kato says both explain it.
    assert!(
        timeout["note"].as_str().is_some_and(|n| n.contains("dead")),
        "{timeout}"
    );
    // The same moment PostgreSQL logged it (its clock, to the millisecond).
    let logged = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S%.f", &timed_out[..23])
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp();
    let seen: jiff::Timestamp = timeout["time"].as_str().unwrap().parse().unwrap();
    let gap = (logged.as_millisecond() - seen.as_millisecond()).abs();
    assert!(gap < 1000, "kato {seen}, PostgreSQL {logged}");

    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, "kato_keepalive_timeouts_total") == 1.0
    });
    assert!(
        !m.contains("kato_idle_kills_suspected_total{"),
        "no idle kill counted: {m}"
    );
    // No kill learned from it: no upper bound. (A lower bound may come
    // from the session's own pauses before the peer vanished, which it
    // survived: on a slow VM psql's start-up paused 0.63 s.)
    assert!(
        !m.contains("kato_idle_timeout_learned_seconds{bound=\"upper\""),
        "a kill learned from a dead peer: {m}"
    );
    drop(agent);
    let saved = std::fs::read_to_string(state.join("learned.json")).unwrap_or_default();
    let file: Value = serde_json::from_str(&saved).unwrap_or(Value::Null);
    let kills: Vec<&Value> = file["learned"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l.to_string().contains("5433") && !l["killed_s"].is_null())
        .collect();
    assert!(kills.is_empty(), "a kill saved for a dead peer: {saved}");
}
