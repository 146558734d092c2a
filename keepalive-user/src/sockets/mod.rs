//! The per-socket keepalive model: what the kernel said about one TCP
//! socket, built from an iterator record (and, in the agent, kept current by
//! events). Counters and risk verdicts live beside it (`table`, `policy`).

pub mod compact;
pub mod diag;
pub mod owners;
pub mod row;
pub mod snapshot;
pub mod stream;
pub mod table;
pub mod tally;

use std::net::SocketAddr;

use keepalive_common::{sock_flags, SockRecord};
use serde::Serialize;

use crate::{
    events::record::{addr, AF_INET, AF_INET6},
    jiffies,
    owner::Owner,
    tcp::TcpState,
};

/// Which timer a socket has running, as `netstat -o` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    Off,
    /// Retransmit, loss probe or reordering timer (`ss`: `on`).
    On,
    Keepalive,
    TimeWait,
    /// Zero-window probe timer (`ss`: `persist`).
    Probe,
}

impl TimerKind {
    pub fn netstat_name(self) -> &'static str {
        match self {
            TimerKind::Off => "off",
            TimerKind::On => "on",
            TimerKind::Keepalive => "keepalive",
            TimerKind::TimeWait => "timewait",
            TimerKind::Probe => "probe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timer {
    pub kind: TimerKind,
    /// Seconds until it fires (0 when off or overdue).
    pub remaining_s: f64,
    pub retransmits: u8,
    /// Unanswered probes (keepalive or zero-window).
    pub probes: u8,
}

/// Which end of a connection a socket is, as the kernel knows it: accepted
/// from a listener (the server's end, its local port the service's) or
/// opened by connect() (the client's, the remote port the service's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Server,
    Client,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }

    /// The end a socket or record is: the kernel's passive-open mark.
    pub fn of_passive(passive: bool) -> Self {
        if passive {
            Side::Server
        } else {
            Side::Client
        }
    }
}

/// Where an effective keepalive setting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueSource {
    /// setsockopt (TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT) on the socket.
    Socket,
    /// The socket's network namespace sysctl `net.ipv4.tcp_keepalive_*`.
    Sysctl,
    /// Set on the socket by `kato protect` (the application set nothing
    /// this tight).
    Kato,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub value: u32,
    pub source: ValueSource,
}

impl Effective {
    fn pick(own: u32, sysctl: u32) -> Self {
        if own != 0 {
            Effective {
                value: own,
                source: ValueSource::Socket,
            }
        } else {
            Effective {
                value: sysctl,
                source: ValueSource::Sysctl,
            }
        }
    }
}

/// The keepalive configuration in force on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Keepalive {
    /// SO_KEEPALIVE.
    pub enabled: bool,
    /// Idle seconds before the first probe (TCP_KEEPIDLE).
    pub idle_s: Effective,
    /// Seconds between probes (TCP_KEEPINTVL).
    pub interval_s: Effective,
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    pub count: Effective,
    /// TCP_USER_TIMEOUT in milliseconds, when set (it overrides the count).
    pub user_timeout_ms: Option<u32>,
}

