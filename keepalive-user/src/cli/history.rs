//! `kato history COOKIE`: one connection's story, from the agent running
//! on this host (its `/sockets/COOKIE/history`).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use keepalive_user::{
    agent::history::StoryKey,
    view::history::{timeline, Story},
};

use super::Output;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
kato sockets --output json | jq '.[] | select(.remote | endswith(\":5432\")) | .cookie'\n  \
kato history 3704052                    the story of socket 3704052, oldest event first\n  \
kato history 3704052 --output json      the agent's JSON, as /sockets/3704052/history serves it\n  \
kato history 10.0.0.5:41234-10.0.0.9:5432    by its ends, as `kato sockets` shows them (Local-Foreign)\n  \
kato history '[::1]:41234-[::1]:5432'      IPv6 in brackets\n\n\
The cookie is the socket's (ss -e prints it in hex as sk:...). By its ends: the open socket with \
them, else the one that closed last (a port pair is reused). The agent keeps a socket's last \
32 events, and a closed socket's story for history_retention (10 min by default).")]
pub struct HistoryArgs {
    /// The socket: its cookie (decimal, as `kato sockets --output json`
    /// and the agent's /sockets give it), or LOCAL-REMOTE, its two ends.
    #[arg(value_name = "COOKIE|LOCAL-REMOTE", value_parser = parse_socket)]
    pub socket: StoryKey,
    /// The agent to ask (plain HTTP; its --listen address).
    #[arg(long, value_name = "ADDR", default_value = keepalive_user::agent::config::DEFAULT_LISTEN)]
    pub agent: SocketAddr,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// A cookie, or `LOCAL-REMOTE` (IPv6 in brackets, so the first `-`
/// outside them splits).
fn parse_socket(s: &str) -> Result<StoryKey, String> {
    if let Ok(c) = s.parse() {
        return Ok(StoryKey::Cookie(c));
    }
    let mut depth = 0i32;
    let split = s.char_indices().find(|&(_, c)| {
        depth += i32::from(c == '[') - i32::from(c == ']');
        c == '-' && depth == 0
    });
    let parsed = split.and_then(|(i, _)| Some((s[..i].parse().ok()?, s[i + 1..].parse().ok()?)));
    match parsed {
        Some((local, remote)) => Ok(StoryKey::Ends { local, remote }),
        None => Err(format!(
            "`{s}` is neither a cookie nor LOCAL-REMOTE (e.g. 10.0.0.5:41234-10.0.0.9:5432)"
        )),
    }
}

fn path_of(key: StoryKey) -> String {
    match key {
        StoryKey::Cookie(c) => format!("/sockets/{c}/history"),
        StoryKey::Ends { local, remote } => {
            let enc = |a: SocketAddr| {
                form_urlencoded::byte_serialize(a.to_string().as_bytes()).collect::<String>()
            };
            format!("/history?local={}&remote={}", enc(local), enc(remote))
        }
    }
}

pub fn run(args: &HistoryArgs) -> Result<()> {
    let path = path_of(args.socket);
    let (status, body) = get(args.agent, &path).with_context(|| {
        format!(
            "no kato agent answers at {} (start one, or give --agent)",
            args.agent
        )
    })?;
    match status {
        200 => {}
        404 => bail!("{}", body.trim()),
        _ => bail!("the agent answered {status}: {}", body.trim()),
    }
    match args.output {
        Output::Json => println!("{body}"),
        Output::Table => {
            let story: Story = serde_json::from_str(&body)
                .context("the agent's history is not what this kato reads")?;
            print!("{}", timeline(&story));
        }
    }
    Ok(())
}

/// A one-shot HTTP/1.1 GET: (status, body).
pub(super) fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.take(16 << 20).read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_a_cookie_or_its_two_ends() {
        assert_eq!(parse_socket("3704052"), Ok(StoryKey::Cookie(3_704_052)));
        let v4 = parse_socket("10.0.0.5:41234-10.0.0.9:5432").unwrap();
        assert_eq!(
            v4,
            StoryKey::Ends {
                local: "10.0.0.5:41234".parse().unwrap(),
                remote: "10.0.0.9:5432".parse().unwrap()
            }
        );
        let v6 = parse_socket("[fe80::1]:41234-[::1]:5432").unwrap();
        assert_eq!(
            v6,
            StoryKey::Ends {
                local: "[fe80::1]:41234".parse().unwrap(),
                remote: "[::1]:5432".parse().unwrap()
            }
        );
        assert_eq!(
            path_of(v6),
            "/history?local=%5Bfe80%3A%3A1%5D%3A41234&remote=%5B%3A%3A1%5D%3A5432"
        );
        for bad in ["", "-", "10.0.0.5:41234", "10.0.0.5-10.0.0.9", "x-y", "-1"] {
            assert!(parse_socket(bad).is_err(), "{bad}");
        }
    }
}
