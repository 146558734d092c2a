//! One way to declare a metric: through [`Reg`], which registers it as it
//! builds it. Label sets are arrays, so a family's arity is checked at
//! compile time; label values come from enums' `name()` wherever they can.

use std::collections::HashSet;

use prometheus::{
    core::Collector, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// A labelled family with exactly `N` labels.
#[derive(Clone)]
pub struct Family<M, const N: usize>(pub M);

impl<const N: usize> Family<IntCounterVec, N> {
    pub fn with(&self, values: [&str; N]) -> IntCounter {
        self.0.with_label_values(&values)
    }
}

impl<const N: usize> Family<IntGaugeVec, N> {
    pub fn with(&self, values: [&str; N]) -> IntGauge {
        self.0.with_label_values(&values)
    }

    pub fn reset(&self) {
        self.0.reset();
    }
}

impl<const N: usize> Family<GaugeVec, N> {
    pub fn with(&self, values: [&str; N]) -> Gauge {
        self.0.with_label_values(&values)
    }

    pub fn reset(&self) {
        self.0.reset();
    }
}

impl<const N: usize> Family<HistogramVec, N> {
    pub fn with(&self, values: [&str; N]) -> Histogram {
        self.0.with_label_values(&values)
    }
}

pub struct Reg(pub Registry);

impl Reg {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }

    pub fn bulk_histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> super::bulk::BulkHistogram {
        self.add(super::bulk::BulkHistogram::new(name, help, buckets))
    }

    /// Labels chosen at run time (the opt-in `label_by` ones).
    pub fn counters_dyn(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn counters<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
    ) -> Family<IntCounterVec, N> {
        Family(self.counters_dyn(name, help, &labels))
    }

    pub fn gauges<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
    ) -> Family<IntGaugeVec, N> {
        Family(self.add(IntGaugeVec::new(Opts::new(name, help), &labels).expect("valid metric")))
    }

    pub fn float_gauges<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
    ) -> Family<GaugeVec, N> {
        Family(self.add(GaugeVec::new(Opts::new(name, help), &labels).expect("valid metric")))
    }

    pub fn histograms<const N: usize>(
        &self,
        name: &str,
        help: &str,
        labels: [&str; N],
        buckets: &[f64],
    ) -> Family<HistogramVec, N> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        Family(self.add(HistogramVec::new(opts, &labels).expect("valid metric")))
    }
}

/// Admits the first `limit` distinct values of a label; later ones are
/// `other`. Counters cannot move between series without breaking
/// monotonicity, so admission is first-come (see docs/metrics.md).
#[derive(Debug)]
pub struct LabelLimiter {
    admitted: HashSet<String>,
    limit: usize,
}

impl LabelLimiter {
    pub fn new(limit: usize) -> Self {
        Self {
            admitted: HashSet::new(),
            limit,
        }
    }

    pub fn admit(&mut self, value: String) -> String {
        if self.admitted.contains(&value) {
            return value;
        }
        if self.admitted.len() < self.limit {
            self.admitted.insert(value.clone());
            return value;
        }
        "other".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_is_bounded() {
        let mut l = LabelLimiter::new(2);
        assert_eq!(l.admit("a".into()), "a");
        assert_eq!(l.admit("b".into()), "b");
        assert_eq!(l.admit("c".into()), "other");
        assert_eq!(l.admit("a".into()), "a");
    }
}
