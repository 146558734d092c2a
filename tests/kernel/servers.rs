//! Real servers nobody here wrote, run inside a test's namespace: nginx,
//! HAProxy, PostgreSQL; tcpdump to see who sends what; `kato trace
//! --output json` as a stream of events. Each stops on drop.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::Netns;

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// A scratch directory under the system's temporary one, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("kato-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `addr` accepts connections inside `ns`.
pub fn wait_listening(ns: &Netns, addr: &str, what: &str) {
    let addr = addr.to_owned();
    let what = what.to_owned();
    ns.spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < end, "{what} never listened on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .unwrap();
}

/// A process stopped with SIGTERM (nginx and HAProxy stop their workers
/// then; SIGKILL would orphan them), killed if it lingers.
pub struct Server {
    pub child: Child,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process (and its group) now, waiting for it to exit.
    pub fn stop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `argv` inside `ns` (`ip netns exec`, which execs: the child's pid
/// is the server's own).
fn spawn_in(ns: &Netns, name: &str, argv: &[&str]) -> Server {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Server { child }
}

pub fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: `cargo xtask setup` installs Debian's {package}"
    );
}

/// nginx in the foreground, one process (`master_process off`), with
/// `http` the body of its http block. Its error log is `error.log` in `dir`.
pub fn nginx(ns: &Netns, dir: &Path, http: &str, listen: &str) -> Server {
    require("/usr/sbin/nginx", "nginx");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n  \
         uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n{http}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let s = spawn_in(
        ns,
        "nginx",
        &[
            "/usr/sbin/nginx",
            "-p",
            &dir.display().to_string(),
            "-c",
            "nginx.conf",
        ],
    );
    wait_listening(ns, listen, "nginx");
    s
}

/// HAProxy in the foreground with `config` (its `global` section is
/// added), waiting until `listen` accepts.
pub fn haproxy(ns: &Netns, dir: &Path, config: &str, listen: &str) -> Server {
    require("/usr/sbin/haproxy", "haproxy");
    let conf = dir.join("haproxy.cfg");
    std::fs::write(&conf, format!("global\n  maxconn 256\n\n{config}")).unwrap();
    let s = spawn_in(
        ns,
        "haproxy",
        &["/usr/sbin/haproxy", "-db", "-f", conf.to_str().unwrap()],
    );
    wait_listening(ns, listen, "haproxy");
    s
}

/// Debian's PostgreSQL major version directory.
pub fn postgres_bin() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (`cargo xtask setup` installs Debian's postgresql)",
                base.display()
            )
        })
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL under /usr/lib/postgresql")
}

/// A fresh PostgreSQL cluster in `dir`, run as user `postgres` inside `ns`
/// on 127.0.0.1:`port`, with `settings` (`-c name=value` each), trusting
/// local connections. Its log is `postgres.log` in `dir`.
pub fn postgres(ns: &Netns, dir: &Path, port: u16, settings: &[&str]) -> Server {
    let bin = postgres_bin();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    crate::support::run(Command::new("chown").args([
        "-R",
        "postgres:postgres",
        dir.to_str().unwrap(),
    ]));
    crate::support::run(
        Command::new("setpriv")
            .args([
                "--reuid",
                "postgres",
                "--regid",
                "postgres",
                "--init-groups",
            ])
            .arg(bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
            ])
            .stdout(Stdio::null()),
    );
    let log = dir.join("postgres.log");
    let mut argv: Vec<String> = [
        "setpriv",
        "--reuid",
        "postgres",
        "--regid",
        "postgres",
        "--init-groups",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    argv.push(bin.join("postgres").display().to_string());
    for a in [
        "-D",
        data.to_str().unwrap(),
        "-k",
        dir.to_str().unwrap(),
        "-p",
        &port.to_string(),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "logging_collector=off",
        "-c",
        "log_destination=stderr",
    ] {
        argv.push(a.to_owned());
    }
    for s in settings {
        argv.push("-c".into());
        argv.push((*s).to_owned());
    }
    let err = std::fs::File::create(&log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(&argv)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start postgres");
    let mut s = Server { child };
    let addr = format!("127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(30);
    while !ns
        .exec(&["ss", "-Htln", "sport", &format!("= :{port}")])
        .contains(&addr)
    {
        if Instant::now() > end || matches!(s.child.try_wait(), Ok(Some(_))) {
            panic!(
                "postgres never listened on {addr}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

/// tcpdump writing the RST segments it sees in `ns` on `dev` to a file;
/// [`Tcpdump::resets`] stops it and reads them back as (source, destination).
pub struct Tcpdump {
    child: Child,
    file: PathBuf,
}

impl Tcpdump {
    pub fn resets(ns: &Netns, dev: &str, file: PathBuf) -> Self {
        require("/usr/bin/tcpdump", "tcpdump");
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "tcpdump", "-i", dev, "-nn", "-U", "-w",
            ])
            .arg(&file)
            .arg("tcp[tcpflags] & tcp-rst != 0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        // "listening on ...": capturing from here on.
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening"), "tcpdump: {line}");
        Tcpdump { child, file }
    }

    /// Every RST captured, as ("ADDR.PORT" source, destination).
    pub fn stop(mut self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = crate::support::run(
            Command::new("tcpdump")
                .args(["-nn", "-r"])
                .arg(&self.file)
                .stderr(Stdio::null()),
        );
        out.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let src = w.nth(2)?.to_owned();
                let dst = w.nth(1)?.trim_end_matches(':').to_owned();
                Some((src, dst))
            })
            .collect()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kato trace --output json ARGS`, its events on a channel.
pub struct Trace {
    child: Child,
    pub events: mpsc::Receiver<Value>,
}

impl Trace {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(KATO)
            .args([
                "trace",
                "--output",
                "json",
                "--attach",
                crate::support::attach_arg(),
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kato trace");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut banner = String::new();
        err.read_line(&mut banner).unwrap();
        if !banner.contains("watching") {
            // The whole error, a verifier log included.
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut rest);
            panic!("kato trace: {banner}{rest}");
        }
        // Kept for `stop`'s summary (kato writes nothing else there
        // until it ends).
        child.stderr = Some(err.into_inner());
        let (tx, rx) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l).expect("one JSON object per line");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Trace { child, events: rx }
    }

    /// Ends the trace as Ctrl-C does: its summary line (events seen, and
    /// how many records were lost and why).
    pub fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let mut rest = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut rest);
        }
        rest.trim().to_owned()
    }

    /// Every event that arrives within `quiet` of the previous one.
    pub fn drain(&self, quiet: Duration) -> Vec<Value> {
        let mut all = vec![];
        while let Ok(v) = self.events.recv_timeout(quiet) {
            all.push(v);
        }
        all
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}
