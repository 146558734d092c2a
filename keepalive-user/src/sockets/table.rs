//! The live socket table: snapshots from the TCP iterator, kept current by
//! keepalive events between them. Bounded: past `capacity` the entries
//! touched longest ago are evicted, and counted.
//!
//! Dense, because an agent on a busy node holds 100,000s of sockets: per
//! namespace, the last snapshot's sockets in one vector sorted by kernel
//! address (an entry is a [`Compact`] socket and kato's counts, 176 bytes,
//! with no hash-table slack); sockets first seen through events since sit
//! in a small map until the next snapshot takes them in.

use std::{collections::HashMap, ops::ControlFlow, sync::Arc, time::Instant};

use super::{
    compact::Compact,
    tally::{verdict_byte, Tally, Verdict},
    Socket, Timer, TimerKind,
};
use crate::{
    events::{Kind, Observation, Record, RecordKind, Sink},
    policy::Silence,
    tcp::TcpState,
};

/// What kato saw happen to a socket, beside what the kernel says of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Keepalive probes kato saw go out / get answered.
    pub probes_sent: u64,
    pub probes_answered: u64,
    /// The last reset the kernel sent on this socket, with its reason.
    pub last_reset: Option<String>,
    /// What passed on the connection across snapshots.
    pub silence: Silence,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub socket: Compact,
    probes_sent: u32,
    probes_answered: u32,
    /// The table's clock at the last update (snapshot or event); ages are
    /// taken wrapping, and every listed entry is touched at each snapshot.
    touched: u32,
    /// Since when (deciseconds of the table's age) the segment counters
    /// stand still; [`UNWATCHED`] until two snapshots saw it.
    quiet_since: u32,
    /// 1 + index into the table's reset names (0: none).
    last_reset: u16,
    /// The risk verdict when the socket was last listed ([`verdict_byte`]).
    verdict: u8,
    /// Closed or evicted since its snapshot: skipped, dropped at the next.
    dead: bool,
    /// [`mark`] bits.
    marks: u8,
}

/// Bits of [`Entry::marks`].
mod mark {
    /// The last segments that moved carried no data: the peer probes.
    pub const PEER_PROBES: u8 = 1 << 0;
    /// The conntrack entry was there and is gone.
    pub const CT_GONE: u8 = 1 << 1;
}

/// The least idle time before a keepalive probe (TCP_KEEPIDLE is at least
/// 1 s): segments without data that moved sooner after data are its ACKs.
const PROBE_IDLE_MIN_S: f64 = 1.0;

/// [`Entry::quiet_since`] of a socket not watched across two snapshots.
const UNWATCHED: u32 = u32::MAX;

pub const ENTRY_SIZE: usize = 200;
const _: () = assert!(size_of::<Entry>() == ENTRY_SIZE);

impl Entry {
    fn new(socket: Compact, verdict: Verdict, now: u32) -> Self {
        Entry {
            socket,
            probes_sent: 0,
            probes_answered: 0,
            touched: now,
            quiet_since: UNWATCHED,
            last_reset: 0,
            verdict: verdict_byte(verdict),
            dead: false,
            marks: 0,
        }
    }

    /// What passed on the connection, at table age `now_ds` (deciseconds).
    fn silence(&self, now_ds: u32) -> Silence {
        Silence {
            silent_s: (self.quiet_since != UNWATCHED)
                .then(|| f64::from(now_ds.saturating_sub(self.quiet_since)) / 10.0),
            peer_probes: self.marks & mark::PEER_PROBES != 0,
            conntrack_gone: self.marks & mark::CT_GONE != 0,
        }
    }

