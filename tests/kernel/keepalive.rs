//! The keepalive life cycle seen through kato: a dead peer, a healthy peer.

use std::{
    io::{Read, Write},
    sync::mpsc,
    time::Duration,
};

use keepalive_user::events::{Kind, ETIMEDOUT};

use crate::support::{count, kinds, pair, without_listener, Collector, DeadPeer, Netns, Seen};

const TCP_KEEPALIVE_TIMEOUT: u32 = 15;

fn is_done(seen: &[Seen]) -> bool {
    count(seen, Kind::KeepaliveTimeout) > 0 && count(seen, Kind::ResetSent) > 0
}

/// Keepalive 1 s / 1 s / 3 probes, the peer's packets dropped from the start:
/// exactly three probes, then the kernel's keepalive reset and ETIMEDOUT.
fn dead_peer(v6: bool) {
    let mut collector = Collector::start();
    let ns = Netns::new(if v6 { "dead6" } else { "dead4" });
    let peer = DeadPeer::start(&ns, v6);
    let (local, remote) = (peer.local, peer.remote);

    let seen = collector.collect(ns.inode, Duration::from_secs(20), |s| {
        is_done(s) && s.iter().any(|e| e.kind == Kind::ResetReceived)
    });
    let err = peer.wait();
    assert_eq!(err.raw_os_error(), Some(ETIMEDOUT), "read error: {err}");

    // The server side has no keepalive: all it sees is the client's reset
    // (the drop rule only stops packets towards the client), possibly after
    // its own FIN when the test closes it before loopback delivered the
    // reset. Anything else in the namespace is the client's socket.
    assert!(!seen.is_empty(), "no events seen");
    let (server_side, seen): (Vec<Seen>, Vec<Seen>) = without_listener(seen)
        .into_iter()
        .partition(|s| s.rec.local == remote);
    for s in &server_side {
        assert!(
            matches!(
                s.kind,
                Kind::ResetReceived | Kind::FinSent | Kind::Closed | Kind::SocketError
            ),
            "server socket: {s:?}"
        );
    }
    let sk = seen[0].rec.sk;
    for s in &seen {
        assert_eq!(
            (s.rec.sk, s.rec.local, s.rec.remote),
            (sk, local, remote),
            "unexpected event {s:?}"
        );
    }
    let closed = seen
        .iter()
        .find(|s| s.kind == Kind::Closed)
        .expect("the client's close");
    assert_eq!(
        closed.rec.state_before,
        keepalive_user::tcp::TcpState::Established
    );
    assert_eq!(seen[0].kind, Kind::Armed, "first event: {:?}", kinds(&seen));
    assert!(
        seen.iter().any(|s| s.kind.is_firing()),
        "no timer firing: {:?}",
        kinds(&seen)
    );

    let outcome: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                Kind::ProbeSent | Kind::ResetSent | Kind::KeepaliveTimeout
            )
        })
        .collect();
    let outcome_kinds: Vec<Kind> = outcome.iter().map(|s| s.kind).collect();
    assert_eq!(
        outcome_kinds,
        [
            Kind::ProbeSent,
            Kind::ProbeSent,
            Kind::ProbeSent,
            Kind::ResetSent,
            Kind::KeepaliveTimeout
        ],
        "all events: {:?}",
        kinds(&seen)
    );
    assert_eq!(count(&seen, Kind::PeerAnswered), 0);
    let hz = collector.bpf.kernel.hz;
    for (i, p) in outcome[..3].iter().enumerate() {
        assert_eq!(p.probes as usize, i + 1, "probe count of probe {i}");
        // Re-armed for TCP_KEEPINTVL = 1 s. The record's clock is read after
        // the callback re-armed the timer: a tick can fall in between
        // (under qemu's TCG it did, 0.996 s at HZ 250), never more than two.
        let remaining = p.rec.timer_remaining(hz).expect("a pending timer");
        let tick = 1.0 / f64::from(hz);
        assert!(
            (1.0 - 2.0 * tick - 1e-9..=1.0 + 1e-9).contains(&remaining),
            "deadline after probe {i}: {remaining} s, not TCP_KEEPINTVL's 1 s"
        );
    }
    let reset = outcome[3];
    let kernel = &collector.bpf.kernel;
    let names = &kernel.reset_reasons;
    assert!(
        reset.rec.in_keepalive_timer,
        "the reset comes from the keepalive timer: {:?}",
        reset.rec
    );
    let names = keepalive_user::events::ResetReasons(names.clone());
    let name = |rec| names.of(rec).map(|r| (r.name.into_owned(), r.inferred));
    if kernel.config.has_reset_reason != 0 {
        // 6.12+: the kernel's own word.
        assert_eq!(reset.rec.reason, Some(TCP_KEEPALIVE_TIMEOUT));
        assert_eq!(
            name(&reset.rec),
            Some(("TCP_KEEPALIVE_TIMEOUT".into(), false))
        );
    } else {
        // Older kernels: no reason argument; kato names it from the context.
        assert_eq!(reset.rec.reason, None);
        assert_eq!(
            name(&reset.rec),
            Some(("TCP_KEEPALIVE_TIMEOUT".into(), true))
        );
    }
    let timeout = outcome[4];
    assert_eq!(timeout.rec.sk_err, ETIMEDOUT);
    assert_eq!(timeout.probes, 3);
    assert!(
        timeout.rec.expires.is_none(),
        "no timer left after the timeout"
    );
    // The owner is told ETIMEDOUT from inside the keepalive timer run.
    let err = seen
        .iter()
        .find(|s| s.kind == Kind::SocketError)
        .expect("socket_error for the client");
    assert_eq!(
        (err.rec.sk_err, error_text(&err.rec).as_str()),
        (ETIMEDOUT, "ETIMEDOUT (keepalive)")
    );
    // Dead-peer detection time: idle 1 s + 3 probes 1 s apart = about 4 s
    // since the peer was last heard from.
    let idle = timeout.rec.idle_secs(hz).unwrap();
    assert!(
        (3.9..=4.5).contains(&idle),
        "idle before the timeout: {idle}"
    );
}

