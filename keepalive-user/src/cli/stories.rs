//! `kato sockets --history`: the listing, each socket followed by its story
//! as the agent on this host keeps it (`/sockets?history=1`).

use std::{collections::HashMap, io::Write, net::SocketAddr};

use anyhow::{bail, Context as _, Result};
use keepalive_user::view::{
    history::{timeline, Story},
    sockets as render, SocketView,
};

use super::Output;

/// Rows per request (the agent's most).
const PAGE: usize = 10_000;

/// Every story the agent has of a socket it lists, by cookie.
pub fn fetch(agent: SocketAddr) -> Result<HashMap<u64, serde_json::Value>> {
    let mut stories = HashMap::new();
    for page in 0.. {
        let path = format!("/sockets?history=1&limit={PAGE}&cursor={}", page * PAGE);
        let (status, body) = super::history::get(agent, &path).with_context(|| {
            format!("no kato agent answers at {agent} (--history reads its stories: start one, or give --agent)")
        })?;
        if status != 200 {
            bail!("the agent at {agent} answered {status}: {}", body.trim());
        }
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body)
            .context("the agent's /sockets is not what this kato reads")?;
        for mut row in rows.iter().cloned() {
            if let (Some(c), Some(h)) = (row["cookie"].as_u64(), row.get_mut("history")) {
                if !h.is_null() {
                    stories.insert(c, h.take());
                }
            }
        }
        if rows.len() < PAGE {
            break;
        }
    }
    Ok(stories)
}

/// The rows, each followed by its story (table: the timeline, indented;
/// JSON: a `history` field, null where the agent has none).
pub fn print<'a>(
    out: &mut impl Write,
    output: Output,
    rows: impl Iterator<Item = SocketView<'a>>,
    stories: &HashMap<u64, serde_json::Value>,
    with_risk: bool,
    header: bool,
) -> Result<()> {
    let story = |v: &SocketView<'_>| v.socket.cookie.and_then(|c| stories.get(&c));
    match output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = rows
                .map(|v| {
                    let mut j = serde_json::to_value(&v).expect("plain data");
                    j["history"] = story(&v).cloned().unwrap_or_default();
                    j
                })
                .collect();
            serde_json::to_writer(&mut *out, &rows)?;
            writeln!(out)?;
        }
        Output::Table => {
            if header {
                writeln!(out, "{}", render::header(with_risk))?;
            }
            for v in rows {
                let mut line = String::new();
                render::write_row(&mut line, &v, with_risk);
                writeln!(out, "{line}")?;
                if let Some(s) = story(&v) {
                    let s: Story = serde_json::from_value(s.clone())
                        .context("the agent's history is not what this kato reads")?;
                    for l in timeline(&s).lines().skip(1) {
                        writeln!(out, "    {l}")?;
                    }
                }
            }
        }
    }
    Ok(())
}
