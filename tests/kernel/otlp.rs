//! `kato agent --otlp-endpoint`: the metrics and a dead peer's events reach
//! a real OTLP/HTTP receiver (oteltap from PyPI, which decodes each export
//! with the OpenTelemetry project's Python protobuf classes and prints it
//! as JSON lines), and a receiver that goes down costs counted failures,
//! never the agent.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent_support::{sample, Agent},
    prometheus::free_port,
    support::{dead_peer, require_root, Netns},
};

/// oteltap on 127.0.0.1:`port`, its JSON lines sent to `items`.
struct Tap {
    child: Child,
    items: Receiver<Value>,
    /// Every item received so far, in order.
    seen: Vec<Value>,
}

impl Tap {
    fn start(port: u16) -> Tap {
        let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/oteltap");
        let mut child = Command::new(&exe)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} ({e}): run `cargo xtask setup`", exe.display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.starts_with("Listening"), "oteltap: {first}");
        let (tx, items) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                // Every line after the first is one decoded item.
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("oteltap printed what is not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Tap {
            child,
            items,
            seen: vec![],
        }
    }

    /// The first item received that satisfies `done`, waiting up to
    /// `limit` for it.
    fn until(&mut self, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| done(v)) {
            return v.clone();
        }
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.items.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if done(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no {what} among {} items in {limit:?}", self.seen.len())
                }
            }
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log record's attribute `key`, as OTLP's JSON mapping spells values.
fn attr<'a>(record: &'a Value, key: &str) -> Option<&'a Value> {
    record["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

fn string_attr<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    attr(record, key)?["stringValue"].as_str()
}

/// A metric item's first data point's value (a sum's or a gauge's).
fn point(metric: &Value) -> f64 {
    let data = if metric["sum"].is_object() {
        &metric["sum"]
    } else {
        &metric["gauge"]
    };
    data["dataPoints"]
        .as_array()
        .and_then(|p| p.first())
        .and_then(|p| p["asDouble"].as_f64())
        .unwrap_or(f64::NAN)
}

#[test]
fn metrics_and_a_dead_peers_events_reach_a_real_otlp_receiver() {
    require_root();
    let ns = Netns::new("otlp");
    let port = free_port();
    let mut tap = Tap::start(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--otlp-endpoint",
        &endpoint,
        "--otlp-interval",
        "1s",
        "--snapshot-interval",
        "1s",
    ]);
    let (local, remote) = dead_peer(&ns);
    let (local, remote) = (local.to_string(), remote.to_string());

    // The timeout, as a log record with the event line's fields.
    let timeout = tap.until(Duration::from_secs(15), "keepalive_timeout record", |v| {
        string_attr(v, "event") == Some("keepalive_timeout")
            && string_attr(v, "local") == Some(local.as_str())
    });
    eprintln!("{timeout}");
    assert_eq!(string_attr(&timeout, "remote"), Some(remote.as_str()));
    assert_eq!(timeout["severityText"], "WARN");
    assert_eq!(timeout["eventName"], "kato.keepalive_timeout");
    assert_eq!(
        timeout["body"]["stringValue"],
        format!("keepalive_timeout {local} {remote}")
    );
    assert_eq!(
        attr(&timeout, "netns").and_then(|v| v["intValue"].as_str()),
        Some(ns.inode.to_string().as_str()),
        "int64 values are strings in OTLP's JSON"
    );
    assert!(
        attr(&timeout, "time").is_none(),
        "the time is the record's own"
    );
    let t: u128 = timeout["timeUnixNano"].as_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        now - t < 60_000_000_000,
        "the event's wall time: {t} vs {now}"
    );
    // The kernel's reset that followed, with its reason.
    let reset = tap.until(Duration::from_secs(15), "reset_sent record", |v| {
        string_attr(v, "event") == Some("reset_sent")
            && string_attr(v, "local") == Some(local.as_str())
    });
    assert_eq!(
        string_attr(&reset, "reset_reason"),
        Some("TCP_KEEPALIVE_TIMEOUT")
    );
    assert_eq!(reset["severityText"], "INFO");

    // The metrics, the timeout counted in them.
    let m = tap.until(Duration::from_secs(15), "a counted timeout", |v| {
        v["name"] == "kato_keepalive_timeouts_total" && point(v) >= 1.0
    });
    assert_eq!(m["sum"]["isMonotonic"], true, "{m}");
    let text = agent.metrics();
    assert!(
        sample(
            &text,
            "kato_otlp_exports_total{result=\"ok\",signal=\"logs\"}"
        ) >= 1.0
    );
    assert!(
        sample(
            &text,
            "kato_otlp_exports_total{result=\"ok\",signal=\"metrics\"}"
        ) >= 1.0
    );
    assert!(sample(&text, "kato_otlp_log_records_total") >= 2.0);

    // The receiver goes: exports fail and are counted, the agent serves on,
    // and the events of a second dead peer are counted as lost.
    drop(tap);
    let failed = |text: &str, signal: &str| {
        sample(
            text,
            &format!("kato_otlp_exports_total{{result=\"failed\",signal=\"{signal}\"}}"),
        )
    };
    dead_peer(&ns);
    let end = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = agent.metrics();
        if failed(&text, "metrics") >= 2.0 && failed(&text, "logs") >= 1.0 {
            break text;
        }
        assert!(Instant::now() < end, "no failure counted:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        sample(
            &text,
            "kato_otlp_log_records_dropped_total{cause=\"export_failed\"}"
        ) >= 2.0,
        "the second peer's timeout and reset are counted as lost"
    );
    assert_eq!(agent.get("/healthz").0, 200, "the agent serves on");
}
