//! What the bench's sections share: throw-away namespaces, holder
//! processes keeping sockets open, the processes a run starts (kato,
//! bpftrace, stopped on drop), one-shot HTTP, and readings of a process
//! (RSS, CPU ticks, its programs' run time).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::status;

/// A network namespace for one benchmark, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("kato-bench-{tag}-{}", std::process::id());
        status(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns(name);
        status(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        for (k, v) in [
            ("net.ipv4.ip_local_port_range", "1024 65000"),
            ("net.core.somaxconn", "4096"),
        ] {
            status(ns.cmd("sysctl").args(["-qw", &format!("{k}={v}")]))?;
        }
        Ok(ns)
    }

    /// `ip netns exec NAME program`.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Holder processes keeping `sockets` TCP sockets (half clients, half
/// accepted) open in `ns`. Killed on drop.
pub struct Holders(Vec<Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_line(child: &mut Child, prefix: &str) -> Result<String> {
    let out = child.stdout.as_mut().context("holder stdout")?;
    let mut line = String::new();
    // The holders print one line per phase; read byte-wise so nothing is buffered away.
    let mut r = BufReader::with_capacity(1, out);
    r.read_line(&mut line)?;
    if !line.starts_with(prefix) {
        bail!("holder said {line:?}, expected {prefix}");
    }
    Ok(line.trim().to_owned())
}

/// Holder processes keeping `sockets` sockets open, `extra` flags passed to
/// both sides (the connector also gets them).
pub fn hold_with(ns: &Netns, sockets: usize, extra: &[&str]) -> Result<Holders> {
    let me = std::env::current_exe()?;
    let me = me.to_str().context("xtask path")?;
    let per_pair = 12_500; // connections per listener/connector pair: < 20,000 fds each
    let mut conns = sockets / 2;
    let mut holders = Holders(vec![]);
    // Below the namespace's ephemeral range (1024-65000, set in Netns::new):
    // a connector's source port can never take a later pair's listening port.
    let mut port = 200;
    while conns > 0 {
        let n = conns.min(per_pair);
        let addr = format!("127.0.0.1:{port}");
        let mut l = ns
            .cmd(me)
            .args(["hold", "--listen", &addr, "--count", &n.to_string()])
            .args(extra.iter().filter(|a| **a != "--keepalive"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        wait_line(&mut l, "listening")?;
        let c = ns
            .cmd(me)
            .args(["hold", "--connect", &addr, "--count", &n.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        holders.0.push(l);
        holders.0.push(c);
        conns -= n;
        port += 1;
    }
    for h in &mut holders.0 {
        wait_line(h, "ready")?;
    }
    Ok(holders)
}

/// One-shot HTTP GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// The agent's processes: its engine and, since the process split, its
/// HTTP process (`kato agent-http`, a child of the engine).
fn agent_pids(pid: u32) -> Result<Vec<u32>> {
    let mut pids = vec![pid];
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let children = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmd.split(|&b| b == 0).nth(1) == Some(b"agent-http") {
                pids.push(child);
            }
        }
    }
    Ok(pids)
}

/// The agent's resident memory: every one of its processes' RSS, added
/// (pages the two share, such as the binary's, counted in each).
pub fn agent_rss_kib(pid: u32) -> Result<u64> {
    agent_pids(pid)?.into_iter().map(rss_kib).sum()
}

/// The agent's proportional memory: each shared page counted once across
/// all the processes that map it (`Pss` of /proc/PID/smaps_rollup, added).
pub fn agent_pss_kib(pid: u32) -> Result<u64> {
    agent_pids(pid)?
        .into_iter()
        .map(|p| {
            let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))?;
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .context("no Pss in smaps_rollup")
        })
        .sum()
}

/// The bpftrace peer: the same tracepoints, the same keepalive filter,
/// counting per event kind instead of streaming records.
const BPFTRACE: &str = r#"
tracepoint:timer:timer_start /args->function == (uint64)kaddr("tcp_keepalive_timer")/ { @armed = count(); }
tracepoint:timer:timer_expire_entry /args->function == (uint64)kaddr("tcp_keepalive_timer")/ { @running[cpu] = (uint64)args->timer; }
tracepoint:timer:timer_expire_exit /@running[cpu] == (uint64)args->timer/ { @fired = count(); @running[cpu] = 0; }
tracepoint:timer:timer_cancel /(uint64)((struct timer_list *)args->timer)->function == (uint64)kaddr("tcp_keepalive_timer")/ { @cancel = count(); }
tracepoint:tcp:tcp_send_reset /args->skbaddr == 0/ { @resets[args->reason] = count(); }
tracepoint:tcp:tcp_receive_reset { @rst_in = count(); }
tracepoint:sock:inet_sock_set_state /args->newstate == 7/ { @closed = count(); }
"#;

/// Waits for a line holding `needle` on the child's stderr (or stdout), at
/// most 60 s even if the child prints nothing; a thread reads the pipe and
/// keeps draining it afterwards, so the child never blocks on a full pipe.
/// On an error the caller drops `child`, which stops it.
pub(crate) fn wait_for(child: &mut Running, stderr: bool, needle: &str) -> Result<String> {
    let pipe: Box<dyn std::io::Read + Send> = if stderr {
        Box::new(child.0.stderr.take().context("stderr")?)
    } else {
        Box::new(child.0.stdout.take().context("stdout")?)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = needle.to_owned();
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = String::new();
        let mut tx = Some(tx);
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if tx.is_some() && line.contains(&wanted) {
                let _ = tx.take().map(|t| t.send(line.clone()));
            }
            line.clear();
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => Ok(line),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!("no `{needle}` within 60 s"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            bail!("exited before `{needle}`")
        }
    }
}

pub(crate) fn start(cond: &str, kato: &str) -> Result<Option<Running>> {
    start_in(cond, kato, None)
}

/// [`start`], the agent watching `watched` (None: its own namespace).
pub(crate) fn start_in(cond: &str, kato: &str, watched: Option<&Netns>) -> Result<Option<Running>> {
    // In charge from the start: an error while waiting stops it. Only the
    // banner's pipe is piped (and drained by `wait_for`): an undrained
    // pipe would stall a child that writes more than it holds.
    let spawn = |cmd: &mut Command, banner_on_stderr: bool| {
        let (out, err) = if banner_on_stderr {
            (Stdio::null(), Stdio::piped())
        } else {
            (Stdio::piped(), Stdio::inherit())
        };
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map(Running)
    };
    Ok(match cond {
        "none" => None,
        "floor" => {
            let mut c = spawn(Command::new(kato).arg("bench-floor"), true)?;
            wait_for(&mut c, true, "attached")?;
            Some(c)
        }
        "kato" => {
            let mut c = spawn(
                Command::new(kato).args([
                    "agent",
                    "--listen",
                    "127.0.0.1:0",
                    "--netns",
                    watched.map_or("self", |n| n.0.as_str()),
                ]),
                true,
            )?;
            wait_for(&mut c, true, "listening")?;
            Some(c)
        }
        "trace" => {
            // `trace --netns` takes an inode: this process's namespace, as
            // the agent's `self`.
            use std::os::unix::fs::MetadataExt as _;
            let me = std::fs::metadata("/proc/self/ns/net")?.ino().to_string();
            let mut c = spawn(Command::new(kato).args(["trace", "--netns", &me]), true)?;
            wait_for(&mut c, true, "watching")?;
            Some(c)
        }
        "bpftrace" => {
            let mut c = spawn(Command::new("bpftrace").args(["-e", BPFTRACE]), false)?;
            wait_for(&mut c, false, "Attaching")?;
            std::thread::sleep(Duration::from_millis(500));
            Some(c)
        }
        _ => unreachable!(),
    })
}

/// A process the bench started (kato, bpftrace), stopped when dropped, so
/// that a run ending in an error leaves nothing attached for the next.
pub(crate) struct Running(pub(crate) Child);

impl Running {
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let c = &mut self.0;
        // SIGINT, so bpftrace and kato exit cleanly and detach.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && c.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Run time and count of every BPF program `pid` holds, by name.
pub(crate) fn prog_stats(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut ids = vec![];
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            if let Ok(info) = std::fs::read_to_string(e.path()) {
                if let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")) {
                    ids.push(id.trim().to_owned());
                }
            }
        }
    }
    ids.sort();
    ids.dedup();
    let mut out = BTreeMap::new();
    for id in ids {
        let Ok(o) = Command::new("bpftool")
            .args(["prog", "show", "id", &id, "--json"])
            .output()
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
            continue;
        };
        let (name, ns, cnt) = (
            v["name"].as_str().map(str::to_owned),
            v["run_time_ns"].as_u64(),
            v["run_cnt"].as_u64(),
        );
        if let (Some(name), Some(ns), Some(cnt)) = (name, ns, cnt) {
            let e = out.entry(name).or_insert((0, 0));
            e.0 += ns;
            e.1 += cnt;
        }
    }
    out
}