/// What kato knows about one TCP socket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Socket {
    /// The socket cookie: a stable identity without kernel addresses, the
    /// one `ss -e` prints (in hex) as `sk:` (null where none is known).
    pub cookie: Option<u64>,
    /// The socket's cgroup v2 id: who created it (null where unknown).
    pub cgroup_id: Option<u64>,
    /// The unit, container or pod behind that cgroup (`workload`).
    #[serde(flatten)]
    pub workload: crate::workload::Named,
    /// Kernel socket address: kato's key, never shown by default
    /// (`--show-kernel-addresses`, root, CLI only).
    #[serde(skip)]
    pub sock: u64,
    pub netns: u32,
    /// `tcp` or `tcp6`, as netstat prints it.
    pub proto: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub recv_q: u32,
    pub send_q: u32,
    pub uid: u32,
    pub inode: u64,
    pub pid: Option<u32>,
    pub comm: Option<std::sync::Arc<str>>,
    pub timer: Timer,
    /// None for TIME_WAIT and SYN_RECV request sockets.
    pub keepalive: Option<Keepalive>,
    /// Keepalive probes sent and not yet answered (`icsk_probes_out`).
    pub probes_unanswered: u8,
    pub retransmits: u8,
    /// Seconds since anything (data or ACK) was last received: the idle time
    /// keepalive measures.
    pub idle_s: Option<f64>,
    /// Seconds since data was last received.
    pub last_data_recv_s: Option<f64>,
    /// Seconds since data was last sent.
    pub last_data_sent_s: Option<f64>,
    /// The flow's conntrack entry in the socket's namespace (null when
    /// untracked, or conntrack is not in use there).
    pub conntrack: Option<crate::conntrack::Tracked>,
    /// Server or client end (null where unknown: listeners, TIME_WAIT and
    /// request sockets, sock_diag).
    pub side: Option<Side>,
    /// Segments received and sent so far, keepalive probes and their
    /// answers included (null where unknown): two snapshots with the same
    /// counts prove nothing passed either way in between.
    pub segs_in: Option<u32>,
    pub segs_out: Option<u32>,
}

impl Socket {
    /// A socket known only by identity, state and timer: what sock_diag or a
    /// lone event tells. Everything else is unknown (None) or zero.
    pub fn bare(
        sock: u64,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        state: TcpState,
        inode: u64,
        timer: Timer,
    ) -> Self {
        Socket {
            cookie: None,
            cgroup_id: None,
            workload: crate::workload::Named::default(),
            sock,
            netns,
            proto: if local.is_ipv4() { "tcp" } else { "tcp6" },
            local,
            remote,
            state,
            recv_q: 0,
            send_q: 0,
            uid: 0,
            inode,
            pid: None,
            comm: None,
            timer,
            keepalive: None,
            probes_unanswered: timer.probes,
            retransmits: timer.retransmits,
            idle_s: None,
            last_data_recv_s: None,
            last_data_sent_s: None,
            conntrack: None,
            side: None,
            segs_in: None,
            segs_out: None,
        }
    }
}

/// ICSK_TIME_* (include/net/inet_connection_sock.h).
const ICSK_TIME_RETRANS: u8 = 1;
const ICSK_TIME_PROBE0: u8 = 3;
const ICSK_TIME_LOSS_PROBE: u8 = 5;
const ICSK_TIME_REO_TIMEOUT: u8 = 6;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
}

/// Jiffies from `from` to `to` (64-bit), as seconds, never negative.
fn secs_until(from: u64, to: u64, hz: u32) -> f64 {
    jiffies::until64(from, to, hz).max(0.0)
}

use jiffies::since32 as secs_since32;

