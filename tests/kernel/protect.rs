//! `kato protect` against a NAT that forgets idle flows after 3 s and
//! resets what it forgot: connections that existed before it started and
//! ones opened after survive 8 s of silence; one outside its rule, and a
//! dry run, die; an application's own tighter settings stay; a real Redis
//! (keepalive off) is kept alive from its own side; nothing is left
//! attached after it stops or is killed.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    middlebox::{echo, serve_n, topology_where_forgotten_flows, Topology},
    support::{client, keepalive, keepalive_opts, require_root, Netns},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");
const SERVER: &str = "10.71.2.2:8000";
/// How long protect may take to start and report a connection: under the
/// VM's software emulation, with the other tests loading programs on the
/// same CPU, past 10 s.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A running `kato protect --output json`: its JSON lines as they come.
struct Protect {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Protect {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(KATO)
            .args(["protect", "--output", "json", "--no-cloud-defaults"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kato protect");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut banner = String::new();
        err.read_line(&mut banner).unwrap();
        assert!(banner.contains("kato protect:"), "{banner}");
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            if !rest.trim().is_empty() {
                eprintln!("kato protect stderr: {rest}");
            }
        });
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Protect { child, lines }
    }

    /// The change line for the connection from local port `port`.
    fn wait_for(&self, port: u16, limit: Duration) -> Value {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no change for local port {port} in {limit:?}"));
            if v["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{port}")))
            {
                return v;
            }
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Protect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The BPF programs process `pid` holds, by id (its fds' fdinfo).
fn prog_ids(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Those of `ids` still loaded in the kernel (`bpftool prog show`).
fn still_loaded(ids: &[u64]) -> Vec<u64> {
    let out = crate::support::run(Command::new("bpftool").args(["prog", "show", "-j"]));
    let progs: Vec<Value> = serde_json::from_str(&out).unwrap();
    ids.iter()
        .copied()
        .filter(|id| progs.iter().any(|p| p["id"] == *id))
        .collect()
}

/// `ss -tno` in `ns`: the keepalive timer's remaining seconds of the
/// connection from local port `port`, if it has one.
fn keepalive_timer(ns: &Netns, port: u16) -> Option<f64> {
    let out = ns.exec(&["ss", "-tnoH", "state", "established"]);
    let line = out.lines().find(|l| l.contains(&format!(":{port} ")))?;
    let t = line.split("timer:(keepalive,").nth(1)?.split(',').next()?;
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    t.strip_suffix("sec").and_then(|s| s.parse().ok())
}

/// What the worker in the client namespace made, and how each ended.
struct Ends {
    before: u16,
    outside: u16,
    /// The port of `after`, once `go` was sent.
    after: mpsc::Receiver<(u16, u16, u16)>,
    results: mpsc::Receiver<[std::io::Result<()>; 3]>,
    app_opts: mpsc::Receiver<(bool, i32, i32, i32)>,
    outside_opts: mpsc::Receiver<(bool, i32, i32, i32)>,
}

/// Keeps `streams` busy (an echo every 500 ms) until `go`: the flows stay
/// in the router's table however long protect takes to start (seconds
/// under the VM's software emulation, past the 3 s timeout); the idle
/// under test starts after it.
fn busy_until(go: &mpsc::Receiver<()>, streams: &mut [&mut TcpStream]) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = go.recv_timeout(Duration::from_millis(500)) {
        for s in streams.iter_mut() {
            echo(s, b"tick").unwrap();
        }
    }
}

/// In the client namespace: `before` (opened now), `outside` (port 8001,
/// outside the rule), `app` (its own keepalive 1/1/3); `after` opened
/// when `go` says so; all idle 8 s, then each echoes.
fn connections(t: &Topology, go: mpsc::Receiver<()>, checked: mpsc::Receiver<()>) -> Ends {
    let (ports_tx, ports_rx) = mpsc::channel();
    let (results_tx, results) = mpsc::channel();
    let (app_tx, app_opts) = mpsc::channel();
    let (out_tx, outside_opts) = mpsc::channel();
    let _ = t.client.spawn(move || {
        let to: SocketAddr = SERVER.parse().unwrap();
        let mut before = client(to, |_| {});
        let mut outside = client("10.71.2.2:8001".parse().unwrap(), |_| {});
        let mut app = client(to, |s| keepalive(s, 1, 1, 3));
        for s in [&mut before, &mut outside, &mut app] {
            echo(s, b"hello").unwrap();
        }
        let port = |s: &TcpStream| s.local_addr().unwrap().port();
        ports_tx
            .send((port(&before), port(&outside), port(&app)))
            .unwrap();
        busy_until(&go, &mut [&mut before, &mut outside]);
        let mut after = client(to, |_| {});
        echo(&mut after, b"hello").unwrap();
        ports_tx.send((port(&after), 0, 0)).unwrap();
        std::thread::sleep(Duration::from_secs(8));
        // And until the test has looked at them (under emulation `kato
        // sockets` alone can outlast the 8 s): idle longer, never shorter.
        let _ = checked.recv();
        for s in [&before, &outside, &after] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        results_tx
            .send([
                echo(&mut before, b"again"),
                echo(&mut after, b"again"),
                echo(&mut outside, b"again"),
            ])
            .unwrap();
        app_tx.send(keepalive_opts(&app)).unwrap();
        out_tx.send(keepalive_opts(&outside)).unwrap();
    });
    let (before, outside, _app) = ports_rx.recv().unwrap();
    Ends {
        before,
        outside,
        after: ports_rx,
        results,
        app_opts,
        outside_opts,
    }
}

#[test]
fn existing_and_new_connections_survive_a_forgetting_nat() {
    require_root();
    let t = topology_where_forgotten_flows("reject with tcp reset");
    let _server = serve_n(&t.server, 3);
    let _outside = crate::middlebox::serve_on(&t.server, 8001, 1);
    let (go, go_rx) = mpsc::channel();
    let (checked, checked_rx) = mpsc::channel();
    let ends = connections(&t, go_rx, checked_rx);
    let protect = Protect::start(&[
        "--netns",
        &t.client.name,
        "--idle-timeout",
        "10.71.2.2/32:8000=3s",
    ]);
    let existing = protect.wait_for(ends.before, START_LIMIT);
    go.send(()).unwrap();
    let after = ends.after.recv_timeout(Duration::from_secs(10)).unwrap().0;
    let new = protect.wait_for(after, START_LIMIT);
    for (what, v) in [("existing", &existing), ("new", &new)] {
        assert_eq!(v["event"], "keepalive_set", "{what}: {v}");
        assert_eq!(v["origin"], what, "{v}");
        assert_eq!(v["remote"], SERVER, "{v}");
        assert_eq!(v["rule"]["source"], "declared", "{v}");
        assert_eq!(v["rule"]["rule"], "10.71.2.2/32:8000=3s", "{v}");
        assert_eq!(v["before"]["keepalive"], false, "{v}");
        assert_eq!(
            (
                &v["after"]["keepalive"],
                &v["after"]["idle_s"],
                &v["after"]["interval_s"],
                &v["after"]["idle_source"]
            ),
            (
                &Value::from(true),
                &Value::from(1),
                &Value::from(1),
                &Value::from("kato")
            ),
            "{v}"
        );
    }
    assert!(
        existing["owner"]["pid"].is_u64(),
        "the census names it: {existing}"
    );
    // The kernel's own view, while they idle: keepalive timers under 1.5 s.
    std::thread::sleep(Duration::from_secs(2));
    for port in [ends.before, after] {
        let left = keepalive_timer(&t.client, port).unwrap_or_else(|| {
            panic!(
                "no keepalive timer on :{port}: {}",
                t.client.exec(&["ss", "-tno"])
            )
        });
        assert!(left <= 1.5, ":{port}: {left} s");
    }
    assert_eq!(
        keepalive_timer(&t.client, ends.outside),
        None,
        "outside the rule"
    );
    // kato sockets shows whose settings those are.
    let out = crate::support::run(Command::new(KATO).args([
        "sockets",
        "--netns",
        &t.client.name,
        "--idle-timeout",
        "10.71.2.2/32:8000=3s",
        "--no-cloud-defaults",
        "--output",
        "json",
    ]));
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mine = all
        .iter()
        .find(|s| {
            s["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{}", ends.before)))
        })
        .unwrap();
    assert_eq!(mine["keepalive"]["idle_s"]["source"], "kato", "{mine}");
    assert_eq!(mine["risk"], "safe", "{mine}");
    checked.send(()).unwrap();
    let [before, after_r, outside] = ends.results.recv_timeout(Duration::from_secs(30)).unwrap();
    before.expect("protected before protect started: survived 8 s idle");
    after_r.expect("protected when established: survived 8 s idle");
    let err = outside.expect_err("outside the rule: the NAT forgot it");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(
        ends.app_opts.recv().unwrap(),
        (true, 1, 1, 3),
        "the application's own 1/1/3, untouched"
    );
    assert!(!ends.outside_opts.recv().unwrap().0, "outside: still off");
    assert!(protect.stop().success());
}

