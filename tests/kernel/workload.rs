//! Who owns a socket, from its cgroup: a container started by a real
//! containerd and runc (no image: a busybox-static root filesystem), named
//! by the kubelet-style labels containerd holds, in `kato sockets`, a
//! dead-peer `kato trace` and the agent's opt-in labels; and a process in a
//! cgroup named like a systemd service.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent_support::Agent,
    support::{attach_arg, require_root, run, setsockopt_pub, Netns},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// The cgroup2 mount, as kato finds it.
fn cgroup_root() -> PathBuf {
    keepalive_user::workload::cgroupfs::find_mount(
        &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
    )
    .expect("a cgroup2 mount")
}

/// A containerd of the test's own (socket, root and state in a temporary
/// directory), stopped with its containers on drop.
pub(crate) struct Containerd {
    pub(crate) dir: PathBuf,
    pub(crate) sock: PathBuf,
    daemon: Child,
    containers: Vec<String>,
    /// `/k8s.io` under the cgroup2 mount, if this test made it.
    made_ns_cgroup: Option<PathBuf>,
}

impl Containerd {
    pub(crate) fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("kato-containerd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox"))
            .expect("busybox-static (cargo xtask setup installs it)");
        let sock = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n",
                dir.display(),
                sock.display()
            ),
        )
        .unwrap();
        let ns_cgroup = cgroup_root().join("k8s.io");
        let made_ns_cgroup = (!ns_cgroup.exists()).then_some(ns_cgroup);
        let daemon = Command::new("containerd")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd (cargo xtask setup installs it)");
        let end = Instant::now() + Duration::from_secs(20);
        let c = Containerd {
            dir,
            sock,
            daemon,
            containers: vec![],
            made_ns_cgroup,
        };
        while Command::new("ctr")
            .arg("-a")
            .arg(&c.sock)
            .arg("version")
            .output()
            .map_or(true, |o| !o.status.success())
        {
            assert!(
                Instant::now() < end,
                "containerd did not start: {}",
                std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub(crate) fn ctr(&self, args: &[&str]) -> String {
        run(Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", "k8s.io"])
            .args(args))
    }

    /// `ctr run -d ARGS` (options, image, `id`, command), killed on drop.
    pub(crate) fn run_args(&mut self, id: &str, args: &[String]) {
        let args: Vec<&str> = std::iter::once("run")
            .chain(std::iter::once("-d"))
            .chain(args.iter().map(String::as_str))
            .collect();
        self.ctr(&args);
        self.containers.push(id.to_owned());
    }

    /// `ctr run -d` in network namespace `ns` with the kubelet's labels.
    fn run(&mut self, id: &str, ns: &Netns, labels: &[(&str, &str)], cmd: &[&str]) -> u32 {
        let mut args = vec![
            "run".to_owned(),
            "-d".into(),
            "--with-ns".into(),
            format!("network:/run/netns/{}", ns.name),
        ];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        // --rootfs takes no value and comes last; the path is the image argument.
        args.push("--rootfs".into());
        args.push(self.dir.join("rootfs").display().to_string());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr(&args);
        self.containers.push(id.to_owned());
        let tasks = self.ctr(&["task", "ls"]);
        tasks
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no task {id}: {tasks}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.containers {
            let ctr = |args: &[&str]| {
                let _ = Command::new("ctr")
                    .arg("-a")
                    .arg(&self.sock)
                    .args(["-n", "k8s.io"])
                    .args(args)
                    .output();
            };
            ctr(&["task", "kill", "-s", "KILL", id]);
            std::thread::sleep(Duration::from_millis(300));
            ctr(&["task", "delete", "-f", id]);
            ctr(&["container", "delete", id]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        if let Some(cg) = &self.made_ns_cgroup {
            let _ = std::fs::remove_dir(cg);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every process in cgroup `path` (relative to the mount).
fn procs(cgroup: &str) -> Vec<u32> {
    std::fs::read_to_string(
        cgroup_root()
            .join(cgroup.trim_start_matches('/'))
            .join("cgroup.procs"),
    )
    .unwrap_or_default()
    .lines()
    .filter_map(|l| l.parse().ok())
    .collect()
}

/// The first socket fd of `pid`, duplicated into this process
/// (pidfd_getfd): the same socket, so its options can be set from here.
fn steal_socket(pid: u32) -> OwnedFd {
    let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no socket in process {pid}"));
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        assert!(dup >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(dup as i32)
    }
}

fn sockets_json(ns: &Netns, extra: &[&str], containerd: &Path) -> Vec<Value> {
    let out = run(Command::new(KATO)
        .args([
            "sockets",
            "--netns",
            &ns.name,
            "--output",
            "json",
            "--attach",
            attach_arg(),
            "--containerd-socket",
        ])
        .arg(containerd)
        .args(extra));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

const LABELS: [(&str, &str); 4] = [
    ("io.kubernetes.pod.name", "checkout-7d9f"),
    ("io.kubernetes.pod.namespace", "shop"),
    ("io.kubernetes.container.name", "api"),
    (
        "io.kubernetes.pod.uid",
        "1b2c3d4e-0000-4000-8000-123456789abc",
    ),
];

#[test]
fn a_containers_sockets_are_named_by_pod_in_sockets_trace_and_metrics() {
    require_root();
    let ns = Netns::new("pod");
    let mut containerd = Containerd::start();
    // A server outside the container, in the same namespace; the container's
    // nc connects to it and holds the connection (stdin never ends).
    let (tx, rx) = mpsc::channel();
    let server = ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let _ = s.read(&mut [0u8; 1]);
    });
    let to: SocketAddr = rx.recv().unwrap();
    let id = format!("kato-{}-api", std::process::id());
    let sh = format!("sleep 3600 | /bin/busybox nc 127.0.0.1 {}", to.port());
    containerd.run(&id, &ns, &LABELS, &["/bin/busybox", "sh", "-c", &sh]);
    let sock = containerd.sock.clone();

    // The container's connection, found by its remote port.
    let end = Instant::now() + Duration::from_secs(10);
    let mine = loop {
        let all = sockets_json(&ns, &["--state", "established"], &sock);
        if let Some(s) = all.into_iter().find(|s| s["remote"] == to.to_string()) {
            break s;
        }
        assert!(Instant::now() < end, "the container never connected");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        (
            mine["pod"].as_str(),
            mine["pod_namespace"].as_str(),
            mine["container"].as_str(),
            mine["runtime"].as_str(),
            mine["container_id"].as_str()
        ),
        (
            Some("checkout-7d9f"),
            Some("shop"),
            Some("api"),
            Some("containerd"),
            Some(id.as_str())
        ),
        "{mine}"
    );
    assert_eq!(
        mine["pod_uid"], "1b2c3d4e-0000-4000-8000-123456789abc",
        "{mine}"
    );
    let cgroup = mine["cgroup"].as_str().unwrap().to_owned();
    assert_eq!(cgroup, format!("/k8s.io/{id}"), "ctr's cgroup path");
    // The server's end is this test's, in the test's cgroup: not the pod's.
    let only = sockets_json(
        &ns,
        &["--pod", "checkout-7d9f", "--state", "established"],
        &sock,
    );
    assert_eq!(only.len(), 1, "{only:?}");
    assert!(sockets_json(&ns, &["--pod", "other"], &sock).is_empty());
    assert_eq!(
        sockets_json(
            &ns,
            &[
                "--pod-namespace",
                "shop",
                "--container",
                "api",
                "--state",
                "established"
            ],
            &sock
        )
        .len(),
        1
    );
    let table = run(Command::new(KATO)
        .args([
            "sockets",
            "--netns",
            &ns.name,
            "--state",
            "established",
            "--attach",
            attach_arg(),
            "--containerd-socket",
        ])
        .arg(&sock));
    let header = table.lines().next().unwrap();
    let at = header.find("Workload").unwrap();
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(to.to_string().as_str()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row[at..].starts_with("shop/checkout-7d9f/api"), "{table}");

    // doctor says which runtimes it found and how many sockets it named.
    let out = run(Command::new(KATO)
        .args([
            "doctor",
            "--output",
            "json",
            "--no-cloud-defaults",
            "--state-dir",
            "/nonexistent",
            "--attach",
            attach_arg(),
            "--containerd-socket",
        ])
        .arg(&sock));
    let d: Value = serde_json::from_str(&out).unwrap();
    let w = &d["workloads"];
    assert!(
        w["by_pod"].as_u64().unwrap() >= 1 && w["runtimes"]["containerd"].as_u64() >= Some(1),
        "{w}"
    );
    assert!(
        w["containerd"]
            .as_str()
            .unwrap()
            .contains("containers listed"),
        "{w}"
    );

    // Keepalive on the container's socket, set from outside through a
    // duplicate of its descriptor: probes every second, two unanswered end it.
    let pid = *procs(&cgroup)
        .iter()
        .find(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|d| {
                d.flatten().any(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
            })
        })
        .expect("nc in the container");
    let fd = steal_socket(pid);
    let stream = unsafe { TcpStream::from_raw_fd(fd.as_raw_fd()) };
    for (level, opt, v) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2),
    ] {
        setsockopt_pub(&stream, level, opt, v);
    }
    std::mem::forget(stream); // `fd` owns the descriptor

    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--label-by",
        "pod,pod_namespace,container",
        "--containerd-socket",
        sock.to_str().unwrap(),
        "--snapshot-interval",
        "500ms",
    ]);
    // /sockets filters by workload like the command line.
    let s = agent.wait_sockets_where(Duration::from_secs(5), |s| {
        s["remote"] == to.to_string() && s["pod"] == "checkout-7d9f"
    });
    assert_eq!(s["container"], "api", "{s}");
    let (status, body) = agent.get("/sockets?pod=checkout-7d9f&container=api");
    let page: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!((status, page.len()), (200, 1), "{body}");
    let (_, body) = agent.get("/sockets?pod_namespace=other");
    assert_eq!(body.trim(), "[]");
    let trace = crate::servers::Trace::start(&[
        "--netns",
        &ns.inode.to_string(),
        "--pod",
        "checkout-7d9f",
        "--containerd-socket",
        sock.to_str().unwrap(),
    ]);
    // The peer goes silent.
    ns.drop_from_port(to.port());
    let mut seen = vec![];
    while let Ok(v) = trace.events.recv_timeout(Duration::from_secs(15)) {
        let done = v["event"] == "keepalive_timeout";
        seen.push(v);
        if done {
            break;
        }
    }
    drop(trace);
    assert!(
        seen.iter().any(|v| v["event"] == "keepalive_timeout"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|v| v["event"] == "probe_sent"), "{seen:?}");
    assert!(
        seen.iter().all(|v| v["pod"] == "checkout-7d9f"
            && v["pod_namespace"] == "shop"
            && v["container"] == "api"
            && v["cgroup_id"].is_u64()),
        "every event of the pod's socket names the pod (timer events run in softirq): {seen:?}"
    );

    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        m.lines().any(|l| {
            l.starts_with("kato_keepalive_timeouts_total{") && l.contains("pod=\"checkout-7d9f\"")
        })
    });
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("kato_keepalive_timeouts_total{") && l.contains("pod=\"checkout-7d9f\"")
        })
        .unwrap();
    assert!(
        line.contains("pod_namespace=\"shop\"")
            && line.contains("container=\"api\"")
            && line.ends_with(" 1"),
        "{line}"
    );
    drop(server);
}

