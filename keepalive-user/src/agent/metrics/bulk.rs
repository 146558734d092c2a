//! A histogram fed in bulk: `observe_n(value, n)`. The kernel counts
//! answers per number of probes outstanding (`quiet_probes`); adding
//! 100,000 answers a second one `observe` at a time would cost a scrape
//! tens of milliseconds, the prometheus crate's `Histogram` has no bulk
//! form, so this collector keeps the bucket counts itself.

use std::sync::{Arc, Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto,
};

#[derive(Clone)]
pub struct BulkHistogram {
    desc: Desc,
    bounds: Arc<[f64]>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Per bucket (not cumulative); the last one is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl BulkHistogram {
    pub fn new(name: &str, help: &str, bounds: &[f64]) -> Self {
        BulkHistogram {
            desc: Desc::new(name.into(), help.into(), vec![], Default::default())
                .expect("valid metric"),
            bounds: bounds.into(),
            state: Arc::new(Mutex::new(State {
                counts: vec![0; bounds.len() + 1],
                ..State::default()
            })),
        }
    }

    /// `n` observations of `v`.
    pub fn observe_n(&self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.bounds.partition_point(|&b| b < v);
        let mut s = self.state.lock().expect("lock");
        s.counts[i] += n;
        s.sum += v * n as f64;
        s.count += n;
    }
}

impl Collector for BulkHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let s = self.state.lock().expect("lock");
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&s.counts)
            .map(|(&le, &n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(s.count);
        h.set_sample_sum(s.sum);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut f = proto::MetricFamily::default();
        f.set_name(self.desc.fq_name.clone());
        f.set_help(self.desc.help.clone());
        f.set_field_type(proto::MetricType::HISTOGRAM);
        f.set_metric(vec![m]);
        vec![f]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_observations_encode_as_one_at_a_time_would() {
        let bounds = [1.0, 2.0, 3.0];
        let bulk = BulkHistogram::new("k_bulk", "h", &bounds);
        let one = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("k_bulk", "h").buckets(bounds.to_vec()),
        )
        .unwrap();
        for (v, n) in [(1.0, 5), (3.0, 2), (7.0, 1), (2.0, 0)] {
            bulk.observe_n(v, n);
            for _ in 0..n {
                one.observe(v);
            }
        }
        let text = |c: &dyn Collector| {
            prometheus::TextEncoder::new()
                .encode_to_string(&c.collect())
                .unwrap()
        };
        assert_eq!(text(&bulk), text(&one));
        assert!(text(&bulk).contains("k_bulk_bucket{le=\"+Inf\"} 8"));
    }
}
