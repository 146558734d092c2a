//! Running `kato agent` in tests and talking to it over HTTP.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

/// The address in the agent's start-up line (`listening on http://ADDR` or
/// `https://ADDR`), if `line` is that line.
pub fn banner_addr(line: &str) -> Option<SocketAddr> {
    line.split("listening on ")
        .nth(1)?
        .split("://")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads the first stderr line of a just-spawned agent: its address.
pub fn read_banner(stderr: impl Read) -> SocketAddr {
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    banner_addr(&line).unwrap_or_else(|| panic!("agent did not start: {line}"))
}

/// A running agent, killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Agent {
    /// Starts `kato agent --listen 127.0.0.1:0 ARGS` with `RUST_LOG=log`;
    /// every later stderr line goes to the receiver.
    pub fn start_logged(args: &[&str], log: &str) -> (Agent, std::sync::mpsc::Receiver<String>) {
        let mut child = Command::new(KATO)
            .args(["agent", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", log)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn kato agent");
        let (tx, rx) = std::sync::mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("agent banner");
            if let Some(addr) = banner_addr(&line) {
                break addr;
            }
        };
        (Agent { child, addr }, rx)
    }

    /// Starts `kato agent --listen 127.0.0.1:0 ARGS` and waits for its banner.
    pub fn start(args: &[&str]) -> Agent {
        Self::launch(args, Stdio::null())
    }

    /// [`Agent::start`], with every stdout line sent to the receiver.
    pub fn start_stdout(args: &[&str]) -> (Agent, std::sync::mpsc::Receiver<String>) {
        let mut agent = Self::launch(args, Stdio::piped());
        let out = BufReader::new(agent.child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (agent, rx)
    }

    fn launch(args: &[&str], stdout: Stdio) -> Agent {
        let mut child = Command::new(KATO)
            .args(["agent", "--listen", "127.0.0.1:0"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(stdout)
            .spawn()
            .expect("spawn kato agent");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let addr = banner_addr(&line).unwrap_or_else(|| panic!("agent did not start: {line}"));
        // Keep draining stderr so the agent never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Agent { child, addr }
    }

    /// GET `path`: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).expect("agent answers")
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        body
    }

    /// Polls /metrics until `done` holds, or panics after `limit`.
    pub fn wait_metrics(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        loop {
            let m = self.metrics();
            if done(&m) {
                return m;
            }
            assert!(
                Instant::now() < end,
                "metrics never reached the expected values:\n{m}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls /sockets until one socket satisfies `pick`, or panics after
    /// `limit` with the last page.
    pub fn wait_sockets_where(
        &self,
        limit: Duration,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + limit;
        loop {
            let (_, body) = self.get("/sockets");
            let page: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            if let Some(s) = page.into_iter().find(&pick) {
                return s;
            }
            assert!(Instant::now() < end, "no socket as expected in:\n{body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The HTTP process the engine started (`kato agent-http`), if any.
    pub fn http_pid(&self) -> Option<u32> {
        http_child(self.child.id())
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `kato agent-http` child of the engine `pid`, if it has one.
pub fn http_child(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|c| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|&b| b == 0).nth(1) == Some(b"agent-http"))
        })
}

/// A one-shot HTTP/1.1 GET with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let (status, head, body) = http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )?;
    let _ = head;
    Ok((status, body))
}

/// Sends `request` as is, reads to EOF: (status, head, body with any
/// chunked transfer coding removed).
pub fn http_request(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, head.to_owned(), body))
}

/// Removes HTTP/1.1 chunked framing.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The value of the sample `name{labels}` (labels as printed, sorted by
/// name), or 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// TcpExt counter `name` from /proc/net/netstat text.
pub fn tcpext(netstat: &str, name: &str) -> u64 {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no TcpExt {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}
