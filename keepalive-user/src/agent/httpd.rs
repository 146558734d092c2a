//! The agent's HTTP process (`kato agent-http`, started by the engine):
//! it reads the web config and its TLS key and users while it still may,
//! binds the listening address, gives up every privilege ([`sandbox`]),
//! then serves `/metrics`, `/sockets` and `/healthz`, asking the engine
//! over socket pairs ([`wire::Remote`]) for what they hold. It exits when
//! the engine does (its lifeline pipe closes).

use std::{
    io::Write as _,
    net::SocketAddr,
    os::{fd::FromRawFd as _, unix::net::UnixStream},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use super::{
    config::ConfigError,
    http::{self, auth::BasicAuth, Backend as _, HostAllow, Limits},
    otlp::{
        export::{self, Ask, Target},
        Endpoint, Outcome, Signal,
    },
    sandbox,
    webconfig::WebConfig,
    wire::Remote,
};

/// Everything the HTTP process is told.
#[derive(Debug, Clone)]
pub struct HttpdConfig {
    pub listen: SocketAddr,
    pub web_config: Option<PathBuf>,
    pub allowed_hosts: Vec<String>,
    pub max_connections: usize,
    /// `/sockets` pages rendered at once (one socket pair each).
    pub max_renders: usize,
    /// The socket pairs' ends it inherited: health's, metrics', pages'.
    pub fds: Vec<i32>,
    /// The read end of the pipe the engine holds open while it lives.
    pub lifeline: i32,
    /// The OTLP endpoint and the metrics interval (None: no exporter).
    pub otlp: Option<(Endpoint, Duration)>,
}

/// Clients beyond the connection limit wait in the kernel's accept queue:
/// a deep one (capped by net.core.somaxconn) keeps a burst of them from
/// being dropped at SYN.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}

/// TLS and basic auth, each where the web config asks for it.
type Web = (Option<Arc<rustls::ServerConfig>>, Option<Arc<BasicAuth>>);

fn web(path: Option<&PathBuf>) -> anyhow::Result<Web> {
    let Some(path) = path else {
        return Ok((None, None));
    };
    let web = WebConfig::read(path)?;
    let tls = match &web.tls {
        None => None,
        Some(t) => Some(http::tls::server_config(t).map_err(|message| ConfigError {
            origin: path.display().to_string(),
            key: "tls_server_config".into(),
            message,
        })?),
    };
    Ok((tls, BasicAuth::new(web.users).map(Arc::new)))
}

/// The exporter asks the engine through the [`Remote`]'s own pair.
struct Engine(Arc<Remote>);

impl Ask for Engine {
    fn ask(&self, signal: Signal, done: &[Outcome]) -> (usize, Vec<u8>) {
        self.0.otlp(signal, done)
    }
}

/// Exits when the engine's end of the lifeline closes: the engine is gone
/// (it exited, or was killed), and nothing is left to serve.
fn watch_lifeline(fd: i32) -> std::io::Result<()> {
    // SAFETY: the engine handed this descriptor to this process alone.
    let mut r = unsafe { std::fs::File::from_raw_fd(fd) };
    std::thread::Builder::new()
        .name("kato-lifeline".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            // The engine never writes: a read returns only at its end.
            while matches!(std::io::Read::read(&mut r, &mut byte), Ok(n) if n > 0) {}
            std::process::exit(0)
        })?;
    Ok(())
}

/// `config MESSAGE` (exit 2) for a bad web config, `error MESSAGE` (exit 1)
/// otherwise, on standard output where the engine reads the report.
fn report_and_exit(e: &anyhow::Error) -> ! {
    let config = e.downcast_ref::<ConfigError>().is_some();
    let line = format!("{e:#}").replace('\n', " ");
    println!("{} {line}", if config { "config" } else { "error" });
    std::process::exit(if config { 2 } else { 1 })
}

/// Sets up, reports `listening ADDR uid UID` (or the error) on standard
/// output for the engine, and serves until the engine is gone.
pub async fn run(cfg: HttpdConfig) -> anyhow::Result<()> {
    // SAFETY: the engine handed these descriptors to this process alone.
    let pairs: Vec<UnixStream> = cfg
        .fds
        .iter()
        .map(|&fd| unsafe { UnixStream::from_raw_fd(fd) })
        .collect();
    // A bad web config is reported to the engine, which says it in one
    // line (exit 2); nothing on this process's stderr.
    let (tls, auth) = match web(cfg.web_config.as_ref()) {
        Ok(w) => w,
        Err(e) => report_and_exit(&e),
    };
    let listener = match listen(cfg.listen) {
        Ok(l) => l,
        Err(e) => report_and_exit(&anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen)),
    };
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    // Resolved and its runtime made while files and epoll are allowed.
    let exporter = match cfg.otlp {
        Some((endpoint, interval)) => {
            Some((Target::resolve(endpoint, interval), export::runtime()?))
        }
        None => None,
    };
    let dropped = sandbox::drop_privileges()?;
    // After the drop (capset is per thread), before the filter (which
    // covers every thread).
    watch_lifeline(cfg.lifeline)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    sandbox::confine(exporter.is_some())?;
    let backend = Arc::new(Remote::new(pairs)?);
    if let Some((target, rt)) = exporter {
        export::start(rt, target, Engine(Arc::clone(&backend)))?;
    }
    let tls_on = tls.is_some();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "listening {addr} uid {} switched {} tls {}",
        dropped.uid, dropped.switched, tls_on
    )?;
    out.flush()?;
    drop(out);
    http::serve(
        listener,
        backend,
        Limits {
            max_connections: cfg.max_connections,
            // A quarter each, so one address cannot hold them all (at least 2).
            per_source: (cfg.max_connections / 4).max(2),
            max_renders: cfg.max_renders,
            hosts: HostAllow::new(&cfg.allowed_hosts),
            tls,
            auth,
            ..Limits::default()
        },
    )
    .await;
    Ok(())
}
