//! A NAT that forgets idle flows, for real: client and server namespaces
//! routed through a third that masquerades with a 3 s established-flow
//! conntrack timeout and answers packets of forgotten flows with a reset.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use crate::{
    agent_support::{sample, Agent},
    support::{client, keepalive, require_root, Netns},
};

pub struct Topology {
    pub client: Netns,
    pub nat: Netns,
    pub server: Netns,
}

fn topology() -> Topology {
    topology_where_forgotten_flows("reject with tcp reset")
}

/// Client and server namespaces routed through a third that masquerades,
/// forgets established flows after 3 s without a packet, and does
/// `verdict` (`reject with tcp reset`, `drop`) to packets of forgotten flows.
pub fn topology_where_forgotten_flows(verdict: &str) -> Topology {
    let (c, n, s) = (Netns::new("natc"), Netns::new("natn"), Netns::new("nats"));
    c.ip(&format!(
        "link add c0 type veth peer name n0 netns {}",
        n.name
    ));
    n.ip(&format!(
        "link add n1 type veth peer name s0 netns {}",
        s.name
    ));
    c.ip("addr add 10.71.1.2/24 dev c0");
    n.ip("addr add 10.71.1.1/24 dev n0");
    n.ip("addr add 10.71.2.1/24 dev n1");
    s.ip("addr add 10.71.2.2/24 dev s0");
    c.ip("link set c0 up");
    n.ip("link set n0 up");
    n.ip("link set n1 up");
    s.ip("link set s0 up");
    c.ip("route add default via 10.71.1.1");
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        // No picking up of mid-stream packets: a forgotten flow stays forgotten.
        ("net.netfilter.nf_conntrack_tcp_loose", "0"),
    ] {
        n.exec(&["sysctl", "-qw", &format!("{k}={v}")]);
    }
    n.nft(&(
        "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; \
         add rule ip nat post oifname n1 masquerade; \
         add table inet filter; add chain inet filter forwarding { type filter hook forward priority 0; }; \
         add rule inet filter forwarding ct state invalid meta l4proto tcp ".to_owned() + verdict),
    );
    // conntrack's sysctls exist once the NAT rules have loaded it.
    n.exec(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_tcp_timeout_established=3",
    ]);
    Topology {
        client: c,
        nat: n,
        server: s,
    }
}

/// Echo server in the server namespace, for two connections.
fn serve(ns: &Netns) -> std::thread::JoinHandle<()> {
    serve_n(ns, 2)
}

pub fn serve_n(ns: &Netns, n: usize) -> std::thread::JoinHandle<()> {
    serve_on(ns, 8000, n)
}

/// An echo server on 10.71.2.2:`port` of `ns`, for `n` connections.
pub fn serve_on(ns: &Netns, port: u16, n: usize) -> std::thread::JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(("10.71.2.2", port)).unwrap();
        tx.send(()).unwrap();
        for conn in l.incoming().take(n) {
            let mut c = conn.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    rx.recv().unwrap();
    h
}

pub fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    assert_eq!(buf, msg);
    Ok(())
}

