//! The reported events as OTLP log records: the engine's side. Each one
//! the event log would write (`eventlog::reported`) becomes a record whose
//! attributes are that line's fields (docs/events.md), queued for the
//! exporter. The queue is bounded: past [`QUEUE`] the oldest record goes,
//! counted, and the event path never waits.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::Value;

use super::{
    proto::{
        collector::logs::v1::ExportLogsServiceRequest,
        common::v1::{any_value, AnyValue, ArrayValue, KeyValue, KeyValueList},
        logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
        resource::v1::Resource,
    },
    scope,
};
use crate::{
    agent::{
        eventlog::Reported,
        subscribe::{Context, Subscriber},
    },
    events::{Kind, Observation},
};

/// Records waiting for the exporter at most (the OpenTelemetry SDK's
/// batch processor default).
pub const QUEUE: usize = 2048;
/// Records one export carries at most (the same processor's default).
pub const BATCH: usize = 512;

/// Records waiting for the exporter, and those the bounds kept out.
#[derive(Debug, Default)]
pub struct Outbox {
    records: VecDeque<LogRecord>,
    /// Records dropped because the queue was full (the oldest go).
    pub dropped: u64,
    /// Events over the rate (`eventlog::RATE` after a burst of `BURST`),
    /// never made records.
    pub rate_limited: u64,
}

impl Outbox {
    fn push(&mut self, r: LogRecord) {
        if self.records.len() == QUEUE {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(r);
    }

    /// At most [`BATCH`] records, oldest first.
    pub fn take(&mut self) -> Vec<LogRecord> {
        let n = self.records.len().min(BATCH);
        self.records.drain(..n).collect()
    }
}

pub type SharedOutbox = Arc<Mutex<Outbox>>;

/// The subscriber that queues a record for each reported event.
pub struct LogFeed {
    outbox: SharedOutbox,
    reported: Reported,
}

impl LogFeed {
    pub fn new(outbox: SharedOutbox) -> Self {
        LogFeed {
            outbox,
            reported: Reported::default(),
        }
    }
}

impl Subscriber for LogFeed {
    fn seen(&mut self, obs: &Observation<'_>, ctx: &Context<'_>) {
        let outbox = &self.outbox;
        // A reset storm costs a bounded amount of work here.
        let refused = self.reported.each(obs, ctx, |kind, time, line| {
            let line = serde_json::to_value(line).expect("plain data serializes");
            let r = record(kind, u64::try_from(time).unwrap_or(0), &line);
            outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(r);
        });
        if refused > 0 {
            outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rate_limited += refused;
        }
    }
}

/// A JSON value as an OTLP value (`null` has none).
fn any(v: &Value) -> Option<AnyValue> {
    let value = match v {
        Value::Null => return None,
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Array(a) => any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().filter_map(any).collect(),
        }),
        Value::Object(o) => any_value::Value::KvlistValue(KeyValueList { values: fields(o) }),
    };
    Some(AnyValue { value: Some(value) })
}

fn fields(o: &serde_json::Map<String, Value>) -> Vec<KeyValue> {
    o.iter()
        .filter_map(|(k, v)| {
            Some(KeyValue {
                key: k.clone(),
                value: Some(any(v)?),
                ..KeyValue::default()
            })
        })
        .collect()
}

/// Resets this host sent are often an application's own choice; the rest
/// are what an SRE is paged for.
fn severity(kind: Kind) -> SeverityNumber {
    match kind {
        Kind::ResetSent => SeverityNumber::Info,
        _ => SeverityNumber::Warn,
    }
}

/// One event's record: `line` is its `kato trace --output json` object,
/// whose fields become the attributes (`time` is the record's time).
pub fn record(kind: Kind, time_ns: u64, line: &Value) -> LogRecord {
    let text = |k: &str| line.get(k).and_then(Value::as_str).unwrap_or("?");
    let mut attributes = line.as_object().map(fields).unwrap_or_default();
    attributes.retain(|kv| kv.key != "time" && kv.key != "ts_ns");
    let sev = severity(kind);
    LogRecord {
        time_unix_nano: time_ns,
        observed_time_unix_nano: time_ns,
        severity_number: sev as i32,
        severity_text: sev
            .as_str_name()
            .trim_start_matches("SEVERITY_NUMBER_")
            .into(),
        body: any(&Value::String(format!(
            "{} {} {}",
            kind.name(),
            text("local"),
            text("remote")
        ))),
        attributes,
        event_name: format!("kato.{}", kind.name()),
        ..LogRecord::default()
    }
}

/// One export of `records`.
pub fn request(records: Vec<LogRecord>, resource: &Resource) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a any_value::Value> {
        r.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn an_events_fields_become_its_records_attributes() {
        let line = serde_json::json!({
            "time": "2026-12-06T17:00:00.000000000Z", "ts_ns": 5,
            "event": "keepalive_timeout", "local": "10.0.0.1:5432",
            "remote": "10.0.0.2:41234", "probes": 3, "idle_s": 12.5,
            "reset_reason": null, "reset_reason_inferred": false,
            "workload": {"pod": "db-0"},
        });
        let r = record(Kind::KeepaliveTimeout, 1_000, &line);
        assert_eq!(r.time_unix_nano, 1_000);
        assert_eq!(r.severity_text, "WARN");
        assert_eq!(r.event_name, "kato.keepalive_timeout");
        assert_eq!(
            r.body.clone().unwrap().value,
            Some(any_value::Value::StringValue(
                "keepalive_timeout 10.0.0.1:5432 10.0.0.2:41234".into()
            ))
        );
        assert_eq!(attr(&r, "probes"), Some(&any_value::Value::IntValue(3)));
        assert_eq!(
            attr(&r, "idle_s"),
            Some(&any_value::Value::DoubleValue(12.5))
        );
        assert_eq!(
            attr(&r, "reset_reason_inferred"),
            Some(&any_value::Value::BoolValue(false))
        );
        assert!(attr(&r, "reset_reason").is_none(), "null has no attribute");
        assert!(attr(&r, "time").is_none() && attr(&r, "ts_ns").is_none());
        let Some(any_value::Value::KvlistValue(w)) = attr(&r, "workload") else {
            panic!("workload")
        };
        assert_eq!(w.values[0].key, "pod");
        assert_eq!(record(Kind::ResetSent, 0, &line).severity_text, "INFO");
    }

    #[test]
    fn the_outbox_is_bounded_and_batches() {
        let mut o = Outbox::default();
        for i in 0..QUEUE as u64 + 10 {
            o.push(LogRecord {
                time_unix_nano: i,
                ..LogRecord::default()
            });
        }
        assert_eq!(o.dropped, 10);
        let first = o.take();
        assert_eq!(first.len(), BATCH);
        assert_eq!(first[0].time_unix_nano, 10, "the oldest went");
        let mut left = QUEUE - BATCH;
        while left > 0 {
            left -= o.take().len();
        }
        assert!(o.take().is_empty());
    }
}
