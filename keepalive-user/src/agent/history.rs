//! Each connection's story: the last events of every socket the agent saw
//! an event of, kept after the socket closes (`history_retention`, 10 min
//! by default) so that the story of a connection that just died can still
//! be read (`/sockets/<cookie>/history`).
//!
//! Bounded twice: [`PER_SOCKET`] events a socket (its oldest dropped), and
//! a budget of events for all (`history_events`): past it the stories of
//! closed sockets go first, oldest first, then the least recently updated
//! live ones. Every event dropped is counted.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::subscribe::{Context, Subscriber};
use crate::{
    events::{Kind, Observation},
    tcp::TcpState,
    timefmt::{self, Clock},
    view::trace::round3,
};

/// Which socket's story: by its cookie, or by its two ends (a live socket
/// with them, else the one that closed last: a port pair is reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub enum StoryKey {
    Cookie(u64),
    Ends {
        local: SocketAddr,
        remote: SocketAddr,
    },
}

/// Events kept per socket.
pub const PER_SOCKET: usize = 32;
/// What a story counts against the budget besides its events (~60 B
/// each), for what it holds besides them.
pub const STORY_COST: usize = 4;

/// One event of a story, as compact as it can be kept.
#[derive(Debug, Clone)]
struct Step {
    /// Nanoseconds since the epoch (to 2262).
    unix_ns: i64,
    kind: Kind,
    state: TcpState,
    probes: u8,
    idle_s: Option<f32>,
    reason: Option<Arc<str>>,
    error: Option<Arc<str>>,
}

#[derive(Debug)]
struct Story {
    cookie: Option<u64>,
    netns: u32,
    sk: u64,
    local: SocketAddr,
    remote: SocketAddr,
    owner: Option<(u32, Arc<str>)>,
    steps: VecDeque<Step>,
    /// Events this story lost to [`PER_SOCKET`] or the budget.
    dropped: u64,
    closed_at: Option<Instant>,
    /// Its place in the update order (see [`History::order`]); once closed,
    /// in the close order (`closed` is sorted by it).
    seq: u64,
}

/// The stories, and what the budget took.
pub struct History {
    live: HashMap<(u32, u64), Story>,
    /// Closed sockets' stories, oldest close first.
    closed: VecDeque<Story>,
    /// Live stories in the order they were last updated, lazily: an entry
    /// whose `seq` is no longer its story's is stale.
    order: VecDeque<((u32, u64), u64)>,
    /// Sockets closed lately, to the `seq` of their story in `closed`: what
    /// the kernel reports after a close finds its story.
    recent: HashMap<(u32, u64), u64>,
    next_seq: u64,
    events: usize,
    budget: usize,
    retention: Duration,
    clock: Clock,
    /// Events dropped, all stories together.
    pub dropped: u64,
}

impl History {
    pub fn new(budget: usize, retention: Duration) -> Self {
        History {
            live: HashMap::new(),
            closed: VecDeque::new(),
            order: VecDeque::new(),
            recent: HashMap::new(),
            next_seq: 0,
            events: 0,
            budget: budget.max(PER_SOCKET + STORY_COST),
            retention,
            clock: Clock::new(),
            dropped: 0,
        }
    }

    /// Events kept now (each story counted [`STORY_COST`] more).
    pub fn events(&self) -> usize {
        self.events
    }

    /// Stories kept now (live and closed).
    pub fn stories(&self) -> usize {
        self.live.len() + self.closed.len()
    }

    /// The story of the socket `key` names, as JSON; `cookie_of` names a
    /// live socket's cookie where its story does not know it yet (the
    /// table learns cookies from snapshots).
    pub fn story_json(
        &mut self,
        key: StoryKey,
        cookie_of: impl Fn(u32, u64) -> Option<u64>,
    ) -> Option<String> {
        self.expire(Instant::now());
        let cookie = |s: &Story| s.cookie.or_else(|| cookie_of(s.netns, s.sk));
        let found = match key {
            StoryKey::Cookie(c) => self
                .live
                .values()
                .find(|s| cookie(s) == Some(c))
                .or_else(|| self.closed.iter().rev().find(|s| s.cookie == Some(c))),
            // A live socket with these ends, else the one closed last.
            StoryKey::Ends { local, remote } => {
                let ends = |s: &&Story| s.local == local && s.remote == remote;
                self.live
                    .values()
                    .filter(ends)
                    .max_by_key(|s| s.seq)
                    .or_else(|| self.closed.iter().rev().find(ends))
            }
        }?;
        Some(serde_json::to_string(&StoryJson::of(found, cookie(found))).expect("plain data"))
    }

