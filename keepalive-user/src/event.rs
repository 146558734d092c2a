//! Ring-buffer records: decoding raw bytes into typed events, and deriving
//! what happened (probe sent, peer answered, keepalive timeout) from them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use keepalive_common::{flags, kind, Event as RawEvent, EVENT_SIZE};
use thiserror::Error;

use crate::tcp::TcpState;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const ETIMEDOUT: i32 = 110;

/// The errno names TCP reports to sockets; others by number.
pub fn errno_name(e: i32) -> String {
    match e {
        110 => "ETIMEDOUT".into(),
        104 => "ECONNRESET".into(),
        111 => "ECONNREFUSED".into(),
        32 => "EPIPE".into(),
        113 => "EHOSTUNREACH".into(),
        101 => "ENETUNREACH".into(),
        71 => "EPROTO".into(),
        e => format!("errno {e}"),
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record is {0} bytes, expected {EVENT_SIZE}")]
    Length(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
    #[error("unknown flag bits {0:#x}")]
    Flags(u32),
}

/// The kind of a kernel record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Armed,
    Fired,
    Disarmed,
    ResetSent,
    ResetReceived,
    Closed,
    FinReceived,
    FinSent,
    ErrorReport,
}

/// A decoded, validated kernel record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub ts_ns: u64,
    pub sk: u64,
    pub jiffies: u64,
    /// Keepalive deadline in jiffies, when the timer was pending.
    pub expires: Option<u64>,
    pub ino: u64,
    pub netns: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub state_before: TcpState,
    pub probes_out: u8,
    pub probes_before: u8,
    pub sk_err: i32,
    /// `enum sk_rst_reason`, where the kernel reports one.
    pub reason: Option<u32>,
    /// Taken inside this socket's own keepalive timer run.
    pub in_keepalive_timer: bool,
    /// Activity stamps (low 32 bits of jiffies) on timer runs, resets and
    /// FINs: last data received, last data sent, last ACK received.
    pub lrcvtime: u32,
    pub lsndtime: u32,
    pub rcv_tstamp: u32,
    /// Request/response turns, on CLOSED with the HTTP view on.
    pub turns_out: u32,
    pub turns_in: u32,
}