#[test]
fn nat_forgetting_an_idle_flow_is_reported_with_its_idle_time() {
    require_root();
    let t = topology();
    let _server = serve(&t.server);
    let agent = Agent::start(&[
        "--netns",
        &t.client.name,
        "--idle-timeout",
        "10.71.2.0/24=3s",
        "--idle-kill-min",
        "2s",
        "--snapshot-interval",
        "500ms",
    ]);
    let (tx, rx) = mpsc::channel();
    let worker = t.client.spawn(move || {
        let to = "10.71.2.2:8000".parse().unwrap();
        let mut unprotected = client(to, |_| {});
        // Keepalive every second keeps the NAT's 3 s entry fresh.
        let mut safe = client(to, |s| keepalive(s, 1, 1, 5));
        echo(&mut unprotected, b"hello").unwrap();
        echo(&mut safe, b"hello").unwrap();
        tx.send((
            unprotected.local_addr().unwrap(),
            safe.local_addr().unwrap(),
        ))
        .unwrap();
        std::thread::sleep(Duration::from_secs(5));
        unprotected
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let killed = echo(&mut unprotected, b"again");
        let kept = echo(&mut safe, b"again");
        (killed, kept)
    });
    let (unprotected, safe) = rx.recv().unwrap();

    // While they idle: classified against the declared 3 s timeout.
    std::thread::sleep(Duration::from_secs(1));
    let (_, body) = agent.get("/sockets?state=established");
    let socks: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let risk = |a: std::net::SocketAddr| {
        let s = socks
            .iter()
            .find(|s| s["local"] == a.to_string())
            .unwrap_or_else(|| panic!("{a} missing: {body}"));
        (
            s["risk"].as_str().unwrap().to_owned(),
            s["idle_timeout"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        risk(unprotected),
        ("unprotected".into(), "10.71.2.0/24=3s".into())
    );
    assert_eq!(
        risk(safe),
        ("safe".into(), "10.71.2.0/24=3s".into()),
        "1 s idle + 1 s interval < 3 s"
    );
    let (_, only) = agent.get("/sockets?risk=unprotected");
    let only: Vec<serde_json::Value> = serde_json::from_str(&only).unwrap();
    assert_eq!(only.len(), 1, "risk filter: {only:?}");
    assert_eq!(only[0]["local"], unprotected.to_string());
    let m = agent.metrics();
    assert_eq!(
        sample(
            &m,
            "kato_sockets_idle_timeout_risk{class=\"safe\",source=\"declared\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "kato_sockets_idle_timeout_risk{class=\"unprotected\",source=\"declared\"}"
        ),
        1.0,
        "{m}"
    );

    let (killed, kept) = worker.join().unwrap();
    let err = killed.expect_err("the NAT forgot the idle flow");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    kept.expect("keepalive kept the flow alive");

    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(
            m,
            "kato_idle_kills_suspected_total{path=\"10.71.2.0/24\",source=\"declared\"}",
        ) == 1.0
    });
    assert_eq!(
        sample(&m, "kato_idle_before_reset_seconds_count"),
        1.0,
        "one reset, on the unprotected connection"
    );
    let idle = sample(&m, "kato_idle_before_reset_seconds_sum");
    assert!(
        (5.0..6.0).contains(&idle),
        "idle before the reset: {idle} s (the client slept 5 s)"
    );
    assert_eq!(sample(&m, "kato_keepalive_timeouts_total"), 0.0);
}

#[test]
fn kato_learns_the_nat_timeout_from_connections_it_kept_and_killed() {
    require_root();
    let t = topology();
    let _server = serve_n(&t.server, 3);
    let state = std::env::temp_dir().join(format!("kato-learn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let agent = Agent::start(&[
        "--netns",
        &t.client.name,
        "--no-cloud-defaults",
        "--idle-kill-min",
        "2s",
        "--snapshot-interval",
        "250ms",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let worker = t.client.spawn(move || {
        let to = "10.71.2.2:8000".parse().unwrap();
        // Idle 1 s, twice: the NAT (3 s) keeps the flow.
        let mut kept = client(to, |_| {});
        for _ in 0..2 {
            echo(&mut kept, b"ping").unwrap();
            std::thread::sleep(Duration::from_millis(1000));
        }
        echo(&mut kept, b"ping").unwrap();
        // Idle 5 s: forgotten, the next write meets a reset.
        let mut killed = client(to, |_| {});
        echo(&mut killed, b"ping").unwrap();
        std::thread::sleep(Duration::from_secs(5));
        killed
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let err = echo(&mut killed, b"again").expect_err("the NAT forgot the flow");
        // A keepalive that waits 10 s: the learned bracket says at risk.
        let slow = client(to, |s| keepalive(s, 10, 5, 3));
        (err, kept, slow.local_addr().unwrap(), slow)
    });
    let (err, _kept, slow, _slow_sock) = worker.join().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

    let series = |bound: &str| {
        format!(
            "kato_idle_timeout_learned_seconds{{bound=\"{bound}\",destination=\"10.71.2.2:8000\"}}"
        )
    };
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, &series("upper")) > 0.0 && sample(m, &series("lower")) > 0.0
    });
    let (lower, upper) = (sample(&m, &series("lower")), sample(&m, &series("upper")));
    eprintln!("learned bracket for 10.71.2.2:8000: {lower:.2}-{upper:.2} s");
    // Snapshots every 250 ms see a 1 s idle as 0.75-1 s; the kill came after 5 s.
    assert!((0.7..=1.2).contains(&lower), "lower {lower}:\n{m}");
    assert!((4.9..6.0).contains(&upper), "upper {upper}:\n{m}");

    // Used for risk once both bounds exist: no rule was declared.
    let s = agent.wait_sockets_where(Duration::from_secs(3), |s| {
        s["local"] == slow.to_string() && !s["idle_timeout_source"].is_null()
    });
    assert_eq!(s["risk"], "at-risk", "{s}");
    assert_eq!(s["idle_timeout_source"], "learned", "{s}");
    assert!(
        s["idle_timeout"]
            .as_str()
            .unwrap()
            .starts_with("10.71.2.2:8000="),
        "{s}"
    );

    // Kept across restarts, for doctor too.
    let saved = std::fs::read_to_string(state.join("learned.json")).unwrap();
    assert!(saved.contains("10.71.2.2:8000"), "{saved}");
    let doctor = crate::support::run(std::process::Command::new(env!("CARGO_BIN_EXE_kato")).args(
        [
            "doctor",
            "--no-cloud-defaults",
            "--state-dir",
            state.to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    let d: serde_json::Value = serde_json::from_str(&doctor).unwrap();
    let learned = d["timeouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "learned")
        .unwrap_or_else(|| panic!("{doctor}"));
    assert!(
        learned["rule"]
            .as_str()
            .unwrap()
            .starts_with("10.71.2.2:8000="),
        "{learned}"
    );
    let _ = std::fs::remove_dir_all(&state);
}
