//! `kato agent`: metrics against the kernel's own counters and a real
//! Prometheus server, clean shutdown, coexistence and restarts.

use std::{
    net::SocketAddr,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    agent_support::{sample, tcpext, Agent},
    support::{dead_peer, pair, require_root, run, Netns},
};

#[test]
fn agent_counts_dead_peer_like_the_kernel_and_promtool_accepts_it() {
    require_root();
    let ns = Netns::new("agent");
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--label-by",
        "netns",
        "--snapshot-interval",
        "1s",
    ]);
    let before = tcpext(&ns.exec(&["cat", "/proc/net/netstat"]), "TCPKeepAlive");
    dead_peer(&ns);
    let after = tcpext(&ns.exec(&["cat", "/proc/net/netstat"]), "TCPKeepAlive");
    let n = ns.inode;
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        // The received reset may be held a moment to learn its cause.
        sample(
            m,
            &format!("kato_keepalive_timeouts_total{{netns=\"{n}\"}}"),
        ) >= 1.0
            && sample(m, &format!("kato_resets_received_total{{netns=\"{n}\"}}")) >= 1.0
    });

    // kato's probe counter equals the kernel's own keepalive-probe counter.
    assert_eq!(after - before, 3, "kernel TCPKeepAlive delta");
    assert_eq!(
        sample(
            &m,
            &format!("kato_keepalive_probes_sent_total{{netns=\"{n}\"}}")
        ),
        (after - before) as f64
    );
    assert_eq!(
        sample(
            &m,
            &format!("kato_keepalive_timeouts_total{{netns=\"{n}\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("kato_resets_sent_total{{netns=\"{n}\",reason=\"TCP_KEEPALIVE_TIMEOUT\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(&m, &format!("kato_resets_received_total{{netns=\"{n}\"}}")),
        1.0,
        "the server side got the reset"
    );
    assert_eq!(sample(&m, "kato_dead_peer_detection_seconds_count"), 1.0);
    assert_eq!(
        sample(&m, "kato_dead_peer_detection_seconds_bucket{le=\"7.5\"}"),
        1.0,
        "detected ~4 s after the peer went quiet"
    );
    assert_eq!(
        sample(&m, "kato_dead_peer_detection_seconds_bucket{le=\"3\"}"),
        0.0
    );
    assert_eq!(
        sample(&m, "kato_events_lost_total{cause=\"ring_full\"}"),
        0.0
    );
    assert!(
        sample(
            &m,
            &format!("kato_netns_tcp_keepalive_time_seconds{{netns=\"{n}\"}}")
        ) == 7200.0
            || !m.contains(&format!("netns=\"{n}\"}} ")),
        "{m}"
    );

    // promtool, the Prometheus project's own linter, has nothing to say.
    let path = std::env::temp_dir().join(format!("kato-metrics-{}", std::process::id()));
    std::fs::write(&path, &m).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", path.display()))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );

    let (status, health) = agent.get("/healthz");
    assert_eq!(status, 200);
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let (status, body) = agent.get("/sockets?keepalive=maybe");
    assert_eq!(
        (status, body.trim()),
        (
            400,
            "bad `keepalive` value: `maybe` is not on or off (once)"
        )
    );
    assert_eq!(agent.get("/nope").0, 404);
}

#[test]
fn agent_sockets_endpoint_filters_like_the_cli() {
    require_root();
    let ns = Netns::new("agentsock");
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = ns.spawn(move || {
        let (a, b) = pair(false, 600, 60, 5);
        let (c, d) = pair(true, 0, 0, 0);
        tx.send((a.local_addr().unwrap(), c.local_addr().unwrap()))
            .unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop((a, b, c, d));
    });
    let (ka, v6) = rx.recv().unwrap();
    let agent = Agent::start(&["--netns", &ns.name]);
    let (status, body) = agent.get(&format!("/sockets?keepalive=on&netns={}", ns.inode));
    assert_eq!(status, 200, "{body}");
    let v: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 1, "{body}");
    assert_eq!(v[0]["local"], ka.to_string());
    assert_eq!(v[0]["keepalive"]["idle_s"]["value"], 600);
    assert_eq!(v[0]["keepalive"]["interval_s"]["value"], 60);
    assert_eq!(v[0]["keepalive"]["count"]["value"], 5);
    let (_, body) = agent.get("/sockets?addr=%3A%3A1&state=established");
    let v: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 2, "both ends of the IPv6 pair: {body}");
    assert!(v.iter().any(|s| s["local"] == v6.to_string()));
    done_tx.send(()).unwrap();
    worker.join().unwrap();
}

/// Program ids the process `pid` holds through its fds (prog and link fds
/// show `prog_id:` in fdinfo; Debian's bpftool cannot name owning pids).
fn progs_of(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("prog_id:")
                    .map(|v| v.trim().parse().unwrap())
            })
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn prog_ids() -> Vec<u64> {
    let out = run(Command::new("bpftool").args(["prog", "show", "--json"]));
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    progs.iter().map(|p| p["id"].as_u64().unwrap()).collect()
}

