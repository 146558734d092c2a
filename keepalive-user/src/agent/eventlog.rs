//! `--log-events json`: each verdict-changing event as one JSON line on
//! stdout, for whatever ships the container log or the journal (Loki,
//! Elasticsearch, …) without another agent. The line is `kato trace
//! --output json`'s (docs/events.md), so one schema serves both.
//!
//! Nothing here blocks the event path: lines pass a token bucket, then a
//! bounded queue to a writer thread; what either refuses is counted
//! (`kato_log_events_dropped_total{cause}`), never waited for.

use std::{
    io::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{sync_channel, SyncSender},
        Arc,
    },
    time::Instant,
};

use super::subscribe::{Context, Subscriber};
use crate::{
    events::{Kind, Observation},
    timefmt::Clock,
    view::trace::{Formatter, TraceLine},
};

/// Lines per second sustained, and the burst allowed above it.
pub const RATE: f64 = 200.0;
pub const BURST: f64 = 1000.0;
/// Lines waiting for the writer at most.
const QUEUE: usize = 4096;

/// The events a log pipeline gets: those that change what an SRE concludes
/// about a connection (never a probe or a timer run; the agent asks the
/// kernel for no arming records, so `armed` is not among them).
pub fn reported(k: Kind) -> bool {
    matches!(
        k,
        Kind::KeepaliveTimeout
            | Kind::ResetSent
            | Kind::ResetReceived
            | Kind::StaleReuse
            | Kind::IdleKillSuspected
            | Kind::SocketError
    )
}

/// The log's counters, read at scrape time.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub written: AtomicU64,
    pub rate_limited: AtomicU64,
    pub queue_full: AtomicU64,
    /// Lines not written because stdout was closed.
    pub stdout_closed: AtomicU64,
}

/// [`RATE`] a second after a burst of [`BURST`]: what a sink of reported
/// events takes, so that a reset storm costs it a bounded amount of work.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            tokens: BURST,
            refilled: Instant::now(),
        }
    }
}

impl Bucket {
    /// One token, if the bucket has one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let gained = now.duration_since(self.refilled).as_secs_f64() * RATE;
        self.tokens = (self.tokens + gained).min(BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What every sink of reported events does first: picks the reported
/// events, takes a token for each, and makes each `kato trace --output
/// json`'s line.
#[derive(Default)]
pub struct Reported {
    clock: Clock,
    bucket: Bucket,
}

impl Reported {
    /// Calls `line` with each reported event's kind, wall time (Unix ns)
    /// and line; returns how many the rate refused.
    pub fn each(
        &mut self,
        obs: &Observation<'_>,
        ctx: &Context<'_>,
        mut line: impl FnMut(Kind, i128, TraceLine),
    ) -> u64 {
        let mut refused = 0;
        for d in obs.events.iter().filter(|d| reported(d.kind)) {
            if !self.bucket.take() {
                refused += 1;
                continue;
            }
            // Kept current here: the formatter gets a copy.
            let time = self.clock.unix_ns(obs.record.ts_ns);
            let fmt = Formatter {
                clock: self.clock.clone(),
                policy: ctx.policy,
                turns: false,
                addresses: false,
            };
            let workload = ctx.labels.workload.map(|w| Arc::new(w.clone()));
            line(d.kind, time, fmt.event(obs, *d, workload));
        }
        refused
    }
}

pub struct EventLog {
    tx: SyncSender<String>,
    counts: Arc<LogCounts>,
    reported: Reported,
}

impl EventLog {
    /// Starts the writer thread (stdout); the counts are shared with it.
    pub fn start(counts: Arc<LogCounts>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let written = Arc::clone(&counts);
        std::thread::Builder::new()
            .name("kato-eventlog".into())
            .spawn(move || {
                let mut out = std::io::stdout().lock();
                let mut open = true;
                for line in rx {
                    // A closed stdout ends the log, not the agent: what
                    // comes after is counted, not written.
                    open = open && writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
                    let n = if open {
                        &written.written
                    } else {
                        &written.stdout_closed
                    };
                    n.fetch_add(1, Relaxed);
                }
            })?;
        Ok(EventLog {
            tx,
            counts,
            reported: Reported::default(),
        })
    }
}

impl Subscriber for EventLog {
    fn seen(&mut self, obs: &Observation<'_>, ctx: &Context<'_>) {
        let (tx, counts) = (&self.tx, &self.counts);
        let refused = self.reported.each(obs, ctx, |_, _, line| {
            let line = serde_json::to_string(&line).expect("plain data serializes");
            if tx.try_send(line).is_err() {
                // Full, or the writer gone: counted, never waited for.
                counts.queue_full.fetch_add(1, Relaxed);
            }
        });
        counts.rate_limited.fetch_add(refused, Relaxed);
    }
}