/// A socket address from a record's family, 16 address bytes (IPv4 in the
/// first 4) and host-order port.
pub(crate) fn addr(family: u16, bytes: [u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    SocketAddr::new(ip, port)
}

impl Record {
    /// Decodes one ring-buffer record. Unknown kinds, families, states or
    /// flags are errors: a mismatch between kernel and userspace ABI must show.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != EVENT_SIZE {
            return Err(DecodeError::Length(bytes.len()));
        }
        // SAFETY: length checked; RawEvent is plain old data, any bits valid.
        let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = match raw.kind {
            kind::ARMED => RecordKind::Armed,
            kind::FIRED => RecordKind::Fired,
            kind::DISARMED => RecordKind::Disarmed,
            kind::RESET_SENT => RecordKind::ResetSent,
            kind::RESET_RECEIVED => RecordKind::ResetReceived,
            kind::CLOSED => RecordKind::Closed,
            kind::FIN_RECEIVED => RecordKind::FinReceived,
            kind::FIN_SENT => RecordKind::FinSent,
            kind::ERROR_REPORT => RecordKind::ErrorReport,
            k => return Err(DecodeError::Kind(k)),
        };
        if raw.family != AF_INET && raw.family != AF_INET6 {
            return Err(DecodeError::Family(raw.family));
        }
        if raw.flags & !(flags::TIMER_PENDING | flags::HAS_REASON | flags::IN_KEEPALIVE_TIMER) != 0
        {
            return Err(DecodeError::Flags(raw.flags));
        }
        let state = TcpState::from_raw(raw.state).ok_or(DecodeError::State(raw.state))?;
        let state_before =
            TcpState::from_raw(raw.state_before).ok_or(DecodeError::State(raw.state_before))?;
        Ok(Record {
            kind,
            ts_ns: raw.ts_ns,
            sk: raw.sk,
            jiffies: raw.jiffies,
            expires: (raw.flags & flags::TIMER_PENDING != 0).then_some(raw.expires),
            ino: raw.ino,
            netns: raw.netns,
            local: addr(raw.family, raw.saddr, raw.sport),
            remote: addr(raw.family, raw.daddr, raw.dport),
            state,
            state_before,
            probes_out: raw.probes_out,
            probes_before: raw.probes_before,
            sk_err: raw.sk_err,
            reason: (raw.flags & flags::HAS_REASON != 0).then_some(raw.reason),
            in_keepalive_timer: raw.flags & flags::IN_KEEPALIVE_TIMER != 0,
            lrcvtime: raw.lrcvtime,
            lsndtime: raw.lsndtime,
            rcv_tstamp: raw.rcv_tstamp,
            turns_out: raw.turns_out,
            turns_in: raw.turns_in,
        })
    }

    /// A reset's cause: the kernel's reason by name (`name` maps codes), or
    /// where the kernel gives none (before 6.12), what the context proves —
    /// a reset sent from the socket's own keepalive timer while established
    /// is the keepalive timeout (the timer's other reset ends FIN_WAIT2).
    /// The flag says whether it was inferred.
    pub fn reset_reason(&self, name: impl Fn(u32) -> String) -> Option<(String, bool)> {
        // Other records from inside the timer (error reports) are no resets.
        if self.kind != RecordKind::ResetSent {
            return None;
        }
        match self.reason {
            Some(code) => Some((name(code), false)),
            None if self.in_keepalive_timer && self.state != TcpState::FinWait2 => {
                Some(("TCP_KEEPALIVE_TIMEOUT".into(), true))
            }
            None => None,
        }
    }

    /// What an error report says: the errno's name, and for ETIMEDOUT which
    /// timer gave up (keepalive, or retransmissions / TCP_USER_TIMEOUT).
    pub fn error_text(&self) -> String {
        let name = errno_name(self.sk_err);
        match (self.sk_err, self.in_keepalive_timer) {
            (ETIMEDOUT, true) => format!("{name} (keepalive)"),
            (ETIMEDOUT, false) => format!("{name} (retransmits)"),
            _ => name,
        }
    }

    fn has_stamps(&self) -> bool {
        matches!(
            self.kind,
            RecordKind::Fired
                | RecordKind::ResetSent
                | RecordKind::ResetReceived
                | RecordKind::FinReceived
                | RecordKind::FinSent
                | RecordKind::ErrorReport
        )
    }

    /// Seconds from a 32-bit jiffies stamp to this record.
    fn since(&self, stamp: u32, hz: u32) -> f64 {
        f64::from(((self.jiffies as u32).wrapping_sub(stamp) as i32).max(0)) / f64::from(hz)
    }

    /// The later of two 32-bit jiffies stamps.
    fn later(a: u32, b: u32) -> u32 {
        if (a.wrapping_sub(b) as i32) > 0 {
            a
        } else {
            b
        }
    }

    /// Seconds since the peer was last heard from (data or ACK): the idle
    /// time keepalive measures (`keepalive_time_elapsed()`).
    pub fn idle_secs(&self, hz: u32) -> Option<f64> {
        self.has_stamps()
            .then(|| self.since(Self::later(self.lrcvtime, self.rcv_tstamp), hz))
    }

    /// Seconds since data last moved either way: how long a connection sat
    /// idle (e.g. before a FIN).
    pub fn data_idle_secs(&self, hz: u32) -> Option<f64> {
        self.has_stamps()
            .then(|| self.since(Self::later(self.lrcvtime, self.lsndtime), hz))
    }

    /// Data was sent after the last ACK arrived: on a socket in CLOSE_WAIT,
    /// a write after the peer's FIN.
    pub fn sent_after_last_ack(&self) -> bool {
        (self.lsndtime.wrapping_sub(self.rcv_tstamp) as i32) > 0
    }

    /// Seconds between the last data received and the last data sent: for a
    /// stale reuse, how long the connection sat idle before the write.
    pub fn reuse_gap_secs(&self, hz: u32) -> f64 {
        f64::from((self.lsndtime.wrapping_sub(self.lrcvtime) as i32).max(0)) / f64::from(hz)
    }

    /// Seconds until the keepalive timer fires, from the record's own clock.
    pub fn timer_remaining(&self, hz: u32) -> Option<f64> {
        let exp = self.expires?;
        Some((exp as i64).wrapping_sub(self.jiffies as i64) as f64 / hz as f64)
    }
}

