//! How the agent's HTTP process asks the engine for what it serves: typed
//! requests and length-prefixed frames over UNIX socket pairs. The HTTP
//! process has parsed and checked every byte from the network; the engine
//! reads only these frames, each bounded, each a [`Request`] or nothing.
//!
//! A response is a head frame ([`Head`], JSON) and body frames (at most
//! [`CHUNK`] bytes each), ended by an empty frame: a page of 100,000
//! sockets goes over in pieces, never whole in either process.

use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    sync::{Arc, Condvar, Mutex, PoisonError},
};

use serde::{Deserialize, Serialize};

use super::{
    history::StoryKey,
    http::{Backend, PageJson, SocketsQuery},
    otlp::{Outcome, Signal},
};

/// A request frame at most (a query of the most filter values allowed).
pub const MAX_REQUEST: usize = 256 << 10;
/// A body frame at most.
pub const CHUNK: usize = 256 << 10;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Request {
    Metrics,
    Health,
    Sockets(Box<SocketsQuery>),
    History(StoryKey),
    /// An OTLP export of `signal`, and what became of the last ones.
    Otlp {
        signal: Signal,
        done: Vec<Outcome>,
    },
}

/// What precedes a body: for `/sockets`, the matching total and the next
/// page's cursor.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub total: Option<usize>,
    pub next: Option<usize>,
}

pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let n = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    w.write_all(&n.to_le_bytes())?;
    w.write_all(bytes)
}

