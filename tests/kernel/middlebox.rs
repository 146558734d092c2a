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

struct Topology {
    client: Netns,
    _nat: Netns,
    server: Netns,
}

fn topology() -> Topology {
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
    n.nft(
        "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; \
         add rule ip nat post oifname n1 masquerade; \
         add table inet filter; add chain inet filter forwarding { type filter hook forward priority 0; }; \
         add rule inet filter forwarding ct state invalid meta l4proto tcp reject with tcp reset",
    );
    // conntrack's sysctls exist once the NAT rules have loaded it.
    n.exec(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_tcp_timeout_established=3",
    ]);
    Topology {
        client: c,
        _nat: n,
        server: s,
    }
}

/// Echo server in the server namespace.
fn serve(ns: &Netns) -> std::thread::JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind("10.71.2.2:8000").unwrap();
        tx.send(()).unwrap();
        for conn in l.incoming().take(2) {
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

fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
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
            "kato_idle_kills_suspected_total{idle_timeout=\"10.71.2.0/24=3s\"}",
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
