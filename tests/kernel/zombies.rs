//! Zombies and forgotten paths through a real NAT router (client and
//! server namespaces, a third that masquerades and forgets established
//! flows after 3 s): a connection nothing crossed for longer is
//! `forgotten`, one kept alive by its peer's probes is not; the first send
//! after the router forgot is an idle kill whether the router resets or
//! drops; the agent finds the router's conntrack by itself.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::{
    agent_support::{sample, Agent},
    middlebox::{echo, serve_n, topology_where_forgotten_flows},
    servers::Trace,
    support::{client, keepalive, require_root, setsockopt_pub},
};

fn sockets(agent: &Agent) -> Vec<Value> {
    let (_, body) = agent.get("/sockets?state=established");
    serde_json::from_str(&body).unwrap()
}

/// The socket whose local address (`end` "local") or remote address is `a`.
fn by<'a>(all: &'a [Value], end: &str, a: SocketAddr) -> &'a Value {
    all.iter()
        .find(|s| s[end] == a.to_string())
        .unwrap_or_else(|| panic!("no socket with {end} {a}: {all:#?}"))
}

/// The server's end of a client connection seen through the NAT: its
/// remote port is the router's, so it is found by the client's flow in the
/// router's conntrack table (`conntrack -L`: original src port -> reply dst
/// port).
fn nat_port(nat: &crate::support::Netns, client: SocketAddr) -> Option<u16> {
    let out = nat.exec(&["conntrack", "-L", "-p", "tcp"]);
    out.lines()
        .find(|l| l.contains(&format!("sport={} ", client.port())))
        .and_then(|l| {
            l.split_whitespace()
                .filter_map(|w| w.strip_prefix("dport="))
                .nth(1)
                .and_then(|p| p.parse().ok())
        })
}

