//! IPVS as the middlebox (kube-proxy's IPVS mode): a virtual service whose
//! TCP timeout is 30 s, and a client connecting to it with keepalive at
//! 60 s, at risk with source `ipvs` without any declared rule. It fails
//! where the kernel has no ip_vs module (this host's): `cargo xtask test`
//! runs it in the Debian VM, and leaves it out of the host run by name.

use std::{net::SocketAddr, os::fd::FromRawFd, process::Command};

use serde_json::Value;

use crate::support::{attach_arg, keepalive, require_root, run, Netns};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// A non-blocking connect: the SYN goes to a real server that never
/// answers, and the socket waits in SYN-SENT while kato looks.
fn connecting(to: SocketAddr) -> std::net::TcpStream {
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    assert!(fd >= 0);
    let s = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    keepalive(&s, 60, 10, 3);
    let SocketAddr::V4(v4) = to else {
        unreachable!()
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(sa).cast(), size_of_val(&sa) as u32) };
    assert!(rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS));
    s
}

#[test]
fn a_keepalive_slower_than_an_ipvs_service_is_at_risk() {
    require_root();
    let ns = Netns::new("ipvs");
    ns.ip("link add dummy0 type dummy");
    ns.ip("link set dummy0 up");
    ns.ip("addr add 10.72.0.2/24 dev dummy0");
    ns.exec(&["ipvsadm", "-A", "-t", "10.72.0.1:80", "-s", "rr"]);
    ns.exec(&[
        "ipvsadm",
        "-a",
        "-t",
        "10.72.0.1:80",
        "-r",
        "10.72.0.3:80",
        "-m",
    ]);
    ns.exec(&["ipvsadm", "--set", "30", "5", "5"]);
    let vip: SocketAddr = "10.72.0.1:80".parse().unwrap();
    let _held = ns.spawn(move || connecting(vip)).join().unwrap();

    // kato in that namespace, as kube-proxy's IPVS lives in the host's.
    let out = ns.exec(&[
        KATO,
        "sockets",
        "--no-cloud-defaults",
        "--output",
        "json",
        "--attach",
        attach_arg(),
    ]);
    let socks: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let s = socks
        .iter()
        .find(|s| s["remote"] == vip.to_string())
        .unwrap_or_else(|| panic!("no socket to {vip}: {out}"));
    assert_eq!(s["risk"], "at-risk", "60 s + 10 s is not under 30 s: {s}");
    assert_eq!(s["idle_timeout_source"], "ipvs", "{s}");
    assert_eq!(s["idle_timeout"], "10.72.0.1:80=30s", "{s}");

    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        KATO,
        "doctor",
        "--no-cloud-defaults",
        "--state-dir",
        "/nonexistent",
        "--output",
        "json",
        "--attach",
        attach_arg(),
    ]));
    let d: Value = serde_json::from_str(&out).unwrap();
    let t = d["timeouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["source"] == "ipvs")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        (t["rule"].as_str(), t["at_risk"].as_u64()),
        (Some("10.72.0.1:80=30s"), Some(1)),
        "{t}"
    );
}
