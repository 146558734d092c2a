//! The one event loop body: ring records in, one [`Observation`] per record
//! out to a [`Sink`]. `kato trace`, `kato sockets --watch` and the agent
//! differ only in their sink.

use std::{collections::HashSet, ops::ControlFlow};

use super::{
    closes::CloseTracker,
    derive::Context,
    memory::Memory,
    names::SocketError,
    observation::{Reuse, ReusedBy},
    DecodeError, Derived, Deriver, Kind, Observation, Record, RecordKind, ResetReasons,
};
use crate::owner::Owner;

/// Where observations go.
pub trait Sink {
    /// The owner of `rec`'s socket, for sinks that show or filter on it
    /// (asked once per record, before [`Sink::observe`], when the kernel
    /// did not name one).
    fn owner(&mut self, _rec: &Record) -> Option<Owner> {
        None
    }

    /// The idle timeout of `rec`'s path in seconds, where the sink knows
    /// one: what makes a reset or a failed send after a silence evidence
    /// of a middlebox that forgot the flow.
    fn path_timeout(&mut self, _rec: &Record) -> Option<f64> {
        None
    }

    /// Takes one observation; `Break` stops the batch (`--count`, a closed pipe).
    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()>;
}

/// How long a `tcp_reset()` of a socket its owner had closed waits for
/// the reply reset that says the kernel aborted it itself (the two come
/// microseconds apart, from one softirq), kernel time.
const HOLD_NS: u64 = 50_000_000;
/// Sockets whose records are held at most; past it the oldest is let go.
const HOLD_MAX: usize = 1024;

/// Records of one socket held back: a `tcp_reset()` that may be the
/// kernel's own abort, and whatever of the same socket followed it.
struct Held {
    sk: u64,
    until_ns: u64,
    records: Vec<Record>,
}

pub struct Pipeline {
    hz: u32,
    reasons: ResetReasons,
    deriver: Deriver,
    closes: CloseTracker,
    memory: Memory,
    held: Vec<Held>,
    /// Namespaces whose records count (None: all). The kernel filters too;
    /// this drops records already in the ring when the set changes.
    watched: Option<HashSet<u32>>,
    derived: Vec<Derived>,
    /// Records that did not decode (an ABI mismatch: counted as lost).
    pub undecodable: u64,
    /// Records observed (after the namespace filter).
    pub processed: u64,
    /// `tcp_reset()` calls that were the kernel aborting a closed socket
    /// for data (paired with the reply reset, reported as that reset).
    pub aborts_paired: u64,
}

