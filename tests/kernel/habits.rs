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

/// A listener in `ns` and a connection to it (client, server); `setup`
/// runs on the client before it is returned.
pub(crate) fn connected(ns: &Netns, setup: fn(&TcpStream)) -> (TcpListener, TcpStream, TcpStream) {
    ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        setup(&c);
        (l, c, s)
    })
    .join()
    .unwrap()
}

const LEGEND: &str = "Keepalive: idle/interval/count";

#[test]
fn ss_and_netstat_habits_work_on_kato_sockets() {
    require_root();
    let ns = Netns::new("habits");
    let (listener, client, server) = connected(&ns, |_| {});
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
    let out = crate::support::unprivileged(&["sockets", "-l", "--no-cloud-defaults"]);
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

/// (exit code, stdout, stderr) of `kato ARGS`.
fn kato(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(KATO).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_flag_one_meaning_and_bad_input_is_one_line_and_exit_2() {
    require_root();
    for (args, says) in [
        (
            &["trace", "--netns", "no-such-ns"][..],
            "no network namespace `no-such-ns`",
        ),
        (
            &["sockets", "--netns", "no-such-ns"][..],
            "no network namespace `no-such-ns`",
        ),
        (&["trace", "--count", "0"][..], "--count"),
        (&["trace", "--event", "probe"][..], "unknown event `probe`"),
        (&["agent", "--listen", ":7942"][..], "0.0.0.0:7942"),
        (&["sockets", "--watch", "soon"][..], "not an interval"),
        (&["trace", "--idle-kill-min", "soon"][..], "not a duration"),
    ] {
        let (code, out, err) = kato(args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(err.trim().lines().count() <= 3, "{args:?}: {err}");
    }
}

#[test]
fn trace_takes_a_namespace_by_name_and_only_the_events_asked_for() {
    require_root();
    let ns = Netns::new("evfilter");
    let (mut trace, _err) = crate::reliability::start_trace(&[
        "--netns",
        &ns.name,
        "--event",
        "keepalive_timeout",
        "--event",
        "reset-sent",
        "--count",
        "2",
        "--output",
        "json",
        // Bare seconds, like every duration.
        "--idle-kill-min",
        "5",
    ]);
    // --state as on kato sockets: only what happened in CLOSE.
    let (mut closing, _err2) = crate::reliability::start_trace(&[
        "--netns", &ns.name, "--state", "close", "--count", "2", "--output", "json",
    ]);
    let (_local, remote) = crate::support::dead_peer(&ns);
    assert!(closing.wait().unwrap().success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut closing.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    for l in out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["state"], "CLOSE", "the probes before are left out: {out}");
    }
    let status = trace.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut trace.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["remote"], remote.to_string().as_str(), "{v}");
            v["event"].as_str().unwrap().to_owned()
        })
        .collect();
    // Probes, arming, the close and the error were there too; only these came.
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(sorted, ["keepalive_timeout", "reset_sent"], "{out}");
}

#[test]
fn sort_reverse_turns_the_listing_around() {
    require_root();
    let ns = Netns::new("reverse");
    let listeners = ns
        .spawn(|| {
            (0..3)
                .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
    let locals = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(3).unwrap().to_owned())
            .collect()
    };
    let (code, up, err) = sockets(&ns, &["-l", "--sort", "local"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, down, err) = sockets(&ns, &["-l", "--sort", "local", "--reverse"]);
    assert_eq!(code, Some(0), "{err}");
    let (mut up, down) = (locals(&up), locals(&down));
    assert_eq!(up.len(), listeners.len(), "{up:?}");
    up.reverse();
    assert_eq!(up, down);
    // --sport is the local end only, --dport the remote end only.
    let one = listeners[0].local_addr().unwrap().port().to_string();
    let (_, by_sport, _) = sockets(&ns, &["-l", "--sport", &one]);
    assert_eq!(locals(&by_sport).len(), 1, "{by_sport}");
    let (_, by_dport, _) = sockets(&ns, &["-l", "--dport", &one]);
    assert!(locals(&by_dport).is_empty(), "{by_dport}");
    // --addr takes networks too.
    let (_, inside, _) = sockets(&ns, &["-l", "--addr", "127.0.0.0/8"]);
    assert_eq!(locals(&inside).len(), listeners.len(), "{inside}");
    let (code, outside, err) = sockets(&ns, &["-l", "--addr", "10.0.0.0/8"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(locals(&outside).is_empty(), "{outside}");
}

/// `kato ARGS` on a pseudo-terminal COLS wide (util-linux `script`), with
/// `env` set: its output with `\r` taken out.
fn on_terminal(cols: usize, env: &[(&str, &str)], args: &str) -> String {
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("stty cols {cols} rows 50; {KATO} {args}"),
            "/dev/null",
        ])
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "{args}: {text}");
    text
}

/// Without colour codes.
fn plain(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, c) if c.is_ascii_alphabetic() => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

#[test]
fn on_a_terminal_the_table_fits_its_width_and_colours_what_needs_attention() {
    require_root();
    let ns = Netns::new("fit");
    let _held = connected(&ns, |c| crate::support::keepalive(c, 600, 60, 5));
    let args = format!("sockets --netns {} --idle-timeout 350s", ns.name);
    for cols in [80, 120, 200] {
        let raw = on_terminal(cols, &[], &args);
        let text = plain(&raw);
        for line in text.lines() {
            assert!(line.chars().count() <= cols, "{cols} columns:\n{text}");
        }
        let header = text.lines().next().unwrap();
        for col in ["Local Address", "Foreign Address", "State"] {
            assert!(header.contains(col), "{cols}: {header}");
        }
        // Nothing to show: no CT, no Workload.
        assert!(
            !header.contains("CT") && !header.contains("Workload"),
            "{header}"
        );
        assert!(
            text.contains("3 sockets: 2 established (1 with keepalive, 1 without), 1 listening"),
            "{text}"
        );
        // The server end has keepalive off: a middlebox will forget it (yellow).
        assert!(raw.contains("\x1b[33m"), "{raw:?}");
    }
    let narrow = plain(&on_terminal(80, &[], &args));
    assert!(narrow.contains("left out to fit:"), "{narrow}");
    // NO_COLOR and --color never: no escape codes.
    let raw = on_terminal(120, &[("NO_COLOR", "1")], &args);
    assert!(!raw.contains('\x1b'), "{raw:?}");
    let raw = on_terminal(120, &[], &format!("{args} --color never"));
    assert!(!raw.contains('\x1b'), "{raw:?}");
    // --columns: those, in that order.
    let cols = plain(&on_terminal(
        120,
        &[],
        &format!("{args} --columns state,local"),
    ));
    assert!(cols.lines().next().unwrap().starts_with("State"), "{cols}");
    // A pipe keeps netstat's fixed layout.
    let (code, out, err) = sockets(&ns, &["--idle-timeout", "350s"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("Proto Recv-Q Send-Q Local Address"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "{out}");
}
