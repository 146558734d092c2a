//! A [`Socket`] as the agent's table and a one-shot listing keep it: the
//! same facts in 176 bytes instead of 288 (addresses as bytes, optional
//! numbers as sentinels, seconds as milliseconds (whole seconds from 24.8
//! days on), keepalive settings as packed bits), so that a node's
//! 100,000s of sockets cost little memory each. [`Compact::socket`] gives
//! the [`Socket`] back for views.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use super::{row::Row, Effective, Keepalive, Socket, Timer, TimerKind, ValueSource};
use crate::{conntrack::Tracked, owner::Owner, tcp::TcpState, workload::Workload};

pub mod packed;

/// Bits of [`Compact::bits`].
mod bit {
    pub const V6: u16 = 1 << 0;
    pub const PID: u16 = 1 << 1;
    pub const KEEPALIVE: u16 = 1 << 2;
    pub const KA_ENABLED: u16 = 1 << 3;
    pub const IDLE_FROM_SOCKET: u16 = 1 << 4;
    pub const INTVL_FROM_SOCKET: u16 = 1 << 5;
    pub const COUNT_FROM_SOCKET: u16 = 1 << 6;
    pub const USER_TIMEOUT: u16 = 1 << 7;
    pub const COOKIE: u16 = 1 << 8;
    pub const CGROUP: u16 = 1 << 9;
    pub const IDLE: u16 = 1 << 10;
    pub const LAST_RECV: u16 = 1 << 11;
    pub const LAST_SENT: u16 = 1 << 12;
    pub const SIDE: u16 = 1 << 13;
    pub const SERVER: u16 = 1 << 14;
    pub const SEGS: u16 = 1 << 15;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Compact {
    pub sock: u64,
    cookie: u64,
    cgroup_id: u64,
    inode: u64,
    workload: Option<Arc<Workload>>,
    comm: Option<Arc<str>>,
    local_ip: [u8; 16],
    remote_ip: [u8; 16],
    pub netns: u32,
    uid: u32,
    recv_q: u32,
    send_q: u32,
    pid: u32,
    /// Time left on the timer, idle, since data in, since data out, as
    /// [`ms`] keeps them: milliseconds (jiffies at HZ 100, 250 or 1000 are
    /// whole ones), whole seconds from 24.8 days on.
    timer_ms: u32,
    idle_ms: u32,
    recv_ms: u32,
    sent_ms: u32,
    ka_idle_s: u32,
    ka_intvl_s: u32,
    user_timeout_ms: u32,
    segs_in: u32,
    segs_out: u32,
    conntrack: Option<Tracked>,
    local_port: u16,
    remote_port: u16,
    bits: u16,
    pub state: TcpState,
    timer_kind: TimerKind,
    timer_retransmits: u8,
    timer_probes: u8,
    pub probes_unanswered: u8,
    retransmits: u8,
    ka_count: u8,
    /// Which keepalive values `kato protect` set (1 idle, 2 interval).
    from_kato: u8,
}

pub const COMPACT_SIZE: usize = 176;
const _: () = assert!(size_of::<Compact>() == COMPACT_SIZE);

/// The top bit of a kept time: the rest is whole seconds, not milliseconds.
const IN_SECONDS: u32 = 1 << 31;

/// Seconds kept in 32 bits: to the millisecond below 2^31 ms (24.8 days),
/// to the second beyond (the kernel's 32-bit jiffies reach 99 days idle
/// at HZ 250): a zombie idle for months shows its months, not a cap.
fn ms(s: f64) -> u32 {
    // `as` saturates (and takes NaN to 0).
    let ms = (s * 1000.0).round() as u64;
    if ms < u64::from(IN_SECONDS) {
        ms as u32
    } else {
        IN_SECONDS | (s.round() as u32).min(IN_SECONDS - 1)
    }
}

fn secs(kept: u32) -> f64 {
    if kept & IN_SECONDS != 0 {
        f64::from(kept & !IN_SECONDS)
    } else {
        f64::from(kept) / 1000.0
    }
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    }
}

