//! What a scrape takes from the table's tally and the kernel's counters:
//! sockets by state, keepalive and risk, and the kernel totals turned into
//! increments; and the other totals a scrape brings up to date.

use super::{LossCause, Metrics};
use crate::{
    bpf::Counters,
    learned::Learned,
    policy::{Risk, RuleSource},
    sockets::tally::Tally,
};

impl Metrics {
    /// Scrape-time state: the table's tally, kernel counters, evictions.
    pub fn refresh(&mut self, tally: &Tally, kernel: Counters, evictions: u64, undecodable: u64) {
        // Every class and source, zeros included: alerts need no absent().
        let classes: Vec<((Risk, Option<RuleSource>), i64)> = Risk::ALL
            .iter()
            .flat_map(|&r| {
                std::iter::once(None)
                    .chain(RuleSource::ALL.map(Some))
                    .map(move |src| (r, src))
            })
            .filter(|(r, src)| (*r == Risk::Unknown) == src.is_none())
            .map(|v| (v, tally.with_verdict(Some(v))))
            .collect();
        let by = tally.by_state().map(|(st, ka, n)| {
            let ka = match ka {
                None => "n/a",
                Some(true) => "on",
                Some(false) => "off",
            };
            ((st.name(), ka), n)
        });
        let (probing, tracked) = (tally.probing(), tally.tracked());
        self.sockets.reset();
        for ((state, ka), n) in by {
            self.sockets.with([state, ka]).set(n);
        }
        self.probing.set(probing);
        self.tracked.set(tracked);
        for ((r, src), n) in classes {
            self.risk
                .with([r.name(), src.map_or("none", RuleSource::name)])
                .set(n);
        }
        for (cause, now, last) in [
            (LossCause::RingFull, kernel.lost, self.last_kernel.lost),
            (LossCause::Shed, kernel.shed, self.last_kernel.shed),
            (
                LossCause::KernelRead,
                kernel.read_failed,
                self.last_kernel.read_failed,
            ),
            (LossCause::Decode, undecodable, self.last_undecodable),
        ] {
            self.events_lost
                .with([cause.name()])
                .inc_by(now.saturating_sub(last));
        }
        self.events_filtered
            .inc_by(kernel.filtered.saturating_sub(self.last_kernel.filtered));
        self.quiet_closes.inc_by(
            kernel
                .quiet_closes
                .saturating_sub(self.last_kernel.quiet_closes),
        );
        if self.kernel_probes {
            let last = &self.last_kernel;
            self.probing_full
                .inc_by(kernel.probing_full.saturating_sub(last.probing_full));
            self.probes_sent
                .with_label_values::<&str>(&[])
                .inc_by(kernel.probes_sent.saturating_sub(last.probes_sent));
            for (k, (&now, &was)) in kernel.answered.iter().zip(&last.answered).enumerate() {
                let n = now.saturating_sub(was);
                self.probes_answered
                    .with_label_values::<&str>(&[])
                    .inc_by(n);
                self.probes_before_answer.observe_n((k + 1) as f64, n);
            }
        }
        self.evictions
            .inc_by(evictions.saturating_sub(self.last_evictions));
        self.last_kernel = kernel;
        self.last_evictions = evictions;
        self.last_undecodable = undecodable;
    }
}

impl Metrics {
    /// Scrape-time: the per-socket history's size and losses.
    pub fn set_history(&self, events: usize, sockets: usize, dropped: u64) {
        self.history_events.set(events as i64);
        self.history_sockets.set(sockets as i64);
        self.history_dropped
            .inc_by(dropped.saturating_sub(self.history_dropped.get()));
    }

    /// Scrape-time: the event log's counts (they only grow).
    /// `written`, `rate_limited`, `queue_full`, `stdout_closed`: the
    /// log's totals.
    pub fn set_event_log(
        &self,
        written: u64,
        rate_limited: u64,
        queue_full: u64,
        stdout_closed: u64,
    ) {
        let up = |m: &prometheus::IntCounter, n: u64| m.inc_by(n.saturating_sub(m.get()));
        up(&self.log_events, written);
        up(&self.log_events_dropped.with(["rate_limit"]), rate_limited);
        up(&self.log_events_dropped.with(["queue_full"]), queue_full);
        up(
            &self.log_events_dropped.with(["stdout_closed"]),
            stdout_closed,
        );
    }

    pub fn set_containerd_failures(&self, n: u64) {
        self.containerd_failures
            .inc_by(n.saturating_sub(self.containerd_failures.get()));
    }

    /// Scrape-time: the kernel's own probe count since the start.
    pub fn set_kernel_probes(&self, total: u64) {
        self.kernel_probes_mib
            .inc_by(total.saturating_sub(self.kernel_probes_mib.get()));
    }

    /// Scrape-time: HTTP processes replaced so far.
    pub fn set_http_restarts(&self, n: u64) {
        self.http_restarts
            .inc_by(n.saturating_sub(self.http_restarts.get()));
    }

    /// Scrape-time: the learned brackets, the best-evidenced first.
    pub fn set_learned(&mut self, learned: impl Iterator<Item = Learned>) {
        let mut all: Vec<Learned> = learned.collect();
        all.sort_by_key(|l| std::cmp::Reverse(l.bracket.kills + l.bracket.survivals));
        self.learned.reset();
        for l in all.into_iter().take(self.learned_limit) {
            let d = l.destination.to_string();
            for (bound, v) in [
                ("lower", l.bracket.survived_s),
                ("upper", l.bracket.killed_s),
            ] {
                if let Some(v) = v {
                    self.learned.with([d.as_str(), bound]).set(v);
                }
            }
        }
    }
}
