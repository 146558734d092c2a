//! `kato sockets` takes what SREs type by `ss` and `netstat` habit, and
//! prints for pipes as well as for people.

use std::{
    net::{TcpListener, TcpStream},
    process::Command,
};

use crate::support::{require_root, Netns};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// (exit code, stdout, stderr) of `kato sockets --netns NS ARGS`, stdout a pipe.
fn sockets(ns: &Netns, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(KATO)
        .args(["sockets", "--netns", &ns.name])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const LEGEND: &str = "Keepalive: idle/interval/count";

#[test]
fn ss_and_netstat_habits_work_on_kato_sockets() {
    require_root();
    let ns = Netns::new("habits");
    let (listener, client, server) = ns
        .spawn(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            (l, c, s)
        })
        .join()
        .unwrap();
    let (lport, cport) = (
        listener.local_addr().unwrap().to_string(),
        client.local_addr().unwrap().to_string(),
    );
    let rows = |out: &str, addr: &str| out.lines().filter(|l| l.contains(addr)).count();
    // What a row is, without the times that move between two listings.
    let keys = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split_whitespace().take(6).collect::<Vec<_>>().join(" "))
            .collect()
    };

    // The netstat/ss spelling: exit 0, the header, every socket.
    let (code, out, err) = sockets(&ns, &["-tnoap"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("Proto Recv-Q Send-Q"), "{out}");
    assert_eq!(rows(&out, &cport), 2, "both ends: {out}");
    // To a pipe no legend, unless asked.
    assert!(!out.contains(LEGEND), "{out}");
    let (_, out, _) = sockets(&ns, &["--legend"]);
    assert!(out.contains(LEGEND), "{out}");
    // -H: rows only.
    let (_, out, _) = sockets(&ns, &["-H"]);
    assert!(!out.contains("Proto") && rows(&out, &cport) == 2, "{out}");

    // ss's state names and groups, repeated or comma-separated.
    let (_, estab, _) = sockets(&ns, &["-H", "--state", "estab"]);
    let (_, established, _) = sockets(&ns, &["-H", "--state", "established"]);
    assert_eq!(keys(&estab), keys(&established));
    assert_eq!(rows(&estab, &cport), 2);
    assert!(
        !estab.contains("LISTEN") && estab.contains(&lport),
        "the accepted end, not the listener: {estab}"
    );
    let (_, connected, _) = sockets(&ns, &["-H", "--state", "connected"]);
    assert_eq!(
        keys(&connected),
        keys(&estab),
        "connected: no listener here"
    );
    let (_, both, _) = sockets(&ns, &["-H", "--state", "connected,listening"]);
    assert_eq!(both.lines().count(), 3, "{both}");
    let (_, listening, _) = sockets(&ns, &["-H", "-l"]);
    assert_eq!(listening.lines().count(), 1, "{listening}");
    assert!(listening.contains("LISTEN"), "{listening}");

    // The output format no longer clashes with ss's -o.
    let (_, json, _) = sockets(&ns, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    let (_, json2, _) = sockets(&ns, &["-O", "json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json2)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Bad input: one line, exit 2.
    let (code, _, err) = sockets(&ns, &["--state", "napping"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown TCP state `napping`"), "{err}");
    drop((listener, client, server));
}

#[test]
fn unprivileged_sockets_list_through_sock_diag() {
    require_root();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            KATO,
            "sockets",
            "-l",
            "--no-cloud-defaults",
        ])
        .output()
        .expect("run setpriv");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("sock_diag"),
        "says what is missing and what it does instead: {stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|r| r.contains(&format!("127.0.0.1:{port} "))),
        "root's listener, seen as ss would: {stdout}"
    );
}
