//! Which sockets to show and in what order: shared by `kato sockets` and the
//! agent's `/sockets` endpoint.

use std::{cmp::Ordering, net::IpAddr, str::FromStr};

use super::Socket;
use crate::tcp::TcpState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Local,
    Remote,
    State,
    Pid,
    /// Time left on the socket's timer.
    Timer,
    /// Seconds since the peer was last heard from.
    Idle,
    /// Unanswered keepalive probes (most first).
    Probes,
}

impl FromStr for SortKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "local" => SortKey::Local,
            "remote" => SortKey::Remote,
            "state" => SortKey::State,
            "pid" => SortKey::Pid,
            "timer" => SortKey::Timer,
            "idle" => SortKey::Idle,
            "probes" => SortKey::Probes,
            _ => return Err(format!("unknown sort key `{s}` (expected local, remote, state, pid, timer, idle or probes)")),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Query {
    pub states: Vec<TcpState>,
    /// Local or remote port.
    pub ports: Vec<u16>,
    /// Local or remote address.
    pub addrs: Vec<IpAddr>,
    pub pids: Vec<u32>,
    pub netns: Vec<u32>,
    /// SO_KEEPALIVE on (true) or off (false); sockets without a keepalive
    /// setting (TIME_WAIT, SYN_RECV) match neither.
    pub keepalive: Option<bool>,
    /// Idle-timeout risk classes (sockets must be annotated by a policy).
    pub risks: Vec<crate::policy::Risk>,
    pub sort: SortKey,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Query {
    pub fn matches(&self, s: &Socket) -> bool {
        fn any<T>(v: &[T], f: impl Fn(&T) -> bool) -> bool {
            v.is_empty() || v.iter().any(f)
        }
        any(&self.states, |st| s.state == *st)
            && any(&self.ports, |p| {
                s.local.port() == *p || s.remote.port() == *p
            })
            && any(&self.addrs, |a| {
                let a = canonical(*a);
                canonical(s.local.ip()) == a || canonical(s.remote.ip()) == a
            })
            && any(&self.pids, |p| s.pid == Some(*p))
            && any(&self.netns, |n| s.netns == *n)
            && self
                .keepalive
                .is_none_or(|want| s.keepalive.is_some_and(|k| k.enabled == want))
            && any(&self.risks, |r| s.risk == Some(*r))
    }

    fn compare(&self, a: &Socket, b: &Socket) -> Ordering {
        let f = |x: Option<f64>| x.unwrap_or(-1.0);
        let primary = match self.sort {
            SortKey::Local => a.local.cmp(&b.local),
            SortKey::Remote => a.remote.cmp(&b.remote),
            SortKey::State => a.state.cmp(&b.state),
            SortKey::Pid => a.pid.cmp(&b.pid),
            SortKey::Timer => a.timer.remaining_s.total_cmp(&b.timer.remaining_s),
            SortKey::Idle => f(b.idle_s).total_cmp(&f(a.idle_s)),
            SortKey::Probes => b.probes_unanswered.cmp(&a.probes_unanswered),
        };
        primary
            .then_with(|| a.local.cmp(&b.local))
            .then_with(|| a.remote.cmp(&b.remote))
    }

    /// Keeps the matching sockets, sorted.
    pub fn apply(&self, mut sockets: Vec<Socket>) -> Vec<Socket> {
        sockets.retain(|s| self.matches(s));
        sockets.sort_by(|a, b| self.compare(a, b));
        sockets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::tests::record;
    use keepalive_common::{sock_flags, SockRecord};

    fn sock(sport: u16, state: u8, ka: bool, idle_ago: u32) -> Socket {
        let flags = sock_flags::FULL | if ka { sock_flags::KEEPALIVE_ON } else { 0 };
        let r = SockRecord {
            sport,
            state,
            flags,
            rcv_tstamp: 100_000 - idle_ago,
            lrcvtime: 0,
            ..record()
        };
        Socket::from_record(&r, 250, None).unwrap()
    }

    #[test]
    fn filters() {
        let all = vec![
            sock(1, 1, true, 0),
            sock(2, 1, false, 0),
            sock(3, 10, false, 0),
        ];
        let q = |q: Query| {
            q.apply(all.clone())
                .iter()
                .map(|s| s.local.port())
                .collect::<Vec<_>>()
        };
        assert_eq!(q(Query::default()), [1, 2, 3]);
        assert_eq!(
            q(Query {
                keepalive: Some(true),
                ..Default::default()
            }),
            [1]
        );
        assert_eq!(
            q(Query {
                keepalive: Some(false),
                ..Default::default()
            }),
            [2, 3]
        );
        assert_eq!(
            q(Query {
                states: vec![TcpState::Listen],
                ..Default::default()
            }),
            [3]
        );
        assert_eq!(
            q(Query {
                ports: vec![2, 5432],
                ..Default::default()
            })
            .len(),
            3,
            "remote port matches too"
        );
        assert_eq!(
            q(Query {
                pids: vec![1],
                ..Default::default()
            }),
            Vec::<u16>::new()
        );
        assert_eq!(
            q(Query {
                addrs: vec!["::ffff:10.0.0.2".parse().unwrap()],
                ..Default::default()
            })
            .len(),
            3
        );
    }

    #[test]
    fn sorts() {
        let all = vec![
            sock(2, 1, true, 250),
            sock(1, 10, true, 1000),
            sock(3, 1, true, 500),
        ];
        let order = |k: &str| {
            let q = Query {
                sort: k.parse().unwrap(),
                ..Default::default()
            };
            q.apply(all.clone())
                .iter()
                .map(|s| s.local.port())
                .collect::<Vec<_>>()
        };
        assert_eq!(order("local"), [1, 2, 3]);
        assert_eq!(order("state"), [2, 3, 1]);
        assert_eq!(
            order("idle"),
            [3, 2, 1],
            "longest idle first; LISTEN has none"
        );
        assert!("bogus".parse::<SortKey>().unwrap_err().contains("bogus"));
    }
}
