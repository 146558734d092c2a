//! The live socket table: snapshots from the TCP iterator, kept current by
//! keepalive events between them. Bounded: past `capacity` the entries
//! touched longest ago are evicted, and counted.

use std::{collections::HashMap, ops::ControlFlow};

use super::{Socket, Timer, TimerKind};
use crate::{
    events::{Kind, Observation, Record, RecordKind, Sink},
    tcp::TcpState,
};

/// What kato saw happen to a socket, beside what the kernel says of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Keepalive probes kato saw go out / get answered.
    pub probes_sent: u64,
    pub probes_answered: u64,
    /// The last reset the kernel sent on this socket, with its reason.
    pub last_reset: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    socket: Socket,
    counts: Counts,
    /// Monotonic counter of the last update (snapshot or event).
    touched: u64,
}

pub struct SocketTable {
    entries: HashMap<u64, Entry>,
    capacity: usize,
    clock: u64,
    /// Entries dropped because the table was full.
    pub evictions: u64,
}

impl SocketTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Makes the sockets of namespace `netns` exactly `fresh`: new ones are
    /// added, known ones refreshed (keeping kato's counters), and the ones
    /// the kernel no longer lists are removed.
    pub fn apply_snapshot(&mut self, netns: u32, fresh: Vec<Socket>) {
        let now = self.tick();
        let mut keep = std::collections::HashSet::with_capacity(fresh.len());
        for s in fresh {
            keep.insert(s.sock);
            match self.entries.get_mut(&s.sock) {
                // Same kernel object and connection: keep the counters.
                Some(e) if e.socket.local == s.local && e.socket.remote == s.remote => {
                    e.socket = s;
                    e.touched = now;
                }
                // New socket, or a reused kernel address: start over.
                _ => {
                    self.entries.insert(
                        s.sock,
                        Entry {
                            socket: s,
                            counts: Counts::default(),
                            touched: now,
                        },
                    );
                }
            }
        }
        self.entries
            .retain(|sk, e| e.socket.netns != netns || keep.contains(sk));
        self.evict();
    }

    /// Applies one observation.
    pub fn apply(&mut self, obs: &Observation<'_>) {
        let rec = obs.record;
        let now = self.tick();
        let e = self.entries.entry(rec.sk).or_insert_with(|| Entry {
            socket: partial(rec),
            counts: Counts::default(),
            touched: now,
        });
        e.touched = now;
        for d in obs.events {
            match d.kind {
                Kind::ProbeSent => e.counts.probes_sent += 1,
                Kind::PeerAnswered => e.counts.probes_answered += 1,
                Kind::ResetSent => e.counts.last_reset = Some(obs.reset_name().to_owned()),
                _ => {}
            }
        }
        let s = &mut e.socket;
        if s.cookie.is_none() {
            s.cookie = rec.cookie;
        }
        if rec.local.port() != 0 {
            s.local = rec.local;
        }
        s.state = rec.state;
        s.probes_unanswered = rec.probes_out;
        if matches!(rec.kind, RecordKind::Armed | RecordKind::Fired) {
            s.timer = match obs.timer_remaining_s() {
                Some(left) => Timer {
                    kind: TimerKind::Keepalive,
                    remaining_s: left.max(0.0),
                    retransmits: s.timer.retransmits,
                    probes: rec.probes_out,
                },
                None => Timer {
                    kind: TimerKind::Off,
                    remaining_s: 0.0,
                    retransmits: s.timer.retransmits,
                    probes: rec.probes_out,
                },
            };
        }
        if rec.state == TcpState::Close {
            self.entries.remove(&rec.sk);
        }
        self.evict();
    }

    fn evict(&mut self) {
        if self.entries.len() <= self.capacity {
            return;
        }
        // Drop the oldest-touched entries, plus 1% headroom so eviction is rare.
        let excess =
            (self.entries.len() - self.capacity + self.capacity / 100).min(self.entries.len());
        let mut ages: Vec<(u64, u64)> = self.entries.iter().map(|(k, e)| (e.touched, *k)).collect();
        ages.select_nth_unstable(excess - 1);
        for (_, k) in &ages[..excess] {
            self.entries.remove(k);
        }
        self.evictions += excess as u64;
    }

    /// The sockets as last seen, with kato's counts beside each.
    pub fn iter(&self) -> impl Iterator<Item = (&Socket, &Counts)> {
        self.entries.values().map(|e| (&e.socket, &e.counts))
    }

    pub fn get(&self, sk: u64) -> Option<&Socket> {
        self.entries.get(&sk).map(|e| &e.socket)
    }
}

impl Sink for SocketTable {
    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
        self.apply(obs);
        ControlFlow::Continue(())
    }
}

