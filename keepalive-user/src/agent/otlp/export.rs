//! The HTTP process's side of the export: one thread that asks the engine
//! for what to send (over a socket pair of its own, so a slow collector
//! never holds up a scrape) and posts it, `application/x-protobuf`, to
//! the endpoint. Logs are asked for every second, and again at once while
//! batches come full; metrics every interval. Each post's fate goes back
//! to the engine with the next ask, to be counted.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{header, Request};
use hyper_util::rt::TokioIo;

use super::{logs::BATCH, Endpoint, Outcome, Signal};

/// How often queued log records are sent (the SDK batch processor's
/// schedule delay).
const LOG_DELAY: Duration = Duration::from_secs(1);
/// One post may take this long, connecting included (OTLP's default
/// exporter timeout).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how often to send.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    /// The endpoint's addresses, resolved before the sandbox forbids it.
    pub addrs: Vec<SocketAddr>,
    pub interval: Duration,
}

impl Target {
    /// Resolves the endpoint's name now: once the HTTP process is
    /// confined it can open no file, and so cannot resolve.
    pub fn resolve(endpoint: Endpoint, interval: Duration) -> Self {
        let addrs = match std::net::ToSocketAddrs::to_socket_addrs(&endpoint.authority()) {
            Ok(a) => a.collect(),
            Err(e) => {
                log::warn!(
                    "OTLP endpoint {endpoint}: cannot resolve its name ({e}); every export will \
                     fail until the agent restarts"
                );
                vec![]
            }
        };
        Target {
            endpoint,
            addrs,
            interval,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("its name did not resolve")]
    Unresolved,
    #[error("no answer within {}s", TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("it answered {0}")]
    Status(hyper::StatusCode),
    #[error("the request could not be made: {0}")]
    Request(hyper::http::Error),
    #[error("its answer was unreadable or over {} KiB", ANSWER_MAX >> 10)]
    Answer,
}

/// The most of a collector's answer read.
const ANSWER_MAX: usize = 64 << 10;

async fn post(t: &Target, signal: Signal, body: Vec<u8>) -> Result<(), PostError> {
    if t.addrs.is_empty() {
        return Err(PostError::Unresolved);
    }
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&t.addrs[..])
            .await
            .map_err(PostError::Connect)?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::post(t.endpoint.path(signal))
            .header(header::HOST, t.endpoint.authority())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                header::USER_AGENT,
                concat!("kato/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(PostError::Request)?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        // Read to the end (it may carry a partial-success message), but
        // no more than an answer needs.
        Limited::new(resp.into_body(), ANSWER_MAX)
            .collect()
            .await
            .map_err(|_| PostError::Answer)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status))
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| PostError::Timeout)?
}

/// What the exporter asks the engine: an encoded export of `signal` (and
/// its count of log records), reporting what became of the last ones.
pub trait Ask: Send + 'static {
    fn ask(&self, signal: Signal, done: &[Outcome]) -> (usize, Vec<u8>);
}

/// Logs the first failure and the recovery, not every failed post.
struct Health {
    failing: bool,
}

impl Health {
    fn saw(&mut self, t: &Target, signal: Signal, r: &Result<(), PostError>) {
        match r {
            Err(e) if !self.failing => {
                log::warn!(
                    "OTLP export of {} to {} failed: {e} (counted in kato_otlp_exports_total; \
                     logged again once it recovers)",
                    signal.name(),
                    t.endpoint
                );
                self.failing = true;
            }
            Ok(()) if self.failing => {
                log::info!("OTLP export to {} works again", t.endpoint);
                self.failing = false;
            }
            _ => {}
        }
    }
}

async fn run(t: Target, engine: impl Ask) {
    let mut done: Vec<Outcome> = vec![];
    let mut health = Health { failing: false };
    let mut metrics_due = Instant::now() + t.interval;
    loop {
        // Batches while they come full, then wait for more.
        loop {
            let (n, body) = engine.ask(Signal::Logs, &std::mem::take(&mut done));
            if n == 0 {
                break;
            }
            let r = post(&t, Signal::Logs, body).await;
            health.saw(&t, Signal::Logs, &r);
            done.push(Outcome {
                signal: Signal::Logs,
                ok: r.is_ok(),
                records: n as u64,
            });
            // Metrics keep their schedule however many events wait.
            if n < BATCH || Instant::now() >= metrics_due {
                break;
            }
        }
        if Instant::now() >= metrics_due {
            let (_, body) = engine.ask(Signal::Metrics, &std::mem::take(&mut done));
            let r = post(&t, Signal::Metrics, body).await;
            health.saw(&t, Signal::Metrics, &r);
            done.push(Outcome {
                signal: Signal::Metrics,
                ok: r.is_ok(),
                records: 0,
            });
            // On schedule, not drifting by the post's time; a late one
            // is not made up for.
            metrics_due = (metrics_due + t.interval).max(Instant::now());
        }
        tokio::time::sleep(LOG_DELAY).await;
    }
}

/// The runtime the exporter runs on: made before the sandbox (which
/// forbids epoll_create), driven by [`start`] after it.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Starts the exporter thread on `rt`.
pub fn start(
    rt: tokio::runtime::Runtime,
    t: Target,
    engine: impl Ask,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kato-otlp".into())
        .spawn(move || rt.block_on(run(t, engine)))
}