#[test]
fn agent_stops_on_sigterm_within_a_second_leaving_nothing_attached() {
    require_root();
    let (mut agent, log) = Agent::start_logged(&["--netns", "self"], "warn");
    let ids = progs_of(agent.child.id());
    assert!(ids.len() >= 7, "the agent holds its programs: {ids:?}");
    // SIGHUP (a daemon's reload) is said and ignored, not a silent death.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    let said = std::iter::from_fn(|| log.recv_timeout(Duration::from_secs(5)).ok())
        .find(|l| l.contains("SIGHUP ignored"));
    assert!(said.is_some(), "no word on SIGHUP");
    assert_eq!(agent.get("/healthz").0, 200, "still serving after SIGHUP");
    assert!(agent.child.try_wait().unwrap().is_none());
    let t = Instant::now();
    let status = agent.terminate();
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(1), "stopped in {took:?}");
    // Program ids are never reused while the kernel runs: gone means freed.
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<u64> = prog_ids().into_iter().filter(|i| ids.contains(i)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "programs still loaded after exit: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_agents_coexist_and_a_restart_rebuilds_the_table() {
    require_root();
    let ns = Netns::new("twoagents");
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = ns.spawn(move || {
        let (a, b) = pair(false, 900, 30, 4);
        tx.send(a.local_addr().unwrap()).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
        drop((a, b));
    });
    let kept = rx.recv().unwrap();
    let mut first = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "1s"]);
    let second = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "1s"]);
    dead_peer(&ns);
    for a in [&first, &second] {
        a.wait_metrics(Duration::from_secs(5), |m| {
            sample(m, "kato_keepalive_timeouts_total") == 1.0
                && sample(m, "kato_keepalive_probes_sent_total") == 3.0
        });
    }
    // Restart: a new agent knows the surviving socket from its snapshot alone.
    first.terminate();
    let third = Agent::start(&["--netns", &ns.name]);
    let (_, body) = third.get(&format!("/sockets?keepalive=on&netns={}", ns.inode));
    let v: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 1, "{body}");
    assert_eq!(v[0]["local"], kept.to_string());
    assert_eq!(v[0]["keepalive"]["idle_s"]["value"], 900);
    assert_eq!(v[0]["timer"]["kind"], "keepalive");
    assert_eq!(
        sample(
            &third.metrics(),
            "kato_sockets{keepalive=\"on\",state=\"ESTABLISHED\"}"
        ),
        1.0
    );
    done_tx.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
