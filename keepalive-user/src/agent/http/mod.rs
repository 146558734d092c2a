//! The agent's HTTP endpoint, on hyper (HTTP/1.1): keep-alive, HEAD, gzip
//! when asked, a `Host` allow-list, bounded connections (`slots`: idle and
//! unauthenticated ones give way) and renders, handshake and header-read
//! timeouts and a write deadline. Requests are untrusted input;
//! nothing in them reaches a shell or the filesystem.

pub mod auth;
mod deadline;
pub mod host;
pub mod query;
mod respond;
pub mod slots;
pub mod tls;

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

pub use host::HostAllow;
pub use query::{parse_query, query_from, QueryError, SocketsQuery};

use super::history::StoryKey;
use crate::view::SocketRow;

/// What the endpoint serves: the engine implements it in the agent, and
/// the HTTP process implements it by asking the engine (`wire::Remote`).
/// Calls block (a lock, a round trip to the engine): the server runs them
/// off its event loop.
pub trait Backend: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    fn health(&self) -> String;
    /// One page of `/sockets`: the rows copied out under the engine's
    /// lock, then rendered as JSON piece by piece as they are sent.
    fn sockets(&self, q: &SocketsQuery) -> PageJson;
    /// The story of the socket `key` names (JSON), if kato has one.
    fn history(&self, key: StoryKey) -> Option<String>;
    /// An OTLP export of `signal` (encoded; with its count of log
    /// records), after counting what became of the last ones (`done`).
    fn otlp(&self, signal: super::otlp::Signal, done: &[super::otlp::Outcome]) -> (usize, Vec<u8>);
}

/// One page of sockets, as the JSON array that is the response body.
pub struct PageJson {
    /// Sockets matching the filter, all pages together.
    pub total: usize,
    /// The cursor of the next page, if there is one.
    pub next: Option<usize>,
    /// The body, in pieces (rendered, or read from the engine, as taken).
    pub body: Box<dyn Iterator<Item = Vec<u8>> + Send>,
}

impl PageJson {
    /// `rows` as a JSON array rendered [`ROWS_PER_PIECE`] at a time.
    pub fn of(rows: Vec<SocketRow>, total: usize, next: Option<usize>) -> Self {
        let mut at = 0;
        let mut ended = false;
        let body = std::iter::from_fn(move || {
            if ended {
                return None;
            }
            let mut json = Vec::with_capacity(64 * 1024);
            if at == 0 {
                json.push(b'[');
            }
            let end = (at + ROWS_PER_PIECE).min(rows.len());
            for (i, row) in rows[at..end].iter().enumerate() {
                if at + i > 0 {
                    json.push(b',');
                }
                serde_json::to_writer(&mut json, &row.view()).expect("serializable");
                if let Some(story) = &row.history {
                    // The object's last field: its closing brace taken back.
                    json.pop();
                    json.extend_from_slice(b",\"history\":");
                    json.extend_from_slice(story.as_bytes());
                    json.push(b'}');
                }
            }
            at = end;
            if at == rows.len() {
                json.push(b']');
                ended = true;
            }
            Some(json)
        });
        PageJson {
            total,
            next,
            body: Box::new(body),
        }
    }
}

/// Sockets rendered per piece of a `/sockets` body.
pub const ROWS_PER_PIECE: usize = 256;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once; a newcomer beyond it takes the slot of
    /// the one idle longest (never-served first): see `slots`.
    pub max_connections: usize,
    /// Connections one source address holds at most.
    pub per_source: usize,
    /// A TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// `/sockets` responses being rendered or sent at once; more get 503.
    pub max_renders: usize,
    /// A request head must arrive within this, also between keep-alive
    /// requests (an idle connection is closed after it).
    pub header_read_timeout: Duration,
    /// A client that stops reading for this long is disconnected.
    pub write_timeout: Duration,
    pub hosts: HostAllow,
    /// TLS, from the web config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic auth, from the web config.
    pub auth: Option<Arc<auth::BasicAuth>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            per_source: 16,
            tls_handshake_timeout: Duration::from_secs(3),
            max_renders: 4,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            hosts: HostAllow::new(&[]),
            tls: None,
            auth: None,
        }
    }
}

