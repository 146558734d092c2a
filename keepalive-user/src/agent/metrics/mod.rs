//! The agent's Prometheus metrics, each declared once in [`Metrics::new`].
//! Per-event counters move as observations arrive; gauges (sockets by
//! state, probing sockets, sysctls) and kernel counters are set at scrape
//! time from the table's tally (kept as entries change) and the per-CPU
//! maps.

mod bulk;
mod registry;
mod scrape;

use std::collections::HashMap;

use prometheus::{
    Encoder as _, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, TextEncoder,
};

pub use registry::LabelLimiter;
use registry::{Family, Reg};

use super::config::LabelBy;
use crate::{
    bpf::Counters,
    events::{Kind, Observation},
    policy::RuleSource,
    sockets::snapshot::Sysctls,
};

pub use crate::sockets::Side;

/// Why events were lost (`kato_events_lost_total{cause}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossCause {
    RingFull,
    /// A routine record shed to keep room for verdict records.
    Shed,
    KernelRead,
    Decode,
}

impl LossCause {
    pub const ALL: [LossCause; 4] = [
        LossCause::RingFull,
        LossCause::Shed,
        LossCause::KernelRead,
        LossCause::Decode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LossCause::RingFull => "ring_full",
            LossCause::Shed => "shed",
            LossCause::KernelRead => "kernel_read",
            LossCause::Decode => "decode",
        }
    }
}

/// What an observation's labels are computed from, beside the record.
pub struct LabelCtx<'a> {
    /// Which end the socket is (the kernel's passive-open mark).
    pub side: Side,
    pub comm: Option<&'a str>,
    /// The socket's workload, where named.
    pub workload: Option<&'a crate::workload::Workload>,
    /// The idle-timeout rule for the connection's path: where it comes
    /// from and the path it covers (never its timeout, which learning moves).
    pub rule: Option<(RuleSource, String)>,
}

pub struct Metrics {
    registry: prometheus::Registry,
    label_by: Vec<LabelBy>,
    limiters: Vec<LabelLimiter>,
    probes_sent: IntCounterVec,
    probes_answered: IntCounterVec,
    /// TcpExt TCPKeepAlive of the watched namespaces since the start.
    kernel_probes_mib: IntCounter,
    timeouts: IntCounterVec,
    resets_sent: IntCounterVec,
    resets_received: IntCounterVec,
    socket_errors: Family<IntCounterVec, 2>,
    detection: Histogram,
    probes_before_answer: bulk::BulkHistogram,
    /// Probes sent and answered are the kernel's counts (`quiet_probes`),
    /// not the records'.
    kernel_probes: bool,
    probing_full: IntCounter,
    sockets: Family<prometheus::IntGaugeVec, 2>,
    probing: IntGauge,
    tracked: IntGauge,
    capacity: IntGauge,
    sysctl_time: Family<prometheus::IntGaugeVec, 1>,
    sysctl_intvl: Family<prometheus::IntGaugeVec, 1>,
    sysctl_probes: Family<prometheus::IntGaugeVec, 1>,
    events_processed: IntCounter,
    events_filtered: IntCounter,
    quiet_closes: IntCounter,
    events_lost: Family<IntCounterVec, 1>,
    evictions: IntCounter,
    snapshots: IntCounter,
    http_restarts: IntCounter,
    log_events: IntCounter,
    history_events: IntGauge,
    history_sockets: IntGauge,
    history_dropped: IntCounter,
    log_events_dropped: Family<IntCounterVec, 1>,
    containerd_failures: IntCounter,
    protected: Family<IntCounterVec, 1>,
    protected_now: IntGauge,
    netns_vanished: IntCounter,
    snapshot_seconds: Gauge,
    idle_before_close: Family<prometheus::HistogramVec, 3>,
    exchanges: Family<prometheus::HistogramVec, 3>,
    stale_reuse: Family<IntCounterVec, 2>,
    idle_kills: Family<IntCounterVec, 2>,
    idle_before_reset: Histogram,
    risk: Family<prometheus::IntGaugeVec, 2>,
    learned: Family<prometheus::GaugeVec, 2>,
    /// Destinations exported at most (`label_limit`).
    learned_limit: usize,
    /// Bounds the `port` label of the connection metrics.
    ports: LabelLimiter,
    /// Whether send/recv turns are counted (the HTTP keep-alive view).
    turns: bool,
    /// Last kernel/table counter values, to turn them into counter increments.
    last_kernel: Counters,
    last_evictions: u64,
    last_undecodable: u64,
}