/// `kernel.bpf_stats_enabled` on or off: each section sets what it needs
/// (statistics cost every program run two clock reads), and the bench
/// turns them off when it ends.
pub(crate) fn bpf_stats(on: bool) {
    let _ = Command::new("sysctl")
        .args(["-qw", &format!("kernel.bpf_stats_enabled={}", u8::from(on))])
        .status();
}

pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of metric `name` (whatever its labels).
/// Ring records the agent lost, every cause together.
/// Records lost for any cause, the shed routine ones included.
pub(crate) fn events_lost(text: &str) -> f64 {
    ["ring_full", "shed", "kernel_read", "decode"]
        .iter()
        .map(|c| metric(text, &format!("kato_events_lost_total{{cause=\"{c}\"}}")))
        .sum()
}

pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// TcpExt `name` of namespace `ns` (`/proc/net/netstat` as seen there).
pub(crate) fn tcpext(ns: &Netns, name: &str) -> Result<u64> {
    let out = ns.cmd("cat").arg("/proc/net/netstat").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (
        lines.next().context("no TcpExt")?,
        lines.next().context("no TcpExt values")?,
    );
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .with_context(|| format!("no TcpExt {name}"))?;
    values
        .split_whitespace()
        .nth(i)
        .context("short TcpExt line")?
        .parse()
        .context("TcpExt value")
}

/// utime + stime of `pid`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// `kato agent` watching `ns`, and the address it serves on.
pub(crate) fn spawn_agent(
    kato: &str,
    ns: &Netns,
    snapshot_interval: &str,
) -> Result<(Running, String)> {
    spawn_agent_with(kato, ns, snapshot_interval, &[])
}

/// `kato agent --netns NS --snapshot-interval I EXTRA...`, its address.
pub(crate) fn spawn_agent_with(
    kato: &str,
    ns: &Netns,
    snapshot_interval: &str,
    extra: &[&str],
) -> Result<(Running, String)> {
    let mut agent = Running(
        Command::new(kato)
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--netns",
                &ns.0,
                "--snapshot-interval",
                snapshot_interval,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let banner = wait_for(&mut agent, true, "listening")?;
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .context("agent address")?
        .to_owned();
    Ok((agent, addr))
}
