//! The engine's side of the HTTP process: starts `kato agent-http` (this
//! very binary, re-executed) with the socket pairs it asks through, serves
//! each pair on a thread of its own, and starts a new process when one
//! dies alone (counted). The engine never reads a byte from the network.

use std::{
    io::{BufRead as _, BufReader},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{net::UnixStream, process::CommandExt as _},
    },
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use thiserror::Error;

use super::{
    http::Backend,
    httpd::HttpdConfig,
    wire::{self, FIXED_PAIRS},
};

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot start the HTTP process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the HTTP process did not start: {0}")]
    Start(String),
    /// The web config it was given is bad (its message).
    #[error("{0}")]
    Config(String),
}

/// What the HTTP process reported once serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub addr: std::net::SocketAddr,
    pub uid: u32,
    pub switched: bool,
    /// HTTPS (the web config asks for TLS).
    pub tls: bool,
    pub pid: u32,
}

/// How long a new HTTP process may take to report.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before a dead HTTP process is replaced.
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// The capabilities a started HTTP process keeps until it has read its
/// files, emptied its bounding set and switched users: CAP_SETUID,
/// CAP_SETGID and CAP_SETPCAP where the engine holds them (and its root
/// uid reads root's files), as a capset mask.
fn child_caps() -> u32 {
    // CAP_SETGID is 6, CAP_SETUID 7, CAP_SETPCAP 8 (linux/capability.h).
    [
        (caps::Capability::CAP_SETGID, 6),
        (caps::Capability::CAP_SETUID, 7),
        (caps::Capability::CAP_SETPCAP, 8),
    ]
    .into_iter()
    .filter(|(c, _)| crate::caps::has(*c))
    .fold(0, |m, (_, bit)| m | (1 << bit))
}

/// Raw `capset` in the child between fork and exec: `keep` (from
/// [`child_caps`]) effective and permitted, nothing else.
fn limit_child_caps(keep: u32) -> std::io::Result<()> {
    const V3: u32 = 0x2008_0522;
    let header = [V3, 0u32];
    // effective, permitted, inheritable for caps 0-31, then 32-63.
    let data = [keep, keep, 0u32, 0, 0, 0];
    // SAFETY: raw syscalls on stack data, async-signal-safe (between fork
    // and exec); no_new_privs keeps exec from granting root's full set.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A started HTTP process and the write end of its lifeline: a pipe whose
/// read end the process watches, ending it when the engine is gone.
/// (PR_SET_PDEATHSIG cannot: the kernel sends that signal with the dying
/// parent's credentials, and root without CAP_KILL may not signal uid
/// 65534.)
struct Running {
    child: Child,
    _lifeline: std::io::PipeWriter,
}

/// Starts one HTTP process and the threads that answer its pairs.
fn start(cfg: &HttpdConfig, backend: &Arc<impl Backend>) -> Result<(Running, Serving), HttpError> {
    let pairs = FIXED_PAIRS + cfg.max_renders;
    let mut theirs: Vec<OwnedFd> = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let (ours, child_end) = UnixStream::pair().map_err(HttpError::Spawn)?;
        let backend = Arc::clone(backend);
        std::thread::Builder::new()
            .name("kato-http-pair".into())
            .spawn(move || {
                if let Err(e) = wire::serve(ours, &*backend) {
                    log::debug!("HTTP process pair: {e}");
                }
            })
            .map_err(HttpError::Spawn)?;
        theirs.push(child_end.into());
    }
    let (lifeline_r, lifeline) = std::io::pipe().map_err(HttpError::Spawn)?;
    let watched = lifeline_r.as_raw_fd();
    let fds: Vec<i32> = theirs.iter().map(AsRawFd::as_raw_fd).collect();
    let exe = std::env::current_exe().map_err(HttpError::Spawn)?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent-http")
        .arg("--listen")
        .arg(cfg.listen.to_string())
        .arg("--max-connections")
        .arg(cfg.max_connections.to_string())
        .arg("--max-renders")
        .arg(cfg.max_renders.to_string())
        .arg("--fds")
        .arg(
            fds.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    cmd.arg("--lifeline").arg(watched.to_string());
    for h in &cfg.allowed_hosts {
        cmd.arg("--allowed-host").arg(h);
    }
    if let Some(w) = &cfg.web_config {
        cmd.arg("--web-config").arg(w);
    }
    if let Some((endpoint, interval)) = &cfg.otlp {
        cmd.arg("--otlp-endpoint")
            .arg(endpoint.to_string())
            .arg("--otlp-interval-ms")
            .arg(interval.as_millis().to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let keep = child_caps();
    // SAFETY: only async-signal-safe calls (fcntl, prctl, capset).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in fds.iter().chain([&watched]) {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            limit_child_caps(keep)
        });
    }
    let mut child = cmd.spawn().map_err(HttpError::Spawn)?;
    drop(theirs);
    drop(lifeline_r);
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
    if let Some(why) = line.strip_prefix("config ") {
        let _ = child.wait();
        return Err(HttpError::Config(why.trim_end().to_owned()));
    }
    match parse_report(&line, child.id()) {
        Some(s) => Ok((
            Running {
                child,
                _lifeline: lifeline,
            },
            s,
        )),
        None => {
            let _ = child.kill();
            let status = child.wait().ok();
            Err(HttpError::Start(
                match (line.strip_prefix("error "), status.and_then(|s| s.code())) {
                    (Some(why), _) => why.trim_end().to_owned(),
                    (None, Some(c)) => format!("it exited with code {c}"),
                    (None, None) => "no report within 30 s".into(),
                },
            ))
        }
    }
}

