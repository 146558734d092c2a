//! Helpers for the kernel-facing tests: network namespaces the tests create
//! and delete, keepalive sockets inside them, and a collector of kato events.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use keepalive_user::{
    bpf::{ring::EventStream, AttachKind, AttachMode, Bpf, LoadOptions},
    events::{Kind, Observation, Pipeline, Record, ResetReasons, Sink},
};

/// Fails (never skips) when the test cannot do what it must.
pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel tests load eBPF programs and create network namespaces: run them as root (cargo xtask test does)"
    );
}

/// The attach path the tests ask for: `KATO_TEST_ATTACH` (auto, fentry or
/// tracepoint; `cargo xtask test --kernel` runs the VM's tests under each).
pub fn test_attach() -> AttachMode {
    match std::env::var("KATO_TEST_ATTACH") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("KATO_TEST_ATTACH: {e}")),
        Err(_) => AttachMode::Auto,
    }
}

/// [`test_attach`] as the `--attach` value for kato.
pub fn attach_arg() -> &'static str {
    match test_attach() {
        AttachMode::Auto => "auto",
        AttachMode::Fentry => "fentry",
        AttachMode::Tracepoint => "tracepoint",
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace with loopback up, deleted on drop.
pub struct Netns {
    pub name: String,
    pub inode: u32,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kato-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        // Constructed now so that a failure below still deletes it.
        let mut ns = Netns { inode: 0, name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns.inode = std::fs::metadata(format!("/run/netns/{}", ns.name))
            .expect("netns file")
            .ino() as u32;
        ns
    }

    /// Runs `f` on a new thread that has joined this namespace: sockets it
    /// creates live there.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &str) {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()));
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    /// Applies an nftables ruleset inside the namespace.
    pub fn nft(&self, rules: &str) {
        self.exec(&["nft", rules]);
    }

    /// Drops every TCP segment arriving from `port`: the peer looks dead.
    pub fn drop_from_port(&self, port: u16) {
        self.nft(&format!(
            "add table inet kato; add chain inet kato in {{ type filter hook input priority 0; }}; \
             add rule inet kato in tcp sport {port} drop"
        ));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn setsockopt_pub(s: &impl AsRawFd, level: i32, name: i32, value: i32) {
    setsockopt(s.as_raw_fd(), level, name, value);
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) {
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        io::Error::last_os_error()
    );
}

/// SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT.
pub fn keepalive(s: &TcpStream, idle: i32, intvl: i32, cnt: i32) {
    let fd = s.as_raw_fd();
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, intvl);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt);
}

/// getsockopt of an int option.
pub fn getsockopt(s: &impl AsRawFd, level: i32, name: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as u32;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt({level}, {name}): {}",
        io::Error::last_os_error()
    );
    v
}

/// (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) as the kernel reports them.
pub fn keepalive_opts(s: &impl AsRawFd) -> (bool, i32, i32, i32) {
    (
        getsockopt(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE) != 0,
        getsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        getsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
        getsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    )
}

/// A client socket connected to `to`, with `setup` applied before connect.
pub fn client(to: SocketAddr, setup: impl FnOnce(&TcpStream)) -> TcpStream {
    let domain = if to.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    setup(&s);
    connect(fd, to);
    s
}

/// A connected pair on loopback (`127.0.0.1` or `::1`): (client, server side).
/// Keepalive is set on the client *before* connect, as applications do;
/// `idle == 0` leaves keepalive off.
pub fn pair(v6: bool, idle: i32, intvl: i32, cnt: i32) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).expect("bind");
    let client = client(listener.local_addr().unwrap(), |s| {
        if idle > 0 {
            keepalive(s, idle, intvl, cnt);
        }
    });
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// `kato ARGS` as nobody with no capability (setpriv), as a user without
/// privileges runs it.
pub fn unprivileged(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            env!("CARGO_BIN_EXE_kato"),
        ])
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

/// A keepalive 1 s / 1 s / 3 probes client in `ns` whose peer's packets
/// are dropped from the start: its read ends once keepalive gives up.
pub struct DeadPeer {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    worker: std::thread::JoinHandle<io::Result<usize>>,
}

impl DeadPeer {
    pub fn start(ns: &Netns, v6: bool) -> Self {
        Self::start_with(ns, v6, 1, 1, 3)
    }

    /// [`DeadPeer::start`] with this keepalive (idle s, interval s, count).
    pub fn start_with(ns: &Netns, v6: bool, idle: i32, intvl: i32, cnt: i32) -> Self {
        use std::io::Read as _;
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = ns.spawn(move || {
            let (mut client, server) = pair(v6, idle, intvl, cnt);
            tx.send((client.local_addr().unwrap(), server.local_addr().unwrap()))
                .unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let r = client.read(&mut [0u8; 1]);
            drop(server);
            r
        });
        let (local, remote) = rx.recv().expect("worker connected");
        ns.drop_from_port(remote.port());
        DeadPeer {
            local,
            remote,
            worker,
        }
    }

