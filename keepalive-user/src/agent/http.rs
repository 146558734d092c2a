//! A deliberately small HTTP/1.1 server for `/metrics`, `/sockets` and
//! `/healthz`: GET only, bounded request size and time, one response per
//! connection. Requests are untrusted input; nothing in them reaches a shell
//! or the filesystem.

use std::{net::IpAddr, str::FromStr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    filter::{Filter, SortKey},
    tcp::TcpState,
};

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Every `%` starts a two-digit hex escape.
fn valid_escapes(qs: &str) -> bool {
    let b = qs.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Parses the request line of `head`.
pub fn parse_head(head: &str) -> Result<Request, &'static str> {
    let line = head.lines().next().ok_or("empty request")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("unsupported HTTP version");
    }
    let (path, qs) = target.split_once('?').unwrap_or((target, ""));
    // form_urlencoded decodes lossily; a malformed escape or non-UTF-8
    // byte would silently become U+FFFD and match nothing, so refuse it.
    if !valid_escapes(qs) {
        return Err("bad query encoding");
    }
    let query: Vec<(String, String)> = form_urlencoded::parse(qs.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if query
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err("bad query encoding");
    }
    Ok(Request {
        method: method.into(),
        path: path.into(),
        query,
    })
}

fn parse_all<T: FromStr>(key: &str, values: &[&str]) -> Result<Vec<T>, String> {
    values
        .iter()
        .map(|v| v.parse().map_err(|_| format!("bad `{key}` value `{v}`")))
        .collect()
}

/// `/sockets?state=established&port=5432&keepalive=on&sort=idle`: the same
/// filters as `kato sockets`. Repeat a key to allow several values.
pub fn query_from(params: &[(String, String)]) -> Result<(Filter, SortKey), String> {
    let mut q = Filter::default();
    let mut sort = SortKey::default();
    let get = |k: &str| {
        params
            .iter()
            .filter(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    for (k, _) in params {
        if ![
            "state",
            "port",
            "addr",
            "pid",
            "netns",
            "keepalive",
            "risk",
            "sort",
        ]
        .contains(&k.as_str())
        {
            return Err(format!(
                "unknown parameter `{k}` (state, port, addr, pid, netns, keepalive, risk, sort)"
            ));
        }
    }
    q.states = get("state")
        .iter()
        .map(|s| TcpState::parse(s).ok_or(format!("unknown state `{s}`")))
        .collect::<Result<_, _>>()?;
    q.ports = parse_all("port", &get("port"))?;
    q.addrs = parse_all::<IpAddr>("addr", &get("addr"))?;
    q.pids = parse_all("pid", &get("pid"))?;
    q.netns = parse_all("netns", &get("netns"))?;
    q.keepalive = match get("keepalive").as_slice() {
        [] => None,
        ["on"] => Some(true),
        ["off"] => Some(false),
        other => return Err(format!("bad `keepalive` value {other:?} (on or off)")),
    };
    q.risks = get("risk")
        .iter()
        .map(|r| {
            crate::policy::Risk::parse(r).ok_or(format!(
                "unknown risk class `{r}` (safe, at-risk, unprotected, unknown)"
            ))
        })
        .collect::<Result<_, _>>()?;
    if let Some(s) = get("sort").last() {
        sort = s.parse::<SortKey>()?;
    }
    Ok((q, sort))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// Reads one request from `stream`, answers it with `route`, closes.
pub async fn serve_one(mut stream: TcpStream, route: impl FnOnce(Request) -> Response) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(end);
            }
            if buf.len() > MAX_HEAD {
                return Err(431);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err(400),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let resp = match head {
        Err(_) => Response::text(408, "request timeout\n"),
        Ok(Err(code)) => Response::text(code, "bad request\n"),
        Ok(Ok(end)) => match std::str::from_utf8(&buf[..end])
            .map_err(|_| "request is not UTF-8")
            .and_then(parse_head)
        {
            Err(e) => Response::text(400, format!("{e}\n")),
            Ok(req) if req.method != "GET" => Response::text(405, "only GET\n"),
            Ok(req) => route(req),
        },
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(resp.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_and_query() {
        let r =
            parse_head("GET /sockets?state=established&addr=%3A%3A1&port=5432 HTTP/1.1\r\nHost: x")
                .unwrap();
        assert_eq!(r.path, "/sockets");
        assert_eq!(
            r.query,
            [
                ("state".into(), "established".into()),
                ("addr".into(), "::1".into()),
                ("port".into(), "5432".into())
            ]
        );
        assert!(parse_head("GET /x").is_err());
        assert!(parse_head("GET /x SPDY/3").is_err());
        assert!(parse_head("GET /x?a=%zz HTTP/1.1").is_err());
    }

    #[test]
    fn query_parameters_like_the_cli() {
        let p = |s: &str| {
            parse_head(&format!("GET /sockets?{s} HTTP/1.1"))
                .unwrap()
                .query
        };
        let (q, sort) = query_from(&p(
            "state=time-wait&port=1&port=2&keepalive=off&sort=idle&risk=at-risk",
        ))
        .unwrap();
        assert_eq!(q.risks, [crate::policy::Risk::AtRisk]);
        assert!(query_from(&p("risk=doomed"))
            .unwrap_err()
            .contains("`doomed`"));
        assert_eq!(q.states, [TcpState::TimeWait]);
        assert_eq!(q.ports, [1, 2]);
        assert_eq!(q.keepalive, Some(false));
        assert_eq!(sort, SortKey::Idle);
        assert!(query_from(&p("port=http")).unwrap_err().contains("`port`"));
        assert!(query_from(&p("keepalive=maybe")).is_err());
        assert!(query_from(&p("colour=red"))
            .unwrap_err()
            .contains("unknown parameter `colour`"));
        assert!(query_from(&p("sort=random")).is_err());
    }
}