/// Bucket bounds placed between the timeouts people set (1, 2, 5, 10, 30,
/// 60, 75, 120, 300, 350, 600 s, 2 h), so each falls inside a bucket, not
/// on an edge where jitter splits it between two.
const SECONDS_BUCKETS: [f64; 16] = [
    0.25, 0.75, 1.5, 3.0, 7.5, 20.0, 45.0, 67.5, 90.0, 180.0, 325.0, 450.0, 900.0, 1800.0, 3600.0,
    10800.0,
];
const DETECTION_BUCKETS: [f64; 16] = SECONDS_BUCKETS;
const ANSWER_BUCKETS: [f64; 9] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0];
const CLOSE_BUCKETS: [f64; 16] = SECONDS_BUCKETS;
const EXCHANGE_BUCKETS: [f64; 10] = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0];
const RESET_BUCKETS: [f64; 16] = SECONDS_BUCKETS;

impl Metrics {
    pub fn new(
        label_by: &[LabelBy],
        label_limit: usize,
        kernel: &str,
        attach: &str,
        turns: bool,
    ) -> Self {
        let r = Reg(prometheus::Registry::new());
        let names: Vec<&str> = label_by.iter().map(|l| l.name()).collect();
        let with_reason: Vec<&str> = std::iter::once("reason")
            .chain(names.iter().copied())
            .collect();
        let m = Metrics {
            probes_sent: r.counters_dyn("kato_keepalive_probes_sent_total", "Keepalive probes the kernel sent.", &names),
            probes_answered: r.counters_dyn("kato_keepalive_probes_answered_total", "Times a peer answered outstanding keepalive probes.", &names),
            kernel_probes_mib: r.counter(
                "kato_kernel_keepalive_probes_total",
                "Keepalive probes the kernel counted itself (TcpExt TCPKeepAlive) in the watched network namespaces since the agent started, read at scrape time. kato_keepalive_probes_sent_total counts the same probes from kato's timer programs and falls short of this where the kernel did not run them (docs/metrics.md).",
            ),
            timeouts: r.counters_dyn("kato_keepalive_timeouts_total", "Connections the kernel closed with ETIMEDOUT after unanswered keepalive probes: dead peers found.", &names),
            resets_sent: r.counters_dyn("kato_resets_sent_total", "Active resets the kernel sent, by its sk_rst_reason.", &with_reason),
            resets_received: r.counters_dyn("kato_resets_received_total", "Resets received from peers.", &names),
            socket_errors: r.counters(
                "kato_socket_errors_total",
                "Errors the kernel reported to TCP sockets' owners, by errno and cause: ETIMEDOUT from keepalive (also in kato_keepalive_timeouts_total) or from retransmissions/TCP_USER_TIMEOUT (a dead peer found by data), or from the peer (ECONNRESET, ...).",
                ["errno", "cause"],
            ),
            detection: r.histogram("kato_dead_peer_detection_seconds", "Time from the peer last being heard from to the keepalive timeout.", &DETECTION_BUCKETS),
            probes_before_answer: r.bulk_histogram("kato_keepalive_probes_before_answer", "Keepalive probes outstanding when the peer answered.", &ANSWER_BUCKETS),
            kernel_probes: false,
            probing_full: r.counter("kato_keepalive_probe_table_full_total", "Keepalive timer runs the kernel recorded because its table of outstanding probes (1,048,576 sockets) was full: those sockets' answers are not in kato_keepalive_probes_answered_total."),
            sockets: r.gauges("kato_sockets", "TCP sockets by state and SO_KEEPALIVE (n/a: TIME_WAIT and request sockets).", ["state", "keepalive"]),
            probing: r.gauge("kato_sockets_probing", "Sockets with keepalive probes outstanding right now (zero-window probes not counted)."),
            tracked: r.gauge("kato_table_sockets", "Sockets in the agent's table."),
            capacity: r.gauge(
                "kato_table_capacity",
                "Sockets the table holds at most (table_capacity, or half the cgroup memory limit at 1 KiB a socket).",
            ),
            sysctl_time: r.gauges("kato_netns_tcp_keepalive_time_seconds", "net.ipv4.tcp_keepalive_time of each network namespace.", ["netns"]),
            sysctl_intvl: r.gauges("kato_netns_tcp_keepalive_intvl_seconds", "net.ipv4.tcp_keepalive_intvl of each network namespace.", ["netns"]),
            sysctl_probes: r.gauges("kato_netns_tcp_keepalive_probes", "net.ipv4.tcp_keepalive_probes of each network namespace.", ["netns"]),
            events_processed: r.counter("kato_events_processed_total", "Kernel events the agent processed."),
            events_filtered: r.counter(
                "kato_events_filtered_total",
                "Kernel events of namespaces outside the agent's scope, dropped in the kernel by design (netns = [...] or \"self\").",
            ),
            quiet_closes: r.counter(
                "kato_connections_closed_quietly_total",
                "Connections that closed without keepalive, without idling past idle_kill_min and without a reset: counted in the kernel, no record made (resets and keepalive connections are always recorded; --http-keepalive records every close).",
            ),
            events_lost: r.counters("kato_events_lost_total", "Kernel events lost: ring_full (ring buffer full), shed (a routine record, a probe or a timer armed or stopped, not written while the ring was more than three quarters full: the rest is kept for timeouts, resets, FINs and closes), kernel_read (a kernel read failed), decode (malformed record).", ["cause"]),
            evictions: r.counter("kato_table_evictions_total", "Sockets evicted from the full table (least recently updated first)."),
            snapshots: r.counter("kato_snapshots_total", "Full socket snapshots taken."),
            http_restarts: r.counter(
                "kato_http_restarts_total",
                "HTTP processes that died on their own and were replaced (the engine kept running).",
            ),
            history_events: r.gauge("kato_history_events", "Events the per-socket history holds (/sockets/COOKIE/history), all sockets together."),
            history_sockets: r.gauge("kato_history_sockets", "Sockets with a history: open ones, and closed ones kept for history_retention."),
            history_dropped: r.counter("kato_history_events_dropped_total", "History events dropped: a socket's oldest past 32, or the oldest stories past history_events."),
            log_events: r.counter(
                "kato_log_events_total",
                "Events written to stdout as JSON lines (log_events = \"json\").",
            ),
            log_events_dropped: r.counters(
                "kato_log_events_dropped_total",
                "Events the log did not write: rate_limit (over 200 a second after a burst of 1000), queue_full (stdout not keeping up) or stdout_closed.",
                ["cause"],
            ),
            protected: r.counters(
                "kato_keepalive_protected_total",
                "Connections whose keepalive protect switched on or tightened (protect = true), by the source of the idle timeout they were protected against.",
                ["source"],
            ),
            protected_now: r.gauge(
                "kato_keepalive_protected_sockets",
                "Sockets of the last snapshot carrying keepalive settings protect made.",
            ),
            containerd_failures: r.counter(
                "kato_containerd_failures_total",
                "containerd listings that failed or timed out (3 s): pods and containers named from cgroups meanwhile; kato doctor says why.",
            ),
            netns_vanished: r.counter(
                "kato_netns_vanished_total",
                "Network namespaces that were gone (their last process exited) between being found and being opened for a snapshot: skipped.",
            ),
            snapshot_seconds: r.float_gauge("kato_snapshot_duration_seconds", "Duration of the last full socket snapshot."),
            idle_before_close: r.histograms(
                "kato_connection_idle_before_close_seconds",
                "How long connections sat without data before they closed, by side (server: listening port; client: remote port) and who closed first.",
                ["side", "port", "closed_by"],
                &CLOSE_BUCKETS,
            ),
            exchanges: r.histograms(
                "kato_connection_exchanges",
                "Request/response exchanges a connection served before closing (with --http-keepalive).",
                ["side", "port", "closed_by"],
                &EXCHANGE_BUCKETS,
            ),
            stale_reuse: r.counters("kato_stale_reuse_total", "Writes on a connection after the peer's FIN, answered by a reset (a client reusing a connection the server closed).", ["side", "port"]),
            idle_kills: r.counters("kato_idle_kills_suspected_total", "Connections a middlebox probably forgot: reset after sitting idle past their path's idle timeout, or whose first send after such a silence never got through (ETIMEDOUT from retransmissions). Keepalive timeouts alone are dead peers and not counted here. By the idle-timeout rule's source and the path it covers.", ["source", "path"]),
            idle_before_reset: r.histogram("kato_idle_before_reset_seconds", "How long connections had not heard from the peer when a reset arrived.", &RESET_BUCKETS),
            risk: r.gauges("kato_sockets_idle_timeout_risk", "Connections by whether keepalive beats the middlebox idle timeout on their path: safe, at-risk, unprotected (keepalive off), unknown (no rule); source: where that timeout comes from (declared, cloud-assumed, conntrack, learned, ipvs; none for unknown).", ["class", "source"]),
            learned: r.float_gauges("kato_idle_timeout_learned_seconds", "Idle timeout learned per destination (ADDR:PORT a client connects to, or :PORT of accepted connections): lower = longest idle a connection survived, upper = shortest idle after which one was killed. At most label_limit destinations, those with the most evidence.", ["destination", "bound"]),
            learned_limit: label_limit,
            ports: LabelLimiter::new(label_limit),
            turns,
            label_by: label_by.to_vec(),
            limiters: label_by.iter().map(|_| LabelLimiter::new(label_limit)).collect(),
            last_kernel: Counters::default(),
            last_evictions: 0,
            last_undecodable: 0,
            registry: r.0.clone(),
        };
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
        for cause in LossCause::ALL {
            m.events_lost.with([cause.name()]).reset();
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        r.0.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("metric names are unique");
        r.gauges(
            "kato_build_info",
            "kato's version, the kernel it runs on and its attach path.",
            ["version", "kernel", "attach"],
        )
        .with([env!("CARGO_PKG_VERSION"), kernel, attach])
        .set(1);
        m
    }

    fn labels(&mut self, obs: &Observation<'_>, ctx: &LabelCtx<'_>) -> Vec<String> {
        let rec = obs.record;
        let mut out = Vec::with_capacity(self.label_by.len());
        for (i, l) in self.label_by.iter().enumerate() {
            let v = match l {
                // Ephemeral ports would make unbounded series: only servers' ports count.
                LabelBy::LocalPort if ctx.side == Side::Server => {
                    self.limiters[i].admit(rec.local.port().to_string())
                }
                LabelBy::LocalPort => "other".into(),
                // A server's clients come from ephemeral ports.
                LabelBy::RemotePort if ctx.side == Side::Client => {
                    self.limiters[i].admit(rec.remote.port().to_string())
                }
                LabelBy::RemotePort => "other".into(),
                LabelBy::Comm => self.limiters[i].admit(ctx.comm.unwrap_or("unknown").to_owned()),
                LabelBy::Netns => self.limiters[i].admit(rec.netns.to_string()),
                LabelBy::Pod | LabelBy::PodNamespace | LabelBy::Container | LabelBy::Unit => {
                    let w = ctx.workload;
                    let v = match l {
                        LabelBy::Pod => w.and_then(|w| w.pod.as_deref()),
                        LabelBy::PodNamespace => w.and_then(|w| w.pod_namespace.as_deref()),
                        LabelBy::Container => w.and_then(|w| w.container.as_deref()),
                        _ => w.and_then(|w| w.unit.as_deref()),
                    };
                    // Not a workload of this kind: "none", never counted against the limit.
                    v.map_or_else(
                        || "none".to_owned(),
                        |v| self.limiters[i].admit(v.to_owned()),
                    )
                }
            };
            out.push(v);
        }
        out
    }

    /// (side, port) of a connection: the service's port either way (a
    /// server's local port, the remote port a client connected to), never
    /// an ephemeral one.
    fn side_port(&mut self, obs: &Observation<'_>, ctx: &LabelCtx<'_>) -> (Side, String) {
        let rec = obs.record;
        let port = match ctx.side {
            Side::Server => rec.local.port(),
            Side::Client => rec.remote.port(),
        };
        (ctx.side, self.ports.admit(port.to_string()))
    }

    pub fn set_capacity(&self, n: usize) {
        self.capacity.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one observation.
    pub fn observe(&mut self, obs: &Observation<'_>, ctx: &LabelCtx<'_>) {
        self.events_processed.inc();
        if let Some(c) = obs.closed {
            let (side, port) = self.side_port(obs, ctx);
            let l = [side.name(), port.as_str(), c.by.name()];
            if let Some(idle) = c.idle_s {
                self.idle_before_close.with(l).observe(idle);
            }
            if self.turns {
                let n = match side {
                    Side::Server => c.turns_out,
                    Side::Client => c.turns_in,
                };
                self.exchanges.with(l).observe(f64::from(n));
            }
        }
        if obs.events.iter().all(|d| {
            d.kind.is_lifecycle() || matches!(d.kind, Kind::Armed | Kind::Fired | Kind::Disarmed)
        }) {
            return;
        }
        let labels = self.labels(obs, ctx);
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        for d in obs.events {
            match d.kind {
                // Counted in the kernel, recorded or not.
                Kind::ProbeSent | Kind::PeerAnswered if self.kernel_probes => {}
                Kind::ProbeSent => self.probes_sent.with_label_values(&l).inc(),
                Kind::PeerAnswered => {
                    self.probes_answered.with_label_values(&l).inc();
                    self.probes_before_answer.observe_n(f64::from(d.probes), 1);
                }
                Kind::KeepaliveTimeout => {
                    self.timeouts.with_label_values(&l).inc();
                    if let Some(idle) = obs.idle_s {
                        self.detection.observe(idle);
                    }
                }
                Kind::ResetSent => {
                    let mut lr = vec![obs.reset_name()];
                    lr.extend(&l);
                    self.resets_sent.with_label_values(&lr).inc();
                }
                Kind::ResetReceived => {
                    self.resets_received.with_label_values(&l).inc();
                    if let Some(idle) = obs.idle_s {
                        self.idle_before_reset.observe(idle);
                    }
                }
                Kind::StaleReuse => {
                    let (side, port) = self.side_port(obs, ctx);
                    self.stale_reuse.with([side.name(), port.as_str()]).inc();
                }
                Kind::IdleKillSuspected => {
                    let (src, path) = ctx
                        .rule
                        .as_ref()
                        .map_or(("none", "none"), |(s, p)| (s.name(), p.as_str()));
                    let path = self.ports.admit(path.to_owned());
                    self.idle_kills.with([src, path.as_str()]).inc();
                }
                Kind::SocketError => {
                    if let Some(e) = obs.error {
                        self.socket_errors
                            .with([e.errno.to_string().as_str(), e.cause.name()])
                            .inc();
                    }
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

    /// A snapshot was taken: its duration and the sysctls of exactly the
    /// namespaces it saw (series of namespaces that are gone are removed).
    pub fn on_snapshot(&mut self, seconds: f64, sysctls: &HashMap<u32, Sysctls>, vanished: usize) {
        self.snapshots.inc();
        self.netns_vanished.inc_by(vanished as u64);
        self.snapshot_seconds.set(seconds);
        for g in [&self.sysctl_time, &self.sysctl_intvl, &self.sysctl_probes] {
            g.reset();
        }
        for (netns, s) in sysctls {
            let n = netns.to_string();
            self.sysctl_time.with([&n]).set(i64::from(s.time_s));
            self.sysctl_intvl.with([&n]).set(i64::from(s.intvl_s));
            self.sysctl_probes.with([&n]).set(i64::from(s.probes));
        }
    }

    /// Protect's changes since the last call (taken), and the sockets now
    /// carrying its settings.
    pub fn on_protect(&mut self, made: &mut HashMap<RuleSource, u64>, now: usize) {
        for (source, n) in made.drain() {
            self.protected.with([source.name()]).inc_by(n);
        }
        self.protected_now.set(now as i64);
    }

    /// Probes sent and answered from the kernel's counters from now on
    /// (the programs were loaded with `quiet_probes`; no labels to give).
    pub fn count_probes_in_kernel(&mut self) {
        self.kernel_probes = true;
    }

    /// The registry, for a sink that registers counters of its own.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Every family as it stands (refreshed by the caller).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
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
    use crate::events::{
        fixture::{bytes, raw},
        Pipeline, Record, ResetReasons, Sink,
    };
    use keepalive_common::{flags, kind};
    use std::ops::ControlFlow;

    impl Sink for Metrics {
        fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
            let ctx = LabelCtx {
                side: Side::Client,
                comm: Some("psql"),
                workload: None,
                rule: None,
            };
            Metrics::observe(self, obs, &ctx);
            ControlFlow::Continue(())
        }
    }

    /// Each record on its own (a fresh pipeline: no history per socket).
    fn feed(m: &mut Metrics, e: keepalive_common::Event) {
        let reasons = ResetReasons([(15, "R15".to_owned())].into());
        let _ = Pipeline::new(250, reasons).feed(&mut vec![Record::decode(&bytes(&e))], m);
    }

    #[test]
    fn counts_events_with_bounded_labels() {
        let mut m = Metrics::new(
            &[LabelBy::RemotePort, LabelBy::LocalPort],
            1,
            "6.18",
            "tp_btf",
            false,
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
            text.contains("kato_dead_peer_detection_seconds_bucket{le=\"7.5\"} 1")
                && text.contains("kato_dead_peer_detection_seconds_bucket{le=\"3\"} 0"),
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
        let mut m = Metrics::new(&[], 20, "k", "a", false);
        m.refresh(
            &Default::default(),
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
            &Default::default(),
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
            text.contains(
                "kato_sockets_idle_timeout_risk{class=\"at-risk\",source=\"conntrack\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_scrape_reports_the_tables_sockets_by_state_keepalive_and_risk() {
        use crate::{
            policy::{Risk, RuleSource},
            sockets::{table::SocketTable, tests::record, Socket},
        };
        use keepalive_common::{sock_flags, SockRecord};
        let sock = |sk: u64, state: u8, ka: bool| {
            let mut r = SockRecord {
                sk,
                state,
                ..record()
            };
            if !ka {
                r.flags &= !sock_flags::KEEPALIVE_ON;
            }
            Socket::from_record(&r, 250, None).unwrap()
        };
        let mut t = SocketTable::new(100);
        let all = vec![
            sock(1, 1, true),
            sock(2, 1, true),
            sock(3, 1, false),
            sock(4, 10, true),
        ];
        t.apply_snapshot(record().netns, all, |s, _| match s.sock {
            1 | 2 => Some((Risk::AtRisk, Some(RuleSource::Conntrack))),
            3 => Some((Risk::Unprotected, Some(RuleSource::Declared))),
            _ => None,
        });
        let mut m = Metrics::new(&[], 20, "k", "a", false);
        m.refresh(t.tally(), Counters::default(), 0, 0);
        let text = m.encode();
        for series in [
            "kato_sockets{keepalive=\"on\",state=\"ESTABLISHED\"} 2",
            "kato_sockets{keepalive=\"off\",state=\"ESTABLISHED\"} 1",
            "kato_sockets{keepalive=\"on\",state=\"LISTEN\"} 1",
            "kato_table_sockets 4",
            "kato_sockets_probing 0",
            "kato_sockets_idle_timeout_risk{class=\"at-risk\",source=\"conntrack\"} 2",
            "kato_sockets_idle_timeout_risk{class=\"unprotected\",source=\"declared\"} 1",
            "kato_sockets_idle_timeout_risk{class=\"safe\",source=\"declared\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        assert!(
            !text.contains("state=\"TIME_WAIT\""),
            "no zero states: {text}"
        );
    }

    #[test]
    fn unlabeled_counters_start_at_zero() {
        let text = Metrics::new(&[], 20, "k", "a", false).encode();
        for series in [
            "kato_keepalive_probes_sent_total 0",
            "kato_keepalive_timeouts_total 0",
            "kato_resets_received_total 0",
            "kato_events_lost_total{cause=\"ring_full\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