/// What kato reports: one kernel record may mean one or two of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Keepalive timer armed (keepalive on, connection established, reconfigured).
    Armed,
    /// The keepalive timer ran and only re-armed itself (connection not idle long enough).
    Fired,
    /// The timer ran and sent a keepalive probe.
    ProbeSent,
    /// Probes had gone out and the peer has answered since.
    PeerAnswered,
    /// The timer gave up: the connection is closed with ETIMEDOUT.
    KeepaliveTimeout,
    /// The keepalive timer was stopped (keepalive off, close, or re-arm).
    Disarmed,
    /// The kernel sent an active reset (tcp_send_active_reset).
    ResetSent,
    /// The peer reset the connection (a RST arrived).
    ResetReceived,
    /// The socket left the kernel's tables (any TCP close).
    Closed,
    /// The peer closed its side first (FIN received on an established connection).
    FinReceived,
    /// This side closed first (FIN sent on an established connection).
    FinSent,
    /// Data written after the peer's FIN, answered by a reset: a client
    /// reused a connection the server had just closed.
    StaleReuse,
    /// A connection idle for at least `idle_kill_min` was reset or timed
    /// out: the signature of a NAT or load balancer forgetting the flow.
    IdleKillSuspected,
    /// The kernel reported an error to the socket's owner (`sk_err`).
    SocketError,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Armed,
        Kind::Fired,
        Kind::ProbeSent,
        Kind::PeerAnswered,
        Kind::KeepaliveTimeout,
        Kind::Disarmed,
        Kind::ResetSent,
        Kind::ResetReceived,
        Kind::Closed,
        Kind::FinReceived,
        Kind::FinSent,
        Kind::StaleReuse,
        Kind::IdleKillSuspected,
        Kind::SocketError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Armed => "armed",
            Kind::Fired => "fired",
            Kind::ProbeSent => "probe_sent",
            Kind::PeerAnswered => "peer_answered",
            Kind::KeepaliveTimeout => "keepalive_timeout",
            Kind::Disarmed => "disarmed",
            Kind::ResetSent => "reset_sent",
            Kind::ResetReceived => "reset_received",
            Kind::Closed => "closed",
            Kind::FinReceived => "fin_received",
            Kind::FinSent => "fin_sent",
            Kind::StaleReuse => "stale_reuse",
            Kind::IdleKillSuspected => "idle_kill_suspected",
            Kind::SocketError => "socket_error",
        }
    }

    /// One per connection, on every TCP connection: shown by `kato trace`
    /// only with `--closes`.
    pub fn is_lifecycle(self) -> bool {
        matches!(self, Kind::Closed | Kind::FinReceived | Kind::FinSent)
    }

    /// Did the keepalive timer run for this event?
    pub fn is_firing(self) -> bool {
        matches!(
            self,
            Kind::Fired | Kind::ProbeSent | Kind::PeerAnswered | Kind::KeepaliveTimeout
        )
    }
}

/// One derived event: its kind and the probe count that goes with it (for
/// `peer_answered`, how many probes were out before the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Derived {
    pub kind: Kind,
    pub probes: u8,
}

/// Upper bound on sockets whose probe count the deriver remembers; beyond
/// it the table is cleared (and counted), which can hide one peer_answered.
const DERIVER_CAPACITY: usize = 1 << 18;

/// Turns records into [`Kind`]s. Remembers, per socket, the probes that were
/// unanswered after its last timer run: if the next run starts at zero, the
/// peer answered in between (the ACK path resets `icsk_probes_out`).
#[derive(Default)]
pub struct Deriver {
    unanswered: HashMap<u64, u8>,
    /// Sockets whose keepalive timeout was already reported by the error
    /// report inside the timer run; their exit record adds nothing.
    timed_out: std::collections::HashSet<u64>,
    pub evictions: u64,
    /// (CONFIG_HZ, seconds): report `idle_kill_suspected` for resets and
    /// keepalive timeouts after at least this much idle time.
    idle_kill: Option<(u32, f64)>,
}

