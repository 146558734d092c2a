//! Conntrack as the middlebox: a namespace that tracks its flows (an nft
//! `ct state` rule) and forgets established ones after 20 s. No idle
//! timeout is declared; kato finds this one by itself.

use std::{
    net::{SocketAddr, TcpListener},
    process::Command,
    sync::mpsc,
};

use serde_json::Value;

use crate::support::{attach_arg, client, keepalive, require_root, run, Netns};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// A namespace whose conntrack is on, with a 20 s established timeout.
pub fn tracking_namespace(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.nft(
        "add table inet kato; add chain inet kato in { type filter hook input priority 0; }; \
         add rule inet kato in ct state established,related accept",
    );
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_tcp_timeout_established=20",
    ]);
    ns
}

/// Holds a keepalive client (idle 60 s: slower than conntrack) and an
/// untracked-looking one with keepalive off, both connected over loopback.
fn hold(ns: &Netns) -> (mpsc::Sender<()>, SocketAddr, SocketAddr) {
    let (tx, rx) = mpsc::channel();
    let (done, wait) = mpsc::channel::<()>();
    ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let slow = client(to, |s| keepalive(s, 60, 10, 3));
        let off = client(to, |_| {});
        let held = (l.accept().unwrap(), l.accept().unwrap());
        tx.send((slow.local_addr().unwrap(), off.local_addr().unwrap()))
            .unwrap();
        let _ = wait.recv();
        drop((slow, off, held));
    });
    let (slow, off) = rx.recv().unwrap();
    (done, slow, off)
}

fn sockets_json(ns: &Netns) -> Vec<Value> {
    sockets_json_with(ns, &[])
}

fn sockets_json_with(ns: &Netns, more: &[&str]) -> Vec<Value> {
    let out = run(Command::new(KATO)
        .args([
            "sockets",
            "--netns",
            &ns.name,
            "--state",
            "established",
            "--no-cloud-defaults",
            "--output",
            "json",
            "--attach",
            attach_arg(),
        ])
        .args(more));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn find(socks: &[Value], local: SocketAddr) -> &Value {
    socks
        .iter()
        .find(|s| s["local"] == local.to_string())
        .unwrap_or_else(|| panic!("{local} missing: {socks:?}"))
}

#[test]
fn a_keepalive_slower_than_conntrack_is_at_risk_without_any_declared_timeout() {
    require_root();
    let ns = tracking_namespace("ct");
    let (_done, slow, off) = hold(&ns);
    // conntrack itself agrees there is an entry counting down from 20.
    let listed = ns.exec(&[
        "conntrack",
        "-L",
        "-p",
        "tcp",
        "--sport",
        &slow.port().to_string(),
    ]);
    assert!(listed.contains("ESTABLISHED"), "{listed}");

    let socks = sockets_json(&ns);
    let s = find(&socks, slow);
    let remaining = s["conntrack"]["remaining_s"]
        .as_u64()
        .unwrap_or_else(|| panic!("{s}"));
    assert!((1..=20).contains(&remaining), "{s}");
    assert_eq!(s["conntrack"]["state"], "established", "{s}");
    assert_eq!(s["risk"], "at-risk", "60 s + 10 s is not under 20 s: {s}");
    assert_eq!(s["idle_timeout_source"], "conntrack", "{s}");
    assert_eq!(
        s["idle_timeout"], "nf_conntrack_tcp_timeout_established=20s",
        "{s}"
    );
    let o = find(&socks, off);
    assert_eq!(
        (o["risk"].as_str(), o["idle_timeout_source"].as_str()),
        (Some("unprotected"), Some("conntrack")),
        "{o}"
    );
    // Printed as read (every entry dumped first, not the flows asked
    // about): the same entry, risk and source.
    let streamed = sockets_json_with(&ns, &["--sort", "none"]);
    for (local, risk) in [(slow, "at-risk"), (off, "unprotected")] {
        let v = find(&streamed, local);
        assert_eq!(v["risk"], risk, "{v}");
        assert_eq!(v["idle_timeout_source"], "conntrack", "{v}");
        assert_eq!(v["conntrack"]["state"], "established", "{v}");
    }
    let remaining = find(&streamed, slow)["conntrack"]["remaining_s"].as_u64();
    assert!(
        remaining.is_some_and(|r| (1..=20).contains(&r)),
        "{remaining:?}"
    );

    // The table: a CT column with the seconds left, `-` for the listener.
    let table = run(Command::new(KATO).args([
        "sockets",
        "--netns",
        &ns.name,
        "--no-cloud-defaults",
        "--attach",
        attach_arg(),
    ]));
    let header = table.lines().next().unwrap();
    let at = header.find(" CT").unwrap() + 1;
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(&slow.to_string()))
        .unwrap_or_else(|| panic!("{table}"));
    let cell = row[at..].split_whitespace().next().unwrap();
    let secs: u64 = cell
        .strip_suffix('s')
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("CT `{cell}`:\n{table}"));
    assert!((1..=20).contains(&secs), "{table}");
    assert!(
        row.contains("at-risk (nf_conntrack_tcp_timeout_established=20s)"),
        "{table}"
    );
    let listener = table.lines().find(|l| l.contains("LISTEN")).unwrap();
    assert_eq!(
        listener[at..].split_whitespace().next(),
        Some("-"),
        "{table}"
    );
}

#[test]
fn without_conntrack_nothing_is_tracked_and_risk_stays_unknown() {
    require_root();
    let ns = Netns::new("noct");
    let (_done, slow, _) = hold(&ns);
    let socks = sockets_json(&ns);
    let s = find(&socks, slow);
    assert!(s["conntrack"].is_null(), "{s}");
    assert!(s["risk"].is_null() || s["risk"] == "unknown", "{s}");
}