impl Socket {
    /// Builds the model from an iterator record; `owner` from `iter/task_file`.
    pub fn from_record(
        r: &SockRecord,
        hz: u32,
        owner: Option<&Owner>,
    ) -> Result<Self, RecordError> {
        if r.family != AF_INET && r.family != AF_INET6 {
            return Err(RecordError::Family(r.family));
        }
        let state = TcpState::from_raw(r.state).ok_or(RecordError::State(r.state))?;
        let full = r.flags & sock_flags::FULL != 0;
        let rto_left = if r.flags & sock_flags::RTO_PENDING != 0 {
            secs_until(r.jiffies, r.rto_expires, hz)
        } else {
            0.0
        };
        let timewait = r.flags & sock_flags::TIMEWAIT != 0;
        let timer = match state {
            _ if timewait => Timer {
                kind: TimerKind::TimeWait,
                remaining_s: rto_left,
                retransmits: 0,
                probes: 0,
            },
            TcpState::NewSynRecv => Timer {
                kind: if r.flags & sock_flags::RTO_PENDING != 0 {
                    TimerKind::On
                } else {
                    TimerKind::Off
                },
                remaining_s: rto_left,
                retransmits: r.retransmits,
                probes: 0,
            },
            _ => {
                let (kind, remaining_s) = match r.icsk_pending {
                    ICSK_TIME_RETRANS | ICSK_TIME_LOSS_PROBE | ICSK_TIME_REO_TIMEOUT => {
                        (TimerKind::On, rto_left)
                    }
                    ICSK_TIME_PROBE0 => (TimerKind::Probe, rto_left),
                    _ if r.flags & sock_flags::KA_PENDING != 0 => (
                        TimerKind::Keepalive,
                        secs_until(r.jiffies, r.ka_expires, hz),
                    ),
                    _ => (TimerKind::Off, 0.0),
                };
                Timer {
                    kind,
                    remaining_s,
                    retransmits: r.retransmits,
                    probes: r.probes_out,
                }
            }
        };
        let keepalive = full.then(|| Keepalive {
            enabled: r.flags & sock_flags::KEEPALIVE_ON != 0,
            idle_s: Effective::pick(r.ka_time / hz, r.sysctl_ka_time / hz),
            interval_s: Effective::pick(r.ka_intvl / hz, r.sysctl_ka_intvl / hz),
            count: Effective::pick(r.ka_probes.into(), r.sysctl_ka_probes.into()),
            user_timeout_ms: (r.user_timeout != 0).then_some(r.user_timeout),
        });
        let connected = full && !matches!(state, TcpState::Listen);
        let last_rx = jiffies::later32(r.lrcvtime, r.rcv_tstamp);
        Ok(Socket {
            cookie: (r.cookie != 0).then_some(r.cookie),
            cgroup_id: (r.cgroup_id != 0).then_some(r.cgroup_id),
            workload: crate::workload::Named::default(),
            sock: r.sk,
            netns: r.netns,
            proto: if r.family == AF_INET { "tcp" } else { "tcp6" },
            local: addr(r.family, r.saddr, r.sport),
            remote: addr(r.family, r.daddr, r.dport),
            state,
            recv_q: r.rx_queue,
            send_q: r.tx_queue,
            uid: r.uid,
            inode: r.ino,
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| std::sync::Arc::clone(&o.comm)),
            timer,
            keepalive,
            probes_unanswered: if full { r.probes_out } else { 0 },
            retransmits: r.retransmits,
            idle_s: connected.then(|| secs_since32(r.jiffies, last_rx, hz)),
            last_data_recv_s: connected.then(|| secs_since32(r.jiffies, r.lrcvtime, hz)),
            last_data_sent_s: connected.then(|| secs_since32(r.jiffies, r.lsndtime, hz)),
            conntrack: None,
            side: (full && state != TcpState::Listen)
                .then(|| Side::of_passive(r.flags & sock_flags::PASSIVE != 0)),
            segs_in: full.then_some(r.segs_in),
            segs_out: full.then_some(r.segs_out),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TIME_WAIT mini-socket: no keepalive settings, no idle time.
    pub fn timewait() -> Socket {
        let r = SockRecord {
            state: 6,
            flags: sock_flags::TIMEWAIT,
            ..record()
        };
        Socket::from_record(&r, 250, None).unwrap()
    }

    pub fn record() -> SockRecord {
        SockRecord {
            sk: 0xffff_8880_1234_0000,
            ino: 4242,
            jiffies: 100_000,
            ka_expires: 100_000 + 250 * 7198 + 35,
            family: AF_INET,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000,
            dport: 5432,
            state: 1,
            flags: sock_flags::FULL | sock_flags::KEEPALIVE_ON | sock_flags::KA_PENDING,
            sysctl_ka_time: 7200 * 250,
            sysctl_ka_intvl: 75 * 250,
            sysctl_ka_probes: 9,
            ka_intvl: 10 * 250,
            lrcvtime: 100_000 - 500,
            rcv_tstamp: 100_000 - 250,
            lsndtime: 100_000 - 1000,
            netns: 4026531840,
            ..Default::default()
        }
    }

    #[test]
    fn keepalive_socket_like_netstat() {
        let s = Socket::from_record(&record(), 250, None).unwrap();
        assert_eq!(s.proto, "tcp");
        assert_eq!(s.local, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(s.timer.netstat(), "keepalive (7198.14/0/0)");
        let ka = s.keepalive.unwrap();
        assert!(ka.enabled);
        assert_eq!(
            ka.idle_s,
            Effective {
                value: 7200,
                source: ValueSource::Sysctl
            }
        );
        assert_eq!(
            ka.interval_s,
            Effective {
                value: 10,
                source: ValueSource::Socket
            }
        );
        assert_eq!(
            (ka.idle_s.short(), ka.interval_s.short(), ka.count.short()),
            ("7200*".into(), "10".into(), "9*".into())
        );
        assert_eq!(
            s.idle_s,
            Some(1.0),
            "since the later of data (2 s) and ACK (1 s)"
        );
        assert_eq!(s.last_data_recv_s, Some(2.0));
        assert_eq!(s.last_data_sent_s, Some(4.0));
    }

    #[test]
    fn retransmit_timer_wins_over_keepalive() {
        let r = SockRecord {
            icsk_pending: ICSK_TIME_RETRANS,
            retransmits: 3,
            rto_expires: 100_050,
            flags: record().flags | sock_flags::RTO_PENDING,
            ..record()
        };
        assert_eq!(
            Socket::from_record(&r, 250, None).unwrap().timer.netstat(),
            "on (0.20/3/0)"
        );
        let r = SockRecord {
            icsk_pending: ICSK_TIME_PROBE0,
            probes_out: 2,
            ..r
        };
        assert_eq!(
            Socket::from_record(&r, 250, None).unwrap().timer.netstat(),
            "probe (0.20/3/2)"
        );
    }

    #[test]
    fn keepalive_off_and_overdue_timer() {
        let r = SockRecord {
            flags: sock_flags::FULL,
            ..record()
        };
        let s = Socket::from_record(&r, 250, None).unwrap();
        assert_eq!(s.timer.netstat(), "off (0.00/0/0)");
        assert!(!s.keepalive.unwrap().enabled);
        let r = SockRecord {
            ka_expires: 99_000,
            ..record()
        };
        assert_eq!(
            Socket::from_record(&r, 250, None)
                .unwrap()
                .timer
                .remaining_s,
            0.0
        );
    }

    #[test]
    fn time_wait_and_request_sockets() {
        let tw = SockRecord {
            state: 6,
            flags: sock_flags::RTO_PENDING | sock_flags::TIMEWAIT,
            rto_expires: 100_000 + 250 * 59 + 210,
            ..record()
        };
        let s = Socket::from_record(&tw, 250, None).unwrap();
        assert_eq!(s.timer.netstat(), "timewait (59.84/0/0)");
        assert_eq!((s.keepalive, s.idle_s), (None, None));
        // An orphaned FIN_WAIT2 lives on as a TIME_WAIT mini-socket.
        let fw2 = SockRecord { state: 5, ..tw };
        let s = Socket::from_record(&fw2, 250, None).unwrap();
        assert_eq!(
            (s.state, s.timer.kind),
            (TcpState::FinWait2, TimerKind::TimeWait)
        );
        let syn = SockRecord {
            state: 12,
            flags: sock_flags::RTO_PENDING,
            rto_expires: 100_250,
            retransmits: 1,
            ..record()
        };
        assert_eq!(
            Socket::from_record(&syn, 250, None)
                .unwrap()
                .timer
                .netstat(),
            "on (1.00/1/0)"
        );
    }

    #[test]
    fn ipv6_and_bad_records() {
        let r = SockRecord {
            family: AF_INET6,
            saddr: std::net::Ipv6Addr::LOCALHOST.octets(),
            ..record()
        };
        let s = Socket::from_record(&r, 250, None).unwrap();
        assert_eq!((s.proto, s.local), ("tcp6", "[::1]:40000".parse().unwrap()));
        assert_eq!(
            Socket::from_record(
                &SockRecord {
                    family: 1,
                    ..record()
                },
                250,
                None
            ),
            Err(RecordError::Family(1))
        );
        assert_eq!(
            Socket::from_record(
                &SockRecord {
                    state: 0,
                    ..record()
                },
                250,
                None
            ),
            Err(RecordError::State(0))
        );
    }
}