impl Compact {
    pub fn of(s: &Socket) -> Self {
        let mut bits = 0u16;
        let mut set = |b: u16, on: bool| {
            if on {
                bits |= b;
            }
        };
        set(bit::V6, s.local.is_ipv6());
        set(bit::PID, s.pid.is_some());
        set(bit::COOKIE, s.cookie.is_some());
        set(bit::CGROUP, s.cgroup_id.is_some());
        set(bit::IDLE, s.idle_s.is_some());
        set(bit::LAST_RECV, s.last_data_recv_s.is_some());
        set(bit::LAST_SENT, s.last_data_sent_s.is_some());
        set(bit::SIDE, s.side.is_some());
        set(bit::SERVER, s.side == Some(super::Side::Server));
        set(bit::SEGS, s.segs_in.is_some());
        let (mut ka_idle_s, mut ka_intvl_s, mut ka_count, mut user_timeout_ms) = (0, 0, 0, 0);
        let mut from_kato = 0u8;
        if let Some(k) = &s.keepalive {
            set(bit::KEEPALIVE, true);
            set(bit::KA_ENABLED, k.enabled);
            set(
                bit::IDLE_FROM_SOCKET,
                k.idle_s.source != ValueSource::Sysctl,
            );
            set(
                bit::INTVL_FROM_SOCKET,
                k.interval_s.source != ValueSource::Sysctl,
            );
            from_kato = u8::from(k.idle_s.source == ValueSource::Kato)
                | (u8::from(k.interval_s.source == ValueSource::Kato) << 1);
            set(
                bit::COUNT_FROM_SOCKET,
                k.count.source == ValueSource::Socket,
            );
            set(bit::USER_TIMEOUT, k.user_timeout_ms.is_some());
            ka_idle_s = k.idle_s.value;
            ka_intvl_s = k.interval_s.value;
            // TCP_KEEPCNT and tcp_keepalive_probes are u8 in the kernel.
            ka_count = u8::try_from(k.count.value).unwrap_or(u8::MAX);
            user_timeout_ms = k.user_timeout_ms.unwrap_or(0);
        }
        Compact {
            sock: s.sock,
            cookie: s.cookie.unwrap_or(0),
            cgroup_id: s.cgroup_id.unwrap_or(0),
            inode: s.inode,
            workload: s.workload.0.clone(),
            comm: s.comm.clone(),
            local_ip: ip_bytes(s.local.ip()),
            remote_ip: ip_bytes(s.remote.ip()),
            netns: s.netns,
            uid: s.uid,
            recv_q: s.recv_q,
            send_q: s.send_q,
            pid: s.pid.unwrap_or(0),
            timer_ms: ms(s.timer.remaining_s),
            idle_ms: s.idle_s.map_or(0, ms),
            recv_ms: s.last_data_recv_s.map_or(0, ms),
            sent_ms: s.last_data_sent_s.map_or(0, ms),
            ka_idle_s,
            ka_intvl_s,
            user_timeout_ms,
            segs_in: s.segs_in.unwrap_or(0),
            segs_out: s.segs_out.unwrap_or(0),
            conntrack: s.conntrack,
            local_port: s.local.port(),
            remote_port: s.remote.port(),
            bits,
            state: s.state,
            timer_kind: s.timer.kind,
            timer_retransmits: s.timer.retransmits,
            timer_probes: s.timer.probes,
            probes_unanswered: s.probes_unanswered,
            retransmits: s.retransmits,
            ka_count,
            from_kato,
        }
    }

    fn has(&self, b: u16) -> bool {
        self.bits & b != 0
    }

    fn addr(&self, ip: [u8; 16], port: u16) -> SocketAddr {
        let ip = if self.has(bit::V6) {
            IpAddr::V6(Ipv6Addr::from(ip))
        } else {
            IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
        };
        SocketAddr::new(ip, port)
    }

    pub fn local(&self) -> SocketAddr {
        self.addr(self.local_ip, self.local_port)
    }

    pub fn remote(&self) -> SocketAddr {
        self.addr(self.remote_ip, self.remote_port)
    }

    pub fn comm(&self) -> Option<&str> {
        self.comm.as_deref()
    }

    pub fn comm_arc(&self) -> Option<Arc<str>> {
        self.comm.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.has(bit::PID).then_some(self.pid)
    }

    pub fn workload(&self) -> Option<&Workload> {
        self.workload.as_deref()
    }

    /// Seconds since the peer was last heard from, where known.
    pub fn idle_s(&self) -> Option<f64> {
        self.has(bit::IDLE).then(|| secs(self.idle_ms))
    }

    /// Seconds left on the socket's timer (as [`Socket`]'s `timer`).
    pub fn timer_left_s(&self) -> f64 {
        secs(self.timer_ms)
    }

