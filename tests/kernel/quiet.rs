//! Keepalive probes decided in the kernel (the agent without per-socket
//! labels): a healthy keepalive makes no ring record, and the counters
//! still equal the kernel's own (TcpExt TCPKeepAlive).

use std::time::Duration;

use crate::{
    agent_support::{sample, tcpext, Agent},
    support::{dead_peer, pair, require_root, Netns},
};

fn keepalives_sent(ns: &Netns) -> u64 {
    tcpext(&ns.exec(&["cat", "/proc/net/netstat"]), "TCPKeepAlive")
}

#[test]
fn healthy_probes_are_counted_in_the_kernel_without_records() {
    require_root();
    let ns = Netns::new("quiet");
    let agent = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "1s"]);
    let before = keepalives_sent(&ns);
    let processed = |m: &str| sample(m, "kato_events_processed_total");
    let at_start = processed(&agent.metrics());
    // 40 idle connections probing every second, every probe answered.
    let pairs = ns
        .spawn(|| (0..40).map(|_| pair(false, 1, 1, 3)).collect::<Vec<_>>())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let m = agent.metrics();
    let records = processed(&m) - at_start;
    // Every timer run stops now: what the kernel counted is final.
    drop(pairs);
    let sent = keepalives_sent(&ns) - before;
    assert!(sent >= 80, "40 connections for 6 s probed: {sent}");
    assert!(
        records <= sent as f64 * 0.01,
        "{records} ring records for {sent} answered probes"
    );
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, "kato_keepalive_probes_sent_total") >= sent as f64
    });
    assert_eq!(
        sample(&m, "kato_keepalive_probes_sent_total"),
        sent as f64,
        "kato's probe count is the kernel's"
    );
    assert_eq!(
        sample(&m, "kato_kernel_keepalive_probes_total"),
        sent as f64,
        "the kernel's own count, read in the watched namespace"
    );
    // Each probe but the last of each connection was answered before its
    // next run (loopback answers in microseconds).
    let answered = sample(&m, "kato_keepalive_probes_answered_total");
    assert!(
        answered >= (sent - 40) as f64 && answered <= sent as f64,
        "{answered} answered of {sent}"
    );
    assert_eq!(
        sample(&m, "kato_keepalive_probes_before_answer_bucket{le=\"1\"}"),
        answered,
        "each answered with one probe outstanding"
    );
    assert_eq!(sample(&m, "kato_keepalive_timeouts_total"), 0.0);
}

#[test]
fn a_dead_peer_is_reported_and_counted_like_the_kernel_with_quiet_probes() {
    require_root();
    let ns = Netns::new("quietdead");
    let agent = Agent::start(&["--netns", &ns.name, "--snapshot-interval", "1s"]);
    let before = keepalives_sent(&ns);
    dead_peer(&ns);
    let sent = keepalives_sent(&ns) - before;
    assert_eq!(sent, 3, "kernel TCPKeepAlive delta");
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, "kato_keepalive_timeouts_total") >= 1.0
    });
    assert_eq!(sample(&m, "kato_keepalive_probes_sent_total"), 3.0);
    assert_eq!(sample(&m, "kato_kernel_keepalive_probes_total"), 3.0);
    assert_eq!(sample(&m, "kato_keepalive_probes_answered_total"), 0.0);
    assert_eq!(sample(&m, "kato_keepalive_timeouts_total"), 1.0);
    assert_eq!(sample(&m, "kato_dead_peer_detection_seconds_count"), 1.0);
    assert_eq!(
        sample(&m, "kato_dead_peer_detection_seconds_bucket{le=\"7.5\"}"),
        1.0,
        "detected ~4 s after the peer went quiet, as with a record per probe"
    );
}
