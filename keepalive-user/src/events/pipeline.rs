//! The one event loop body: ring records in, one [`Observation`] per record
//! out to a [`Sink`]. `kato trace`, `kato sockets --watch` and the agent
//! differ only in their sink.

use std::{collections::HashSet, ops::ControlFlow};

use super::{
    closes::CloseTracker, names::SocketError, DecodeError, Derived, Deriver, Observation, Record,
    ResetReasons,
};
use crate::owner::Owner;

/// Where observations go.
pub trait Sink {
    /// The owner of `rec`'s socket, for sinks that show or filter on it
    /// (looked up once per record, before [`Sink::observe`]).
    fn owner(&mut self, _rec: &Record) -> Option<Owner> {
        None
    }

    /// Takes one observation; `Break` stops the batch (`--count`, a closed pipe).
    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()>;
}

pub struct Pipeline {
    hz: u32,
    reasons: ResetReasons,
    deriver: Deriver,
    closes: CloseTracker,
    /// Namespaces whose records count (None: all). The kernel filters too;
    /// this drops records already in the ring when the set changes.
    watched: Option<HashSet<u32>>,
    derived: Vec<Derived>,
    /// Records that did not decode (an ABI mismatch: counted as lost).
    pub undecodable: u64,
    /// Records observed (after the namespace filter).
    pub processed: u64,
}

impl Pipeline {
    /// `idle_kill_min`: seconds of idle after which resets and keepalive
    /// timeouts are also `idle_kill_suspected` (None: never).
    pub fn new(hz: u32, reasons: ResetReasons, idle_kill_min: Option<f64>) -> Self {
        Self {
            hz,
            reasons,
            deriver: idle_kill_min
                .map_or_else(Deriver::default, |m| Deriver::with_idle_kill(hz, m)),
            closes: CloseTracker::default(),
            watched: None,
            derived: Vec::with_capacity(4),
            undecodable: 0,
            processed: 0,
        }
    }

    pub fn hz(&self) -> u32 {
        self.hz
    }

    pub fn reasons(&self) -> &ResetReasons {
        &self.reasons
    }

    pub fn watch(&mut self, netns: Option<HashSet<u32>>) {
        self.watched = netns;
    }

    /// State dropped because a bound was hit (deriver and close tracker).
    pub fn evictions(&self) -> u64 {
        self.deriver.evictions + self.closes.evictions
    }

    /// Interprets every record of `batch` (drained) into `sink`.
    pub fn feed(
        &mut self,
        batch: &mut Vec<Result<Record, DecodeError>>,
        sink: &mut impl Sink,
    ) -> ControlFlow<()> {
        for rec in batch.drain(..) {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    self.undecodable += 1;
                    log::debug!("undecodable event: {e}");
                    continue;
                }
            };
            if self
                .watched
                .as_ref()
                .is_some_and(|w| !w.contains(&rec.netns))
            {
                continue;
            }
            self.processed += 1;
            self.derived.clear();
            self.deriver.derive(&rec, &mut self.derived);
            let closed = self.closes.on(&rec, &self.derived, self.hz);
            let obs = Observation {
                owner: sink.owner(&rec),
                record: &rec,
                events: &self.derived,
                reset: self.reasons.of(&rec),
                error: SocketError::of(&rec),
                idle_s: rec.idle_secs(self.hz),
                data_idle_s: rec.data_idle_secs(self.hz),
                closed,
                hz: self.hz,
            };
            sink.observe(&obs)?;
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        fixture::{bytes, raw},
        Kind,
    };
    use keepalive_common::{flags, kind, Event};

    #[derive(Default)]
    struct Collect(Vec<(Vec<Kind>, String, Option<String>)>);

    impl Sink for Collect {
        fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
            self.0.push((
                obs.events.iter().map(|d| d.kind).collect(),
                obs.reset_name().to_owned(),
                obs.error.map(|e| e.to_string()),
            ));
            ControlFlow::Continue(())
        }
    }

    #[test]
    fn one_observation_per_record_named_once() {
        let reasons = ResetReasons([(15, "TCP_KEEPALIVE_TIMEOUT".to_owned())].into());
        let mut p = Pipeline::new(250, reasons, None);
        let mut batch = vec![
            Record::decode(&bytes(&Event {
                flags: flags::HAS_REASON,
                reason: 15,
                ..raw(kind::RESET_SENT)
            })),
            Record::decode(&[0; 3]),
            Record::decode(&bytes(&Event {
                sk_err: 110,
                flags: flags::IN_KEEPALIVE_TIMER,
                ..raw(kind::ERROR_REPORT)
            })),
        ];
        let mut sink = Collect::default();
        assert!(p.feed(&mut batch, &mut sink).is_continue());
        assert!(batch.is_empty());
        assert_eq!((p.processed, p.undecodable), (2, 1));
        assert_eq!(
            sink.0[0],
            (vec![Kind::ResetSent], "TCP_KEEPALIVE_TIMEOUT".into(), None)
        );
        assert_eq!(
            sink.0[1],
            (
                vec![Kind::SocketError, Kind::KeepaliveTimeout],
                "UNKNOWN".into(),
                Some("ETIMEDOUT (keepalive)".into())
            )
        );
    }

    #[test]
    fn unwatched_namespaces_are_dropped() {
        let mut p = Pipeline::new(250, ResetReasons::default(), None);
        p.watch(Some(HashSet::from([1])));
        let mut batch = vec![Record::decode(&bytes(&raw(kind::ARMED)))];
        let mut sink = Collect::default();
        let _ = p.feed(&mut batch, &mut sink);
        assert!(sink.0.is_empty());
        assert_eq!(p.processed, 0);
    }
}
