//! The engine's side of the export: what it hands the exporter when asked
//! (the metrics, or the next batch of queued log records, encoded), and
//! the counts of what became of each.

use prometheus::{proto::MetricFamily, IntCounter, IntCounterVec, Opts, Registry};
use prost::Message as _;

use super::{
    logs::{self, SharedOutbox},
    metrics::{self, Stamp},
    proto::resource::v1::Resource,
    Outcome, Signal, MAX_OUTCOMES,
};

pub struct Source {
    outbox: SharedOutbox,
    resource: Resource,
    /// When the agent's counters started, for every cumulative point.
    start_ns: u64,
    exports: IntCounterVec,
    exported: IntCounter,
    dropped: IntCounterVec,
}

fn now_ns() -> u64 {
    jiff::Timestamp::now()
        .as_nanosecond()
        .try_into()
        .unwrap_or(0)
}

impl Source {
    /// Registers the export's counters in `registry`, every series at 0.
    pub fn new(registry: &Registry, outbox: SharedOutbox, resource: Resource) -> Self {
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let exports = counters(
            "kato_otlp_exports_total",
            "OTLP exports posted, by signal and result (failed: no answer, refused, or not 2xx).",
            &["signal", "result"],
        );
        let dropped = counters(
            "kato_otlp_log_records_dropped_total",
            "Events not delivered as OTLP log records: rate_limit (over 200 a second after a \
             burst of 1,000), queue_full (the oldest went while the collector was slow or down) \
             or export_failed (in an export that failed).",
            &["cause"],
        );
        let exported = IntCounter::new(
            "kato_otlp_log_records_total",
            "Events delivered as OTLP log records (in exports the collector accepted).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(exported.clone()))
            .expect("metric names are unique");
        for s in Signal::ALL {
            for r in ["ok", "failed"] {
                exports.with_label_values(&[s.name(), r]);
            }
        }
        for c in ["rate_limit", "queue_full", "export_failed"] {
            dropped.with_label_values(&[c]);
        }
        Source {
            outbox,
            resource,
            start_ns: now_ns(),
            exports,
            exported,
            dropped,
        }
    }

    fn count(&self, o: &Outcome) {
        let result = if o.ok { "ok" } else { "failed" };
        self.exports
            .with_label_values(&[o.signal.name(), result])
            .inc();
        if o.signal == Signal::Logs {
            if o.ok {
                self.exported.inc_by(o.records);
            } else {
                self.dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(o.records);
            }
        }
    }

    /// Scrape-time: what the queue's bounds kept out.
    pub fn refresh(&self) {
        let (full, over) = self
            .outbox
            .lock()
            .map_or((0, 0), |o| (o.dropped, o.rate_limited));
        for (cause, n) in [("queue_full", full), ("rate_limit", over)] {
            let c = self.dropped.with_label_values(&[cause]);
            c.inc_by(n.saturating_sub(c.get()));
        }
    }

    /// Counts `done`, then answers an ask for `signal`: the number of log
    /// records and the encoded export (empty when no record waits).
    /// `families`: the registry, refreshed, for a metrics export.
    pub fn answer(
        &self,
        signal: Signal,
        done: &[Outcome],
        families: impl FnOnce() -> Vec<MetricFamily>,
    ) -> (usize, Vec<u8>) {
        for o in done.iter().take(MAX_OUTCOMES) {
            self.count(o);
        }
        self.refresh();
        match signal {
            Signal::Logs => {
                let batch = self.outbox.lock().map(|mut o| o.take()).unwrap_or_default();
                if batch.is_empty() {
                    return (0, vec![]);
                }
                let n = batch.len();
                (n, logs::request(batch, &self.resource).encode_to_vec())
            }
            Signal::Metrics => {
                let at = Stamp {
                    start_ns: self.start_ns,
                    now_ns: now_ns(),
                };
                let r = metrics::request(&families(), &self.resource, at);
                (0, r.encode_to_vec())
            }
        }
    }
}