#[test]
fn a_dry_run_changes_nothing_and_says_what_it_would() {
    require_root();
    let t = topology_where_forgotten_flows("reject with tcp reset");
    let _server = serve_n(&t.server, 1);
    let (tx, rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let _ = t.client.spawn(move || {
        let mut c = client(SERVER.parse().unwrap(), |_| {});
        echo(&mut c, b"hello").unwrap();
        tx.send(c.local_addr().unwrap().port()).unwrap();
        busy_until(&go_rx, &mut [&mut c]);
        std::thread::sleep(Duration::from_secs(8));
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        done_tx
            .send((echo(&mut c, b"again"), keepalive_opts(&c)))
            .unwrap();
    });
    let port = rx.recv().unwrap();
    let protect = Protect::start(&[
        "--netns",
        &t.client.name,
        "--idle-timeout",
        "10.71.2.2/32=3s",
        "--dry-run",
    ]);
    let v = protect.wait_for(port, START_LIMIT);
    go.send(()).unwrap();
    assert_eq!(v["event"], "keepalive_would_set", "{v}");
    assert_eq!(v["after"]["idle_s"], 1, "{v}");
    let (r, opts) = done.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(r.is_err(), "a dry run protects nothing");
    assert!(!opts.0, "keepalive still off");
    assert!(protect.stop().success());
}

#[test]
fn a_stopped_or_killed_protect_leaves_nothing_loaded() {
    require_root();
    let ns = Netns::new("protkill");
    for kill in [false, true] {
        let mut protect =
            Protect::start(&["--netns", &ns.name, "--idle-timeout", "10.0.0.0/8=350s"]);
        let ids = prog_ids(protect.child.id());
        assert!(
            ids.len() >= 4,
            "the sock_ops program and the iterators: {ids:?}"
        );
        assert_eq!(still_loaded(&ids), ids);
        if kill {
            protect.child.kill().unwrap();
            protect.child.wait().unwrap();
        } else {
            assert!(protect.stop().success());
        }
        // The kernel frees them once the last descriptor is gone.
        let end = Instant::now() + Duration::from_secs(5);
        while !still_loaded(&ids).is_empty() {
            assert!(
                Instant::now() < end,
                "left loaded: {:?}",
                still_loaded(&ids)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Redis with its own keepalive off (`tcp-keepalive 0`) behind the NAT:
/// protect in the server's namespace keeps its accepted connection alive
/// from its side; `kato sockets` shows the setting as kato's.
#[test]
fn a_real_redis_without_keepalive_survives_its_idle_timeout() {
    require_root();
    let t = topology_where_forgotten_flows("reject with tcp reset");
    let redis = crate::support::KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &t.server.name])
            .args([
                "redis-server",
                "--bind",
                "10.71.2.2",
                "--port",
                "6379",
                "--tcp-keepalive",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !t.server.exec(&["ss", "-tlnH"]).contains(":6379") {
        assert!(Instant::now() < end, "redis did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let protect = Protect::start(&[
        "--netns",
        &t.server.name,
        "--idle-timeout",
        ":6379=3s",
        "--port",
        "6379",
    ]);
    let (tx, rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let _ = t.client.spawn(move || {
        let mut c = client("10.71.2.2:6379".parse().unwrap(), |_| {});
        let ping = |c: &mut TcpStream| -> std::io::Result<String> {
            c.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 16];
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        assert_eq!(ping(&mut c).unwrap(), "+PONG\r\n");
        tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(8));
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        done_tx.send(ping(&mut c)).unwrap();
    });
    rx.recv().unwrap();
    // Redis's accepted end: a new connection on its side.
    let v = protect.wait_for(6379, START_LIMIT);
    assert_eq!(v["event"], "keepalive_set", "{v}");
    // Sorted (rows packed as read) and printed as read (`--sort none`):
    // protect's mark either way.
    for sort in ["local", "none"] {
        let out = crate::support::run(Command::new(KATO).args([
            "sockets",
            "--netns",
            &t.server.name,
            "--port",
            "6379",
            "--state",
            "established",
            "--sort",
            sort,
            "--output",
            "json",
        ]));
        let all: Vec<Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(all.len(), 1, "{sort}: {out}");
        assert_eq!(all[0]["comm"], "redis-server", "{sort}: {out}");
        assert_eq!(all[0]["keepalive"]["enabled"], true, "{sort}: {out}");
        assert_eq!(
            all[0]["keepalive"]["idle_s"]["source"], "kato",
            "{sort}: {out}"
        );
    }
    let pong = done
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("Redis's connection survived 8 s idle behind a 3 s NAT");
    assert_eq!(pong, "+PONG\r\n");
    assert!(protect.stop().success());
    drop(redis);
}

/// The agent with `--protect` does the same for the namespaces it
/// watches, and counts it: `/metrics` and `/sockets` say so.
#[test]
fn the_agent_protects_the_namespaces_it_watches() {
    require_root();
    let t = topology_where_forgotten_flows("reject with tcp reset");
    let _server = serve_n(&t.server, 2);
    let (tx, rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let _ = t.client.spawn(move || {
        let to: SocketAddr = SERVER.parse().unwrap();
        let mut before = client(to, |_| {});
        echo(&mut before, b"hello").unwrap();
        tx.send(before.local_addr().unwrap().port()).unwrap();
        busy_until(&go_rx, &mut [&mut before]);
        let mut after = client(to, |_| {});
        echo(&mut after, b"hello").unwrap();
        tx.send(after.local_addr().unwrap().port()).unwrap();
        std::thread::sleep(Duration::from_secs(8));
        for s in [&before, &after] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        done_tx
            .send((echo(&mut before, b"again"), echo(&mut after, b"again")))
            .unwrap();
    });
    let before = rx.recv().unwrap();
    let agent = crate::agent_support::Agent::start(&[
        "--netns",
        &t.client.name,
        "--protect",
        "--no-cloud-defaults",
        "--idle-timeout",
        "10.71.2.2/32:8000=3s",
        "--snapshot-interval",
        "500ms",
    ]);
    go.send(()).unwrap();
    let after = rx.recv().unwrap();
    // Counted as made; carried by both at the next snapshot.
    agent.wait_metrics(START_LIMIT, |m| {
        crate::agent_support::sample(m, "kato_keepalive_protected_total{source=\"declared\"}")
            == 2.0
            && crate::agent_support::sample(m, "kato_keepalive_protected_sockets") >= 2.0
    });
    for port in [before, after] {
        let s = agent.wait_sockets_where(Duration::from_secs(5), |s| {
            s["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{port}")))
                && s["keepalive"]["idle_s"]["source"] == "kato"
        });
        assert_eq!(s["risk"], "safe", "{s}");
        assert_eq!(s["keepalive"]["idle_s"]["value"], 1, "{s}");
    }
    let (b, a) = done.recv_timeout(Duration::from_secs(30)).unwrap();
    b.expect("existing before the agent started: survived");
    a.expect("opened after: survived");
}

/// IPv6: an existing connection and a new one on `::1`, matched by a
/// v6 rule (the kernel reads a v6 address word by word from the context).
#[test]
fn ipv6_connections_are_matched_too() {
    require_root();
    let ns = Netns::new("prot6");
    let (tx, rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel();
    let _ = ns.spawn(move || {
        let l = TcpListener::bind("[::1]:0").unwrap();
        let to = l.local_addr().unwrap();
        let before = TcpStream::connect(to).unwrap();
        let (_b, _) = l.accept().unwrap();
        tx.send(before.local_addr().unwrap().port()).unwrap();
        go_rx.recv().unwrap();
        let after = TcpStream::connect(to).unwrap();
        let (_a, _) = l.accept().unwrap();
        tx.send(after.local_addr().unwrap().port()).unwrap();
        go_rx.recv().unwrap();
        done_tx
            .send((keepalive_opts(&before), keepalive_opts(&after)))
            .unwrap();
    });
    let before = rx.recv().unwrap();
    let protect = Protect::start(&["--netns", &ns.name, "--idle-timeout", "[::1/128]=30s"]);
    let v = protect.wait_for(before, START_LIMIT);
    assert_eq!(
        (v["origin"].as_str(), v["event"].as_str()),
        (Some("existing"), Some("keepalive_set")),
        "{v}"
    );
    go.send(()).unwrap();
    let after = rx.recv().unwrap();
    let v = protect.wait_for(after, START_LIMIT);
    assert_eq!(v["origin"], "new", "{v}");
    assert!(v["remote"].as_str().unwrap().starts_with("[::1]:"), "{v}");
    go.send(()).unwrap();
    let (b, a) = done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((b.0, b.1, b.2), (true, 10, 10), "a third of 30 s");
    assert_eq!((a.0, a.1, a.2), (true, 10, 10));
    assert!(protect.stop().success());
}