    /// Carries what kato watched from `old` (the same connection, seen at
    /// the space's previous snapshot, `dt_s` seconds ago) into this fresh
    /// entry: since when its segments stand still, whether the last ones
    /// to pass were the peer's probes, whether its conntrack entry went.
    fn watch(&mut self, old: &Entry, now_ds: u32, dt_s: f64) {
        let (new, was) = (&self.socket, &old.socket);
        match (new.segments(), was.segments()) {
            (Some(a), Some(b)) if a == b => {
                // Nothing passed: the silence goes on (it began when kato
                // first saw the counters, if not earlier).
                self.quiet_since = if old.quiet_since == UNWATCHED {
                    now_ds.saturating_sub((dt_s * 10.0) as u32)
                } else {
                    old.quiet_since
                };
                self.marks |= old.marks & mark::PEER_PROBES;
            }
            (Some(_), Some(_)) => {
                self.quiet_since = now_ds;
                let s = new.socket();
                // Data within PROBE_IDLE_MIN_S before the last snapshot: what
                // moved may be that data's ACK (or the snapshot's clock, in
                // deciseconds, may lag the walk's), not a probe.
                let data = |ago: Option<f64>| ago.is_some_and(|a| a < dt_s + PROBE_IDLE_MIN_S);
                let no_data = !data(s.last_data_recv_s) && !data(s.last_data_sent_s);
                let own_off = s.keepalive.is_some_and(|k| !k.enabled);
                if no_data && own_off && s.send_q == 0 {
                    self.marks |= mark::PEER_PROBES;
                }
            }
            _ => {}
        }
        if new
            .conntrack()
            .is_some_and(|c| c.state == crate::conntrack::CtState::Forgotten)
        {
            self.marks |= mark::CT_GONE;
        }
    }

    /// The same socket and connection (a kernel address can be reused).
    fn same_connection(&self, s: &Socket) -> bool {
        self.socket.local() == s.local && self.socket.remote() == s.remote
    }

    fn carry_counts(&mut self, old: &Entry) {
        self.probes_sent = old.probes_sent;
        self.probes_answered = old.probes_answered;
        self.last_reset = old.last_reset;
    }
}

/// One network namespace's sockets.
#[derive(Debug, Default)]
struct Space {
    /// The table's age (deciseconds) at the last snapshot.
    taken_ds: u32,
    /// The last snapshot's, sorted by kernel address.
    listed: Vec<Entry>,
    /// First seen through events since.
    seen: foldhash::HashMap<u64, Entry>,
}

impl Space {
    fn listed_at(&self, sk: u64) -> Option<usize> {
        self.listed
            .binary_search_by_key(&sk, |e| e.socket.sock)
            .ok()
            .filter(|&i| !self.listed[i].dead)
    }

    fn get(&self, sk: u64) -> Option<&Entry> {
        self.seen
            .get(&sk)
            .or_else(|| self.listed_at(sk).map(|i| &self.listed[i]))
    }

    fn live(&self) -> impl Iterator<Item = &Entry> {
        self.listed
            .iter()
            .filter(|e| !e.dead)
            .chain(self.seen.values())
    }
}

pub struct SocketTable {
    spaces: HashMap<u32, Space>,
    /// The clock of silences (`Entry::quiet_since`).
    born: Instant,
    capacity: usize,
    clock: u32,
    /// Reset reason names, each kept once (entries hold an index).
    resets: Vec<Arc<str>>,
    /// Entries dropped because the table was full.
    pub evictions: u64,
    /// The live entries counted for the metrics.
    tally: Tally,
}

/// Distinct reset names remembered; beyond, a reset is counted without one.
const MAX_RESET_NAMES: usize = 4096;