    /// SO_KEEPALIVE, where the socket has keepalive settings at all.
    pub fn keepalive_enabled(&self) -> Option<bool> {
        self.has(bit::KEEPALIVE).then(|| self.has(bit::KA_ENABLED))
    }

    pub fn set_cookie(&mut self, cookie: Option<u64>) {
        if let Some(c) = cookie {
            self.cookie = c;
            self.bits |= bit::COOKIE;
        }
    }

    /// The socket cookie, where one was generated.
    pub fn socket_cookie(&self) -> Option<u64> {
        self.has(bit::COOKIE).then_some(self.cookie)
    }

    pub fn has_cookie(&self) -> bool {
        self.has(bit::COOKIE)
    }

    /// The local port, once the record knows it (0 while closing).
    pub fn set_local(&mut self, local: SocketAddr) {
        self.local_ip = ip_bytes(local.ip());
        self.local_port = local.port();
    }

    /// The keepalive timer as an event saw it (`None`: not pending).
    pub fn set_keepalive_timer(&mut self, remaining_s: Option<f64>, probes: u8) {
        match remaining_s {
            Some(left) => {
                self.timer_kind = TimerKind::Keepalive;
                self.timer_ms = ms(left.max(0.0));
            }
            None => {
                self.timer_kind = TimerKind::Off;
                self.timer_ms = 0;
            }
        }
        self.timer_probes = probes;
    }

    /// The [`Socket`] this was made from (times to the millisecond, to the second from 24.8 days on).
    pub fn socket(&self) -> Socket {
        let opt = |b: u16, v: f64| self.has(b).then_some(v);
        let setting = |b: u16, value: u32| Effective {
            value,
            source: if self.has(b) {
                ValueSource::Socket
            } else {
                ValueSource::Sysctl
            },
        };
        let kato = |b: u8, s: Effective| {
            if self.from_kato & b != 0 {
                Effective {
                    source: ValueSource::Kato,
                    ..s
                }
            } else {
                s
            }
        };
        let local = self.local();
        Socket {
            cookie: self.has(bit::COOKIE).then_some(self.cookie),
            cgroup_id: self.has(bit::CGROUP).then_some(self.cgroup_id),
            workload: crate::workload::Named(self.workload.clone()),
            sock: self.sock,
            netns: self.netns,
            proto: if local.is_ipv4() { "tcp" } else { "tcp6" },
            local,
            remote: self.remote(),
            state: self.state,
            recv_q: self.recv_q,
            send_q: self.send_q,
            uid: self.uid,
            inode: self.inode,
            pid: self.has(bit::PID).then_some(self.pid),
            comm: self.comm.clone(),
            timer: Timer {
                kind: self.timer_kind,
                remaining_s: secs(self.timer_ms),
                retransmits: self.timer_retransmits,
                probes: self.timer_probes,
            },
            keepalive: self.has(bit::KEEPALIVE).then(|| Keepalive {
                enabled: self.has(bit::KA_ENABLED),
                idle_s: kato(1, setting(bit::IDLE_FROM_SOCKET, self.ka_idle_s)),
                interval_s: kato(2, setting(bit::INTVL_FROM_SOCKET, self.ka_intvl_s)),
                count: setting(bit::COUNT_FROM_SOCKET, u32::from(self.ka_count)),
                user_timeout_ms: self.has(bit::USER_TIMEOUT).then_some(self.user_timeout_ms),
            }),
            probes_unanswered: self.probes_unanswered,
            retransmits: self.retransmits,
            idle_s: opt(bit::IDLE, secs(self.idle_ms)),
            last_data_recv_s: opt(bit::LAST_RECV, secs(self.recv_ms)),
            last_data_sent_s: opt(bit::LAST_SENT, secs(self.sent_ms)),
            conntrack: self.conntrack,
            side: self
                .has(bit::SIDE)
                .then(|| super::Side::of_passive(self.has(bit::SERVER))),
            segs_in: self.has(bit::SEGS).then_some(self.segs_in),
            segs_out: self.has(bit::SEGS).then_some(self.segs_out),
        }
    }

    /// Server or client end, where known.
    pub fn side(&self) -> Option<super::Side> {
        self.has(bit::SIDE)
            .then(|| super::Side::of_passive(self.has(bit::SERVER)))
    }

    /// Segments in and out together (wrapping): equal in two snapshots
    /// when nothing passed; None where unknown.
    pub fn segments(&self) -> Option<u32> {
        self.has(bit::SEGS)
            .then(|| self.segs_in.wrapping_add(self.segs_out))
    }

