//! Building responses: content negotiation (gzip), the landing page, and
//! `/sockets` streamed in chunks from a copied page.

use std::{
    io::Write as _,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};
use http_body_util::BodyExt as _;
use hyper::{
    body::Frame,
    header::{self, HeaderValue},
    Request, Response,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{full, Body, PageJson};

/// Chunks buffered between the renderer and a slow client.
const CHUNKS_BUFFERED: usize = 4;

pub const LANDING: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kato agent</title></head>
<body>
<h1>kato agent {version}</h1>
<p>TCP keepalive observer.</p>
<ul>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/sockets">/sockets</a>: the socket table as JSON (filters: state, port, addr, pid, netns, keepalive, risk, sort; paging: limit, cursor)</li>
<li><a href="/healthz">/healthz</a>: liveness</li>
</ul>
</body></html>
"#;

/// Does the client accept gzip (`Accept-Encoding: gzip`, not `gzip;q=0`)?
pub fn wants_gzip<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    e.write_all(body).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

fn with_type(mut r: Response<Body>, content_type: &'static str) -> Response<Body> {
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn mark_gzip(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
}

pub fn html(body: String) -> Response<Body> {
    with_type(Response::new(full(body)), "text/html; charset=utf-8")
}

/// A whole body, gzipped when the client asked for it.
pub fn encoded(body: Vec<u8>, content_type: &'static str, gz: bool) -> Response<Body> {
    if gz {
        let mut r = with_type(Response::new(full(gzip(&body))), content_type);
        mark_gzip(&mut r);
        r
    } else {
        let mut r = with_type(Response::new(full(body)), content_type);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        r
    }
}

/// The receiving end of a streamed body.
struct Chunks(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Sends `page`'s body into `tx` (gzipped as it goes when asked); stops as
/// soon as the client is gone.
fn render(page: PageJson, gz: bool, tx: &mpsc::Sender<Bytes>) {
    let mut encoder = gz.then(|| GzEncoder::new(Vec::new(), Compression::fast()));
    let mut body = page.body.peekable();
    while let Some(json) = body.next() {
        let last = body.peek().is_none();
        let out = match &mut encoder {
            None => json,
            Some(e) => {
                e.write_all(&json).expect("writing to a Vec");
                if last {
                    e.try_finish().expect("writing to a Vec");
                }
                std::mem::take(e.get_mut())
            }
        };
        if !out.is_empty() && tx.blocking_send(Bytes::from(out)).is_err() {
            return;
        }
    }
}

/// `/sockets`: headers now, the body streamed by a blocking renderer that
/// holds `permit` (one of the concurrent-render slots) until it is done.
pub fn sockets(page: PageJson, gz: bool, permit: OwnedSemaphorePermit) -> Response<Body> {
    let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED);
    let total = page.total;
    let next = page.next;
    tokio::task::spawn_blocking(move || {
        render(page, gz, &tx);
        drop(permit);
    });
    let mut r = with_type(Response::new(Chunks(rx).boxed()), "application/json");
    let h = r.headers_mut();
    h.insert("kato-total", HeaderValue::from(total));
    if let Some(n) = next {
        h.insert("kato-next-cursor", HeaderValue::from(n));
    }
    if gz {
        mark_gzip(&mut r);
    }
    r
}
