//! `kato history`: one connection's story (the agent's
//! `/sockets/COOKIE/history`) as a timeline, the silences between events
//! shown as gaps.

use std::fmt::Write as _;

use serde::Deserialize;

/// The JSON `/sockets/COOKIE/history` serves (the fields shown).
#[derive(Debug, Deserialize)]
pub struct Story {
    /// Null for a socket no snapshot has shown yet.
    pub cookie: Option<u64>,
    pub local: String,
    pub remote: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub closed_s_ago: Option<f64>,
    pub dropped: u64,
    pub events: Vec<Step>,
}

#[derive(Debug, Deserialize)]
pub struct Step {
    pub time: String,
    pub event: String,
    pub state: String,
    pub probes: u8,
    pub idle_s: Option<f64>,
    pub reset_reason: Option<String>,
    pub error: Option<String>,
}

/// A silence at least this long between two events gets a line of its own.
const GAP_S: f64 = 1.0;

/// Seconds since midnight UTC of an RFC 3339 time (`...THH:MM:SS.ffffffZ`).
fn day_secs(t: &str) -> Option<f64> {
    let clock = t.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

pub fn timeline(s: &Story) -> String {
    let mut out = String::new();
    let owner = match (s.pid, &s.comm) {
        (Some(p), Some(c)) => format!(" pid {p} {c}"),
        (Some(p), None) => format!(" pid {p}"),
        _ => String::new(),
    };
    let state = s
        .closed_s_ago
        .map_or("open".to_owned(), |a| format!("closed {a:.1} s ago"));
    let _ = writeln!(
        out,
        "socket {} {} -> {}{owner}, {state}",
        s.cookie.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        s.local,
        s.remote
    );
    if s.dropped > 0 {
        let _ = writeln!(out, "  ({} earlier events no longer kept)", s.dropped);
    }
    let mut last: Option<f64> = None;
    for e in &s.events {
        let at = day_secs(&e.time);
        if let (Some(a), Some(b)) = (last, at) {
            // Midnight between the two: a day's seconds wrap.
            let gap = if b >= a { b - a } else { b + 86_400.0 - a };
            if gap >= GAP_S {
                let _ = writeln!(out, "  {:>15}  ... {gap:.1} s ...", "");
            }
        }
        last = at.or(last);
        let clock = e
            .time
            .split_once('T')
            .map_or(e.time.as_str(), |(_, c)| c.trim_end_matches('Z'));
        let clock = clock.get(..15).unwrap_or(clock);
        let mut what = vec![];
        if e.probes > 0 {
            what.push(format!("probes {}", e.probes));
        }
        if let Some(i) = e.idle_s {
            what.push(format!("idle {i:.1}s"));
        }
        if let Some(r) = &e.reset_reason {
            what.push(r.clone());
        }
        if let Some(err) = &e.error {
            what.push(err.clone());
        }
        let _ = writeln!(
            out,
            "  {clock:<15}  {:<19} {:<12} {}",
            e.event,
            e.state,
            what.join("  ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_peers_story_as_a_timeline() {
        let json = r#"{"cookie":3704052,"netns":4026532239,"local":"127.0.0.1:50470","remote":"127.0.0.1:37529","pid":11331,"comm":"client","closed_s_ago":12.25,"dropped":0,"events":[
            {"time":"2026-12-06T12:11:31.118000Z","event":"probe_sent","state":"ESTABLISHED","probes":2,"idle_s":2.1,"reset_reason":null,"error":null},
            {"time":"2026-12-06T12:11:32.122000Z","event":"probe_sent","state":"ESTABLISHED","probes":3,"idle_s":3.1,"reset_reason":null,"error":null},
            {"time":"2026-12-06T12:11:33.125974Z","event":"reset_sent","state":"ESTABLISHED","probes":0,"idle_s":4.1,"reset_reason":"TCP_KEEPALIVE_TIMEOUT","error":null},
            {"time":"2026-12-06T12:11:33.125974Z","event":"socket_error","state":"CLOSE","probes":3,"idle_s":4.1,"reset_reason":null,"error":"ETIMEDOUT (keepalive)"}]}"#;
        let story: Story = serde_json::from_str(json).unwrap();
        let text = timeline(&story);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "socket 3704052 127.0.0.1:50470 -> 127.0.0.1:37529 pid 11331 client, closed 12.2 s ago"
        );
        assert!(lines[1].contains("12:11:31.118000") && lines[1].contains("probe_sent"));
        assert!(lines[2].contains("... 1.0 s ..."), "{text}");
        assert!(lines[4].contains("... 1.0 s ..."), "{text}");
        assert!(lines[5].contains("reset_sent") && lines[5].contains("TCP_KEEPALIVE_TIMEOUT"));
        assert!(
            lines[6].contains("ETIMEDOUT (keepalive)"),
            "no gap between equal times: {text}"
        );
        assert_eq!(lines.len(), 7);
    }
}