impl Deriver {
    pub fn with_idle_kill(hz: u32, min_secs: f64) -> Self {
        Self {
            idle_kill: Some((hz, min_secs)),
            ..Self::default()
        }
    }

    fn idle_kill(&self, rec: &Record) -> bool {
        self.idle_kill
            .is_some_and(|(hz, min)| rec.idle_secs(hz).is_some_and(|i| i >= min))
    }

    /// Appends the events `rec` stands for to `out`.
    pub fn derive(&mut self, rec: &Record, out: &mut Vec<Derived>) {
        let mut push = |kind, probes| out.push(Derived { kind, probes });
        match rec.kind {
            RecordKind::Armed => push(Kind::Armed, rec.probes_out),
            RecordKind::ResetSent => push(Kind::ResetSent, rec.probes_out),
            RecordKind::ResetReceived => {
                push(Kind::ResetReceived, rec.probes_out);
                if rec.state == TcpState::CloseWait && rec.sent_after_last_ack() {
                    push(Kind::StaleReuse, 0);
                } else if self.idle_kill(rec) {
                    push(Kind::IdleKillSuspected, 0);
                }
            }
            RecordKind::FinReceived => push(Kind::FinReceived, 0),
            RecordKind::FinSent => push(Kind::FinSent, 0),
            RecordKind::ErrorReport => {
                push(Kind::SocketError, rec.probes_out);
                // Reported from inside the timer run, before the socket can
                // go away: the reliable moment of a keepalive timeout. The
                // run's exit record is read after the callback, when a
                // closed socket may already be freed (seen under emulation).
                if rec.in_keepalive_timer && rec.sk_err == ETIMEDOUT {
                    push(Kind::KeepaliveTimeout, rec.probes_out);
                    if self.idle_kill(rec) {
                        push(Kind::IdleKillSuspected, 0);
                    }
                    if self.timed_out.len() >= DERIVER_CAPACITY {
                        self.timed_out.clear();
                    }
                    self.timed_out.insert(rec.sk);
                }
            }
            RecordKind::Closed => {
                self.unanswered.remove(&rec.sk);
                push(Kind::Closed, rec.probes_out);
            }
            RecordKind::Disarmed => {
                self.unanswered.remove(&rec.sk);
                push(Kind::Disarmed, rec.probes_out);
            }
            RecordKind::Fired => {
                if self.timed_out.remove(&rec.sk) {
                    self.unanswered.remove(&rec.sk);
                    return;
                }
                let before = self.unanswered.remove(&rec.sk).unwrap_or(0);
                let answered = before > 0 && rec.probes_before == 0;
                if answered {
                    push(Kind::PeerAnswered, before);
                }
                let closed = rec.state == TcpState::Close && rec.state_before != TcpState::Close;
                if closed && rec.sk_err == ETIMEDOUT {
                    push(Kind::KeepaliveTimeout, rec.probes_out);
                    if self.idle_kill(rec) {
                        push(Kind::IdleKillSuspected, 0);
                    }
                } else if rec.probes_out > rec.probes_before {
                    push(Kind::ProbeSent, rec.probes_out);
                } else if !answered {
                    push(Kind::Fired, rec.probes_out);
                }
                if rec.probes_out > 0 && rec.state != TcpState::Close {
                    if self.unanswered.len() >= DERIVER_CAPACITY {
                        self.evictions += self.unanswered.len() as u64;
                        self.unanswered.clear();
                    }
                    self.unanswered.insert(rec.sk, rec.probes_out);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn raw(kind: u32) -> RawEvent {
        RawEvent {
            kind,
            ts_ns: 1_000,
            sk: 0xffff_8880_0000_1000,
            jiffies: 1000,
            family: AF_INET,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 41234,
            dport: 8080,
            state: 1,
            state_before: 1,
            netns: 4026531840,
            ..Default::default()
        }
    }

    pub fn bytes(e: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is repr(C) plain data with explicit padding.
        unsafe { std::slice::from_raw_parts((e as *const RawEvent).cast::<u8>(), EVENT_SIZE) }
            .to_vec()
    }

    #[test]
    fn decodes_ipv4_armed_with_deadline() {
        let mut e = raw(kind::ARMED);
        e.flags = flags::TIMER_PENDING;
        e.expires = 1250;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(r.kind, RecordKind::Armed);
        assert_eq!(r.local, "127.0.0.1:41234".parse().unwrap());
        assert_eq!(r.remote, "127.0.0.2:8080".parse().unwrap());
        assert_eq!(r.state, TcpState::Established);
        assert_eq!(r.timer_remaining(250), Some(1.0));
        assert_eq!(r.reason, None);
    }

    /// The keepalive timeout comes from the error report inside the timer
    /// run; the run's exit record, read after the callback (possibly from a
    /// freed socket), adds nothing for that socket.
    #[test]
    fn keepalive_timeout_from_the_error_report_once() {
        let mut d = Deriver::default();
        let mut e = raw(kind::ERROR_REPORT);
        e.sk_err = ETIMEDOUT;
        e.flags = flags::IN_KEEPALIVE_TIMER;
        e.probes_out = 3;
        let mut out = vec![];
        d.derive(&Record::decode(&bytes(&e)).unwrap(), &mut out);
        assert_eq!(
            out.iter().map(|d| (d.kind, d.probes)).collect::<Vec<_>>(),
            [(Kind::SocketError, 3), (Kind::KeepaliveTimeout, 3)]
        );
        // A stale exit record (state read back as ESTABLISHED, no error).
        out.clear();
        d.derive(
            &Record::decode(&bytes(&raw(kind::FIRED))).unwrap(),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        // The next run of the same address is a new story.
        d.derive(
            &Record::decode(&bytes(&raw(kind::FIRED))).unwrap(),
            &mut out,
        );
        assert_eq!(
            out.iter().map(|d| d.kind).collect::<Vec<_>>(),
            [Kind::Fired]
        );
    }

    #[test]
    fn error_report_names_the_errno_and_the_timer() {
        let mut e = raw(kind::ERROR_REPORT);
        e.sk_err = ETIMEDOUT;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(r.kind, RecordKind::ErrorReport);
        assert_eq!(r.error_text(), "ETIMEDOUT (retransmits)");
        let mut out = vec![];
        Deriver::default().derive(&r, &mut out);
        assert_eq!(
            out.iter().map(|d| d.kind).collect::<Vec<_>>(),
            [Kind::SocketError]
        );
        e.flags = flags::IN_KEEPALIVE_TIMER;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(r.error_text(), "ETIMEDOUT (keepalive)");
        assert_eq!(
            r.reset_reason(|c| c.to_string()),
            None,
            "an error report is not a reset"
        );
        e.sk_err = 104;
        assert_eq!(
            Record::decode(&bytes(&e)).unwrap().error_text(),
            "ECONNRESET"
        );
        e.sk_err = 5;
        assert_eq!(Record::decode(&bytes(&e)).unwrap().error_text(), "errno 5");
    }

    /// Before 6.12 resets carry no reason; one sent from the socket's own
    /// keepalive timer while established is the keepalive timeout.
    #[test]
    fn reset_reason_inferred_only_from_the_keepalive_timer() {
        let name = |c: u32| format!("R{c}");
        let mut e = raw(kind::RESET_SENT);
        let plain = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(plain.reset_reason(name), None);
        e.flags = flags::IN_KEEPALIVE_TIMER;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert!(r.in_keepalive_timer);
        assert_eq!(
            r.reset_reason(name),
            Some(("TCP_KEEPALIVE_TIMEOUT".into(), true))
        );
        e.state = 5; // FIN_WAIT2: the timer's other reset
        assert_eq!(Record::decode(&bytes(&e)).unwrap().reset_reason(name), None);
        e.flags |= flags::HAS_REASON;
        e.reason = 15;
        assert_eq!(
            Record::decode(&bytes(&e)).unwrap().reset_reason(name),
            Some(("R15".into(), false)),
            "the kernel's word wins"
        );
        e.flags = 1 << 3;
        assert!(
            Record::decode(&bytes(&e)).is_err(),
            "unknown flag bits are errors"
        );
    }

    #[test]
    fn decodes_ipv6_reset_with_reason() {
        let mut e = raw(kind::RESET_SENT);
        e.family = AF_INET6;
        e.saddr = Ipv6Addr::LOCALHOST.octets();
        e.flags = flags::HAS_REASON;
        e.reason = 15;
        e.state = 7;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(r.local, "[::1]:41234".parse().unwrap());
        assert_eq!(r.reason, Some(15));
        assert_eq!(r.expires, None);
        assert_eq!(r.timer_remaining(250), None);
    }

    #[test]
    fn decodes_from_unaligned_buffer() {
        let e = raw(kind::FIRED);
        let mut buf = [0u8; EVENT_SIZE + 1];
        buf[1..].copy_from_slice(&bytes(&e));
        assert_eq!(Record::decode(&buf[1..]).unwrap().kind, RecordKind::Fired);
    }

    #[test]
    fn rejects_bad_records() {
        let good = bytes(&raw(kind::ARMED));
        assert_eq!(
            Record::decode(&good[..EVENT_SIZE - 1]),
            Err(DecodeError::Length(EVENT_SIZE - 1))
        );
        assert_eq!(Record::decode(&[]), Err(DecodeError::Length(0)));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            Record::decode(&long),
            Err(DecodeError::Length(EVENT_SIZE + 1))
        );
        for (field, want) in [
            (raw(0), DecodeError::Kind(0)),
            (raw(10), DecodeError::Kind(10)),
            (raw(99), DecodeError::Kind(99)),
            (
                RawEvent {
                    family: 1,
                    ..raw(kind::ARMED)
                },
                DecodeError::Family(1),
            ),
            (
                RawEvent {
                    state: 0,
                    ..raw(kind::ARMED)
                },
                DecodeError::State(0),
            ),
            (
                RawEvent {
                    state_before: 13,
                    ..raw(kind::ARMED)
                },
                DecodeError::State(13),
            ),
            (
                RawEvent {
                    flags: 1 << 7,
                    ..raw(kind::ARMED)
                },
                DecodeError::Flags(1 << 7),
            ),
        ] {
            assert_eq!(Record::decode(&bytes(&field)), Err(want));
        }
    }

    #[test]
    fn timer_remaining_across_jiffies_wrap() {
        let mut e = raw(kind::ARMED);
        e.flags = flags::TIMER_PENDING;
        e.jiffies = u64::MAX - 124;
        e.expires = 125; // 250 jiffies later, past the wrap
        assert_eq!(
            Record::decode(&bytes(&e)).unwrap().timer_remaining(250),
            Some(1.0)
        );
    }

    fn fired(probes_before: u8, probes_out: u8, state: u8, sk_err: i32) -> Record {
        let e = RawEvent {
            probes_before,
            probes_out,
            state,
            sk_err,
            ..raw(kind::FIRED)
        };
        Record::decode(&bytes(&e)).unwrap()
    }

    fn run(d: &mut Deriver, r: &Record) -> Vec<Kind> {
        let mut out = vec![];
        d.derive(r, &mut out);
        out.iter().map(|x| x.kind).collect()
    }

    #[test]
    fn peer_answered_carries_probes_needed() {
        let mut d = Deriver::default();
        let mut out = vec![];
        d.derive(&fired(0, 1, 1, 0), &mut out);
        d.derive(&fired(1, 2, 1, 0), &mut out);
        out.clear();
        d.derive(&fired(0, 0, 1, 0), &mut out);
        assert_eq!(
            out,
            [Derived {
                kind: Kind::PeerAnswered,
                probes: 2
            }]
        );
    }

    #[test]
    fn dead_peer_sequence() {
        let mut d = Deriver::default();
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(run(&mut d, &fired(1, 2, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(run(&mut d, &fired(2, 3, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(
            run(&mut d, &fired(3, 3, 7, ETIMEDOUT)),
            [Kind::KeepaliveTimeout]
        );
        assert!(d.unanswered.is_empty(), "closed socket forgotten");
    }

    #[test]
    fn healthy_peer_answers() {
        let mut d = Deriver::default();
        assert_eq!(run(&mut d, &fired(0, 0, 1, 0)), [Kind::Fired]);
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::ProbeSent]);
        // ACK reset probes_out to 0; the next run only re-arms.
        assert_eq!(run(&mut d, &fired(0, 0, 1, 0)), [Kind::PeerAnswered]);
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::ProbeSent]);
        // Answered and immediately idle long enough to probe again.
        assert_eq!(
            run(&mut d, &fired(0, 1, 1, 0)),
            [Kind::PeerAnswered, Kind::ProbeSent]
        );
    }

    #[test]
    fn close_without_etimedout_is_not_a_keepalive_timeout() {
        let mut d = Deriver::default();
        assert_eq!(run(&mut d, &fired(0, 0, 7, 0)), [Kind::Fired]);
        let e = RawEvent {
            probes_before: 3,
            probes_out: 3,
            state: 7,
            state_before: 7,
            sk_err: ETIMEDOUT,
            ..raw(kind::FIRED)
        };
        let already_closed = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(
            run(&mut d, &already_closed),
            [Kind::Fired],
            "closed before this run"
        );
    }

    #[test]
    fn resets_and_closes() {
        let mut d = Deriver::default();
        run(&mut d, &fired(0, 1, 1, 0));
        let mut e = raw(kind::RESET_RECEIVED);
        (e.lrcvtime, e.rcv_tstamp, e.lsndtime) = (500, 250, 999);
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(run(&mut d, &r), [Kind::ResetReceived]);
        assert_eq!(
            r.idle_secs(250),
            Some(2.0),
            "since the later of data (500) and ACK (250)"
        );
        assert_eq!(r.data_idle_secs(250), Some(0.004), "data sent at 999");
        let closed = Record::decode(&bytes(&RawEvent {
            state: 7,
            ..raw(kind::CLOSED)
        }))
        .unwrap();
        assert_eq!(run(&mut d, &closed), [Kind::Closed]);
        assert_eq!(closed.idle_secs(250), None);
        assert!(d.unanswered.is_empty(), "closed socket forgotten");
    }

    #[test]
    fn stale_reuse_and_idle_kills() {
        let mut d = Deriver::with_idle_kill(250, 3.0);
        // CLOSE_WAIT (FIN in, ACK at 400), data written at 900, RST back at 1000.
        let e = RawEvent {
            state: 8,
            lrcvtime: 300,
            rcv_tstamp: 400,
            lsndtime: 900,
            ..raw(kind::RESET_RECEIVED)
        };
        let stale = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(run(&mut d, &stale), [Kind::ResetReceived, Kind::StaleReuse]);
        assert_eq!(stale.reuse_gap_secs(250), 2.4);
        // ESTABLISHED, silent since 0 (4 s), our write at 999 met a RST: a NAT forgot us.
        let e = RawEvent {
            lrcvtime: 0,
            rcv_tstamp: 0,
            lsndtime: 999,
            ..raw(kind::RESET_RECEIVED)
        };
        assert_eq!(
            run(&mut d, &Record::decode(&bytes(&e)).unwrap()),
            [Kind::ResetReceived, Kind::IdleKillSuspected]
        );
        // Recently active: an ordinary reset.
        let e = RawEvent {
            lrcvtime: 900,
            rcv_tstamp: 900,
            ..raw(kind::RESET_RECEIVED)
        };
        assert_eq!(
            run(&mut d, &Record::decode(&bytes(&e)).unwrap()),
            [Kind::ResetReceived]
        );
        // Keepalive gave up after 4 s of silence.
        let e = RawEvent {
            probes_before: 3,
            probes_out: 3,
            state: 7,
            sk_err: 110,
            ..raw(kind::FIRED)
        };
        assert_eq!(
            run(&mut d, &Record::decode(&bytes(&e)).unwrap()),
            [Kind::KeepaliveTimeout, Kind::IdleKillSuspected]
        );
        // Off by default.
        let e = RawEvent {
            lsndtime: 999,
            ..raw(kind::RESET_RECEIVED)
        };
        assert_eq!(
            run(
                &mut Deriver::default(),
                &Record::decode(&bytes(&e)).unwrap()
            ),
            [Kind::ResetReceived]
        );
    }

    #[test]
    fn disarm_forgets_probes() {
        let mut d = Deriver::default();
        run(&mut d, &fired(0, 1, 1, 0));
        let dis = Record::decode(&bytes(&raw(kind::DISARMED))).unwrap();
        assert_eq!(run(&mut d, &dis), [Kind::Disarmed]);
        assert_eq!(run(&mut d, &fired(0, 0, 1, 0)), [Kind::Fired]);
    }
}