fn agent_config_errors_name_the_key_and_exit_2() {
    require_root();
    let dir = std::env::temp_dir().join(format!("kato-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:0\"\nsnapshot_interval = \"soon\"\n",
    )
    .unwrap();
    for (args, needle) in [
        (
            vec!["--config", bad.to_str().unwrap()],
            "key `snapshot_interval`: `soon` is not a duration",
        ),
        (
            vec!["--label-by", "pid"],
            "command line: key `--label-by`: unknown label `pid`",
        ),
        (
            vec!["--label-limit", "many"],
            "key `--label-limit`: `many` is not a number",
        ),
        (
            vec!["--listen", "localhost"],
            "key `--listen`: `localhost` is not an address:port",
        ),
        (
            vec!["--config", "/nonexistent/kato.toml"],
            "/nonexistent/kato.toml: key `(file)`: cannot read",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kato"))
            .arg("agent")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The capabilities docs/deploy.md promises are enough, are: the agent runs
/// as root with only them in its bounding set, keeps fewer after start-up,
/// and names what is missing otherwise.
#[test]
fn agent_runs_with_the_documented_minimum_capabilities() {
    require_root();
    let kato = env!("CARGO_BIN_EXE_kato");
    let agent = |set: &str, scope: &str| {
        Command::new("setpriv")
            .args([
                "--bounding-set",
                set,
                kato,
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--netns",
                scope,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (set, scope, missing) in [
        ("-all,+bpf,+perfmon", "self", "CAP_SYSLOG"),
        ("-all,+bpf,+perfmon,+syslog", "all", "CAP_SYS_ADMIN"),
        (
            "-all,+bpf,+perfmon,+syslog,+sys_admin",
            "all",
            "CAP_SYS_PTRACE",
        ),
    ] {
        let out = agent(set, scope).wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{set} {scope}: {err}");
        assert!(err.contains(missing), "{set} {scope}: {err}");
    }
    for (set, scope, kept) in [
        (
            "-all,+bpf,+perfmon,+syslog",
            "self",
            (1u64 << 38) | (1 << 39),
        ),
        (
            "-all,+bpf,+perfmon,+syslog,+sys_admin,+sys_ptrace",
            "all",
            (1 << 38) | (1 << 39) | (1 << 21) | (1 << 19),
        ),
        // Optional, kept when given: conntrack over ctnetlink.
        (
            "-all,+bpf,+perfmon,+syslog,+net_admin",
            "self",
            (1 << 38) | (1 << 39) | (1 << 12),
        ),
    ] {
        // Killed on drop: a failed assertion must not leave an agent running.
        let mut child = crate::support::KillOnDrop(agent(set, scope));
        let mut err = std::io::BufReader::new(child.0.stderr.take().unwrap());
        let mut banner = String::new();
        std::io::BufRead::read_line(&mut err, &mut banner).unwrap();
        assert!(banner.contains("listening on"), "{set} {scope}: {banner}");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim();
        assert_eq!(
            u64::from_str_radix(eff, 16).unwrap(),
            kept,
            "{set} {scope}: CapEff {eff}"
        );
        let addr: SocketAddr = crate::agent_support::banner_addr(&banner).unwrap();
        let (code, body) = crate::agent_support::http_get(addr, "/healthz").unwrap();
        assert_eq!(code, 200, "{body}");
    }
}

/// Namespaces come and go (a process in its own namespace per run, as
/// pods and CI jobs do) while the agent snapshots every namespace ten
/// times a second: it never fails a snapshot, it skips and counts.
#[test]
fn namespaces_that_vanish_mid_snapshot_are_skipped_not_fatal() {
    require_root();
    let (agent, log) = Agent::start_logged(&["--snapshot-interval", "100ms"], "warn");
    let churn = std::thread::spawn(|| {
        let end = Instant::now() + Duration::from_secs(4);
        let mut runs = 0;
        while Instant::now() < end {
            let st = Command::new("unshare")
                .args(["-n", "true"])
                .status()
                .unwrap();
            assert!(st.success());
            runs += 1;
        }
        runs
    });
    let runs = churn.join().unwrap();
    let m = agent.metrics();
    let snapshots = sample(&m, "kato_snapshots_total");
    assert!(
        snapshots >= 20.0,
        "{snapshots} snapshots during {runs} namespace lifetimes"
    );
    let failed: Vec<String> = log
        .try_iter()
        .filter(|l| l.contains("snapshot failed"))
        .collect();
    assert!(
        failed.is_empty(),
        "{runs} namespaces came and went: {failed:?}"
    );
    assert!(m.contains("kato_netns_vanished_total "), "{m}");
}

/// In a memory cgroup limited to 256 MiB the table holds what half of it
/// affords at 1 KiB a socket, not a fixed million.
#[test]
fn table_capacity_follows_the_cgroup_memory_limit() {
    require_root();
    let cg = format!("/sys/fs/cgroup/memory/kato-cap-{}", std::process::id());
    let (dir, limit_file) = if std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        (cg.clone(), "memory.limit_in_bytes")
    } else {
        (
            format!("/sys/fs/cgroup/kato-cap-{}", std::process::id()),
            "memory.max",
        )
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(format!("{dir}/{limit_file}"), (256u64 << 20).to_string()).unwrap();
    let procs = format!("{dir}/cgroup.procs");
    let mut child = unsafe {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_kato"))
            .args(["agent", "--listen", "127.0.0.1:0", "--netns", "self"])
            .stderr(std::process::Stdio::piped())
            .pre_exec(move || std::fs::write(&procs, "0"))
            .spawn()
            .unwrap()
    };
    // Held open to the end: kato's last line must not meet a closed pipe.
    let mut stderr = child.stderr.take().unwrap();
    let addr = crate::agent_support::read_banner(&mut stderr);
    let (_, m) = crate::agent_support::http_get(addr, "/metrics").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(sample(&m, "kato_table_capacity"), 131_072.0, "{m}");
}

/// Files an attacker with write access to the state directory (or an
/// operator's typo) could plant: a link at the temporary name is replaced,
/// not followed; a FIFO, a 1 GB file or a foreign file stops start-up at
/// once with one line and exit 2; `/dev/zero` as the config or a YAML
/// alias bomb as the web config likewise.
#[test]
fn planted_and_oversized_files_are_refused_not_followed() {
    require_root();
    let base = std::env::temp_dir().join(format!("kato-plant-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let state = base.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let victim = base.join("root-only");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("learned.json.tmp")).unwrap();
    let mut agent = Agent::start(&["--netns", "self", "--state-dir", state.to_str().unwrap()]);
    let end = Instant::now() + Duration::from_secs(10);
    while !state.join("learned.json").exists() {
        assert!(Instant::now() < end, "no state written");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.terminate().success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let saved = std::fs::symlink_metadata(state.join("learned.json")).unwrap();
    assert!(saved.file_type().is_file());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&saved.permissions()) & 0o777,
        0o600
    );

    let refuse = |args: &[&str], needle: &str| {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kato"))
            .args(["agent", "--listen", "127.0.0.1:0", "--netns", "self"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            t.elapsed()
        );
    };
    let learned = state.join("learned.json");
    let s = state.to_str().unwrap();
    std::fs::remove_file(&learned).unwrap();
    let c = std::ffi::CString::new(learned.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    refuse(&["--state-dir", s], "not a regular file (a FIFO)");
    std::fs::remove_file(&learned).unwrap();
    std::fs::File::create(&learned)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    refuse(&["--state-dir", s], "too large");
    std::fs::write(&learned, r#"{"secret":"hunter2"}"#).unwrap();
    refuse(&["--state-dir", s], "not a kato state file (line 1");
    std::fs::remove_file(&learned).unwrap();
    std::os::unix::fs::symlink(&victim, &learned).unwrap();
    refuse(&["--state-dir", s], "a symbolic link");
    refuse(
        &["--config", "/dev/zero"],
        "not a regular file (a character device)",
    );
    let bomb = base.join("web.yml");
    std::fs::write(&bomb, "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b]\n").unwrap();
    refuse(&["--web-config", bomb.to_str().unwrap()], "aliases");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let _ = std::fs::remove_dir_all(&base);
}