    /// The client's read error (it must fail: keepalive timed it out).
    pub fn wait(self) -> io::Error {
        self.worker
            .join()
            .expect("worker")
            .expect_err("keepalive timed the connection out")
    }
}

/// [`DeadPeer`] to its end: the client's and the dropped peer's addresses.
pub fn dead_peer(ns: &Netns) -> (SocketAddr, SocketAddr) {
    let d = DeadPeer::start(ns, false);
    let ends = (d.local, d.remote);
    d.wait();
    ends
}

fn connect(fd: i32, addr: SocketAddr) {
    let rc = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe {
                libc::connect(
                    fd,
                    (&sin as *const libc::sockaddr_in).cast(),
                    size_of_val(&sin) as u32,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe {
                libc::connect(
                    fd,
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    size_of_val(&sin6) as u32,
                )
            }
        }
    };
    assert_eq!(rc, 0, "connect: {}", io::Error::last_os_error());
}

/// One event as kato reports it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub rec: Record,
    pub kind: Kind,
    pub probes: u8,
}

/// kato's programs loaded into the running kernel, and their event stream,
/// read through kato's own pipeline.
pub struct Collector {
    pub bpf: Bpf,
    stream: EventStream,
    rt: tokio::runtime::Runtime,
    pipeline: Pipeline,
}

/// Every derived event of every observation, with its record.
struct Gather<'a>(&'a mut Vec<Seen>);

impl Sink for Gather<'_> {
    fn observe(&mut self, obs: &Observation<'_>) -> std::ops::ControlFlow<()> {
        self.0.extend(obs.events.iter().map(|d| Seen {
            rec: obs.record.clone(),
            kind: d.kind,
            probes: d.probes,
        }));
        std::ops::ControlFlow::Continue(())
    }
}

impl Collector {
    /// Loads and attaches the real programs; panics (fails the test) if the
    /// kernel refuses them.
    pub fn start() -> Self {
        require_root();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let attach = test_attach();
        let mut bpf = Bpf::open(&LoadOptions {
            tracing: true,
            attach,
            ..LoadOptions::default()
        })
        .unwrap_or_else(|e| {
            panic!("kato's eBPF programs must load on this kernel ({attach:?}): {e}")
        });
        let path = bpf.attach.as_ref().expect("attached").kind;
        match attach {
            AttachMode::Fentry => assert_eq!(path, AttachKind::Fentry),
            AttachMode::Tracepoint => assert_eq!(path, AttachKind::TpBtf),
            AttachMode::Auto => {}
        }
        let stream = bpf.events().expect("event stream");
        let pipeline = Pipeline::new(
            bpf.kernel.hz,
            ResetReasons(bpf.kernel.reset_reasons.clone()),
        );
        Collector {
            bpf,
            stream,
            rt,
            pipeline,
        }
    }

    /// Collects events of network namespace `netns` until `done` holds or
    /// `limit` passes.
    pub fn collect(
        &mut self,
        netns: u32,
        limit: Duration,
        mut done: impl FnMut(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let end = Instant::now() + limit;
        let mut seen = Vec::new();
        let mut batch = Vec::new();
        self.pipeline
            .watch(Some(std::collections::HashSet::from([netns])));
        while !done(&seen) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let stream = &mut self.stream;
            let _ = self.rt.block_on(async {
                tokio::time::timeout(left, stream.next_batch(&mut batch)).await
            });
            let _ = self.pipeline.feed(&mut batch, &mut Gather(&mut seen));
            assert_eq!(self.pipeline.undecodable, 0, "every kernel record decodes");
        }
        seen
    }
}

/// Splits off the close of the test's listening socket (pair() drops it).
pub fn without_listener(seen: Vec<Seen>) -> Vec<Seen> {
    let (listener, rest): (Vec<Seen>, Vec<Seen>) = seen
        .into_iter()
        .partition(|s| s.rec.state_before == keepalive_user::tcp::TcpState::Listen);
    assert!(
        listener.iter().all(|s| s.kind == Kind::Closed),
        "{listener:?}"
    );
    rest
}

pub fn kinds(seen: &[Seen]) -> Vec<Kind> {
    seen.iter().map(|s| s.kind).collect()
}

pub fn count(seen: &[Seen], kind: Kind) -> usize {
    seen.iter().filter(|s| s.kind == kind).count()
}

/// A child process killed (and reaped) when dropped, so that a failing
/// assertion leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