/// A socket first seen through an event: what the record tells, the rest
/// filled by the next snapshot.
fn partial(rec: &Record) -> Socket {
    let timer = Timer {
        kind: TimerKind::Off,
        remaining_s: 0.0,
        retransmits: 0,
        probes: rec.probes_out,
    };
    Socket {
        cookie: rec.cookie,
        cgroup_id: rec.cgroup_id,
        ..Socket::bare(
            rec.sk, rec.netns, rec.local, rec.remote, rec.state, rec.ino, timer,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{
            fixture::{bytes, raw},
            Pipeline, ResetReasons,
        },
        sockets::tests::record,
    };
    use keepalive_common::{kind, SockRecord};

    fn sock(sk: u64, sport: u16) -> Socket {
        Socket::from_record(
            &SockRecord {
                sk,
                sport,
                ..record()
            },
            250,
            None,
        )
        .unwrap()
    }

    fn event(sk: u64, k: u32, before: u8, after: u8, state: u8) -> Record {
        let mut e = raw(k);
        e.sk = sk;
        e.probes_before = before;
        e.probes_out = after;
        e.state = state;
        e.sk_err = if state == 7 { 110 } else { 0 };
        Record::decode(&bytes(&e)).unwrap()
    }

    fn feed(t: &mut SocketTable, p: &mut Pipeline, r: Record) {
        let _ = p.feed(&mut vec![Ok(r)], t);
    }

    fn pipeline() -> Pipeline {
        Pipeline::new(250, ResetReasons::default(), None)
    }

    fn sks(t: &SocketTable) -> Vec<u64> {
        let mut v: Vec<u64> = t.iter().map(|(s, _)| s.sock).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn snapshot_replaces_namespace_contents() {
        let mut t = SocketTable::new(100);
        t.apply_snapshot(record().netns, vec![sock(1, 1), sock(2, 2)]);
        assert_eq!(t.len(), 2);
        t.apply_snapshot(record().netns, vec![sock(2, 2), sock(3, 3)]);
        assert_eq!(sks(&t), [2, 3], "socket 1 closed");
        t.apply_snapshot(999, vec![]);
        assert_eq!(t.len(), 2, "other namespaces untouched");
    }

    #[test]
    fn events_count_and_survive_snapshots_until_pointer_reuse() {
        let mut t = SocketTable::new(100);
        let mut d = pipeline();
        t.apply_snapshot(record().netns, vec![sock(0xffff_8880_0000_1000, 41234)]);
        let sk = 0xffff_8880_0000_1000;
        feed(&mut t, &mut d, event(sk, kind::FIRED, 0, 1, 1));
        feed(&mut t, &mut d, event(sk, kind::FIRED, 0, 1, 1));
        let (_, c) = t.iter().next().unwrap();
        assert_eq!((c.probes_sent, c.probes_answered), (2, 1));
        // The event's tuple (127.0.0.1:41234) now differs from the snapshot's:
        // a fresh snapshot of another connection at the same address restarts.
        t.apply_snapshot(record().netns, vec![sock(sk, 41234)]);
        assert_eq!(t.iter().next().unwrap().1.probes_sent, 0);
    }

    #[test]
    fn close_removes_and_unknown_sockets_appear() {
        let mut t = SocketTable::new(100);
        let mut d = pipeline();
        feed(&mut t, &mut d, event(7, kind::ARMED, 0, 0, 1));
        assert_eq!(t.len(), 1, "armed before any snapshot");
        assert_eq!(t.iter().next().unwrap().0.timer.kind, TimerKind::Off);
        feed(&mut t, &mut d, event(7, kind::RESET_SENT, 3, 3, 1));
        assert_eq!(
            t.iter().next().unwrap().1.last_reset,
            Some("UNKNOWN".into())
        );
        feed(&mut t, &mut d, event(7, kind::FIRED, 3, 3, 7));
        assert!(t.is_empty());
    }

    #[test]
    fn bounded_with_oldest_evicted_first() {
        let mut t = SocketTable::new(100);
        t.apply_snapshot(1, (0..100).map(|i| sock(i, i as u16)).collect());
        let mut d = pipeline();
        // Touch socket 0 so it is the newest.
        feed(&mut t, &mut d, event(0, kind::ARMED, 0, 0, 1));
        t.apply_snapshot(
            2,
            vec![Socket {
                netns: 2,
                ..sock(1000, 1)
            }],
        );
        assert!(t.len() <= 100);
        assert_eq!(t.evictions, 2);
        let left = sks(&t);
        assert!(
            left.contains(&0) && left.contains(&1000),
            "recently touched kept"
        );
    }
}