pub type Body = BoxBody<Bytes, std::io::Error>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves `listener` until the task is dropped.
pub async fn serve<B: Backend>(listener: TcpListener, backend: Arc<B>, limits: Limits) {
    let limits = Arc::new(limits);
    let slots = slots::Slots::new(limits.max_connections, limits.per_source);
    let renders = Arc::new(Semaphore::new(limits.max_renders));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            // EMFILE and friends: wait for fds to free up instead of spinning.
            Err(e) => {
                log::warn!("accept failed ({e}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(slot) = slots.admit(peer.ip()) else {
            log::debug!("{peer}: every slot has a request in flight; closed");
            continue;
        };
        let id = slot.id();
        let (backend, limits, renders) = (
            Arc::clone(&backend),
            Arc::clone(&limits),
            Arc::clone(&renders),
        );
        let task = tokio::spawn(async move {
            let io = deadline::WriteDeadline::new(stream, limits.write_timeout);
            let conn = Arc::clone(&slot.conn);
            match limits.tls.clone() {
                None => connection(TokioIo::new(io), backend, limits, renders, conn).await,
                Some(cfg) => {
                    let handshake = tokio_rustls::TlsAcceptor::from(cfg).accept(io);
                    match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
                        Ok(Ok(tls)) => {
                            connection(TokioIo::new(tls), backend, limits, renders, conn).await;
                        }
                        Ok(Err(e)) => log::debug!("TLS handshake failed: {e}"),
                        Err(_) => log::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
        slots.set_abort(id, task.abort_handle());
    }
}

/// Serves one connection (plain or TLS) until it closes.
async fn connection<B, IO>(
    io: IO,
    backend: Arc<B>,
    limits: Arc<Limits>,
    renders: Arc<Semaphore>,
    slot: Arc<slots::Conn>,
) where
    B: Backend,
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let header_read_timeout = limits.header_read_timeout;
    let service = hyper::service::service_fn(move |req| {
        let (backend, limits, renders, slot) = (
            Arc::clone(&backend),
            Arc::clone(&limits),
            Arc::clone(&renders),
            Arc::clone(&slot),
        );
        async move {
            slot.begin();
            let response = route(req, backend, &limits, &renders).await;
            slot.end();
            Ok::<_, Infallible>(response)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    if let Err(e) = conn.await {
        log::debug!("HTTP connection ended: {e}");
    }
}

/// Runs a blocking backend call off the event loop.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn route<B: Backend>(
    req: Request<Incoming>,
    backend: Arc<B>,
    limits: &Limits,
    renders: &Arc<Semaphore>,
) -> Response<Body> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !limits.hosts.allows(host) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "kato does not answer to Host `{}`: allowed are IP addresses and {} (config key allowed_hosts)\n",
                host.escape_debug(),
                limits.hosts.names().join(", ")
            ),
        );
    }
    if let Some(auth) = &limits.auth {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        if !auth.allows(header).await {
            let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kato\""),
            );
            return r;
        }
    }
    let gzip = respond::wants_gzip(&req);
    match req.uri().path() {
        "/" => respond::html(respond::LANDING.replace("{version}", env!("CARGO_PKG_VERSION"))),
        "/metrics" => {
            let Some(body) = blocking(move || backend.metrics()).await else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed\n");
            };
            respond::encoded(
                body.into_bytes(),
                "text/plain; version=0.0.4; charset=utf-8",
                gzip,
            )
        }
        "/healthz" => {
            let Some(body) = blocking(move || backend.health()).await else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "health failed\n");
            };
            respond::encoded(body.into_bytes(), "application/json", false)
        }
        "/sockets" => {
            let q = match parse_query(req.uri().query().unwrap_or_default())
                .and_then(|p| query_from(&p))
            {
                Ok(q) => q,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let Ok(permit) = Arc::clone(renders).try_acquire_owned() else {
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many /sockets requests at once; retry\n",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            };
            let Some(page) = blocking(move || backend.sockets(&q)).await else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "sockets failed\n");
            };
            respond::sockets(page, gzip, permit)
        }
        path => {
            let key = if path == "/history" {
                match ends_query(req.uri().query().unwrap_or_default()) {
                    Ok(k) => k,
                    Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            } else if let Some(cookie) = history_path(path) {
                StoryKey::Cookie(cookie)
            } else {
                return text(
                    StatusCode::NOT_FOUND,
                    "not found: try /metrics, /sockets, /sockets/COOKIE/history, /history?local=ADDR:PORT&remote=ADDR:PORT or /healthz\n",
                );
            };
            match blocking(move || backend.history(key)).await {
                Some(Some(body)) => respond::encoded(body.into_bytes(), "application/json", gzip),
                Some(None) => text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no history of {} (closed sockets are kept for history_retention)\n",
                        key_text(key)
                    ),
                ),
                None => text(StatusCode::INTERNAL_SERVER_ERROR, "history failed\n"),
            }
        }
    }
}

fn key_text(key: StoryKey) -> String {
    match key {
        StoryKey::Cookie(c) => format!("a socket with cookie {c}"),
        StoryKey::Ends { local, remote } => format!("a socket {local} -> {remote}"),
    }
}

/// `/history?local=ADDR:PORT&remote=ADDR:PORT` (IPv6 in brackets).
fn ends_query(query: &str) -> Result<StoryKey, QueryError> {
    let (mut local, mut remote) = (None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "local" => &mut local,
            "remote" => &mut remote,
            other => return Err(QueryError::Ends(format!("unknown parameter `{other}`"))),
        };
        *slot = Some(
            v.parse()
                .map_err(|_| QueryError::Ends(format!("`{v}` is not an address")))?,
        );
    }
    match (local, remote) {
        (Some(local), Some(remote)) => Ok(StoryKey::Ends { local, remote }),
        _ => Err(QueryError::Ends("local or remote missing".into())),
    }
}

/// The cookie of `/sockets/COOKIE/history` (decimal, as `/sockets` rows
/// give it).
fn history_path(path: &str) -> Option<u64> {
    path.strip_prefix("/sockets/")?
        .strip_suffix("/history")?
        .parse()
        .ok()
}
