//! The agent's Prometheus metrics. Per-event counters are updated as events
//! arrive; gauges (sockets by state, probing sockets, sysctls) and kernel
//! counters are computed at scrape time from the table and the per-CPU maps.

use std::collections::{HashMap, HashSet};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::config::LabelBy;
use crate::{
    closes::Closed,
    event::{Derived, Kind, Record},
    loader::Counters,
    policy::Risk,
    sockets::{snapshot::Sysctls, Socket},
};

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

/// What an event's labels are computed from.
pub struct LabelCtx<'a> {
    /// Is the event socket's local port a listening port in its namespace?
    pub local_port_listening: bool,
    pub comm: Option<&'a str>,
    /// The idle-timeout rule for the connection's path, as written.
    pub policy: Option<&'a str>,
    /// Set on the CLOSED record of a connection whose end was seen.
    pub closed: Option<Closed>,
}

pub struct Metrics {
    registry: Registry,
    label_by: Vec<LabelBy>,
    limiters: Vec<LabelLimiter>,
    probes_sent: IntCounterVec,
    probes_answered: IntCounterVec,
    timeouts: IntCounterVec,
    resets_sent: IntCounterVec,
    resets_received: IntCounterVec,
    socket_errors: IntCounterVec,
    detection: Histogram,
    probes_before_answer: Histogram,
    sockets: IntGaugeVec,
    probing: IntGauge,
    tracked: IntGauge,
    sysctl_time: IntGaugeVec,
    sysctl_intvl: IntGaugeVec,
    sysctl_probes: IntGaugeVec,
    events_processed: IntCounter,
    events_filtered: IntCounter,
    events_lost: IntCounterVec,
    evictions: IntCounter,
    snapshots: IntCounter,
    snapshot_seconds: prometheus::Gauge,
    idle_before_close: HistogramVec,
    exchanges: HistogramVec,
    stale_reuse: IntCounterVec,
    idle_kills: IntCounterVec,
    idle_before_reset: Histogram,
    risk: IntGaugeVec,
    /// Bounds the `port` label of the connection metrics.
    ports: LabelLimiter,
    /// Whether send/recv turns are counted (the HTTP keep-alive view).
    pub turns: bool,
    /// Last kernel/table counter values, to turn them into counter increments.
    last_kernel: Counters,
    last_evictions: u64,
    last_undecodable: u64,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new(label_by: &[LabelBy], label_limit: usize, kernel: &str, attach: &str) -> Self {
        let r = Registry::new();
        let names: Vec<&str> = label_by.iter().map(|l| l.name()).collect();
        let mut with_reason = vec!["reason"];
        with_reason.extend(&names);
        let m = Metrics {
            probes_sent: counter(&r, "kato_keepalive_probes_sent_total", "Keepalive probes the kernel sent.", &names),
            probes_answered: counter(&r, "kato_keepalive_probes_answered_total", "Times a peer answered outstanding keepalive probes.", &names),
            timeouts: counter(&r, "kato_keepalive_timeouts_total", "Connections the kernel closed with ETIMEDOUT after unanswered keepalive probes: dead peers found.", &names),
            resets_sent: counter(&r, "kato_resets_sent_total", "Active resets the kernel sent, by its sk_rst_reason.", &with_reason),
            resets_received: counter(&r, "kato_resets_received_total", "Resets received from peers.", &names),
            socket_errors: counter(
                &r,
                "kato_socket_errors_total",
                "Errors the kernel reported to TCP sockets' owners, by errno and cause: ETIMEDOUT from keepalive (also in kato_keepalive_timeouts_total) or from retransmissions/TCP_USER_TIMEOUT (a dead peer found by data), or from the peer (ECONNRESET, ...).",
                &["errno", "cause"],
            ),
            detection: histogram(
                &r,
                "kato_dead_peer_detection_seconds",
                "Time from the peer last being heard from to the keepalive timeout.",
                vec![1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0, 7200.0, 10800.0],
            ),
            probes_before_answer: histogram(
                &r,
                "kato_keepalive_probes_before_answer",
                "Keepalive probes outstanding when the peer answered.",
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0],
            ),
            sockets: gauge_vec(&r, "kato_sockets", "TCP sockets by state and SO_KEEPALIVE (n/a: TIME_WAIT and request sockets).", &["state", "keepalive"]),
            probing: IntGauge::new("kato_sockets_probing", "Sockets with keepalive probes outstanding right now.").expect("valid"),
            tracked: IntGauge::new("kato_table_sockets", "Sockets in the agent's table.").expect("valid"),
            sysctl_time: gauge_vec(&r, "kato_netns_tcp_keepalive_time_seconds", "net.ipv4.tcp_keepalive_time of each network namespace.", &["netns"]),
            sysctl_intvl: gauge_vec(&r, "kato_netns_tcp_keepalive_intvl_seconds", "net.ipv4.tcp_keepalive_intvl of each network namespace.", &["netns"]),
            sysctl_probes: gauge_vec(&r, "kato_netns_tcp_keepalive_probes", "net.ipv4.tcp_keepalive_probes of each network namespace.", &["netns"]),
            events_processed: IntCounter::new("kato_events_processed_total", "Kernel events the agent processed.").expect("valid"),
            events_filtered: IntCounter::new(
                "kato_events_filtered_total",
                "Kernel events of namespaces outside the agent's scope, dropped in the kernel by design (netns = [...] or \"self\").",
            )
            .expect("valid"),
            events_lost: counter(&r, "kato_events_lost_total", "Kernel events lost: ring_full (ring buffer full), kernel_read (a kernel read failed), decode (malformed record).", &["cause"]),
            evictions: IntCounter::new("kato_table_evictions_total", "Sockets evicted from the full table (least recently updated first).").expect("valid"),
            snapshots: IntCounter::new("kato_snapshots_total", "Full socket snapshots taken.").expect("valid"),
            snapshot_seconds: prometheus::Gauge::new("kato_snapshot_duration_seconds", "Duration of the last full socket snapshot.").expect("valid"),
            idle_before_close: histogram_vec(
                &r,
                "kato_connection_idle_before_close_seconds",
                "How long connections sat without data before they closed, by side (server: listening port; client: remote port) and who closed first.",
                &["side", "port", "closed_by"],
                vec![0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0],
            ),
            exchanges: histogram_vec(
                &r,
                "kato_connection_exchanges",
                "Request/response exchanges a connection served before closing (with --http-keepalive).",
                &["side", "port", "closed_by"],
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0],
            ),
            stale_reuse: counter(&r, "kato_stale_reuse_total", "Writes on a connection after the peer's FIN, answered by a reset (a client reusing a connection the server closed).", &["side", "port"]),
            idle_kills: counter(&r, "kato_idle_kills_suspected_total", "Connections idle for at least idle_kill_min that were reset or timed out: a middlebox probably forgot them. Labelled with the matching idle-timeout rule.", &["idle_timeout"]),
            idle_before_reset: histogram(
                &r,
                "kato_idle_before_reset_seconds",
                "How long connections had not heard from the peer when a reset arrived.",
                vec![1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0, 7200.0],
            ),
            risk: gauge_vec(&r, "kato_sockets_idle_timeout_risk", "Connections by whether keepalive beats the declared middlebox idle timeout: safe, at-risk, unprotected (keepalive off), unknown (no rule).", &["class"]),
            ports: LabelLimiter::new(label_limit),
            turns: false,
            label_by: label_by.to_vec(),
            limiters: label_by.iter().map(|_| LabelLimiter::new(label_limit)).collect(),
            last_kernel: Counters::default(),
            last_evictions: 0,
            last_undecodable: 0,
            registry: r,
        };
        for c in [&m.probing, &m.tracked] {
            m.registry.register(Box::new(c.clone())).expect("unique");
        }
        for c in [
            &m.events_processed,
            &m.events_filtered,
            &m.evictions,
            &m.snapshots,
        ] {
            m.registry.register(Box::new(c.clone())).expect("unique");
        }
        m.registry
            .register(Box::new(m.snapshot_seconds.clone()))
            .expect("unique");
        // Without extra labels every event counter is one series: export it
        // at 0 from the start, or Prometheus first sees it already at 1 and
        // increase()/rate() miss the first event.
        if m.label_by.is_empty() {
            for c in [
                &m.probes_sent,
                &m.probes_answered,
                &m.timeouts,
                &m.resets_received,
            ] {
                c.with_label_values::<&str>(&[]).reset();
            }
        }
        for cause in ["ring_full", "kernel_read", "decode"] {
            m.events_lost.with_label_values(&[cause]).reset();
        }
        let info = gauge_vec(
            &m.registry,
            "kato_build_info",
            "kato's version, the kernel it runs on and its attach path.",
            &["version", "kernel", "attach"],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), kernel, attach])
            .set(1);
        m
    }

    fn labels(&mut self, rec: &Record, ctx: &LabelCtx) -> Vec<String> {
        let mut out = Vec::with_capacity(self.label_by.len());
        for (i, l) in self.label_by.iter().enumerate() {
            let v = match l {
                // Ephemeral ports would make unbounded series: only servers' ports count.
                LabelBy::LocalPort if ctx.local_port_listening => {
                    self.limiters[i].admit(rec.local.port().to_string())
                }
                LabelBy::LocalPort => "other".into(),
                LabelBy::RemotePort => self.limiters[i].admit(rec.remote.port().to_string()),
                LabelBy::Comm => self.limiters[i].admit(ctx.comm.unwrap_or("unknown").to_owned()),
                LabelBy::Netns => self.limiters[i].admit(rec.netns.to_string()),
            };
            out.push(v);
        }
        out
    }

    /// (side, port) of a connection: a server's listening port, or the
    /// remote port a client connects to.
    fn side_port(&mut self, rec: &Record, ctx: &LabelCtx) -> (&'static str, String) {
        if ctx.local_port_listening {
            ("server", self.ports.admit(rec.local.port().to_string()))
        } else {
            ("client", self.ports.admit(rec.remote.port().to_string()))
        }
    }

    /// Counts one record's derived events.
    pub fn on_event(
        &mut self,
        rec: &Record,
        derived: &[Derived],
        ctx: &LabelCtx,
        hz: u32,
        reason: impl Fn(u32) -> String,
    ) {
        self.events_processed.inc();
        if let Some(c) = ctx.closed {
            let (side, port) = self.side_port(rec, ctx);
            let l = [side, port.as_str(), c.by.name()];
            if let Some(idle) = c.idle_s {
                self.idle_before_close.with_label_values(&l).observe(idle);
            }
            if self.turns {
                let n = if side == "server" {
                    c.turns_out
                } else {
                    c.turns_in
                };
                self.exchanges.with_label_values(&l).observe(f64::from(n));
            }
        }
        if derived.iter().all(|d| {
            d.kind.is_lifecycle() || matches!(d.kind, Kind::Armed | Kind::Fired | Kind::Disarmed)
        }) {
            return;
        }
        let labels = self.labels(rec, ctx);
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        for d in derived {
            match d.kind {
                Kind::ProbeSent => self.probes_sent.with_label_values(&l).inc(),
                Kind::PeerAnswered => {
                    self.probes_answered.with_label_values(&l).inc();
                    self.probes_before_answer.observe(f64::from(d.probes));
                }
                Kind::KeepaliveTimeout => {
                    self.timeouts.with_label_values(&l).inc();
                    if let Some(idle) = rec.idle_secs(hz) {
                        self.detection.observe(idle);
                    }
                }
                Kind::ResetSent => {
                    let r = rec
                        .reset_reason(&reason)
                        .map(|r| r.0)
                        .unwrap_or_else(|| "UNKNOWN".into());
                    let mut lr = vec![r.as_str()];
                    lr.extend(&l);
                    self.resets_sent.with_label_values(&lr).inc();
                }
                Kind::ResetReceived => {
                    self.resets_received.with_label_values(&l).inc();
                    if let Some(idle) = rec.idle_secs(hz) {
                        self.idle_before_reset.observe(idle);
                    }
                }
                Kind::StaleReuse => {
                    let (side, port) = self.side_port(rec, ctx);
                    self.stale_reuse
                        .with_label_values(&[side, port.as_str()])
                        .inc();
                }
                Kind::IdleKillSuspected => self
                    .idle_kills
                    .with_label_values(&[ctx.policy.unwrap_or("none")])
                    .inc(),
                Kind::SocketError => {
                    let e = crate::event::errno_name(rec.sk_err);
                    let cause = match (rec.sk_err, rec.in_keepalive_timer) {
                        (crate::event::ETIMEDOUT, true) => "keepalive",
                        (crate::event::ETIMEDOUT, false) => "retransmits",
                        _ => "peer",
                    };
                    self.socket_errors
                        .with_label_values(&[e.as_str(), cause])
                        .inc();
                }
                Kind::Armed
                | Kind::Fired
                | Kind::Disarmed
                | Kind::Closed
                | Kind::FinReceived
                | Kind::FinSent => {}
            }
        }
    }

    pub fn on_snapshot(&mut self, seconds: f64, sysctls: &HashMap<u32, Sysctls>) {
        self.snapshots.inc();
        self.snapshot_seconds.set(seconds);
        for (netns, s) in sysctls {
            let n = netns.to_string();
            self.sysctl_time
                .with_label_values(&[&n])
                .set(i64::from(s.time_s));
            self.sysctl_intvl
                .with_label_values(&[&n])
                .set(i64::from(s.intvl_s));
            self.sysctl_probes
                .with_label_values(&[&n])
                .set(i64::from(s.probes));
        }
    }

    /// Scrape-time state: the table's sockets, kernel counters, evictions.
    /// `risk` classifies a socket against the idle-timeout policy.
    pub fn refresh<'a>(
        &mut self,
        sockets: impl Iterator<Item = &'a Socket>,
        risk: impl Fn(&Socket) -> Option<Risk>,
        kernel: Counters,
        evictions: u64,
        undecodable: u64,
    ) {
        let mut by: HashMap<(&'static str, &'static str), i64> = HashMap::new();
        let mut classes: HashMap<Risk, i64> = Risk::ALL.iter().map(|r| (*r, 0)).collect();
        let (mut probing, mut tracked) = (0, 0);
        for s in sockets {
            if let Some(r) = risk(s) {
                *classes.entry(r).or_default() += 1;
            }
            tracked += 1;
            let ka = match s.keepalive {
                None => "n/a",
                Some(k) if k.enabled => "on",
                Some(_) => "off",
            };
            *by.entry((s.state.name(), ka)).or_default() += 1;
            if s.probes_unanswered > 0 && s.keepalive.is_some_and(|k| k.enabled) {
                probing += 1;
            }
        }
        self.sockets.reset();
        for ((state, ka), n) in by {
            self.sockets.with_label_values(&[state, ka]).set(n);
        }
        self.probing.set(probing);
        self.tracked.set(tracked);
        for (r, n) in classes {
            self.risk.with_label_values(&[r.name()]).set(n);
        }
        let lost = |cause: &str, now: u64, last: u64| {
            self.events_lost
                .with_label_values(&[cause])
                .inc_by(now.saturating_sub(last))
        };
        lost("ring_full", kernel.lost, self.last_kernel.lost);
        lost(
            "kernel_read",
            kernel.read_failed,
            self.last_kernel.read_failed,
        );
        lost("decode", undecodable, self.last_undecodable);
        self.events_filtered
            .inc_by(kernel.filtered.saturating_sub(self.last_kernel.filtered));
        self.evictions
            .inc_by(evictions.saturating_sub(self.last_evictions));
        self.last_kernel = kernel;
        self.last_evictions = evictions;
        self.last_undecodable = undecodable;
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8 exposition")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        tests::{bytes, raw},
        Deriver,
    };
    use keepalive_common::{flags, kind};

    fn feed(m: &mut Metrics, e: keepalive_common::Event) {
        let rec = Record::decode(&bytes(&e)).unwrap();
        let mut d = vec![];
        Deriver::default().derive(&rec, &mut d);
        m.on_event(
            &rec,
            &d,
            &LabelCtx {
                local_port_listening: false,
                comm: Some("psql"),
                policy: None,
                closed: None,
            },
            250,
            |r| format!("R{r}"),
        );
    }

    #[test]
    fn counts_events_with_bounded_labels() {
        let mut m = Metrics::new(
            &[LabelBy::RemotePort, LabelBy::LocalPort],
            1,
            "6.18",
            "tp_btf",
        );
        feed(
            &mut m,
            keepalive_common::Event {
                probes_before: 0,
                probes_out: 1,
                ..raw(kind::FIRED)
            },
        );
        feed(
            &mut m,
            keepalive_common::Event {
                dport: 9999,
                probes_before: 0,
                probes_out: 1,
                ..raw(kind::FIRED)
            },
        );
        feed(
            &mut m,
            keepalive_common::Event {
                probes_before: 3,
                probes_out: 3,
                state: 7,
                sk_err: 110,
                ..raw(kind::FIRED)
            },
        );
        feed(
            &mut m,
            keepalive_common::Event {
                flags: flags::HAS_REASON,
                reason: 15,
                ..raw(kind::RESET_SENT)
            },
        );
        let text = m.encode();
        assert!(
            text.contains(
                "kato_keepalive_probes_sent_total{local_port=\"other\",remote_port=\"8080\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kato_keepalive_probes_sent_total{local_port=\"other\",remote_port=\"other\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kato_keepalive_timeouts_total{local_port=\"other\",remote_port=\"8080\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("kato_resets_sent_total{local_port=\"other\",reason=\"R15\",remote_port=\"8080\"} 1"), "{text}");
        assert!(
            text.contains("kato_dead_peer_detection_seconds_bucket{le=\"5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kato_dead_peer_detection_seconds_sum 4"),
            "{text}"
        );
        assert!(text.contains("kato_events_processed_total 4"), "{text}");
        assert!(
            text.contains("kato_build_info{attach=\"tp_btf\",kernel=\"6.18\",version=\""),
            "{text}"
        );
    }

    #[test]
    fn refresh_turns_kernel_totals_into_increments() {
        let mut m = Metrics::new(&[], 20, "k", "a");
        m.refresh(
            std::iter::empty(),
            |_| None,
            Counters {
                lost: 5,
                read_failed: 1,
                emitted: 9,
                ..Default::default()
            },
            2,
            0,
        );
        m.refresh(
            std::iter::empty(),
            |_| None,
            Counters {
                lost: 7,
                read_failed: 1,
                emitted: 12,
                ..Default::default()
            },
            3,
            1,
        );
        let text = m.encode();
        assert!(
            text.contains("kato_events_lost_total{cause=\"ring_full\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("kato_events_lost_total{cause=\"decode\"} 1"),
            "{text}"
        );
        assert!(text.contains("kato_table_evictions_total 3"), "{text}");
        assert!(text.contains("kato_table_sockets 0"), "{text}");
        assert!(
            text.contains("kato_sockets_idle_timeout_risk{class=\"at-risk\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn unlabeled_counters_start_at_zero() {
        let text = Metrics::new(&[], 20, "k", "a").encode();
        for series in [
            "kato_keepalive_probes_sent_total 0",
            "kato_keepalive_timeouts_total 0",
            "kato_resets_received_total 0",
            "kato_events_lost_total{cause=\"ring_full\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn limiter_is_bounded() {
        let mut l = LabelLimiter::new(2);
        assert_eq!(l.admit("a".into()), "a");
        assert_eq!(l.admit("b".into()), "b");
        assert_eq!(l.admit("c".into()), "other");
        assert_eq!(l.admit("a".into()), "a");
    }
}
