//! The HTTP keep-alive view counts request/response turns per socket
//! address. Sockets of namespaces nobody watches must not leave counts
//! behind: the kernel hands a freed socket's memory to the next socket, and
//! a stale entry would add its turns to a watched connection (a concurrent
//! test's sockets once made nginx's one-request connections count two).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{
    agent_support::{sample, Agent},
    support::{require_root, Netns},
};

/// A server that answers each connection's requests (`turns` of them, one
/// line each) and then closes first.
fn server(ns: &Netns, turns: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:8080").unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..turns {
                if s.read(&mut buf).unwrap_or(0) == 0 {
                    break;
                }
                s.write_all(b"ok\n").unwrap();
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// `n` connections of `turns` request/response exchanges each; the server
/// closes, then the client.
fn clients(ns: &Netns, n: usize, turns: usize) {
    ns.spawn(move || {
        for _ in 0..n {
            let mut s = TcpStream::connect("127.0.0.1:8080").unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..turns {
                s.write_all(b"GET\n").unwrap();
                assert_eq!(s.read(&mut buf).unwrap(), 3);
            }
            assert_eq!(s.read(&mut buf).unwrap(), 0, "server closed");
        }
    })
    .join()
    .unwrap();
}

#[test]
fn turns_of_unwatched_namespaces_never_count_in_watched_connections() {
    require_root();
    let (watched, other) = (Netns::new("turns"), Netns::new("turns-other"));
    let agent = Agent::start(&[
        "--netns",
        &watched.name,
        "--http-keepalive",
        "--snapshot-interval",
        "200ms",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let servers = [
        server(&watched, 1, stop.clone()),
        server(&other, 5, stop.clone()),
    ];
    // The agent tells servers from clients by the listeners its last
    // snapshot listed (a fixed sleep was too short on a loaded CI machine).
    agent.wait_sockets_where(Duration::from_secs(10), |s| {
        s["local"] == "127.0.0.1:8080" && s["state"] == "LISTEN"
    });
    // Interleaved, so that watched sockets are made from memory the
    // unwatched ones just gave back.
    let rounds = 20;
    let per_round = 10;
    for _ in 0..rounds {
        clients(&other, 20, 5);
        clients(&watched, per_round, 1);
    }
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    let total = (rounds * per_round) as f64;
    let series = |le: &str| {
        format!("kato_connection_exchanges_bucket{{closed_by=\"local_fin\",port=\"8080\",side=\"server\",le=\"{le}\"}}")
    };
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        sample(m, &series("+Inf")) == total
    });
    assert_eq!(
        sample(&m, &series("1")),
        total,
        "every watched connection served exactly one request:\n{}",
        m.lines()
            .filter(|l| l.starts_with("kato_connection_exchanges"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let clients = "kato_connection_exchanges_bucket{closed_by=\"peer_fin\",port=\"8080\",side=\"client\",le=\"1\"}";
    assert_eq!(sample(&m, clients), total, "and each client got one answer");
}
