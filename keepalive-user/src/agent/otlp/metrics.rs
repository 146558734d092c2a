//! The agent's Prometheus families as one OTLP metrics export, mapped as
//! the OpenTelemetry specification's Prometheus compatibility section
//! does: a counter is a monotonic cumulative sum, a gauge a gauge, a
//! histogram an explicit-bucket histogram (Prometheus's cumulative buckets
//! turned into per-bucket counts), a summary a summary. Names are kept as
//! `/metrics` spells them (counters keep `_total`), so the same PromQL
//! works on what a collector writes back to Prometheus.

use prometheus::proto::{Metric as PromMetric, MetricFamily, MetricType};

use super::proto::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::KeyValue,
    metrics::v1::{
        metric::Data, number_data_point::Value, summary_data_point::ValueAtQuantile,
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    },
    resource::v1::Resource,
};
use super::{scope, string_kv};

/// When the counters started (the agent's start) and when they were read.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub start_ns: u64,
    pub now_ns: u64,
}

/// The OTLP unit for a Prometheus base-unit suffix (UCUM, as the spec's
/// table has them); none for the rest.
fn unit(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    [("_seconds", "s"), ("_bytes", "By"), ("_ratio", "1")]
        .iter()
        .find(|(suffix, _)| base.ends_with(suffix))
        .map_or("", |(_, u)| u)
}

fn attributes(m: &PromMetric) -> Vec<KeyValue> {
    m.get_label()
        .iter()
        .map(|l| string_kv(l.name(), l.value()))
        .collect()
}

fn number(m: &PromMetric, v: f64, at: Stamp) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: at.start_ns,
        time_unix_nano: at.now_ns,
        value: Some(Value::AsDouble(v)),
        ..NumberDataPoint::default()
    }
}

fn histogram(m: &PromMetric, at: Stamp) -> HistogramDataPoint {
    let h = m.get_histogram();
    let mut explicit_bounds = vec![];
    let mut bucket_counts = vec![];
    let mut below = 0u64;
    for b in h.get_bucket() {
        let bound = b.upper_bound();
        let cumulative = b.cumulative_count();
        // OTLP's last bucket is the implicit (bound, +Inf].
        if bound.is_finite() {
            explicit_bounds.push(bound);
            bucket_counts.push(cumulative.saturating_sub(below));
            below = cumulative;
        }
    }
    bucket_counts.push(h.get_sample_count().saturating_sub(below));
    HistogramDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: at.start_ns,
        time_unix_nano: at.now_ns,
        count: h.get_sample_count(),
        sum: Some(h.get_sample_sum()),
        bucket_counts,
        explicit_bounds,
        ..HistogramDataPoint::default()
    }
}

fn summary(m: &PromMetric, at: Stamp) -> SummaryDataPoint {
    let s = m.get_summary();
    SummaryDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: at.start_ns,
        time_unix_nano: at.now_ns,
        count: s.sample_count(),
        sum: s.sample_sum(),
        quantile_values: s
            .get_quantile()
            .iter()
            .map(|q| ValueAtQuantile {
                quantile: q.quantile(),
                value: q.value(),
            })
            .collect(),
        ..SummaryDataPoint::default()
    }
}

fn metric(f: &MetricFamily, at: Stamp) -> Metric {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let points = f.get_metric();
    let data = match f.get_field_type() {
        MetricType::COUNTER => Data::Sum(Sum {
            data_points: points
                .iter()
                .map(|m| number(m, m.get_counter().get_value(), at))
                .collect(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricType::HISTOGRAM => Data::Histogram(Histogram {
            data_points: points.iter().map(|m| histogram(m, at)).collect(),
            aggregation_temporality: cumulative,
        }),
        MetricType::SUMMARY => Data::Summary(Summary {
            data_points: points.iter().map(|m| summary(m, at)).collect(),
        }),
        // Untyped is read as a gauge, as the spec says.
        MetricType::GAUGE | MetricType::UNTYPED => Data::Gauge(Gauge {
            data_points: points
                .iter()
                .map(|m| number(m, m.get_gauge().get_value(), at))
                .collect(),
        }),
    };
    Metric {
        name: f.name().to_owned(),
        description: f.help().to_owned(),
        unit: unit(f.name()).to_owned(),
        data: Some(data),
        ..Metric::default()
    }
}

/// One export of every family.
pub fn request(
    families: &[MetricFamily],
    resource: &Resource,
    at: Stamp,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: families.iter().map(|f| metric(f, at)).collect(),
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Counter, Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};

    use super::*;

    fn data(r: &ExportMetricsServiceRequest, name: &str) -> (Metric, Data) {
        let m = r.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .clone();
        let d = m.data.clone().unwrap();
        (m, d)
    }

    #[test]
    fn families_map_as_the_prometheus_compatibility_spec_says() {
        let reg = Registry::new();
        let c = Counter::new("kato_resets_total", "Resets.").unwrap();
        c.inc_by(3.0);
        let g = IntGaugeVec::new(Opts::new("kato_sockets", "Sockets."), &["state"]).unwrap();
        g.with_label_values(&["established"]).set(7);
        let h = Histogram::with_opts(
            HistogramOpts::new("kato_detect_seconds", "Detection.").buckets(vec![1.0, 10.0]),
        )
        .unwrap();
        for v in [0.5, 5.0, 5.0, 50.0] {
            h.observe(v);
        }
        reg.register(Box::new(c)).unwrap();
        reg.register(Box::new(g)).unwrap();
        reg.register(Box::new(h)).unwrap();
        let at = Stamp {
            start_ns: 1,
            now_ns: 2,
        };
        let r = request(&reg.gather(), &Resource::default(), at);

        let (m, d) = data(&r, "kato_resets_total");
        assert_eq!((m.description.as_str(), m.unit.as_str()), ("Resets.", ""));
        let Data::Sum(s) = d else { panic!("{d:?}") };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(s.data_points[0].value, Some(Value::AsDouble(3.0)));
        assert_eq!(
            (
                s.data_points[0].start_time_unix_nano,
                s.data_points[0].time_unix_nano
            ),
            (1, 2)
        );

        let (_, d) = data(&r, "kato_sockets");
        let Data::Gauge(g) = d else { panic!("{d:?}") };
        assert_eq!(
            g.data_points[0].attributes,
            vec![string_kv("state", "established")]
        );
        assert_eq!(g.data_points[0].value, Some(Value::AsDouble(7.0)));

        let (m, d) = data(&r, "kato_detect_seconds");
        assert_eq!(m.unit, "s");
        let Data::Histogram(h) = d else {
            panic!("{d:?}")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![1.0, 10.0]);
        // (-inf,1]: 0.5; (1,10]: 5, 5; (10,+inf): 50.
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!((p.count, p.sum), (4, Some(60.5)));
    }

    #[test]
    fn units_come_from_base_unit_suffixes() {
        assert_eq!(unit("kato_scrape_duration_seconds"), "s");
        assert_eq!(unit("process_cpu_seconds_total"), "s");
        assert_eq!(unit("process_resident_memory_bytes"), "By");
        assert_eq!(unit("kato_sockets"), "");
    }
}
