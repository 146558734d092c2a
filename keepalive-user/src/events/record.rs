//! Ring-buffer records: raw bytes decoded into a typed, validated
//! [`Record`], and the times a record's jiffies stamps say.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keepalive_common::{flags, kind, Event as RawEvent, EVENT_SIZE};
use thiserror::Error;

use crate::{jiffies, owner::Owner, tcp::TcpState};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
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
    /// The socket cookie, where one was generated already (`ss -e`'s `sk:`).
    pub cookie: Option<u64>,
    /// The socket's cgroup v2 id (None where the kernel keeps none).
    pub cgroup_id: Option<u64>,
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
    /// A reset sent in reply to a segment (not an active reset).
    pub reply: bool,
    /// A TIME_WAIT or request mini-socket, or none (`sk` 0): nothing but
    /// the 4-tuple, the state, the namespace and the cookie was read.
    pub mini: bool,
    /// The owner had closed (or shut down reading) when the record was
    /// taken: data arriving now makes the kernel abort the socket.
    pub rcv_shut: bool,
    /// Accepted from a listener (passive open): the server's end.
    pub passive: bool,
    /// The owner the kernel saw in the socket's own system calls.
    pub owner: Option<Owner>,
    /// Error reports: when the oldest unacknowledged data first left (ms
    /// of CLOCK_MONOTONIC, low 32 bits).
    pub first_unacked_ms: Option<u32>,
    /// Bytes written and not acknowledged (resets received, error
    /// reports, FINs).
    pub unacked: u32,
    /// A reply reset: the flags of the segment it answered.
    pub seg_flags: u8,
    /// Set by the pipeline on a reply reset that followed the kernel's own
    /// `tcp_reset()` of the same socket: it aborted the socket for data
    /// that arrived after its owner closed (TCPAbortOnData).
    pub local_abort: bool,
}

/// TCP header flag bits (`seg_flags`).
pub const TCP_SYN: u8 = 0x02;

/// A socket address from a record's family, 16 address bytes (IPv4 in the
/// first 4) and host-order port.
pub fn addr(family: u16, bytes: [u8; 16], port: u16) -> SocketAddr {
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
        if raw.flags & !flags::ALL != 0 {
            return Err(DecodeError::Flags(raw.flags));
        }
        let state = TcpState::from_raw(raw.state).ok_or(DecodeError::State(raw.state))?;
        let state_before =
            TcpState::from_raw(raw.state_before).ok_or(DecodeError::State(raw.state_before))?;
        Ok(Record {
            kind,
            ts_ns: raw.ts_ns,
            sk: raw.sk,
            cookie: (raw.cookie != 0).then_some(raw.cookie),
            cgroup_id: (raw.cgroup_id != 0).then_some(raw.cgroup_id),
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
            reply: raw.flags & flags::REPLY != 0,
            mini: raw.flags & flags::MINI_SOCK != 0,
            rcv_shut: raw.flags & flags::RCV_SHUT != 0,
            passive: raw.flags & flags::PASSIVE != 0,
            owner: (raw.flags & flags::OWNER != 0).then(|| Owner {
                pid: raw.tgid,
                comm: crate::text::comm(&raw.comm).into(),
            }),
            first_unacked_ms: (kind == RecordKind::ErrorReport && raw.first_unacked_ms != 0)
                .then_some(raw.first_unacked_ms),
            unacked: raw.unacked,
            seg_flags: raw.seg_flags,
            local_abort: false,
        })
    }

    fn has_stamps(&self) -> bool {
        // A connection that never got its SYN-ACK has no peer to have
        // heard from, and "since" would be the time since boot. Its error
        // report comes after tcp_done (state CLOSE either side): there,
        // stamps still zero (tcp_finish_connect sets them) tell.
        let connected = self.state_before != TcpState::SynSent
            && self.state != TcpState::SynSent
            && !(self.kind == RecordKind::ErrorReport
                && (self.rcv_tstamp, self.lrcvtime) == (0, 0));
        !self.mini
            && connected
            && matches!(
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
        jiffies::since32(self.jiffies, stamp, hz)
    }

    /// Seconds since the peer was last heard from (data or ACK): the idle
    /// time keepalive measures (`keepalive_time_elapsed()`).
    pub fn idle_secs(&self, hz: u32) -> Option<f64> {
        self.has_stamps()
            .then(|| self.since(jiffies::later32(self.lrcvtime, self.rcv_tstamp), hz))
    }

    /// Seconds since data last moved either way: how long a connection sat
    /// idle (e.g. before a FIN).
    pub fn data_idle_secs(&self, hz: u32) -> Option<f64> {
        self.has_stamps()
            .then(|| self.since(jiffies::later32(self.lrcvtime, self.lsndtime), hz))
    }

    /// Seconds between the last data received and the last data sent: for a
    /// stale reuse, how long the connection sat idle before the write.
    pub fn reuse_gap_secs(&self, hz: u32) -> f64 {
        jiffies::between32(self.lrcvtime, self.lsndtime, hz)
    }

    /// An error report's unacknowledged data: seconds between the peer
    /// last being heard from and that data first leaving. A send after a
    /// silence this long that never got through.
    pub fn silence_before_send_secs(&self, hz: u32) -> Option<f64> {
        let first = self.first_unacked_ms?;
        let now_ms = (self.ts_ns / 1_000_000) as u32;
        let sent_ago = f64::from(now_ms.wrapping_sub(first)) / 1000.0;
        let heard_ago = self.idle_secs(hz)?;
        // A clock kato misreads (microsecond timestamps) gives nonsense.
        (sent_ago <= heard_ago).then_some(heard_ago - sent_ago)
    }

    /// Seconds until the keepalive timer fires, from the record's own clock.
    pub fn timer_remaining(&self, hz: u32) -> Option<f64> {
        Some(jiffies::until64(self.jiffies, self.expires?, hz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::fixture::{bytes, raw};
    use keepalive_common::{flags, kind, Event as RawEvent};

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
    fn a_refused_connect_has_no_idle_time() {
        let mut e = raw(kind::ERROR_REPORT);
        e.state_before = 2; // SYN_SENT
        e.state = 7;
        e.lrcvtime = 0;
        e.rcv_tstamp = 0;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!((r.idle_secs(250), r.data_idle_secs(250)), (None, None));
        e.state_before = 7; // CLOSE: the error reported after tcp_done
        let r = Record::decode(&bytes(&e)).unwrap();
        assert_eq!(r.idle_secs(250), None, "zero stamps: never connected");
        e.state_before = 1;
        e.rcv_tstamp = 900;
        let r = Record::decode(&bytes(&e)).unwrap();
        assert!(r.idle_secs(250).is_some(), "an established one has");
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
                    flags: 1 << 8,
                    ..raw(kind::ARMED)
                },
                DecodeError::Flags(1 << 8),
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
}