/// `listening ADDR uid UID switched BOOL tls BOOL`.
fn parse_report(line: &str, pid: u32) -> Option<Serving> {
    let mut w = line.split_whitespace();
    let mut field = |name: &str| {
        (w.next()? == name).then_some(())?;
        w.next()
    };
    let addr = field("listening")?.parse().ok()?;
    let uid = field("uid")?.parse().ok()?;
    let switched = field("switched")? == "true";
    let tls = field("tls")? == "true";
    Some(Serving {
        addr,
        uid,
        switched,
        tls,
        pid,
    })
}

/// Starts the HTTP process and keeps one running: a process that dies
/// alone is replaced within [`RESTART_DELAY`] (and counted in `restarts`).
/// Returns what the first one reported.
///
/// Every process is started from the keeper thread, which lives as long as
/// the engine: PR_SET_PDEATHSIG fires when the thread that forked exits.
pub fn run(
    mut cfg: HttpdConfig,
    backend: Arc<impl Backend>,
    restarts: Arc<AtomicU64>,
) -> Result<Serving, HttpError> {
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kato-http-keeper".into())
        .spawn(move || {
            let mut running = match start(&cfg, &backend) {
                Ok((child, serving)) => {
                    // The address it got (port 0 in tests): a new process
                    // binds the same.
                    cfg.listen = serving.addr;
                    let _ = first_tx.send(Ok(serving));
                    child
                }
                Err(e) => {
                    let _ = first_tx.send(Err(e));
                    return;
                }
            };
            loop {
                let status = running.child.wait();
                log::warn!("the HTTP process exited ({status:?}); starting a new one");
                restarts.fetch_add(1, Ordering::Relaxed);
                loop {
                    std::thread::sleep(RESTART_DELAY);
                    match start(&cfg, &backend) {
                        Ok((c, s)) => {
                            log::info!("HTTP process {} serving on {}", s.pid, s.addr);
                            running = c;
                            break;
                        }
                        Err(e) => log::error!("{e}; retrying"),
                    }
                }
            }
        })
        .map_err(HttpError::Spawn)?;
    first_rx
        .recv()
        .map_err(|_| HttpError::Start("the keeper thread ended".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line() {
        assert_eq!(
            parse_report(
                "listening 127.0.0.1:7941 uid 65534 switched true tls false\n",
                9
            ),
            Some(Serving {
                addr: "127.0.0.1:7941".parse().unwrap(),
                uid: 65534,
                switched: true,
                tls: false,
                pid: 9
            })
        );
        assert_eq!(parse_report("kato: cannot listen", 9), None);
        assert_eq!(parse_report("", 9), None);
    }
}
