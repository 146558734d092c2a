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
    /// Jiffies since the peer was last heard from (fired, resets).
    pub rx_idle: u32,
}

fn addr(family: u16, bytes: [u8; 16], port: u16) -> SocketAddr {
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
            k => return Err(DecodeError::Kind(k)),
        };
        if raw.family != AF_INET && raw.family != AF_INET6 {
            return Err(DecodeError::Family(raw.family));
        }
        if raw.flags & !(flags::TIMER_PENDING | flags::HAS_REASON) != 0 {
            return Err(DecodeError::Flags(raw.flags));
        }
        let state = TcpState::from_raw(raw.state).ok_or(DecodeError::State(raw.state))?;
        let state_before = TcpState::from_raw(raw.state_before).ok_or(DecodeError::State(raw.state_before))?;
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
            rx_idle: raw.rx_idle,
        })
    }

    /// Seconds since the peer was last heard from, for the kinds that carry it.
    pub fn idle_secs(&self, hz: u32) -> Option<f64> {
        matches!(self.kind, RecordKind::Fired | RecordKind::ResetSent | RecordKind::ResetReceived)
            .then(|| f64::from(self.rx_idle) / f64::from(hz))
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
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Armed,
        Kind::Fired,
        Kind::ProbeSent,
        Kind::PeerAnswered,
        Kind::KeepaliveTimeout,
        Kind::Disarmed,
        Kind::ResetSent,
        Kind::ResetReceived,
        Kind::Closed,
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
        }
    }

    /// Did the keepalive timer run for this event?
    pub fn is_firing(self) -> bool {
        matches!(self, Kind::Fired | Kind::ProbeSent | Kind::PeerAnswered | Kind::KeepaliveTimeout)
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
    pub evictions: u64,
}

impl Deriver {
    /// Appends the events `rec` stands for to `out`.
    pub fn derive(&mut self, rec: &Record, out: &mut Vec<Derived>) {
        let mut push = |kind, probes| out.push(Derived { kind, probes });
        match rec.kind {
            RecordKind::Armed => push(Kind::Armed, rec.probes_out),
            RecordKind::ResetSent => push(Kind::ResetSent, rec.probes_out),
            RecordKind::ResetReceived => push(Kind::ResetReceived, rec.probes_out),
            RecordKind::Closed => {
                self.unanswered.remove(&rec.sk);
                push(Kind::Closed, rec.probes_out);
            }
            RecordKind::Disarmed => {
                self.unanswered.remove(&rec.sk);
                push(Kind::Disarmed, rec.probes_out);
            }
            RecordKind::Fired => {
                let before = self.unanswered.remove(&rec.sk).unwrap_or(0);
                let answered = before > 0 && rec.probes_before == 0;
                if answered {
                    push(Kind::PeerAnswered, before);
                }
                let closed = rec.state == TcpState::Close && rec.state_before != TcpState::Close;
                if closed && rec.sk_err == ETIMEDOUT {
                    push(Kind::KeepaliveTimeout, rec.probes_out);
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
        unsafe { std::slice::from_raw_parts((e as *const RawEvent).cast::<u8>(), EVENT_SIZE) }.to_vec()
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
        assert_eq!(Record::decode(&good[..EVENT_SIZE - 1]), Err(DecodeError::Length(EVENT_SIZE - 1)));
        assert_eq!(Record::decode(&[]), Err(DecodeError::Length(0)));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Record::decode(&long), Err(DecodeError::Length(EVENT_SIZE + 1)));
        for (field, want) in [
            (raw(0), DecodeError::Kind(0)),
            (raw(7), DecodeError::Kind(7)),
            (raw(99), DecodeError::Kind(99)),
            (RawEvent { family: 1, ..raw(kind::ARMED) }, DecodeError::Family(1)),
            (RawEvent { state: 0, ..raw(kind::ARMED) }, DecodeError::State(0)),
            (RawEvent { state_before: 13, ..raw(kind::ARMED) }, DecodeError::State(13)),
            (RawEvent { flags: 1 << 7, ..raw(kind::ARMED) }, DecodeError::Flags(1 << 7)),
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
        assert_eq!(Record::decode(&bytes(&e)).unwrap().timer_remaining(250), Some(1.0));
    }

    fn fired(probes_before: u8, probes_out: u8, state: u8, sk_err: i32) -> Record {
        let e = RawEvent { probes_before, probes_out, state, sk_err, ..raw(kind::FIRED) };
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
        assert_eq!(out, [Derived { kind: Kind::PeerAnswered, probes: 2 }]);
    }

    #[test]
    fn dead_peer_sequence() {
        let mut d = Deriver::default();
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(run(&mut d, &fired(1, 2, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(run(&mut d, &fired(2, 3, 1, 0)), [Kind::ProbeSent]);
        assert_eq!(run(&mut d, &fired(3, 3, 7, ETIMEDOUT)), [Kind::KeepaliveTimeout]);
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
        assert_eq!(run(&mut d, &fired(0, 1, 1, 0)), [Kind::PeerAnswered, Kind::ProbeSent]);
    }

    #[test]
    fn close_without_etimedout_is_not_a_keepalive_timeout() {
        let mut d = Deriver::default();
        assert_eq!(run(&mut d, &fired(0, 0, 7, 0)), [Kind::Fired]);
        let e = RawEvent { probes_before: 3, probes_out: 3, state: 7, state_before: 7, sk_err: ETIMEDOUT, ..raw(kind::FIRED) };
        let already_closed = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(run(&mut d, &already_closed), [Kind::Fired], "closed before this run");
    }

    #[test]
    fn resets_and_closes() {
        let mut d = Deriver::default();
        run(&mut d, &fired(0, 1, 1, 0));
        let mut e = raw(kind::RESET_RECEIVED);
        e.rx_idle = 500;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(run(&mut d, &r), [Kind::ResetReceived]);
        assert_eq!(r.idle_secs(250), Some(2.0));
        let closed = Record::decode(&bytes(&RawEvent { state: 7, ..raw(kind::CLOSED) })).unwrap();
        assert_eq!(run(&mut d, &closed), [Kind::Closed]);
        assert_eq!(closed.idle_secs(250), None);
        assert!(d.unanswered.is_empty(), "closed socket forgotten");
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