#[test]
fn a_zombie_is_forgotten_and_a_peer_kept_alive_is_not() {
    require_root();
    let t = topology_where_forgotten_flows("reject with tcp reset");
    let _server = serve_n(&t.server, 3);
    // No rule: the router's conntrack (3 s) is found by itself, across
    // namespaces (the sockets live in the client's and the server's).
    let agent = Agent::start(&[
        "--netns",
        &t.client.name,
        "--netns",
        &t.nat.name,
        "--netns",
        &t.server.name,
        "--no-cloud-defaults",
        "--snapshot-interval",
        "500ms",
    ]);
    // A declared rule and no view of the router: silence alone.
    let blind = Agent::start(&[
        "--netns",
        &t.client.name,
        "--netns",
        &t.server.name,
        "--no-cloud-defaults",
        "--idle-timeout",
        "10.71.2.0/24:8000=3s",
        "--snapshot-interval",
        "500ms",
    ]);
    let trace = Trace::start(&[
        "--netns",
        &t.client.inode.to_string(),
        "--idle-timeout",
        "10.71.2.0/24=3s",
    ]);
    let (tx, rx) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = t.client.spawn(move || {
        let to: SocketAddr = "10.71.2.2:8000".parse().unwrap();
        let mut zombie = client(to, |_| {});
        // The client's keepalive keeps the flow (and the server's end) alive.
        let mut kept = client(to, |s| keepalive(s, 1, 1, 5));
        let mut last = client(to, |_| {});
        for s in [&mut zombie, &mut kept, &mut last] {
            echo(s, b"hello").unwrap();
        }
        tx.send([zombie.local_addr().unwrap(), kept.local_addr().unwrap()])
            .unwrap();
        // Until the test has seen all four ends forgotten (under emulation,
        // doctor alone can take longer than a fixed wait).
        go_rx.recv().unwrap();
        last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let killed = echo(&mut last, b"again");
        (killed, zombie, kept)
    });
    let [zombie, kept] = rx.recv().unwrap();
    let t_nat_inode = t.nat.inode;
    std::thread::sleep(Duration::from_secs(1));
    let (z_srv, k_srv) = (
        nat_port(&t.nat, zombie).expect("the router tracks the zombie's flow"),
        nat_port(&t.nat, kept).expect("the router tracks the kept flow"),
    );
    let server_end = |all: &[Value], port: u16| -> Value {
        all.iter()
            .find(|s| {
                s["local"] == "10.71.2.2:8000"
                    && s["remote"].as_str().unwrap().ends_with(&format!(":{port}"))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no server end for NAT port {port}: {all:#?}"))
    };
    // While both still live: the router's timeout judges them.
    let all = sockets(&agent);
    let z = by(&all, "local", zombie);
    assert_eq!(
        (z["risk"].as_str(), z["idle_timeout_source"].as_str()),
        (Some("unprotected"), Some("conntrack")),
        "the router's table, from the client's namespace: {z}"
    );
    assert_eq!(z["conntrack"]["netns"], t.nat.inode, "{z}");
    // Doctor, with no rule either, applies the router's table to the
    // connections in the other namespaces.
    let doctor = crate::support::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_kato")).args([
            "doctor",
            "--no-cloud-defaults",
            "--output",
            "json",
        ]),
    );
    let d: Value = serde_json::from_str(&doctor).unwrap();
    let router = d["timeouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["source"] == "conntrack"
                && t["namespaces"]
                    .as_array()
                    .unwrap()
                    .contains(&Value::from(t_nat_inode))
        })
        .unwrap_or_else(|| panic!("{doctor}"));
    assert_eq!(router["timeout_s"], 3.0, "{router}");
    // The kept flow is tracked whenever doctor looks (under emulation its
    // start can take longer than the idle ones last): its client end is
    // safe, its server end (keepalive off; one look cannot see the peer's
    // probes) unprotected, each judged by the router's table.
    assert!(
        router["safe"].as_u64().unwrap() >= 1 && router["unprotected"].as_u64().unwrap() >= 1,
        "{router}"
    );

    // Past 3 s: the router forgot the idle flow (conntrack -L says so),
    // the client's probes kept the other.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(nat_port(&t.nat, zombie), None, "conntrack -L: forgotten");
    assert!(nat_port(&t.nat, kept).is_some(), "conntrack -L: kept");
    let all = sockets(&agent);
    for (what, s) in [
        ("zombie client", by(&all, "local", zombie).clone()),
        ("zombie server", server_end(&all, z_srv)),
    ] {
        assert_eq!(s["risk"], "forgotten", "{what}: {s}");
        assert_eq!(s["conntrack"]["state"], "forgotten", "{what}: {s}");
    }
    let k = by(&all, "local", kept);
    assert_eq!(k["risk"], "safe", "{k}");
    let k = server_end(&all, k_srv);
    assert_eq!(
        k["risk"], "peer-protected",
        "keepalive off, the client's probes pass: {k}"
    );
    // The zombie's two ends and the last one's, idle as long (each judged
    // at the census after its entry went: under emulation, a moment apart).
    agent.wait_metrics(Duration::from_secs(10), |m| {
        sample(
            m,
            "kato_sockets_idle_timeout_risk{class=\"forgotten\",source=\"conntrack\"}",
        ) == 4.0
    });
    // Without the router's table, from silence alone (watched > 3 s).
    let all = sockets(&blind);
    assert_eq!(by(&all, "local", zombie)["risk"], "forgotten");
    assert_eq!(server_end(&all, z_srv)["risk"], "forgotten");
    assert_ne!(server_end(&all, k_srv)["risk"], "forgotten");
    let k = by(&all, "local", kept);
    assert_eq!(k["risk"], "safe", "{k}");

    // The first send after the router forgot meets its reset: an idle kill.
    go.send(()).unwrap();
    let (killed, _z, _k) = worker.join().unwrap();
    let err = killed.expect_err("the router forgot the flow");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(
            m,
            "kato_idle_kills_suspected_total{path=\"conntrack\",source=\"conntrack\"}",
        ) == 1.0
    });
    assert_eq!(
        sample(&m, "kato_keepalive_timeouts_total"),
        0.0,
        "nobody's peer died: {m}"
    );
    let all = trace.drain(Duration::from_secs(1));
    assert_eq!(
        all.iter()
            .filter(|v| v["event"] == "idle_kill_suspected")
            .count(),
        1,
        "{all:#?}"
    );
}

/// A router that drops what it forgot: the first send after the silence is
/// retransmitted until TCP_USER_TIMEOUT gives up (ETIMEDOUT from
/// retransmissions), and that is an idle kill too.
#[test]
fn a_dropping_router_kills_the_first_send_after_idle() {
    require_root();
    let t = topology_where_forgotten_flows("drop");
    let _server = serve_n(&t.server, 1);
    let trace = Trace::start(&[
        "--netns",
        &t.client.inode.to_string(),
        "--idle-timeout",
        "10.71.2.0/24=3s",
    ]);
    let err = t
        .client
        .spawn(|| {
            let to: SocketAddr = "10.71.2.2:8000".parse().unwrap();
            let mut s = client(to, |s: &TcpStream| {
                setsockopt_pub(s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 2000);
            });
            echo(&mut s, b"hello").unwrap();
            std::thread::sleep(Duration::from_secs(5));
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            echo(&mut s, b"again").expect_err("dropped")
        })
        .join()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    let all = trace.drain(Duration::from_secs(1));
    let kill = all
        .iter()
        .find(|v| v["event"] == "idle_kill_suspected")
        .unwrap_or_else(|| panic!("{all:#?}"));
    assert_eq!(kill["remote"], "10.71.2.2:8000");
    assert!(
        all.iter()
            .any(|v| v["event"] == "socket_error" && v["error"] == "ETIMEDOUT (retransmits)"),
        "{all:#?}"
    );
    assert!(
        !all.iter().any(|v| v["event"] == "keepalive_timeout"),
        "{all:#?}"
    );
}
