//! `kato sockets` against the kernel's own answers: `ss -tnoa` and getsockopt,
//! over 1,000 sockets of mixed kinds in a test namespace.

use std::{
    collections::{BTreeSet, HashMap},
    io::Read,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    ss,
    support::{attach_arg, client, keepalive, keepalive_opts, require_root, Netns},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

type Opts = (bool, i32, i32, i32);
type Built = (Vec<(SocketAddr, SocketAddr, Opts)>, u16);

/// Builds the mix and reports (local, remote, getsockopt) of every full
/// socket it holds. Keeps everything open until `done` fires.
/// `dead` gets the dead peers' port as soon as they are connected, so the
/// drop rule is in before their 1 s idle ends however slow the rest is (the
/// VM's emulated CPU takes seconds over the remaining setup).
fn build(done: mpsc::Receiver<()>, ready: mpsc::Sender<Built>, dead_ready: mpsc::SyncSender<u16>) {
    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l6 = TcpListener::bind("[::1]:0").unwrap();
    // Accepted sockets inherit SO_KEEPALIVE from their listener.
    crate::support::setsockopt_pub(&l6, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut held: Vec<TcpStream> = Vec::new();
    let connect = |i: usize, held: &mut Vec<TcpStream>| {
        let (to, listener) = if i.is_multiple_of(3) {
            (l6.local_addr().unwrap(), &l6)
        } else {
            (l4.local_addr().unwrap(), &l4)
        };
        let c = client(to, |s| match i % 4 {
            0 => {}
            1 => crate::support::setsockopt_pub(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
            2 => keepalive(
                s,
                100 + (i % 50) as i32,
                5 + (i % 7) as i32,
                2 + (i % 5) as i32,
            ),
            _ => {
                crate::support::setsockopt_pub(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
                crate::support::setsockopt_pub(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 300);
            }
        });
        let (srv, _) = listener.accept().unwrap();
        held.push(c);
        held.push(srv);
    };
    for i in 0..470 {
        connect(i, &mut held);
    }
    // TIME_WAIT: the client closes first, the server follows.
    for _ in 0..10 {
        let c = client(l4.local_addr().unwrap(), |_| {});
        let (mut srv, _) = l4.accept().unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(srv.read(&mut [0u8; 1]).unwrap(), 0);
        drop(srv);
        let mut c = c;
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    }
    // Orphaned FIN_WAIT2 (a TIME_WAIT mini-socket with substate FIN_WAIT2),
    // its peer in CLOSE_WAIT; and a half-closed FIN_WAIT2 still held.
    for i in 0..6 {
        let c = client(l4.local_addr().unwrap(), |_| {});
        let (srv, _) = l4.accept().unwrap();
        if i % 2 == 0 {
            drop(c);
        } else {
            c.shutdown(Shutdown::Write).unwrap();
            held.push(c);
        }
        held.push(srv);
    }
    // Peers that stop answering: keepalive probes outstanding.
    let dead_port = dead.local_addr().unwrap().port();
    for _ in 0..20 {
        let c = client(dead.local_addr().unwrap(), |s| keepalive(s, 1, 8, 5));
        let (srv, _) = dead.accept().unwrap();
        held.push(c);
        held.push(srv);
    }
    dead_ready.send(dead_port).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let opts = held
        .iter()
        .map(|s| {
            (
                s.local_addr().unwrap(),
                s.peer_addr().unwrap(),
                keepalive_opts(s),
            )
        })
        .collect();
    ready.send((opts, dead_port)).unwrap();
    let _ = done.recv_timeout(Duration::from_secs(60));
    drop((l4, l6, dead, held));
}

/// `kato ARGS`'s standard output; its failure fails the test.
fn kato_ok(args: &[&str]) -> Vec<u8> {
    let out = Command::new(KATO).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kato {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn timer_kind(ss_kind: Option<&str>) -> &'static str {
    match ss_kind {
        None => "off",
        Some("on") => "on",
        Some("keepalive") => "keepalive",
        Some("timewait") => "time_wait",
        Some("persist") => "probe",
        Some(other) => panic!("unexpected ss timer kind {other}"),
    }
}

#[test]
fn sockets_agree_with_ss_and_getsockopt() {
    require_root();
    let ns = Netns::new("agree");
    for (k, v) in [
        ("tcp_keepalive_time", "600"),
        ("tcp_keepalive_intvl", "30"),
        ("tcp_keepalive_probes", "4"),
    ] {
        ns.exec(&["sysctl", "-qw", &format!("net.ipv4.{k}={v}")]);
    }
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (dead_tx, dead_rx) = mpsc::sync_channel(0);
    let worker = ns.spawn(move || build(done_rx, ready_tx, dead_tx));
    ns.drop_from_port(
        dead_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("dead peers connected"),
    );
    let (opts, _) = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("sockets built");
    // Let the dead-peer connections reach their first unanswered probe (idle 1 s).
    std::thread::sleep(Duration::from_millis(2500));

    let t0 = Instant::now();
    let sorted = Command::new(KATO)
        .args(["sockets", "--output", "json", "--netns", &ns.name])
        .env("RUST_LOG", "keepalive_user::sockets::stream=debug")
        .output()
        .unwrap();
    let ss_text = ns.exec(&["ss", "-tnoa"]);
    let dt = t0.elapsed().as_secs_f64();
    // Sorted from rows packed as they were read, not from a held census.
    let log = String::from_utf8_lossy(&sorted.stderr);
    assert!(sorted.status.success(), "kato sockets: {log}");
    assert!(log.contains("rows packed"), "{log}");
    let out = sorted.stdout;
    // Its log says it took the streaming path (the held one, unsorted,
    // would print the same rows).
    let streamed = Command::new(KATO)
        .args([
            "sockets", "--sort", "none", "--output", "json", "--netns", &ns.name,
        ])
        .env("RUST_LOG", "keepalive_user::sockets::stream=debug")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&streamed.stderr);
    assert!(streamed.status.success(), "kato sockets --sort none: {log}");
    assert!(log.contains("owners read before the sockets"), "{log}");
    let streamed = streamed.stdout;
    let diag = kato_ok(&[
        "sockets", "--source", "diag", "--output", "json", "--netns", &ns.name,
    ]);
    let pid = std::process::id().to_string();
    let mine = kato_ok(&[
        "sockets", "--output", "json", "--netns", &ns.name, "--pid", &pid, "--sort", "pid",
    ]);
    done_tx.send(()).unwrap();
    worker.join().unwrap();

    let kato: Vec<Value> = serde_json::from_slice(&out).expect("kato JSON");
    let key = |l: &Value, r: &Value| -> (SocketAddr, SocketAddr) {
        (
            l.as_str().unwrap().parse().unwrap(),
            r.as_str().unwrap().parse().unwrap(),
        )
    };
    let kmap: HashMap<_, &Value> = kato
        .iter()
        .map(|v| (key(&v["local"], &v["remote"]), v))
        .collect();
    let ssv = ss::parse(&ss_text);
    let smap: HashMap<_, &ss::SsSocket> = ssv.iter().map(|s| ((s.local, s.remote), s)).collect();
    assert_eq!(kmap.len(), kato.len(), "kato lists each socket once");
    // In local address order (IPv4 before IPv6), then remote.
    let order: Vec<_> = kato
        .iter()
        .map(|v| key(&v["local"], &v["remote"]))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "not sorted by local address: {:?}",
        order.windows(2).find(|w| w[0] >= w[1])
    );
    assert!(
        order.iter().any(|(l, _)| l.is_ipv6()) && order.iter().any(|(l, _)| l.is_ipv4()),
        "both families listed"
    );
    assert!(kato.len() >= 1000, "only {} sockets", kato.len());
    let (kset, sset): (BTreeSet<_>, BTreeSet<_>) = (kmap.keys().collect(), smap.keys().collect());
    assert_eq!(
        kset,
        sset,
        "kato and ss list different sockets: only kato {:?}, only ss {:?}",
        kset.difference(&sset).collect::<Vec<_>>(),
        sset.difference(&kset).collect::<Vec<_>>()
    );

    // Printed as read, holding no rows: the same sockets, owners and
    // settings (the times move between the two reads).
    let streamed: Vec<Value> = serde_json::from_slice(&streamed).expect("streamed JSON");
    assert_eq!(
        streamed.len(),
        kato.len(),
        "--sort none lists each socket once"
    );
    for v in &streamed {
        let k = key(&v["local"], &v["remote"]);
        let held = kmap
            .get(&k)
            .unwrap_or_else(|| panic!("--sort none lists {k:?}, the sorted listing does not"));
        for field in [
            "state",
            "pid",
            "comm",
            "cookie",
            "inode",
            "keepalive",
            "cgroup",
        ] {
            assert_eq!(v[field], held[field], "{field} of {k:?}");
        }
    }
    let own = streamed
        .iter()
        .filter(|v| v["pid"].as_u64() == Some(u64::from(std::process::id())))
        .count();
    assert!(own >= 900, "{own} sockets owned by this test's process");
    // Sorted with the owner's part of the filter, which waits for the
    // owners read beside the sockets: the same sockets.
    let mine: Vec<Value> = serde_json::from_slice(&mine).expect("kato --pid JSON");
    assert_eq!(mine.len(), own, "--pid lists the test's own sockets");
    assert!(mine
        .iter()
        .all(|v| v["pid"].as_u64() == Some(u64::from(std::process::id()))));

    // The sock_diag fallback sees the same sockets, states and timer kinds.
    let diag: Vec<Value> = serde_json::from_slice(&diag).expect("diag JSON");
    let dmap: HashMap<_, &Value> = diag
        .iter()
        .map(|v| (key(&v["local"], &v["remote"]), v))
        .collect();
    assert_eq!(
        dmap.keys().collect::<BTreeSet<_>>(),
        kset,
        "sock_diag and iterator sets differ"
    );
    for (k, d) in &dmap {
        assert_eq!(d["state"], kmap[k]["state"], "{k:?}");
        assert_eq!(d["timer"]["kind"], kmap[k]["timer"]["kind"], "{k:?}");
        assert!(
            d["keepalive"].is_null(),
            "sock_diag cannot know keepalive settings"
        );
        // Identity without kernel addresses: the iterator's cookie is the
        // kernel's own (inet_diag's idiag_cookie, `ss -e`'s `sk:`).
        assert!(kmap[k]["cookie"].as_u64().is_some_and(|c| c > 0), "{k:?}");
        assert_eq!(d["cookie"], kmap[k]["cookie"], "cookie of {k:?}");
    }
    assert!(
        kato.iter().chain(&diag).all(|v| v.get("sock").is_none()),
        "no kernel address without --show-kernel-addresses"
    );

    let mut kinds: HashMap<&str, usize> = HashMap::new();
    let mut probing = 0;
    for (k, s) in &smap {
        let v = kmap[k];
        assert_eq!(v["state"], s.state.as_str(), "state of {k:?}");
        let kt = &v["timer"];
        let kind = timer_kind(s.timer.as_ref().map(|t| t.kind.as_str()));
        assert_eq!(
            kt["kind"], kind,
            "timer kind of {k:?}: kato {kt}, ss {:?}",
            s.timer
        );
        *kinds.entry(kind).or_default() += 1;
        let Some(t) = &s.timer else { continue };
        // Counted from kato's side before the comparability cut below: on
        // a slow (emulated) CPU the reads are seconds apart and every 8 s
        // probe interval may be within it.
        if kind == "keepalive" && kt["probes"].as_u64().unwrap_or(0) > 0 {
            probing += 1;
        }
        let left = kt["remaining_s"].as_f64().unwrap();
        // A timer that could have fired between the two reads cannot be compared.
        if left <= dt + 0.1 {
            continue;
        }
        assert!(
            t.secs <= left + 0.1 && t.secs >= left - dt - t.unit - 0.1,
            "timer of {k:?}: kato {left:.3}s, ss {}s (unit {}), reads {dt:.3}s apart",
            t.secs,
            t.unit
        );
        let count = if kind == "keepalive" {
            &kt["probes"]
        } else {
            &kt["retransmits"]
        };
        assert_eq!(
            count.as_u64().unwrap(),
            u64::from(t.retrans),
            "probe/retransmit count of {k:?}"
        );
    }
    eprintln!(
        "agreement: {} sockets, timers {kinds:?}, {probing} probing, reads {dt:.3}s apart",
        kato.len()
    );
    assert!(
        kinds.get("keepalive").copied().unwrap_or(0) > 300,
        "{kinds:?}"
    );
    assert!(
        kinds.get("time_wait").copied().unwrap_or(0) >= 13,
        "TIME_WAIT and orphaned FIN_WAIT2: {kinds:?}"
    );
    assert!(
        probing >= 15,
        "dead-peer sockets with probes out: {probing} ({kinds:?})"
    );
    let fin_wait2 = kato.iter().filter(|v| v["state"] == "FIN_WAIT2").count();
    assert_eq!(fin_wait2, 6, "3 orphaned + 3 half-closed");

    // Effective settings: what getsockopt says, with the right source.
    for (local, remote, (on, idle, intvl, cnt)) in &opts {
        let v = kmap
            .get(&(*local, *remote))
            .unwrap_or_else(|| panic!("kato misses {local} -> {remote}"));
        let ka = &v["keepalive"];
        assert_eq!(ka["enabled"], *on, "{local} -> {remote}");
        assert_eq!(ka["idle_s"]["value"], *idle, "{local} -> {remote}");
        assert_eq!(ka["interval_s"]["value"], *intvl, "{local} -> {remote}");
        assert_eq!(ka["count"]["value"], *cnt, "{local} -> {remote}");
        if *idle == 600 {
            assert_eq!(
                ka["idle_s"]["source"], "sysctl",
                "the namespace's own sysctl"
            );
        }
    }
    let sysctl_sourced = opts.iter().filter(|o| o.2 .1 == 600).count();
    assert!(
        sysctl_sourced > 100,
        "{sysctl_sourced} sockets on the netns default"
    );
}

/// `kato sockets --watch` merges events into the snapshots: a socket probing a
/// dead peer shows the probes kato saw go out, and leaves the table once the
/// kernel gives up on it.
#[test]
fn watch_counts_probes_and_drops_closed_sockets() {
    use std::io::BufRead;
    require_root();
    let ns = Netns::new("watch");
    let mut kato = Command::new(KATO)
        .args([
            "sockets",
            "--watch",
            "0.5",
            "--output",
            "json",
            "--netns",
            &ns.name,
            "--keepalive",
            "on",
            "--attach",
            attach_arg(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = std::io::BufReader::new(kato.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    // Wait for the first refresh so the tracer is attached before the socket exists.
    // Start-up includes verifying every program: under the VM's software
    // emulation that took over 10 s once the iterators read with plain loads.
    lines_rx
        .recv_timeout(Duration::from_secs(40))
        .expect("first refresh");

    let peer = crate::support::DeadPeer::start(&ns, false);
    let (local, remote) = (peer.local, peer.remote);

    let mut max_sent = 0;
    let mut gone_after_probing = false;
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && !gone_after_probing {
        let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(2)) else {
            continue;
        };
        let table: Vec<Value> = serde_json::from_str(&line).unwrap();
        match table.iter().find(|v| v["local"] == local.to_string()) {
            Some(v) => {
                assert_eq!(v["remote"], remote.to_string());
                max_sent = max_sent.max(v["probes_sent"].as_u64().unwrap_or(0));
                assert!(
                    v["probes_answered"].as_u64().unwrap_or(0) == 0,
                    "dead peer never answers: {v}"
                );
            }
            None => gone_after_probing = max_sent > 0,
        }
    }
    peer.wait();
    let _ = kato.kill();
    let _ = kato.wait();
    assert!(max_sent >= 2, "probes kato counted: {max_sent}");
    assert!(gone_after_probing, "the closed socket left the table");
}

/// `kato sockets ARGS` in `ns` as JSON, with the loader's debug log: each
/// row without the fields that move with time, and the log.
fn listing_and_log(ns: &Netns, args: &[&str]) -> (BTreeSet<String>, String) {
    let out = Command::new(KATO)
        .args(["sockets", "--output", "json", "--netns", &ns.name])
        .args(args)
        .env(
            "RUST_LOG",
            "keepalive_user::bpf=debug,keepalive_user::kernel=debug",
        )
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kato sockets: {log}");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("kato JSON");
    let rows = rows
        .into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            for moving in ["time", "idle_s", "last_data_recv_s", "last_data_sent_s"] {
                o.remove(moving);
            }
            o["timer"].as_object_mut().unwrap().remove("remaining_s");
            r.to_string()
        })
        .collect();
    (rows, log)
}

/// A listing keeps what it resolved from the kernel's BTF in
/// /run/kato/facts/kernel.json (root's, 0600 in 0700); the next listing of
/// the same boot by the same binary loads from it without parsing the BTF
/// and lists every socket exactly as a listing that parsed (`--btf` at a
/// copy of the kernel's BTF: never cached) does: keepalive settings, owner,
/// timer, queues. A file that is not an entry is ignored. (Other tests list
/// at the same time with the same binary: the file may be rewritten between
/// two steps, with the same entry, never torn.)
#[test]
fn listings_keep_the_kernel_facts_for_the_next() {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let ns = Netns::new("factcache");
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (up_tx, up_rx) = mpsc::channel();
    let holder = ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let held: Vec<_> = (0..20)
            .flat_map(|i| {
                let c = TcpStream::connect(to).unwrap();
                if i % 2 == 0 {
                    keepalive(&c, 600 + i, 30, 4);
                }
                [c, l.accept().unwrap().0]
            })
            .collect();
        up_tx.send(()).unwrap();
        let _ = done_rx.recv();
        drop((held, l));
    });
    up_rx.recv().unwrap();

    let copy = std::env::temp_dir().join(format!("kato-btf-{}", std::process::id()));
    std::fs::copy("/sys/kernel/btf/vmlinux", &copy).unwrap();
    let (parsed, log) = listing_and_log(&ns, &["--btf", copy.to_str().unwrap()]);
    std::fs::remove_file(&copy).unwrap();
    assert!(log.contains("BTF parsed"), "{log}");
    assert_eq!(parsed.len(), 41, "{parsed:?}");
    assert_eq!(
        parsed
            .iter()
            .filter(|r| r.contains("\"source\":\"socket\""))
            .count(),
        10,
        "{parsed:?}"
    );

    let (first, _) = listing_and_log(&ns, &[]);
    let file = std::path::Path::new("/run/kato/facts/kernel.json");
    let meta = std::fs::metadata(file).expect("a listing kept the facts");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let dir = std::fs::metadata("/run/kato/facts").unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o777), (0, 0o700));
    let (second, log) = listing_and_log(&ns, &[]);
    assert!(log.contains("kernel facts from /run/kato/facts"), "{log}");
    assert!(!log.contains("BTF parsed"), "{log}");
    assert_eq!(parsed, first);
    assert_eq!(parsed, second);

    // Not an entry: ignored, the BTF parsed again, the same listing.
    let tmp = file.with_extension("test-garbage");
    std::fs::write(&tmp, "{\"key\": 1}").unwrap();
    std::fs::rename(&tmp, file).unwrap();
    let (third, _) = listing_and_log(&ns, &[]);
    assert_eq!(parsed, third);
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains("boot_id"),
        "the file was not rewritten: {text}"
    );

    done_tx.send(()).unwrap();
    holder.join().unwrap();
}