#[test]
fn a_process_in_a_service_cgroup_is_named_by_its_unit() {
    require_root();
    let ns = Netns::new("unit");
    let unit = format!("kato-test-{}.service", std::process::id());
    let cg = cgroup_root().join(&unit);
    std::fs::create_dir_all(&cg).unwrap();
    // The shell joins the cgroup, then becomes the listener (nsenter, not
    // `ip netns exec`, which mounts a /sys without the cgroup2 mount).
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["sh", "-c"])
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec busybox nc -l -p 7311",
            cg.display()
        ))
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let found = loop {
        let all = sockets_json(&ns, &["--unit", &unit], Path::new("/nonexistent"));
        if !all.is_empty() {
            break all;
        }
        assert!(Instant::now() < end, "no socket named {unit}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir(&cg);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (
            found[0]["state"].as_str(),
            found[0]["unit"].as_str(),
            found[0]["cgroup"].as_str()
        ),
        (
            Some("LISTEN"),
            Some(unit.as_str()),
            Some(format!("/{unit}").as_str())
        )
    );
    assert!(found[0]["pod"].is_null());
}

/// A containerd that accepts and never answers, and one that answers
/// garbage, with 15 sockets in 5 container cgroups: start-up pays at most
/// one deadline, snapshots keep their interval, `/metrics` answers within
/// 1 s, and SIGTERM stops the agent within 2 s.
#[test]
fn a_stalled_or_garbage_containerd_never_holds_up_the_agent() {
    require_root();
    let ns = Netns::new("ctrdstall");
    let parent = cgroup_root().join(format!("kato-stall-{}", std::process::id()));
    let mut holders = vec![];
    for i in 0..5u64 {
        let cg = parent.join(format!("cri-containerd-{:064x}.scope", 0xabc000 + i));
        std::fs::create_dir_all(&cg).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .args(["sh", "-c"])
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec python3 -c 'import socket, time\nss = [socket.socket() for _ in range(3)]\nfor s in ss: s.bind((\"127.0.0.1\", 0)); s.listen()\ntime.sleep(600)'",
                cg.display()
            ))
            .spawn()
            .unwrap();
        holders.push(child);
    }
    let dir = std::env::temp_dir().join(format!("kato-fake-ctrd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, garbage) in [("stalled", false), ("garbage", true)] {
        let sock = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let mut held = vec![];
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                if garbage {
                    let _ = std::io::Write::write_all(
                        &mut s,
                        b"HTTP/1.0 418 no\r\n\r\n\xff\xfe garbage",
                    );
                } else {
                    held.push(s); // accepted, never answered
                }
            }
        });
        let t = Instant::now();
        let path = format!("/run/netns/{}", ns.name);
        let mut agent = Agent::start(&[
            "--netns",
            &path,
            "--snapshot-interval",
            "500ms",
            "--containerd-socket",
            sock.to_str().unwrap(),
        ]);
        let started = t.elapsed();
        assert!(
            started < Duration::from_secs(8),
            "{name}: start-up took {started:?}"
        );
        agent.wait_metrics(Duration::from_secs(10), |m| {
            crate::agent_support::sample(m, "kato_table_sockets") >= 15.0
        });
        let snaps = |m: &str| crate::agent_support::sample(m, "kato_snapshots_total");
        let before = snaps(&agent.metrics());
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let t = Instant::now();
            let (status, _) = agent.get("/metrics");
            assert_eq!(status, 200);
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(300));
        }
        let m = agent.metrics();
        let taken = snaps(&m) - before;
        assert!(
            slowest < Duration::from_secs(1),
            "{name}: a scrape took {slowest:?}"
        );
        // ~3 s at 500 ms: 6 expected; a stalled containerd used to allow 0.
        assert!(taken >= 4.0, "{name}: {taken} snapshots in ~3 s\n{m}");
        assert!(
            crate::agent_support::sample(&m, "kato_containerd_failures_total") >= 1.0,
            "{name}: {m}"
        );
        let t = Instant::now();
        let status = agent.terminate();
        assert!(status.success(), "{name}: {status:?}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{name}: SIGTERM took {:?}",
            t.elapsed()
        );
        eprintln!("{name} containerd: start-up {started:?}, {taken} snapshots in ~3 s, slowest scrape {slowest:?}");
        if garbage {
            continue;
        }
        // SIGTERM while start-up waits on the stalled containerd.
        let mut child = Command::new(KATO)
            .args(["agent", "--listen", "127.0.0.1:0", "--netns", &path])
            .args(["--containerd-socket", sock.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "SIGTERM in start-up took {:?}",
            t.elapsed()
        );
        assert!(status.success(), "{status:?}: {err}");
        assert!(err.contains("stopped"), "{err}");
    }
    for mut h in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..5u64 {
        let _ =
            std::fs::remove_dir(parent.join(format!("cri-containerd-{:064x}.scope", 0xabc000 + i)));
    }
    let _ = std::fs::remove_dir(&parent);
    let _ = std::fs::remove_dir_all(&dir);
}