/// One frame of at most `max` bytes; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {n} bytes (at most {max})"),
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// The engine's side of one pair: answers requests until the HTTP process
/// closes it (or sends what is no request: the pair is dropped).
pub fn serve(mut s: UnixStream, backend: &impl Backend) -> io::Result<()> {
    while let Some(frame) = read_frame(&mut s, MAX_REQUEST)? {
        let req: Request = serde_json::from_slice(&frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        match req {
            Request::Metrics => respond(&mut s, &Head::default(), backend.metrics().as_bytes())?,
            Request::Health => respond(&mut s, &Head::default(), backend.health().as_bytes())?,
            Request::History(key) => {
                let story = backend.history(key);
                let head = Head {
                    total: Some(usize::from(story.is_some())),
                    next: None,
                };
                respond(&mut s, &head, story.unwrap_or_default().as_bytes())?;
            }
            Request::Otlp { signal, done } => {
                let (records, body) = backend.otlp(signal, &done);
                let head = Head {
                    total: Some(records),
                    next: None,
                };
                respond(&mut s, &head, &body)?;
            }
            Request::Sockets(q) => {
                let page = backend.sockets(&q);
                let head = Head {
                    total: Some(page.total),
                    next: page.next,
                };
                write_frame(&mut s, &serde_json::to_vec(&head)?)?;
                for chunk in page.body {
                    for piece in chunk.chunks(CHUNK) {
                        write_frame(&mut s, piece)?;
                    }
                }
                write_frame(&mut s, &[])?;
            }
        }
    }
    Ok(())
}

fn respond(s: &mut UnixStream, head: &Head, body: &[u8]) -> io::Result<()> {
    write_frame(s, &serde_json::to_vec(head)?)?;
    for piece in body.chunks(CHUNK) {
        write_frame(s, piece)?;
    }
    write_frame(s, &[])
}

/// The HTTP process's side: a [`Backend`] that asks the engine. One pair
/// for `/healthz`, one for `/metrics`, one for the OTLP exporter, the rest
/// for `/sockets` pages (a slow page or collector never holds up a
/// liveness probe or a scrape).
pub struct Remote {
    health: Mutex<UnixStream>,
    metrics: Mutex<UnixStream>,
    otlp: Mutex<UnixStream>,
    pages: Arc<(Mutex<Vec<UnixStream>>, Condvar)>,
}

/// Pairs a [`Remote`] uses besides those for pages.
pub const FIXED_PAIRS: usize = 3;

impl Remote {
    /// `pairs`: health's, metrics', the exporter's, then one per
    /// concurrent page.
    pub fn new(pairs: Vec<UnixStream>) -> io::Result<Self> {
        let mut it = pairs.into_iter();
        let missing = || io::Error::new(io::ErrorKind::InvalidInput, "too few socket pairs");
        let health = Mutex::new(it.next().ok_or_else(missing)?);
        let metrics = Mutex::new(it.next().ok_or_else(missing)?);
        let otlp = Mutex::new(it.next().ok_or_else(missing)?);
        let pages: Vec<_> = it.collect();
        if pages.is_empty() {
            return Err(missing());
        }
        Ok(Remote {
            health,
            metrics,
            otlp,
            pages: Arc::new((Mutex::new(pages), Condvar::new())),
        })
    }

    /// A page pair, waiting for one to be given back if all are lent.
    fn page_pair(&self) -> UnixStream {
        let (pool, freed) = &*self.pages;
        let mut free = pool.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(s) = free.pop() {
                return s;
            }
            free = freed.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn ask(pair: &Mutex<UnixStream>, req: &Request) -> (Head, Vec<u8>) {
        let mut s = pair.lock().unwrap_or_else(PoisonError::into_inner);
        let asked = write_frame(&mut *s, &serde_json::to_vec(req).unwrap_or_default())
            .and_then(|()| read_head(&mut s))
            .and_then(|h| Ok((h, read_body(&mut s)?)));
        asked.unwrap_or_else(|e| engine_gone(&e))
    }

    fn text(pair: &Mutex<UnixStream>, req: &Request) -> String {
        String::from_utf8_lossy(&Self::ask(pair, req).1).into_owned()
    }
}

fn read_head(s: &mut UnixStream) -> io::Result<Head> {
    let head = read_frame(s, CHUNK)?.ok_or_else(gone)?;
    serde_json::from_slice(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_body(s: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut body = vec![];
    loop {
        let piece = read_frame(s, CHUNK)?.ok_or_else(gone)?;
        if piece.is_empty() {
            return Ok(body);
        }
        body.extend_from_slice(&piece);
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the engine closed the pair")
}

/// The engine went away (it exited, or broke the protocol): nothing to
/// serve, so the HTTP process exits too; the engine starts a new one.
fn engine_gone(e: &io::Error) -> ! {
    log::error!("kato agent HTTP: the engine is gone ({e}); exiting");
    std::process::exit(1)
}

/// A page pair lent to one `/sockets` body, given back when the body is
/// done (read to its end first, if the client left early).
struct Lent {
    s: Option<UnixStream>,
    ended: bool,
    pool: Arc<(Mutex<Vec<UnixStream>>, Condvar)>,
}

impl Iterator for Lent {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        let s = self.s.as_mut()?;
        match read_frame(s, CHUNK) {
            Ok(Some(piece)) if !piece.is_empty() => Some(piece),
            Ok(_) => {
                self.ended = true;
                None
            }
            Err(e) => engine_gone(&e),
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        while !self.ended && self.next().is_some() {}
        if let Some(s) = self.s.take() {
            let (pool, freed) = &*self.pool;
            pool.lock().unwrap_or_else(PoisonError::into_inner).push(s);
            freed.notify_one();
        }
    }
}

impl Backend for Remote {
    fn otlp(&self, signal: Signal, done: &[Outcome]) -> (usize, Vec<u8>) {
        let req = Request::Otlp {
            signal,
            done: done.to_vec(),
        };
        let (head, body) = Self::ask(&self.otlp, &req);
        (head.total.unwrap_or(0), body)
    }

    fn metrics(&self) -> String {
        Self::text(&self.metrics, &Request::Metrics)
    }

    fn health(&self) -> String {
        Self::text(&self.health, &Request::Health)
    }

    fn history(&self, key: StoryKey) -> Option<String> {
        let mut s = self.page_pair();
        let asked = write_frame(
            &mut s,
            &serde_json::to_vec(&Request::History(key)).unwrap_or_default(),
        )
        .and_then(|()| read_head(&mut s))
        .and_then(|h| Ok((h, read_body(&mut s)?)));
        let (pool, freed) = &*self.pages;
        pool.lock().unwrap_or_else(PoisonError::into_inner).push(s);
        freed.notify_one();
        match asked {
            Ok((h, body)) => {
                (h.total == Some(1)).then(|| String::from_utf8_lossy(&body).into_owned())
            }
            Err(e) => engine_gone(&e),
        }
    }

    fn sockets(&self, q: &SocketsQuery) -> PageJson {
        let mut s = self.page_pair();
        let req = Request::Sockets(Box::new(q.clone()));
        let head = write_frame(&mut s, &serde_json::to_vec(&req).unwrap_or_default())
            .and_then(|()| read_head(&mut s));
        let head = match head {
            Ok(h) => h,
            Err(e) => engine_gone(&e),
        };
        PageJson {
            total: head.total.unwrap_or(0),
            next: head.next,
            // Read as the client takes it.
            body: Box::new(Lent {
                s: Some(s),
                ended: false,
                pool: Arc::clone(&self.pages),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let mut buf = vec![];
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, 10).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 10).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 10).unwrap().is_none(), "clean end");
        let mut big = vec![];
        write_frame(&mut big, &[0u8; 11]).unwrap();
        assert!(read_frame(&mut &big[..], 10).is_err(), "over the bound");
        // A torn frame is an error, not an end.
        assert!(read_frame(&mut &buf[..6], 10).is_err());
    }

    #[test]
    fn requests_are_typed() {
        let q = serde_json::to_vec(&Request::Health).unwrap();
        assert!(matches!(
            serde_json::from_slice::<Request>(&q).unwrap(),
            Request::Health
        ));
        assert!(serde_json::from_slice::<Request>(b"{\"Shell\":\"ls\"}").is_err());
    }
}