impl SocketTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            spaces: HashMap::new(),
            born: Instant::now(),
            capacity: capacity.max(1),
            clock: 0,
            resets: Vec::new(),
            evictions: 0,
            tally: Tally::default(),
        }
    }

    /// Live entries (the tally counts them).
    pub fn len(&self) -> usize {
        self.tally.tracked() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tick(&mut self) -> u32 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }

    /// The table's age in deciseconds.
    fn age_ds(&self) -> u32 {
        u32::try_from(self.born.elapsed().as_millis() / 100).unwrap_or(u32::MAX - 1)
    }

    /// Makes the sockets of namespace `netns` exactly `fresh`: new ones are
    /// added, known ones refreshed (keeping kato's counters and what it
    /// watched pass), and the ones the kernel no longer lists are removed.
    /// `verdict` is each socket's risk given what was watched, kept for
    /// the metrics.
    pub fn apply_snapshot(
        &mut self,
        netns: u32,
        fresh: Vec<Socket>,
        verdict: impl Fn(&Socket, &Silence) -> Verdict,
    ) {
        let now = self.tick();
        let now_ds = self.age_ds();
        let old = self.spaces.remove(&netns).unwrap_or_default();
        let dt_s = f64::from(now_ds.saturating_sub(old.taken_ds)) / 10.0;
        for e in old.live() {
            self.tally.count(&e.socket, e.verdict, -1);
        }
        let mut listed: Vec<Entry> = fresh
            .into_iter()
            .map(|mut s| {
                // Same kernel object and connection: keep the counters.
                let o = old.get(s.sock).filter(|o| o.same_connection(&s));
                // An entry a table held and no longer does: the table
                // that forgot the flow still judges it.
                if let Some(ct) = o.and_then(|o| o.socket.conntrack()) {
                    if s.conntrack.is_none() && s.state == TcpState::Established {
                        s.conntrack = Some(crate::conntrack::Tracked {
                            remaining_s: 0,
                            state: crate::conntrack::CtState::Forgotten,
                            ..ct
                        });
                    }
                }
                let mut e = Entry::new(Compact::of(&s), None, now);
                if let Some(o) = o {
                    e.carry_counts(o);
                    e.watch(o, now_ds, dt_s);
                }
                e.verdict = verdict_byte(verdict(&s, &e.silence(now_ds)));
                e
            })
            .collect();
        listed.sort_unstable_by_key(|e| e.socket.sock);
        // A socket met twice in one walk (the kernel moved it between
        // buckets) is one socket.
        listed.dedup_by_key(|e| e.socket.sock);
        listed.shrink_to_fit();
        for e in &listed {
            self.tally.count(&e.socket, e.verdict, 1);
        }
        self.spaces.insert(
            netns,
            Space {
                taken_ds: now_ds,
                listed,
                seen: foldhash::HashMap::default(),
            },
        );
        self.evict();
    }

    /// The index of reset name `name`, added if new (1-based; 0 when the
    /// table already holds [`MAX_RESET_NAMES`]).
    fn reset_index(&mut self, name: &str) -> u16 {
        if let Some(i) = self.resets.iter().position(|n| &**n == name) {
            return i as u16 + 1;
        }
        if self.resets.len() >= MAX_RESET_NAMES {
            return 0;
        }
        self.resets.push(name.into());
        self.resets.len() as u16
    }

    /// Applies one observation.
    pub fn apply(&mut self, obs: &Observation<'_>) {
        let rec = obs.record;
        let now = self.tick();
        let reset = obs
            .events
            .iter()
            .any(|d| d.kind == Kind::ResetSent)
            .then(|| self.reset_index(obs.reset_name()));
        let space = self.spaces.entry(rec.netns).or_default();
        let listed = if space.seen.contains_key(&rec.sk) {
            None
        } else {
            space.listed_at(rec.sk)
        };
        let e = match listed {
            Some(i) => &mut space.listed[i],
            None => space.seen.entry(rec.sk).or_insert_with(|| {
                let e = Entry::new(Compact::of(&partial(rec)), None, now);
                // Counted here so that the take-back below finds it.
                self.tally.count(&e.socket, e.verdict, 1);
                e
            }),
        };
        self.tally.count(&e.socket, e.verdict, -1);
        e.touched = now;
        for d in obs.events {
            match d.kind {
                Kind::ProbeSent => e.probes_sent = e.probes_sent.saturating_add(1),
                Kind::PeerAnswered => e.probes_answered = e.probes_answered.saturating_add(1),
                _ => {}
            }
        }
        if let Some(r) = reset {
            e.last_reset = r;
        }
        let s = &mut e.socket;
        if !s.has_cookie() {
            s.set_cookie(rec.cookie);
        }
        if rec.local.port() != 0 {
            s.set_local(rec.local);
        }
        s.state = rec.state;
        s.probes_unanswered = rec.probes_out;
        if matches!(rec.kind, RecordKind::Armed | RecordKind::Fired) {
            s.set_keepalive_timer(obs.timer_remaining_s(), rec.probes_out);
        }
        if rec.state != TcpState::Close {
            self.tally.count(&e.socket, e.verdict, 1);
        } else {
            match listed {
                Some(i) => space.listed[i].dead = true,
                None => {
                    space.seen.remove(&rec.sk);
                }
            }
        }
        self.evict();
    }

    fn evict(&mut self) {
        let len = self.len();
        if len <= self.capacity {
            return;
        }
        // Drop the oldest-touched entries, plus 1% headroom so eviction is rare.
        let excess = (len - self.capacity + self.capacity / 100).min(len);
        let now = self.clock;
        let mut ages: Vec<(u32, u32, u64)> = self
            .spaces
            .iter()
            .flat_map(|(ns, sp)| {
                sp.live()
                    .map(move |e| (now.wrapping_sub(e.touched), *ns, e.socket.sock))
            })
            .collect();
        // Oldest first.
        ages.select_nth_unstable_by(excess - 1, |a, b| b.0.cmp(&a.0));
        for &(_, ns, sk) in &ages[..excess] {
            let Some(sp) = self.spaces.get_mut(&ns) else {
                continue;
            };
            if let Some(e) = sp.seen.remove(&sk) {
                self.tally.count(&e.socket, e.verdict, -1);
            } else if let Some(i) = sp.listed_at(sk) {
                let e = &mut sp.listed[i];
                self.tally.count(&e.socket, e.verdict, -1);
                e.dead = true;
            }
        }
        self.evictions += excess as u64;
    }

    /// The live entries counted by state, keepalive and verdict.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Every live entry.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.spaces.values().flat_map(Space::live)
    }

    /// The namespaces the table holds sockets of.
    pub fn namespaces(&self) -> Vec<u32> {
        self.spaces.keys().copied().collect()
    }

    /// Up to `n` live entries of namespace `netns` listed at the last
    /// snapshot with a kernel address above `after`, in address order;
    /// once those run out (fewer than `n` returned), the ones seen
    /// through events since come along too. For readers that let go of
    /// the table between chunks: the order survives a snapshot replacing
    /// the list, so a chunk resumes where the last one stopped.
    pub fn chunk(&self, netns: u32, after: Option<u64>, n: usize) -> (Vec<&Entry>, bool) {
        let Some(sp) = self.spaces.get(&netns) else {
            return (vec![], true);
        };
        let from = after.map_or(0, |a| sp.listed.partition_point(|e| e.socket.sock <= a));
        let listed: Vec<&Entry> = sp.listed[from..]
            .iter()
            .filter(|e| !e.dead)
            .take(n)
            .collect();
        if listed.len() == n {
            return (listed, false);
        }
        (listed.into_iter().chain(sp.seen.values()).collect(), true)
    }

    /// kato's counts of an entry.
    pub fn counts(&self, e: &Entry) -> Counts {
        Counts {
            probes_sent: u64::from(e.probes_sent),
            probes_answered: u64::from(e.probes_answered),
            last_reset: usize::from(e.last_reset)
                .checked_sub(1)
                .and_then(|i| self.resets.get(i))
                .map(ToString::to_string),
            silence: e.silence(self.age_ds()),
        }
    }

    /// The sockets as last seen, with kato's counts beside each (made
    /// from the compact entries: for views and pages, not for tallies).
    pub fn iter(&self) -> impl Iterator<Item = (Socket, Counts)> + '_ {
        self.entries().map(|e| (e.socket.socket(), self.counts(e)))
    }

    /// The entry of socket `sk` in namespace `netns`.
    pub fn get(&self, netns: u32, sk: u64) -> Option<&Entry> {
        self.spaces.get(&netns)?.get(sk)
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
        timed(sk, k, before, after, state, false)
    }

    /// [`event`], with the keepalive timer pending after it where `pending`.
    fn timed(sk: u64, k: u32, before: u8, after: u8, state: u8, pending: bool) -> Record {
        let mut e = raw(k);
        e.sk = sk;
        e.probes_before = before;
        e.probes_out = after;
        e.state = state;
        e.sk_err = if state == 7 { 110 } else { 0 };
        if pending {
            e.flags |= keepalive_common::flags::TIMER_PENDING;
            e.expires = e.jiffies + 250;
        }
        Record::decode(&bytes(&e)).unwrap()
    }

    fn feed(t: &mut SocketTable, p: &mut Pipeline, r: Record) {
        let _ = p.feed(&mut vec![Ok(r)], t);
    }

    fn pipeline() -> Pipeline {
        Pipeline::new(250, ResetReasons::default())
    }

    fn sks(t: &SocketTable) -> Vec<u64> {
        let mut v: Vec<u64> = t.iter().map(|(s, _)| s.sock).collect();
        v.sort_unstable();
        v
    }

    /// A tally made by walking the live entries.
    fn walked(t: &SocketTable) -> Tally {
        let mut w = Tally::default();
        for e in t.entries() {
            w.count(&e.socket, e.verdict, 1);
        }
        w
    }

    #[test]
    fn the_tally_kept_is_the_one_a_walk_makes_after_every_change() {
        use crate::policy::{Risk, RuleSource};
        let ns = record().netns;
        let mut t = SocketTable::new(8);
        let mut d = pipeline();
        let check = |t: &SocketTable, what: &str| assert_eq!(*t.tally(), walked(t), "{what}");
        let varied = |i: u64| {
            let mut r = SockRecord {
                sk: i * 64,
                sport: i as u16,
                ..record()
            };
            if i.is_multiple_of(3) {
                r.flags &= !keepalive_common::sock_flags::KEEPALIVE_ON;
            }
            if i.is_multiple_of(4) {
                r.state = 10;
            }
            Socket::from_record(&r, 250, None).unwrap()
        };
        let at_risk = Some((Risk::AtRisk, Some(RuleSource::Conntrack)));
        let verdict = |s: &Socket, _: &Silence| match s.sock / 64 % 3 {
            0 => None,
            1 => at_risk,
            _ => Some((Risk::Unknown, None)),
        };
        // Seen through an event in a third namespace, touched first: the
        // first evicted below.
        let mut early = event(99, kind::ARMED, 0, 0, 1);
        early.netns = 3;
        feed(&mut t, &mut d, early);
        check(&t, "seen");
        t.apply_snapshot(ns, (1..=6).map(varied).collect(), verdict);
        check(&t, "snapshot");
        assert_eq!(t.tally().tracked(), 7);
        assert_eq!(t.tally().with_verdict(at_risk), 2, "sockets 1 and 4");
        // ESTABLISHED with keepalive on, off and not known (the event's), LISTEN.
        assert_eq!(t.tally().by_state().count(), 4, "{:?}", t.tally());
        // A listed socket's probe goes unanswered, then is answered.
        feed(&mut t, &mut d, timed(64, kind::FIRED, 0, 1, 1, true));
        check(&t, "unanswered");
        assert_eq!(t.tally().probing(), 1);
        feed(&mut t, &mut d, timed(64, kind::FIRED, 1, 0, 1, true));
        check(&t, "answered");
        assert_eq!(t.tally().probing(), 0);
        // A socket first seen through an event (its keepalive settings
        // not known until a snapshot), then timed out.
        feed(&mut t, &mut d, timed(7, kind::FIRED, 0, 1, 1, true));
        check(&t, "seen through an event");
        assert_eq!(t.tally().tracked(), 8);
        feed(&mut t, &mut d, event(7, kind::FIRED, 9, 9, 7));
        check(&t, "seen, closed");
        // A listed socket closes.
        feed(&mut t, &mut d, event(128, kind::FIRED, 9, 9, 7));
        check(&t, "listed, closed");
        assert_eq!(t.tally().tracked(), 6);
        // A second namespace past the capacity: the oldest are evicted.
        let other = (10..=14).map(|i| Socket {
            netns: 2,
            ..varied(i)
        });
        t.apply_snapshot(2, other.collect(), verdict);
        check(&t, "evicted");
        assert!(t.evictions > 0);
        assert!(t.get(3, 99).is_none(), "the oldest, seen through an event");
        assert_eq!((t.len(), t.evictions), (8, 3));
        // Snapshots replace a namespace, then empty it.
        t.apply_snapshot(ns, (3..=5).map(varied).collect(), verdict);
        check(&t, "replaced");
        t.apply_snapshot(ns, vec![], verdict);
        t.apply_snapshot(2, vec![], verdict);
        t.apply_snapshot(3, vec![], verdict);
        check(&t, "emptied");
        assert_eq!(*t.tally(), Tally::default());
    }

    /// One end with keepalive off: `segs` segments each way so far, the
    /// last data `data_ago` seconds before the snapshot.
    fn quiet_end(segs: u32, data_ago: f64, own_keepalive: bool) -> Entry {
        let mut s = sock(1, 1);
        s.keepalive = s.keepalive.map(|k| crate::sockets::Keepalive {
            enabled: own_keepalive,
            ..k
        });
        (s.segs_in, s.segs_out) = (Some(segs), Some(segs));
        (s.last_data_recv_s, s.last_data_sent_s) = (Some(data_ago), Some(data_ago + 0.1));
        Entry::new(Compact::of(&s), None, 0)
    }

    #[test]
    fn only_segments_well_after_the_data_are_the_peers_probes() {
        let probes = |old: &Entry, new: &mut Entry, dt_s: f64| {
            new.watch(old, 100, dt_s);
            new.silence(100).peer_probes
        };
        // The last data 0.1 s before the first snapshot, its ACK after it:
        // the counters moved, half a second later, without data since.
        let old = quiet_end(10, 0.1, false);
        assert!(!probes(&old, &mut quiet_end(11, 0.6, false), 0.5), "an ACK");
        // Idle 5 s: what moved was the peer's probe and its answer.
        let old = quiet_end(10, 4.5, false);
        let mut probed = quiet_end(11, 5.0, false);
        assert!(probes(&old, &mut probed, 0.5));
        // It holds while nothing moves, and not where keepalive is on.
        assert!(probes(&probed, &mut quiet_end(11, 5.5, false), 0.5));
        assert!(!probes(&old, &mut quiet_end(11, 5.0, true), 0.5));
    }

    #[test]
    fn snapshot_replaces_namespace_contents() {
        let mut t = SocketTable::new(100);
        t.apply_snapshot(record().netns, vec![sock(1, 1), sock(2, 2)], |_, _| None);
        assert_eq!(t.len(), 2);
        t.apply_snapshot(record().netns, vec![sock(2, 2), sock(3, 3)], |_, _| None);
        assert_eq!(sks(&t), [2, 3], "socket 1 closed");
        t.apply_snapshot(999, vec![], |_, _| None);
        assert_eq!(t.len(), 2, "other namespaces untouched");
    }

    #[test]
    fn chunks_resume_by_address_across_a_snapshot() {
        let ns = record().netns;
        let mut t = SocketTable::new(100);
        t.apply_snapshot(ns, (1..=5).map(|i| sock(i * 10, 1)).collect(), |_, _| None);
        let mut d = pipeline();
        // One seen through an event since: it comes with the last chunk.
        feed(&mut t, &mut d, event(7, kind::ARMED, 0, 0, 1));
        let of = |v: Vec<&Entry>| v.iter().map(|e| e.socket.sock).collect::<Vec<_>>();
        let (c, done) = t.chunk(ns, None, 2);
        assert_eq!((of(c), done), (vec![10, 20], false));
        // A snapshot replaces the list between chunks: the next one starts
        // after 20 in the new list.
        t.apply_snapshot(ns, vec![sock(15, 1), sock(30, 1), sock(45, 1)], |_, _| None);
        let (c, done) = t.chunk(ns, Some(20), 2);
        assert_eq!((of(c), done), (vec![30, 45], false));
        let (c, done) = t.chunk(ns, Some(45), 2);
        assert!(
            done && c.is_empty(),
            "the event's socket went with the snapshot"
        );
        let (c, done) = t.chunk(999, None, 2);
        assert!(done && c.is_empty());
    }

    #[test]
    fn events_count_and_survive_snapshots_until_pointer_reuse() {
        let mut t = SocketTable::new(100);
        let mut d = pipeline();
        t.apply_snapshot(
            record().netns,
            vec![sock(0xffff_8880_0000_1000, 41234)],
            |_, _| None,
        );
        let sk = 0xffff_8880_0000_1000;
        feed(&mut t, &mut d, event(sk, kind::FIRED, 0, 1, 1));
        feed(&mut t, &mut d, event(sk, kind::FIRED, 0, 1, 1));
        let (_, c) = t.iter().next().unwrap();
        assert_eq!((c.probes_sent, c.probes_answered), (2, 1));
        // The event's tuple (127.0.0.1:41234) now differs from the snapshot's:
        // a fresh snapshot of another connection at the same address restarts.
        t.apply_snapshot(record().netns, vec![sock(sk, 41234)], |_, _| None);
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
        t.apply_snapshot(
            record().netns,
            (0..100).map(|i| sock(i, i as u16)).collect(),
            |_, _| None,
        );
        let mut d = pipeline();
        // Touch socket 0 so it is the newest.
        feed(&mut t, &mut d, event(0, kind::ARMED, 0, 0, 1));
        t.apply_snapshot(
            2,
            vec![Socket {
                netns: 2,
                ..sock(1000, 1)
            }],
            |_, _| None,
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