#[test]
fn dead_peer_ipv4_three_probes_then_keepalive_reset() {
    dead_peer(false);
}

#[test]
fn dead_peer_ipv6_three_probes_then_keepalive_reset() {
    dead_peer(true);
}

/// A dead peer found by data instead: unacknowledged writes and
/// TCP_USER_TIMEOUT, keepalive off. kato names the same ETIMEDOUT as
/// retransmissions giving up, not keepalive.
#[test]
fn dead_peer_found_by_retransmissions_is_named() {
    let mut collector = Collector::start();
    let ns = Netns::new("retrans");
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = ns.spawn(move || {
        let (mut client, server) = pair(false, 0, 0, 0);
        crate::support::setsockopt_pub(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 1500);
        tx.send(server.local_addr().unwrap()).unwrap();
        go_rx.recv().unwrap();
        client.write_all(b"hello?").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let res = client.read(&mut [0u8; 1]);
        drop(server);
        res
    });
    let remote = rx.recv().unwrap();
    ns.drop_from_port(remote.port());
    go_tx.send(()).unwrap();
    let seen = collector.collect(ns.inode, Duration::from_secs(20), |s| {
        s.iter().any(|e| e.kind == Kind::SocketError)
    });
    let err = worker
        .join()
        .expect("worker")
        .expect_err("the write must time out");
    assert_eq!(err.raw_os_error(), Some(ETIMEDOUT), "read error: {err}");
    let report = seen
        .iter()
        .find(|s| s.kind == Kind::SocketError)
        .unwrap_or_else(|| panic!("no socket_error: {:?}", kinds(&seen)));
    assert_eq!(report.rec.remote, remote);
    assert_eq!(report.rec.sk_err, ETIMEDOUT);
    assert!(!report.rec.in_keepalive_timer);
    assert_eq!(error_text(&report.rec), "ETIMEDOUT (retransmits)");
    assert!(
        !seen.iter().any(|s| s.kind.is_firing()),
        "keepalive is off: {:?}",
        kinds(&seen)
    );
}

/// A healthy idle connection: every probe is answered, nothing times out.
#[test]
fn healthy_idle_peer_answers_probes() {
    let mut collector = Collector::start();
    let ns = Netns::new("healthy");
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = ns.spawn(move || {
        let (mut client, mut server) = pair(false, 1, 1, 3);
        tx.send(client.local_addr().unwrap()).unwrap();
        // Idle until the collector has what it needs, then prove the
        // connection still works.
        let _ = done_rx.recv_timeout(Duration::from_secs(15));
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        buf
    });
    let local = rx.recv().unwrap();
    let seen = collector.collect(ns.inode, Duration::from_secs(10), |s| {
        count(s, Kind::PeerAnswered) >= 2
    });
    done_tx.send(()).unwrap();
    assert_eq!(&worker.join().unwrap(), b"ping");

    // Apart from the test's listener closing, only the client has events.
    let seen = without_listener(seen);
    assert!(
        seen.iter().all(|s| s.rec.local == local),
        "only the client socket has keepalive: {seen:?}"
    );
    assert_eq!(count(&seen, Kind::Closed), 0, "nothing else closed");
    assert_eq!(count(&seen, Kind::KeepaliveTimeout), 0);
    assert_eq!(count(&seen, Kind::ResetSent), 0);
    assert!(
        count(&seen, Kind::PeerAnswered) >= 2,
        "events: {:?}",
        kinds(&seen)
    );
    // Probes and answers alternate: each answer follows a probe, one probe out.
    let pairs: Vec<Kind> = kinds(&seen)
        .into_iter()
        .filter(|k| matches!(k, Kind::ProbeSent | Kind::PeerAnswered))
        .collect();
    for w in pairs.windows(2) {
        assert_ne!(w[0], w[1], "probe/answer must alternate: {pairs:?}");
    }
    assert_eq!(pairs[0], Kind::ProbeSent);
    for s in seen.iter().filter(|s| s.kind == Kind::PeerAnswered) {
        assert_eq!(s.probes, 1, "one probe was out when the peer answered");
    }
}

/// The text kato shows for an error report.
fn error_text(rec: &keepalive_user::events::Record) -> String {
    keepalive_user::events::SocketError::of(rec)
        .expect("an error report")
        .to_string()
}