    /// The story of the live socket `sk` of namespace `netns`, as JSON
    /// (a `/sockets?history=1` row's).
    pub fn live_json(&self, netns: u32, sk: u64, cookie: Option<u64>) -> Option<String> {
        let s = self.live.get(&(netns, sk))?;
        let json = StoryJson::of(s, s.cookie.or(cookie));
        Some(serde_json::to_string(&json).expect("plain data"))
    }

    /// Lets go of the closed stories past `history_retention` (at each
    /// event, lookup and scrape).
    pub fn expire_now(&mut self) {
        self.expire(Instant::now());
    }

    /// Closes the stories of sockets the census no longer finds
    /// (`present`): a socket that closed without a record (no keepalive,
    /// not idle) would otherwise stay "open" forever. Its close time is
    /// the census's, at most one snapshot interval late.
    pub fn close_missing(&mut self, present: impl Fn(u32, u64) -> bool) {
        let gone: Vec<(u32, u64)> = self
            .live
            .keys()
            .filter(|&&(ns, sk)| !present(ns, sk))
            .copied()
            .collect();
        for key in gone {
            self.close(key);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(s) = self.closed.front() {
            if s.closed_at
                .is_some_and(|t| now.duration_since(t) < self.retention)
            {
                break;
            }
            let s = self.closed.pop_front().expect("front");
            self.events -= weight(&s);
        }
    }

    fn close(&mut self, key: (u32, u64)) {
        if let Some(mut s) = self.live.remove(&key) {
            s.closed_at = Some(Instant::now());
            s.seq = self.next_seq;
            self.next_seq += 1;
            self.recent.insert(key, s.seq);
            self.closed.push_back(s);
        }
        // Forget what is older than the oldest closed story.
        if self.recent.len() > self.closed.len() + 1024 {
            let oldest = self.closed.front().map_or(u64::MAX, |s| s.seq);
            self.recent.retain(|_, seq| *seq >= oldest);
        }
    }

    /// The closed story of `key` if it closed within [`LATE`] and is the
    /// same connection.
    fn just_closed(
        &mut self,
        key: (u32, u64),
        tuple: (SocketAddr, SocketAddr),
    ) -> Option<&mut Story> {
        let seq = *self.recent.get(&key)?;
        let i = self.closed.partition_point(|s| s.seq < seq);
        let s = self.closed.get_mut(i).filter(|s| s.seq == seq)?;
        let fresh = s.closed_at.is_some_and(|t| t.elapsed() < LATE);
        (fresh && (s.local, s.remote) == tuple).then_some(s)
    }

    /// What `n` events for `key` add to the budget: none past a story's
    /// [`PER_SOCKET`], a new story's [`STORY_COST`].
    fn growth(&self, key: (u32, u64), n: usize) -> usize {
        match self.live.get(&key) {
            Some(s) => n.min(PER_SOCKET - s.steps.len()),
            None => n.min(PER_SOCKET) + STORY_COST,
        }
    }

    /// Makes room for `n` events: closed stories first, oldest first,
    /// then the least recently updated live story.
    /// The story of `keep` (the one the events are for) is not taken.
    fn make_room(&mut self, n: usize, keep: (u32, u64)) {
        let mut kept = None;
        while self.events + n > self.budget {
            if let Some(s) = self.closed.pop_front() {
                self.events -= weight(&s);
                self.dropped += s.steps.len() as u64;
                continue;
            }
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.live.get(&key).is_none_or(|s| s.seq != seq) {
                continue;
            }
            if key == keep {
                kept = Some((key, seq));
                continue;
            }
            let s = self.live.remove(&key).expect("present");
            self.events -= weight(&s);
            self.dropped += s.steps.len() as u64;
        }
        if let Some(k) = kept {
            self.order.push_front(k);
        }
    }

    fn add(&mut self, obs: &Observation<'_>, ctx: &Context<'_>) {
        let rec = obs.record;
        let key = (rec.netns, rec.sk);
        // A socket that closed quietly (no record) left its story behind;
        // another connection at the same address starts its own.
        if self
            .live
            .get(&key)
            .is_some_and(|s| (s.local, s.remote) != (rec.local, rec.remote))
        {
            self.close(key);
        }
        // What the kernel reports after the close (the owner's error comes
        // after tcp_done) belongs to the story just closed.
        if !self.live.contains_key(&key) {
            let unix_ns = self.clock.unix_ns(rec.ts_ns);
            let mut dropped = 0;
            if let Some(s) = self.just_closed(key, (rec.local, rec.remote)) {
                let n = push_steps(s, obs, unix_ns, &mut dropped);
                self.events += n;
                self.dropped += dropped;
                return;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.live.contains_key(&key) {
            self.events += STORY_COST;
        }
        let story = self.live.entry(key).or_insert_with(|| Story {
            cookie: None,
            netns: rec.netns,
            sk: rec.sk,
            local: rec.local,
            remote: rec.remote,
            owner: None,
            steps: VecDeque::new(),
            dropped: 0,
            closed_at: None,
            seq,
        });
        story.seq = seq;
        story.cookie = story.cookie.or(ctx.cookie);
        if let Some(o) = &obs.owner {
            story.owner = Some((o.pid, Arc::clone(&o.comm)));
        }
        let added = push_steps(story, obs, self.clock.unix_ns(rec.ts_ns), &mut self.dropped);
        self.events += added;
        self.order.push_back((key, seq));
        // Stale entries pile up as stories are updated: compact now and then.
        if self.order.len() > 4 * self.live.len() + 1024 {
            let live = &self.live;
            self.order
                .retain(|(k, q)| live.get(k).is_some_and(|s| s.seq == *q));
        }
        if obs.has(Kind::Closed) {
            self.close(key);
        }
    }
}

/// What a story counts against the budget: its events, and what it
/// holds besides them.
fn weight(s: &Story) -> usize {
    s.steps.len() + STORY_COST
}

/// How long after its close a socket's story still takes its events.
const LATE: Duration = Duration::from_secs(2);

/// Appends `obs`'s events to `story` (its oldest dropped past
/// [`PER_SOCKET`], counted in `dropped`): how many it holds more.
fn push_steps(story: &mut Story, obs: &Observation<'_>, unix_ns: i128, dropped: &mut u64) -> usize {
    let rec = obs.record;
    let mut added = 0;
    for d in obs.events {
        if story.steps.len() == PER_SOCKET {
            story.steps.pop_front();
            story.dropped += 1;
            *dropped += 1;
        } else {
            added += 1;
        }
        story.steps.push_back(Step {
            unix_ns: i64::try_from(unix_ns).unwrap_or(i64::MAX),
            kind: d.kind,
            state: rec.state,
            probes: d.probes,
            idle_s: obs.idle_s.map(|s| s as f32),
            reason: (d.kind == Kind::ResetSent)
                .then(|| obs.reset.as_ref().map(|r| Arc::from(&*r.name)))
                .flatten(),
            error: (d.kind == Kind::SocketError)
                .then(|| obs.error.map(|e| Arc::from(e.to_string())))
                .flatten(),
        });
    }
    added
}

impl Subscriber for History {
    fn seen(&mut self, obs: &Observation<'_>, ctx: &Context<'_>) {
        // A record with no socket of its own (a reply to a segment for no
        // socket, or sent for a listener) is no connection's story.
        if obs.events.is_empty() || obs.record.sk == 0 {
            return;
        }
        self.expire(Instant::now());
        let rec = obs.record;
        let key = (rec.netns, rec.sk);
        self.make_room(self.growth(key, obs.events.len()), key);
        self.add(obs, ctx);
    }
}

#[derive(Serialize)]
struct StoryJson<'a> {
    /// Null only for a socket no snapshot has shown yet.
    cookie: Option<u64>,
    netns: u32,
    local: String,
    remote: String,
    pid: Option<u32>,
    comm: Option<&'a str>,
    /// Seconds since the socket closed (null: open, as far as kato knows).
    closed_s_ago: Option<f64>,
    /// Earlier events this story no longer holds.
    dropped: u64,
    /// Oldest first.
    events: Vec<StepJson<'a>>,
}

#[derive(Serialize)]
struct StepJson<'a> {
    time: String,
    event: Kind,
    state: &'static str,
    probes: u8,
    idle_s: Option<f64>,
    reset_reason: Option<&'a str>,
    error: Option<&'a str>,
}

impl<'a> StoryJson<'a> {
    fn of(s: &'a Story, cookie: Option<u64>) -> Self {
        StoryJson {
            cookie,
            netns: s.netns,
            local: s.local.to_string(),
            remote: s.remote.to_string(),
            pid: s.owner.as_ref().map(|o| o.0),
            comm: s.owner.as_ref().map(|o| &*o.1),
            closed_s_ago: s.closed_at.map(|t| round3(t.elapsed().as_secs_f64())),
            dropped: s.dropped,
            events: s
                .steps
                .iter()
                .map(|st| StepJson {
                    time: timefmt::rfc3339(i128::from(st.unix_ns)),
                    event: st.kind,
                    state: st.state.name(),
                    probes: st.probes,
                    idle_s: st.idle_s.map(|x| round3(f64::from(x))),
                    reset_reason: st.reason.as_deref(),
                    error: st.error.as_deref(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent::metrics::{LabelCtx, Side},
        events::{
            fixture::{bytes, raw},
            Derived, Record,
        },
        learned::Destination,
        policy::Policy,
    };
    use keepalive_common::kind;

    fn record(sk: u64, sport: u16) -> Record {
        let e = keepalive_common::Event {
            sk,
            sport,
            ..raw(kind::FIRED)
        };
        Record::decode(&bytes(&e)).unwrap()
    }

    fn feed(h: &mut History, rec: &Record, kinds: &[Kind]) {
        let events: Vec<Derived> = kinds
            .iter()
            .map(|&kind| Derived { kind, probes: 1 })
            .collect();
        let obs = Observation {
            record: rec,
            events: &events,
            reset: None,
            error: None,
            idle_s: None,
            data_idle_s: None,
            closed: None,
            owner: None,
            hz: 250,
            reuse: None,
            peer: None,
            path_timeout_s: None,
        };
        let policy = Policy::default();
        let ctx = Context {
            labels: LabelCtx {
                side: Side::Client,
                comm: None,
                workload: None,
                rule: None,
            },
            policy: &policy,
            dest: Destination::Inbound(1),
            cookie: rec.cookie.or(Some(rec.sk)),
        };
        h.seen(&obs, &ctx);
    }

    fn kinds(h: &mut History, cookie: u64) -> Vec<String> {
        let Some(json) = h.story_json(StoryKey::Cookie(cookie), |_, _| None) else {
            return vec![];
        };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_socket_keeps_its_last_events_and_the_budget_takes_closed_stories_first() {
        let mut h = History::new(PER_SOCKET * 2, Duration::from_secs(600));
        let (a, b, c) = (record(1, 1), record(2, 2), record(3, 3));
        for _ in 0..PER_SOCKET + 5 {
            feed(&mut h, &a, &[Kind::ProbeSent]);
        }
        assert_eq!(kinds(&mut h, 1).len(), PER_SOCKET);
        assert_eq!(h.dropped, 5, "a socket's oldest go first");
        feed(&mut h, &a, &[Kind::Closed]);
        feed(&mut h, &b, &[Kind::ProbeSent]);
        feed(&mut h, &c, &[Kind::ProbeSent]);
        assert!(h.events() <= PER_SOCKET * 2);
        assert!(kinds(&mut h, 2).len() == 1 && kinds(&mut h, 3).len() == 1);
        // Over budget: the closed story goes, not the live ones.
        for _ in 0..PER_SOCKET {
            feed(&mut h, &b, &[Kind::ProbeSent]);
        }
        assert!(kinds(&mut h, 1).is_empty(), "the closed story was dropped");
        assert_eq!(kinds(&mut h, 3).len(), 1);
        assert!(h.events() <= PER_SOCKET * 2);
    }

    #[test]
    fn what_comes_after_the_close_joins_its_story() {
        let mut h = History::new(1000, Duration::from_secs(600));
        let a = record(1, 1);
        feed(&mut h, &a, &[Kind::ResetSent]);
        feed(&mut h, &a, &[Kind::Closed]);
        feed(&mut h, &a, &[Kind::SocketError, Kind::KeepaliveTimeout]);
        assert_eq!(
            kinds(&mut h, 1),
            ["reset_sent", "closed", "socket_error", "keepalive_timeout"]
        );
        assert_eq!(h.stories(), 1);
    }

    #[test]
    fn no_socket_no_story_and_the_census_closes_what_it_no_longer_finds() {
        let mut h = History::new(1000, Duration::from_secs(600));
        feed(&mut h, &record(0, 1), &[Kind::ResetSent]);
        assert_eq!(h.stories(), 0, "a reply for no socket is no story");
        feed(&mut h, &record(1, 1), &[Kind::ResetReceived]);
        feed(&mut h, &record(2, 2), &[Kind::ResetReceived]);
        h.close_missing(|_, sk| sk == 2);
        let v: serde_json::Value =
            serde_json::from_str(&h.story_json(StoryKey::Cookie(1), |_, _| None).unwrap()).unwrap();
        assert!(v["closed_s_ago"].is_f64(), "closed by the census: {v}");
        let v: serde_json::Value =
            serde_json::from_str(&h.story_json(StoryKey::Cookie(2), |_, _| None).unwrap()).unwrap();
        assert!(v["closed_s_ago"].is_null(), "still there: {v}");
    }

    #[test]
    fn by_its_ends_a_live_socket_first_else_the_one_closed_last() {
        let mut h = History::new(1000, Duration::from_secs(600));
        let (old, new) = (record(1, 7), record(2, 7));
        let ends = StoryKey::Ends {
            local: old.local,
            remote: old.remote,
        };
        let sk_of = |h: &mut History| -> Option<u64> {
            let v: serde_json::Value =
                serde_json::from_str(&h.story_json(ends, |_, sk| Some(sk))?).unwrap();
            v["cookie"].as_u64()
        };
        assert_eq!(sk_of(&mut h), None, "no story yet");
        feed(&mut h, &old, &[Kind::ResetReceived]);
        h.close_missing(|_, _| false);
        assert_eq!(sk_of(&mut h), Some(1), "the closed one");
        feed(&mut h, &new, &[Kind::ProbeSent]);
        assert_eq!(sk_of(&mut h), Some(2), "the live one wins");
        h.close_missing(|_, _| false);
        assert_eq!(sk_of(&mut h), Some(2), "closed last");
        let other = StoryKey::Ends {
            local: old.remote,
            remote: old.local,
        };
        assert!(
            h.story_json(other, |_, _| None).is_none(),
            "ends are ordered"
        );
    }

    #[test]
    fn a_story_at_its_cap_takes_no_room_from_others() {
        let mut h = History::new(2 * (PER_SOCKET + STORY_COST), Duration::from_secs(600));
        let (a, b) = (record(1, 1), record(2, 2));
        for _ in 0..PER_SOCKET {
            feed(&mut h, &a, &[Kind::ProbeSent]);
            feed(&mut h, &b, &[Kind::ProbeSent]);
        }
        // Both full; more for `a` replaces its oldest, evicting nobody.
        for _ in 0..10 {
            feed(&mut h, &a, &[Kind::ProbeSent]);
        }
        assert_eq!(kinds(&mut h, 2).len(), PER_SOCKET, "b kept");
        assert_eq!(kinds(&mut h, 1).len(), PER_SOCKET);
    }

    #[test]
    fn another_connection_at_the_same_address_starts_its_own_story() {
        let mut h = History::new(1000, Duration::from_secs(600));
        feed(&mut h, &record(1, 1), &[Kind::ProbeSent]);
        // Same kernel address, other ports: the first closed quietly.
        let mut next = record(1, 2);
        next.cookie = Some(7);
        feed(&mut h, &next, &[Kind::FinSent]);
        assert_eq!(h.stories(), 2);
        assert_eq!(kinds(&mut h, 1), ["probe_sent"]);
    }
}