    /// The flow's conntrack entry, where one was found.
    pub fn conntrack(&self) -> Option<Tracked> {
        self.conntrack
    }

    /// Keepalive probes outstanding on the keepalive timer (a zero-window
    /// probe timer counts its own probes in the same kernel field).
    pub fn keepalive_probing(&self) -> bool {
        self.probes_unanswered > 0
            && self.timer_kind == TimerKind::Keepalive
            && self.has(bit::KA_ENABLED)
    }
}

impl Row for Compact {
    fn of(s: Socket) -> Self {
        Compact::of(&s)
    }
    fn whole(&self) -> Cow<'_, Socket> {
        Cow::Owned(self.socket())
    }
    fn sk(&self) -> u64 {
        self.sock
    }
    fn set_owner(&mut self, o: Owner) {
        (self.pid, self.comm) = (o.pid, Some(o.comm));
        self.bits |= bit::PID;
    }
    fn cgroup(&self) -> Option<u64> {
        self.has(bit::CGROUP).then_some(self.cgroup_id)
    }
    fn set_workload(&mut self, w: Arc<Workload>) {
        self.workload = Some(w);
    }
    fn flow(&self) -> (TcpState, SocketAddr, SocketAddr) {
        (self.state, self.local(), self.remote())
    }
    fn set_conntrack(&mut self, t: Option<Tracked>) {
        self.conntrack = t;
    }
    fn mark_protected(&mut self, after: impl Fn(u64) -> Option<(u32, u32)>) {
        if !self.has(bit::COOKIE) || self.keepalive_enabled() != Some(true) {
            return;
        }
        let Some((idle, intvl)) = after(self.cookie) else {
            return;
        };
        // Kato's where the socket's own setting equals what protect set.
        if self.has(bit::IDLE_FROM_SOCKET) && self.ka_idle_s == idle {
            self.from_kato |= 1;
        }
        if self.has(bit::INTVL_FROM_SOCKET) && self.ka_intvl_s == intvl {
            self.from_kato |= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conntrack::CtState,
        owner::Owner,
        sockets::tests::{record, timewait},
        workload::{Named, Workload},
    };
    use keepalive_common::SockRecord;

    /// A socket with every optional part known (also `packed`'s fixture).
    pub(super) fn full() -> Socket {
        let owner = Owner {
            pid: 812,
            comm: "postgres".into(),
        };
        let mut s = Socket::from_record(
            &SockRecord {
                cookie: 77,
                cgroup_id: 9,
                user_timeout: 3000,
                ka_probes: 4,
                retransmits: 2,
                probes_out: 1,
                ..record()
            },
            250,
            Some(&owner),
        )
        .unwrap();
        s.workload = Named(Some(Arc::new(Workload {
            unit: Some("postgres.service".into()),
            ..Workload::default()
        })));
        s.conntrack = Some(Tracked {
            remaining_s: 431_990,
            state: CtState::Established,
            netns: 4026532000,
        });
        s
    }

    #[test]
    fn a_socket_comes_back_whole() {
        let s = full();
        assert!(s.keepalive.is_some() && s.idle_s.is_some() && s.pid.is_some());
        assert_eq!(Compact::of(&s).socket(), s);
        let tw = timewait();
        assert_eq!(Compact::of(&tw).socket(), tw);
    }

    #[test]
    fn ipv6_and_unknown_fields_come_back_too() {
        let mut s = full();
        s.local = "[2001:db8::1]:443".parse().unwrap();
        s.remote = "[::ffff:10.0.0.2]:40000".parse().unwrap();
        s.proto = "tcp6";
        s.cookie = None;
        s.cgroup_id = None;
        s.pid = None;
        s.comm = None;
        s.idle_s = None;
        s.conntrack = None;
        s.keepalive = s.keepalive.map(|k| Keepalive {
            user_timeout_ms: None,
            ..k
        });
        assert_eq!(Compact::of(&s).socket(), s);
    }

    #[test]
    fn seconds_keep_their_milliseconds() {
        let mut s = full();
        s.idle_s = Some(381.996);
        s.timer.remaining_s = 7198.14;
        let back = Compact::of(&s).socket();
        assert_eq!(
            (back.idle_s, back.timer.remaining_s),
            (Some(381.996), 7198.14)
        );
    }

    #[test]
    fn months_idle_keep_their_seconds() {
        let day: f64 = 86_400.0;
        // Just under 2^31 ms to the millisecond; beyond, to the second, up
        // to what 32-bit jiffies reach at HZ 100 (248 days).
        for (idle, kept) in [
            (2_147_483.647, 2_147_483.647),
            (2_147_483.647_5, 2_147_484.0),
            (60.0 * day + 0.4, 60.0 * day),
            (99.4 * day, (99.4 * day).round()),
            (248.6 * day, (248.6 * day).round()),
        ] {
            let mut s = full();
            s.idle_s = Some(idle);
            s.last_data_recv_s = Some(idle);
            let back = Compact::of(&s).socket();
            assert_eq!(
                (back.idle_s, back.last_data_recv_s),
                (Some(kept), Some(kept)),
                "{idle}"
            );
        }
        // The sort keys and filters read the same.
        let mut s = full();
        s.idle_s = Some(60.0 * day);
        assert_eq!(Compact::of(&s).idle_s(), Some(60.0 * day));
        s.idle_s = Some(f64::MAX);
        assert_eq!(Compact::of(&s).idle_s(), Some(f64::from(IN_SECONDS - 1)));
        // The order holds across the switch (sort keys are made from these).
        let at = |idle| {
            let mut s = full();
            s.idle_s = Some(idle);
            Compact::of(&s).idle_s().unwrap()
        };
        assert!(at(2_147_483.646) < at(2_147_483.9));
        assert!(at(2_147_483.9) < at(2_147_485.1));
        // Timers set from events take the same path.
        let mut c = Compact::of(&full());
        c.set_keepalive_timer(Some(30.0 * day + 0.7), 0);
        assert_eq!(c.timer_left_s(), (30.0 * day + 0.7).round());
        assert_eq!(c.socket().timer.remaining_s, (30.0 * day + 0.7).round());
        c.set_keepalive_timer(Some(7198.14), 0);
        assert_eq!(c.timer_left_s(), 7198.14);
    }

    fn protected_socket() -> Socket {
        let mut s = Socket::from_record(&record(), 250, None).unwrap();
        s.cookie = Some(77);
        s.keepalive = Some(Keepalive {
            enabled: true,
            idle_s: Effective {
                value: 30,
                source: ValueSource::Socket,
            },
            interval_s: Effective {
                value: 75,
                source: ValueSource::Sysctl,
            },
            count: Effective {
                value: 9,
                source: ValueSource::Sysctl,
            },
            user_timeout_ms: None,
        });
        s
    }

    /// Every step of a census gives the same socket on either row.
    #[test]
    fn both_rows_take_a_census_alike() {
        let mut full = protected_socket();
        let mut compact = <Compact as Row>::of(protected_socket());
        assert_eq!(full.sk(), compact.sk());
        assert_eq!(full.flow(), compact.flow());
        assert_eq!(Row::cgroup(&full), Row::cgroup(&compact));
        let owner = Owner {
            pid: 42,
            comm: "redis".into(),
        };
        Row::set_owner(&mut full, owner.clone());
        Row::set_owner(&mut compact, owner);
        let w = Arc::new(Workload::default());
        Row::set_workload(&mut full, Arc::clone(&w));
        Row::set_workload(&mut compact, w);
        let t = Some(Tracked {
            remaining_s: 12,
            state: CtState::Established,
            netns: 9,
        });
        Row::set_conntrack(&mut full, t);
        Row::set_conntrack(&mut compact, t);
        // Protect set the idle time to 30 s: the socket's own 30 is kato's;
        // the interval equals, but comes from the sysctl: not kato's.
        let protect = |c: u64| (c == 77).then_some((30, 75));
        full.mark_protected(protect);
        compact.mark_protected(protect);
        assert_eq!(full.keepalive.unwrap().idle_s.source, ValueSource::Kato);
        assert_eq!(
            full.keepalive.unwrap().interval_s.source,
            ValueSource::Sysctl
        );
        assert_eq!(compact.socket(), full);
    }

    #[test]
    fn protect_marks_nothing_without_keepalive_on_or_a_match() {
        for (enabled, cookie) in [(false, 77), (true, 78)] {
            let mut s = protected_socket();
            s.keepalive.as_mut().unwrap().enabled = enabled;
            s.cookie = Some(cookie);
            let mut c = <Compact as Row>::of(s.clone());
            let protect = |c: u64| (c == 77).then_some((30, 75));
            s.mark_protected(protect);
            c.mark_protected(protect);
            assert_eq!(s.keepalive.unwrap().idle_s.source, ValueSource::Socket);
            assert_eq!(c.socket(), s);
        }
    }
}
