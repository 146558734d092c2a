//! `kato history COOKIE`: one connection's story, from the agent running
//! on this host (its `/sockets/COOKIE/history`).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use keepalive_user::view::history::{timeline, Story};

use super::Output;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
kato sockets --output json | jq '.[] | select(.remote | endswith(\":5432\")) | .cookie'\n  \
kato history 3704052                    the story of socket 3704052, oldest event first\n  \
kato history 3704052 --output json      the agent's JSON, as /sockets/3704052/history serves it\n\n\
The cookie is the socket's (ss -e prints it in hex as sk:...). The agent keeps a socket's last \
32 events, and a closed socket's story for history_retention (10 min by default).")]
pub struct HistoryArgs {
    /// The socket's cookie (decimal, as `kato sockets --output json` and
    /// the agent's /sockets give it).
    pub cookie: u64,
    /// The agent to ask (plain HTTP; its --listen address).
    #[arg(long, value_name = "ADDR", default_value = keepalive_user::agent::config::DEFAULT_LISTEN)]
    pub agent: SocketAddr,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn run(args: &HistoryArgs) -> Result<()> {
    let path = format!("/sockets/{}/history", args.cookie);
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
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
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