impl Pipeline {
    pub fn new(hz: u32, reasons: ResetReasons) -> Self {
        Self {
            hz,
            reasons,
            deriver: Deriver::new(hz),
            closes: CloseTracker::default(),
            memory: Memory::default(),
            held: Vec::new(),
            watched: None,
            derived: Vec::with_capacity(4),
            undecodable: 0,
            processed: 0,
            aborts_paired: 0,
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

    /// The listeners a task walk found, whose owner names the peer of a
    /// local connection kato saw no record of.
    pub fn know_listeners(&mut self, owners: &[keepalive_common::OwnerRecord]) {
        let listen = crate::tcp::TcpState::Listen as u8;
        self.memory
            .know_listeners(owners.iter().filter(|o| o.state == listen).map(|o| {
                let owner = Owner {
                    pid: o.tgid,
                    comm: crate::text::comm(&o.comm).into(),
                };
                ((o.netns, o.sport), owner)
            }));
    }

    /// Interprets every record of `batch` (drained) into `sink`.
    pub fn feed(
        &mut self,
        batch: &mut Vec<Result<Record, DecodeError>>,
        sink: &mut impl Sink,
    ) -> ControlFlow<()> {
        for rec in batch.drain(..) {
            let mut rec = match rec {
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
            self.release_before(rec.ts_ns.saturating_sub(HOLD_NS), sink)?;
            // The kernel's own abort of a closed socket that got data:
            // `tcp_reset()` first, then the reply. Held until one shows.
            if let Some(i) = self.held.iter().position(|h| h.sk == rec.sk && rec.sk != 0) {
                if rec.kind == RecordKind::ResetSent && rec.reply {
                    let h = self.held.remove(i);
                    self.aborts_paired += 1;
                    rec.local_abort = true;
                    // The abort's other records (the close), then the reply.
                    for r in h.records.into_iter().skip(1) {
                        self.one(r, sink)?;
                    }
                    self.one(rec, sink)?;
                } else {
                    self.held[i].records.push(rec);
                }
                continue;
            }
            if rec.kind == RecordKind::ResetReceived && rec.rcv_shut {
                if self.held.len() >= HOLD_MAX {
                    let h = self.held.remove(0);
                    self.release(h, sink)?;
                }
                self.held.push(Held {
                    sk: rec.sk,
                    until_ns: rec.ts_ns.saturating_add(HOLD_NS),
                    records: vec![rec],
                });
                continue;
            }
            self.one(rec, sink)?;
        }
        ControlFlow::Continue(())
    }

    /// Lets go of held records whose wait is over by kernel time
    /// `now_ns` (CLOCK_MONOTONIC): call it when the ring is quiet, or
    /// a `tcp_reset()` with no record after it waits forever.
    pub fn settle(&mut self, now_ns: u64, sink: &mut impl Sink) -> ControlFlow<()> {
        self.release_before(now_ns, sink)
    }

    /// [`Pipeline::settle`] at the current CLOCK_MONOTONIC time.
    pub fn settle_now(&mut self, sink: &mut impl Sink) -> ControlFlow<()> {
        if self.held.is_empty() {
            return ControlFlow::Continue(());
        }
        self.settle(crate::timefmt::Clock::now_mono_ns(), sink)
    }

    fn release_before(&mut self, now_ns: u64, sink: &mut impl Sink) -> ControlFlow<()> {
        while let Some(i) = self.held.iter().position(|h| h.until_ns <= now_ns) {
            let h = self.held.remove(i);
            self.release(h, sink)?;
        }
        ControlFlow::Continue(())
    }

    /// No reply came: a RST did arrive.
    fn release(&mut self, h: Held, sink: &mut impl Sink) -> ControlFlow<()> {
        for r in h.records {
            self.one(r, sink)?;
        }
        ControlFlow::Continue(())
    }

    /// One record: named, derived, observed.
    fn one(&mut self, mut rec: Record, sink: &mut impl Sink) -> ControlFlow<()> {
        self.processed += 1;
        // A disconnected socket (an abortive close, a failed connect) has
        // its remote port and local address cleared: as it was.
        if rec.remote.port() == 0 || rec.local.ip().is_unspecified() {
            if let Some((l, r)) = self.memory.tuple_of(rec.sk, rec.local.port()) {
                (rec.local, rec.remote) = (l, r);
            }
        }
        let owner = rec.owner.clone().or_else(|| sink.owner(&rec)).or_else(|| {
            self.memory
                .owner_of(rec.sk, rec.netns, rec.local, rec.remote)
        });
        self.memory
            .learn(rec.sk, rec.netns, rec.local, rec.remote, owner.as_ref());
        let path_timeout_s = match rec.kind {
            RecordKind::ResetReceived | RecordKind::ErrorReport | RecordKind::Fired => {
                sink.path_timeout(&rec)
            }
            _ => None,
        };
        let reset = self.reasons.of(&rec);
        self.derived.clear();
        self.deriver.derive(
            &rec,
            &Context {
                path_timeout_s,
                reset: reset.as_ref().map(|r| r.name.as_ref()),
            },
            &mut self.derived,
        );
        let closed = self.closes.on(&rec, &self.derived, self.hz);
        let reuse = self
            .derived
            .iter()
            .any(|d| d.kind == Kind::StaleReuse)
            .then(|| {
                if rec.kind == RecordKind::ResetReceived {
                    Reuse {
                        by: ReusedBy::Local,
                        idle_s: Some(rec.reuse_gap_secs(self.hz)),
                    }
                } else {
                    Reuse {
                        by: ReusedBy::Peer,
                        idle_s: rec.data_idle_secs(self.hz),
                    }
                }
            });
        let peer = reuse.and_then(|_| self.memory.peer_owner(rec.netns, rec.local, rec.remote));
        let obs = Observation {
            owner,
            record: &rec,
            events: &self.derived,
            reset,
            error: SocketError::of(&rec),
            idle_s: rec.idle_secs(self.hz),
            data_idle_s: rec.data_idle_secs(self.hz),
            closed,
            hz: self.hz,
            reuse,
            peer,
            path_timeout_s,
        };
        sink.observe(&obs)
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
        let mut p = Pipeline::new(250, reasons);
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

    /// The kernel aborting a closed socket that got data calls
    /// `tcp_reset()` (tcp:tcp_receive_reset) and then replies with a
    /// reset: one reset, sent, with its reason; no reset received.
    #[test]
    fn the_kernels_own_abort_is_a_reset_sent() {
        let mut p = Pipeline::new(250, ResetReasons::default());
        let rst_in = Event {
            flags: flags::RCV_SHUT,
            state: 4,
            ..raw(kind::RESET_RECEIVED)
        };
        let closed = Event {
            state: 7,
            state_before: 4,
            ts_ns: 2_000,
            ..raw(kind::CLOSED)
        };
        let reply = Event {
            flags: flags::REPLY,
            state: 7,
            ts_ns: 3_000,
            ..raw(kind::RESET_SENT)
        };
        let mut batch = vec![
            Record::decode(&bytes(&rst_in)),
            Record::decode(&bytes(&closed)),
        ];
        let mut sink = Collect::default();
        let _ = p.feed(&mut batch, &mut sink);
        assert!(sink.0.is_empty(), "held: {:?}", sink.0);
        let mut batch = vec![Record::decode(&bytes(&reply))];
        let _ = p.feed(&mut batch, &mut sink);
        assert_eq!(
            sink.0,
            [
                (vec![Kind::Closed], "UNKNOWN".into(), None),
                (
                    vec![Kind::ResetSent, Kind::StaleReuse],
                    "TCP_ABORT_ON_DATA".into(),
                    None
                ),
            ]
        );
        assert_eq!(p.aborts_paired, 1);

        // A RST that did arrive at a closed socket: no reply follows, and
        // once the wait is over it is what it is.
        let mut batch = vec![Record::decode(&bytes(&Event {
            ts_ns: 10_000,
            ..rst_in
        }))];
        let _ = p.feed(&mut batch, &mut sink);
        assert_eq!(sink.0.len(), 2);
        let _ = p.settle(10_000 + HOLD_NS, &mut sink);
        assert_eq!(sink.0[2].0, [Kind::ResetReceived]);
    }

    #[test]
    fn unwatched_namespaces_are_dropped() {
        let mut p = Pipeline::new(250, ResetReasons::default());
        p.watch(Some(HashSet::from([1])));
        let mut batch = vec![Record::decode(&bytes(&raw(kind::ARMED)))];
        let mut sink = Collect::default();
        let _ = p.feed(&mut batch, &mut sink);
        assert!(sink.0.is_empty());
        assert_eq!(p.processed, 0);
    }
}
