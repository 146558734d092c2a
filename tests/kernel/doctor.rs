//! `kato doctor` on the real host: checks, per-namespace sysctls, advice.

use std::{net::TcpListener, process::Command, sync::mpsc, time::Duration};

use serde_json::Value;

use keepalive_user::bpf::AttachMode;

use crate::support::{attach_arg, client, require_root, setsockopt_pub, test_attach, Netns};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

#[test]
fn doctor_reports_defaults_and_advises_against_the_idle_timeout() {
    require_root();
    let ns = Netns::new("doctor");
    ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_keepalive_time=900"]);
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let holder = ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let mut held = vec![];
        for _ in 0..2 {
            // Keepalive on with every setting left to the namespace's sysctls.
            held.push(client(to, |s| {
                setsockopt_pub(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
            }));
            held.push(l.accept().unwrap().0);
        }
        tx.send(to.port()).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
        drop(held);
    });
    let port = rx.recv().unwrap();
    let rule = format!(":{port}=350s");
    let out = Command::new(KATO)
        .args([
            "doctor",
            "--output",
            "json",
            "--idle-timeout",
            &rule,
            "--attach",
            attach_arg(),
        ])
        .output()
        .unwrap();
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true);
    let path = r["attach_path"].as_str().unwrap().to_owned();
    match test_attach() {
        AttachMode::Fentry => assert_eq!(path, "fentry"),
        AttachMode::Tracepoint => assert_eq!(path, "tp_btf"),
        AttachMode::Auto => assert!(path == "fentry" || path == "tp_btf", "{path}"),
    }
    for c in r["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "check failed as root: {c}");
    }
    // Every kernel kato runs its tests on (6.1, 6.12, the host's) is 5.15+.
    let protect = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kato protect")
        .expect("a protect check");
    assert!(
        protect["detail"]
            .as_str()
            .unwrap()
            .starts_with("can work here"),
        "{protect}"
    );
    let mine = r["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["inode"] == ns.inode)
        .expect("our namespace");
    assert_eq!(mine["tcp_keepalive_time"], 900);
    assert_eq!(
        (mine["connections"].as_u64(), mine["keepalive_on"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(mine["relying_on_default_time"], 2);
    let advice = r["advice"].as_array().unwrap();
    let at_risk = advice
        .iter()
        .find(|a| a["rule"] == rule.as_str() && a["class"] == "at-risk")
        .expect("at-risk advice");
    assert_eq!(at_risk["sockets"], 2);
    assert_eq!(
        at_risk["message"],
        format!("tcp_keepalive_time = 900 s is longer than the 350 s idle timeout of {rule}: 2 of 2 at-risk sockets there rely on it; set TCP_KEEPIDLE (+ TCP_KEEPINTVL) below 350 s or lower the sysctl")
    );
    let unprotected = advice
        .iter()
        .find(|a| a["rule"] == rule.as_str() && a["class"] == "unprotected")
        .expect("unprotected advice");
    assert_eq!(
        unprotected["sockets"], 2,
        "the accepted ends have keepalive off"
    );

    // The page people read says the same.
    let page = Command::new(KATO)
        .args(["doctor", "--idle-timeout", &rule, "--attach", attach_arg()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&page.stdout);
    assert!(
        text.starts_with("kato doctor: kato works on this host"),
        "{text}"
    );
    assert!(text.contains(&format!("Attach path  {path}: ")), "{text}");
}

#[test]
fn doctor_without_privileges_says_what_is_missing() {
    require_root();
    let out = crate::support::unprivileged(&["doctor", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    let failed: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG", "load"] {
        assert!(failed.contains(&cap), "{cap} not reported: {failed:?}");
    }
}

/// Probe, then degrade: auto takes fentry where the kernel allows
/// trampolines (Debian's 6.1 in the VM) and says so; where it refuses them
/// (this host's 6.18) auto falls back to tracepoints naming the refusal, and
/// forcing fentry is an error naming it, not a silent fallback.
#[test]
fn attach_ladder_tries_fentry_then_degrades() {
    require_root();
    let doctor = |attach: &str| -> Value {
        let out = Command::new(KATO)
            .args(["doctor", "--output", "json", "--attach", attach])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "doctor --attach {attach}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let auto = doctor("auto");
    let reason = auto["attach_reason"].as_str().unwrap().to_owned();
    match auto["attach_path"].as_str().unwrap() {
        "fentry" => {
            assert!(
                reason.starts_with("the kernel accepts fentry/fexit trampolines"),
                "{reason}"
            );
            assert!(
                reason.contains("fentry/fexit tcp_keepalive_timer"),
                "{reason}"
            );
            let forced = doctor("tracepoint");
            assert_eq!(forced["attach_path"], "tp_btf");
            assert!(
                forced["attach_reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("forced with --attach tracepoint"),
                "{forced}"
            );
        }
        "tp_btf" => {
            assert!(reason.starts_with("fentry/fexit unavailable: "), "{reason}");
            assert!(
                reason.contains("tcp_keepalive_timer"),
                "names what was refused: {reason}"
            );
            let out = Command::new(KATO)
                .args(["trace", "--attach", "fentry", "--count", "1"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.starts_with("kato: --attach fentry: cannot load or attach `fentry_keepalive_timer` to tcp_keepalive_timer"), "{err}");
            assert!(!err.contains("Verifier output"), "one sentence: {err}");
        }
        other => panic!("unexpected attach path {other}"),
    }
}

/// With aya-log asked for (`RUST_LOG=kato::ebpf=debug`), the programs carry
/// their log code past the verifier: they load and attach on this kernel
/// under the attach path under test.
#[test]
fn programs_load_with_ebpf_logging_on() {
    require_root();
    let out = Command::new(KATO)
        .args(["doctor", "--output", "json", "--attach", attach_arg()])
        .env("RUST_LOG", "kato::ebpf=debug")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tracing = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tracing programs")
        .unwrap_or_else(|| panic!("no tracing check: {r}"));
    assert_eq!(tracing["ok"], true, "{tracing}");
    assert!(!err.contains("program logs unavailable"), "{err}");
}
