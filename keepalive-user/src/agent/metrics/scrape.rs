//! What a scrape computes from the table and the kernel's counters:
//! sockets by state, keepalive and risk, and the kernel totals turned into
//! increments.

use super::{LossCause, Metrics};
use crate::{
    bpf::Counters,
    policy::{Risk, RuleSource},
    sockets::table::Entry,
    tcp::TcpState,
};

impl Metrics {
    /// Scrape-time state: the table's sockets, kernel counters, evictions.
    /// `risk` classifies a socket against the idle-timeout policy.
    pub fn refresh<'a>(
        &mut self,
        entries: impl Iterator<Item = &'a Entry>,
        kernel: Counters,
        evictions: u64,
        undecodable: u64,
    ) {
        // Counted into arrays, not maps: a scrape walks every socket.
        let mut by = [[0i64; 3]; TcpState::COUNT];
        let per = RuleSource::ALL.len() + 1;
        let mut classes = vec![0i64; Risk::ALL.len() * per];
        let (mut probing, mut tracked) = (0, 0);
        for e in entries {
            let s = &e.socket;
            if let Some((r, src)) = e.verdict() {
                let src = src.map_or(0, |x| 1 + x as usize);
                classes[r as usize * per + src] += 1;
            }
            tracked += 1;
            let ka = s.keepalive_enabled();
            by[s.state as usize - 1][match ka {
                None => 0,
                Some(true) => 1,
                Some(false) => 2,
            }] += 1;
            if s.keepalive_probing() {
                probing += 1;
            }
        }
        // Every class and source, zeros included: alerts need no absent().
        let classes: Vec<((Risk, Option<RuleSource>), i64)> = Risk::ALL
            .iter()
            .flat_map(|&r| {
                std::iter::once(None)
                    .chain(RuleSource::ALL.map(Some))
                    .map(move |src| (r, src))
            })
            .filter(|(r, src)| (*r == Risk::Unknown) == src.is_none())
            .map(|(r, src)| {
                let i = r as usize * per + src.map_or(0, |x| 1 + x as usize);
                ((r, src), classes[i])
            })
            .collect();
        let by: Vec<((&'static str, &'static str), i64)> = TcpState::ALL
            .iter()
            .flat_map(|st| {
                ["n/a", "on", "off"]
                    .into_iter()
                    .enumerate()
                    .map(move |(i, ka)| ((st.name(), ka), by[*st as usize - 1][i]))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
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
}
