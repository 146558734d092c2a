//! `kato sockets --history`: the listing, each socket followed by its story
//! as the agent on this host keeps it (`/sockets?history=1`), or as kato
//! itself traced it for `--for DURATION` when no agent runs.

use std::{collections::HashMap, io::Write, net::SocketAddr, ops::ControlFlow, time::Duration};

use anyhow::{bail, Context as _, Result};
use keepalive_user::{
    bpf::Bpf,
    events::{Observation, Pipeline, ResetReasons, Sink},
    policy::Policy,
    timefmt::Clock,
    view::{
        history::{timeline, Story},
        sockets as render,
        trace::Formatter,
        SocketView,
    },
};

use super::Output;

/// Rows per request (the agent's most).
const PAGE: usize = 10_000;

/// A socket's story, found by its row: by cookie (the agent's) or by its
/// namespace and ends (traced here).
pub enum Stories {
    ByCookie(HashMap<u64, serde_json::Value>),
    ByEnds(HashMap<Ends, serde_json::Value>),
}

type Ends = (u32, SocketAddr, SocketAddr);

impl Stories {
    fn of(&self, v: &SocketView<'_>) -> Option<&serde_json::Value> {
        let s = v.socket;
        match self {
            Stories::ByCookie(m) => s.cookie.and_then(|c| m.get(&c)),
            Stories::ByEnds(m) => m.get(&(s.netns, s.local, s.remote)),
        }
    }
}

/// Events kept per socket, and sockets at most, while tracing.
const PER_SOCKET: usize = 32;
const SOCKETS: usize = 65_536;

/// Collects what the pipeline observes, as story steps per socket.
struct Collect<'a> {
    fmt: Formatter<'a>,
    steps: HashMap<Ends, (Vec<serde_json::Value>, u64)>,
    owners: HashMap<Ends, (Option<u32>, Option<String>)>,
}

impl Sink for Collect<'_> {
    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
        let rec = obs.record;
        let key = (rec.netns, rec.local, rec.remote);
        if !self.steps.contains_key(&key) && self.steps.len() >= SOCKETS {
            return ControlFlow::Continue(());
        }
        for &d in obs.events {
            let Ok(ev) = serde_json::to_value(self.fmt.event(obs, d, None)) else {
                continue;
            };
            let step = serde_json::json!({
                "time": ev["time"], "event": ev["event"], "state": ev["state"],
                "probes": ev["probes"], "idle_s": ev["idle_s"],
                "reset_reason": ev["reset_reason"], "error": ev["error"],
            });
            if ev["pid"].is_u64() {
                let owner = (
                    ev["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
                    ev["comm"].as_str().map(str::to_owned),
                );
                self.owners.insert(key, owner);
            }
            let (steps, dropped) = self.steps.entry(key).or_default();
            if steps.len() == PER_SOCKET {
                steps.remove(0);
                *dropped += 1;
            }
            steps.push(step);
        }
        ControlFlow::Continue(())
    }
}

/// Traces for `duration` and tells what happened to each socket, as the
/// agent's stories would (closed ones are not listed: the listing is of
/// the sockets there after the trace).
pub async fn trace_for(bpf: &mut Bpf, duration: Duration, policy: &Policy) -> Result<Stories> {
    let mut stream = bpf.events()?;
    let mut pipeline = Pipeline::new(
        bpf.kernel.hz,
        ResetReasons(bpf.kernel.reset_reasons.clone()),
    );
    let mut sink = Collect {
        fmt: Formatter {
            clock: Clock::new(),
            policy,
            turns: false,
            addresses: false,
        },
        steps: HashMap::new(),
        owners: HashMap::new(),
    };
    eprintln!(
        "kato sockets: tracing for {}",
        keepalive_user::duration::format(duration)
    );
    let mut batch = Vec::new();
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = &mut end => break,
            r = stream.next_batch(&mut batch) => r.context("reading the event ring buffer")?,
        }
        let _ = pipeline.feed(&mut batch, &mut sink);
        let _ = pipeline.settle_now(&mut sink);
    }
    stream.drain_now(&mut batch);
    let _ = pipeline.feed(&mut batch, &mut sink);
    let _ = pipeline.settle_now(&mut sink);
    let Collect { steps, owners, .. } = sink;
    Ok(Stories::ByEnds(
        steps
            .into_iter()
            .map(|(key, (events, dropped))| {
                let (pid, comm) = owners.get(&key).cloned().unwrap_or_default();
                let story = serde_json::json!({
                    "cookie": null, "netns": key.0,
                    "local": key.1.to_string(), "remote": key.2.to_string(),
                    "pid": pid, "comm": comm, "closed_s_ago": null,
                    "dropped": dropped, "events": events,
                });
                (key, story)
            })
            .collect(),
    ))
}

/// Every story the agent has of a socket it lists, by cookie.
pub fn fetch(agent: SocketAddr) -> Result<Stories> {
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
    Ok(Stories::ByCookie(stories))
}

/// The rows, each followed by its story (table: the timeline, indented;
/// JSON: a `history` field, null where the agent has none).
pub fn print<'a>(
    out: &mut impl Write,
    output: Output,
    rows: impl Iterator<Item = SocketView<'a>>,
    stories: &Stories,
    with_risk: bool,
    header: bool,
) -> Result<()> {
    let story = |v: &SocketView<'_>| stories.of(v);
    match output {
        Output::Json => {
            let time = super::table::listed_at();
            let rows: Vec<serde_json::Value> = rows
                .map(|v| {
                    let mut j = serde_json::to_value(super::table::Timed {
                        time: &time,
                        view: v.clone(),
                    })
                    .expect("plain data");
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
