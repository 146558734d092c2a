//! Which sockets and events the user asked to see, and in what order:
//! one filter for `kato sockets`, `kato trace` and the agent's `/sockets`.

use std::{cmp::Ordering, net::SocketAddr, str::FromStr};

use crate::{
    events::Observation,
    owner::Owner,
    policy::{Cidr, Risk},
    sockets::{compact::Compact, Socket},
    tcp::TcpState,
    workload::Workload,
};

/// What filters and sort keys read of a socket: the full model, or the
/// agent's compact table entry, which `/sockets` filters and sorts without
/// building a [`Socket`] per entry.
pub trait Listed {
    fn state(&self) -> TcpState;
    fn local(&self) -> SocketAddr;
    fn remote(&self) -> SocketAddr;
    fn pid(&self) -> Option<u32>;
    fn comm(&self) -> Option<&str>;
    fn netns(&self) -> u32;
    /// SO_KEEPALIVE, where the socket has keepalive settings at all.
    fn keepalive_on(&self) -> Option<bool>;
    fn workload(&self) -> Option<&Workload>;
    fn idle_s(&self) -> Option<f64>;
    fn timer_left_s(&self) -> f64;
    fn probes_unanswered(&self) -> u8;
}

impl Listed for Socket {
    fn state(&self) -> TcpState {
        self.state
    }
    fn local(&self) -> SocketAddr {
        self.local
    }
    fn remote(&self) -> SocketAddr {
        self.remote
    }
    fn pid(&self) -> Option<u32> {
        self.pid
    }
    fn comm(&self) -> Option<&str> {
        self.comm.as_deref()
    }
    fn netns(&self) -> u32 {
        self.netns
    }
    fn keepalive_on(&self) -> Option<bool> {
        self.keepalive.map(|k| k.enabled)
    }
    fn workload(&self) -> Option<&Workload> {
        self.workload.0.as_deref()
    }
    fn idle_s(&self) -> Option<f64> {
        self.idle_s
    }
    fn timer_left_s(&self) -> f64 {
        self.timer.remaining_s
    }
    fn probes_unanswered(&self) -> u8 {
        self.probes_unanswered
    }
}

impl Listed for Compact {
    fn state(&self) -> TcpState {
        self.state
    }
    fn local(&self) -> SocketAddr {
        Compact::local(self)
    }
    fn remote(&self) -> SocketAddr {
        Compact::remote(self)
    }
    fn pid(&self) -> Option<u32> {
        Compact::pid(self)
    }
    fn comm(&self) -> Option<&str> {
        Compact::comm(self)
    }
    fn netns(&self) -> u32 {
        self.netns
    }
    fn keepalive_on(&self) -> Option<bool> {
        self.keepalive_enabled()
    }
    fn workload(&self) -> Option<&Workload> {
        Compact::workload(self)
    }
    fn idle_s(&self) -> Option<f64> {
        Compact::idle_s(self)
    }
    fn timer_left_s(&self) -> f64 {
        Compact::timer_left_s(self)
    }
    fn probes_unanswered(&self) -> u8 {
        self.probes_unanswered
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub states: Vec<TcpState>,
    /// Local or remote port.
    pub ports: Vec<u16>,
    /// Local port (ss's `sport`), remote port (`dport`).
    #[serde(default)]
    pub sports: Vec<u16>,
    #[serde(default)]
    pub dports: Vec<u16>,
    /// Local or remote address, or network (`10.0.0.0/8`).
    pub addrs: Vec<Cidr>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub netns: Vec<u32>,
    /// SO_KEEPALIVE on (true) or off (false); sockets without a keepalive
    /// setting (TIME_WAIT, SYN_RECV) match neither.
    pub keepalive: Option<bool>,
    /// Idle-timeout risk classes.
    pub risks: Vec<Risk>,
    /// Kubernetes pod names, pod namespaces, container names, systemd units.
    pub pods: Vec<String>,
    pub pod_namespaces: Vec<String>,
    pub containers: Vec<String>,
    pub units: Vec<String>,
}

fn any<T>(v: &[T], f: impl Fn(&T) -> bool) -> bool {
    v.is_empty() || v.iter().any(f)
}

impl Filter {
    fn endpoints(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        any(&self.ports, |p| local.port() == *p || remote.port() == *p)
            && any(&self.sports, |p| local.port() == *p)
            && any(&self.dports, |p| remote.port() == *p)
            && any(&self.addrs, |c| {
                c.contains(local.ip()) || c.contains(remote.ip())
            })
    }

    fn owner(&self, pid: Option<u32>, comm: Option<&str>) -> bool {
        any(&self.pids, |p| pid == Some(*p)) && any(&self.comms, |c| comm == Some(c.as_str()))
    }

    /// The workload parts: a socket whose workload is unknown matches no
    /// workload filter.
    pub fn matches_workload(&self, w: Option<&Workload>) -> bool {
        let is = |want: &[String], got: Option<&String>| any(want, |x| got == Some(x));
        is(&self.pods, w.and_then(|w| w.pod.as_ref()))
            && is(
                &self.pod_namespaces,
                w.and_then(|w| w.pod_namespace.as_ref()),
            )
            && is(&self.containers, w.and_then(|w| w.container.as_ref()))
            && is(&self.units, w.and_then(|w| w.unit.as_ref()))
    }

    /// True when the filter needs the socket's owner to decide.
    pub fn needs_owner(&self) -> bool {
        !self.pids.is_empty() || !self.comms.is_empty()
    }

    /// Whether `s` passes; its risk class (a policy lookup) is asked for
    /// only when the filter has classes.
    pub fn matches(&self, s: &impl Listed, risk: impl FnOnce() -> Option<Risk>) -> bool {
        any(&self.states, |st| s.state() == *st)
            && self.endpoints(s.local(), s.remote())
            && self.owner(s.pid(), s.comm())
            && any(&self.netns, |n| s.netns() == *n)
            && self
                .keepalive
                .is_none_or(|want| s.keepalive_on() == Some(want))
            && self.matches_workload(s.workload())
            && (self.risks.is_empty() || risk().is_some_and(|r| self.risks.contains(&r)))
    }

    pub fn matches_event(&self, obs: &Observation<'_>) -> bool {
        let rec = obs.record;
        let owner: Option<&Owner> = obs.owner.as_ref();
        any(&self.states, |st| rec.state == *st)
            && self.endpoints(rec.local, rec.remote)
            && any(&self.netns, |n| rec.netns == *n)
            && self.owner(owner.map(|o| o.pid), owner.map(|o| &*o.comm))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SortKey {
    #[default]
    Local,
    Remote,
    State,
    Pid,
    /// Time left on the socket's timer.
    Timer,
    /// Seconds since the peer was last heard from (longest first).
    Idle,
    /// Unanswered keepalive probes (most first).
    Probes,
    /// The kernel's own order, as ss and netstat print: `kato sockets`
    /// then prints each socket as it is read, holding none.
    None,
}

impl FromStr for SortKey {
    type Err = crate::invalid::Invalid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "local" => SortKey::Local,
            "remote" => SortKey::Remote,
            "state" => SortKey::State,
            "pid" => SortKey::Pid,
            "timer" => SortKey::Timer,
            "idle" => SortKey::Idle,
            "probes" => SortKey::Probes,
            "none" => SortKey::None,
            _ => {
                return Err(crate::invalid::Invalid::unknown(
                    "sort key",
                    s,
                    "local, remote, state, pid, timer, idle, probes or none",
                ))
            }
        })
    }
}

/// An address in the order `SocketAddr` sorts in (IPv4 first, then IP, then
/// port), as plain integers.
type AddrKey = (bool, u128, u16);

fn addr_key(a: &SocketAddr) -> AddrKey {
    match a {
        SocketAddr::V4(v) => (false, u128::from(u32::from(*v.ip())), v.port()),
        SocketAddr::V6(v) => (true, u128::from(*v.ip()), v.port()),
    }
}

/// An address as one 48-bit integer in [`AddrKey`]'s order where it fits
/// (IPv4: address and port); every IPv6 address is [`ADDR_TIED`], after
/// all of them, and ties on it are broken on the full key (as are those
/// of 255.255.255.255:65535, which packs to the same value).
fn packed_addr(a: &SocketAddr) -> u64 {
    match a {
        SocketAddr::V4(v) => u64::from(u32::from(*v.ip())) << 16 | u64::from(v.port()),
        SocketAddr::V6(_) => ADDR_TIED,
    }
}

/// The packed address that needs the full key when tied.
const ADDR_TIED: u64 = (1 << 48) - 1;

/// `f64::total_cmp`'s order as an unsigned integer.
fn f64_key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | 1 << 63
    }
}

/// What a view sorts by: the key's primary, then local and remote address.
pub type Key = (u64, AddrKey, AddrKey);

/// A [`SortKey::packed`] key as held: all three words, or the last two
/// where the primary key is always 0 ([`SortKey::primary_free`]): 16
/// bytes a row instead of 24 for the default sort of a large listing.
pub trait PackedKey: Copy + Send + Sync {
    fn pack(k: [u64; 3]) -> Self;
    fn words(&self) -> [u64; 3];
}

impl PackedKey for [u64; 3] {
    fn pack(k: [u64; 3]) -> Self {
        k
    }
    fn words(&self) -> [u64; 3] {
        *self
    }
}

impl PackedKey for [u64; 2] {
    fn pack(k: [u64; 3]) -> Self {
        debug_assert_eq!(k[0], 0, "a primary-free sort");
        [k[1], k[2]]
    }
    fn words(&self) -> [u64; 3] {
        [0, self[0], self[1]]
    }
}

impl SortKey {
    /// The primary key and the two addresses in the order compared.
    fn parts(self, s: &impl Listed) -> (u64, SocketAddr, SocketAddr) {
        let idle = s.idle_s().unwrap_or(-1.0);
        let primary = match self {
            SortKey::Local | SortKey::None => 0,
            // Remote first, then local.
            SortKey::Remote => return (0, s.remote(), s.local()),
            SortKey::State => s.state() as u64,
            SortKey::Pid => s.pid().map_or(0, |p| u64::from(p) + 1),
            SortKey::Timer => f64_key(s.timer_left_s()),
            // Longest first, most first.
            SortKey::Idle => !f64_key(idle),
            SortKey::Probes => u64::from(u8::MAX - s.probes_unanswered()),
        };
        (primary, s.local(), s.remote())
    }

    /// The sort key of `s`: plain integers.
    pub fn key_of(self, s: &impl Listed) -> Key {
        let (primary, a, b) = self.parts(s);
        (primary, addr_key(&a), addr_key(&b))
    }

    /// [`SortKey::key_of`] and an item's index in 24 bytes, exact for
    /// IPv4: the primary key, both 48-bit addresses (see [`packed_addr`]),
    /// the index.
    pub fn packed(self, s: &impl Listed, i: u32) -> [u64; 3] {
        let (primary, a, b) = self.parts(s);
        let (a, b) = (packed_addr(&a), packed_addr(&b));
        [primary, a << 16 | b >> 32, b << 32 | u64::from(i)]
    }

    /// The index a [`SortKey::packed`] key holds.
    pub fn index(k: &impl PackedKey) -> u32 {
        k.words()[2] as u32
    }

    /// Is the primary key always 0 (the sorts by address, and none)?
    pub fn primary_free(self) -> bool {
        matches!(self, SortKey::Local | SortKey::Remote | SortKey::None)
    }

    /// Sorts packed keys ([`SortKey::packed`]): on the compact keys in one
    /// array, on the full key (`full` of an index) only where a packed
    /// address is tied (IPv6, and 255.255.255.255:65535, see
    /// [`packed_addr`]); equal keys in the order of their indices.
    pub fn sort_packed<K: PackedKey>(self, keys: &mut [K], full: impl Fn(u32) -> Key) {
        if self == SortKey::None {
            return;
        }
        let index = |k: &[u64; 3]| k[2] as u32;
        let second = |k: &[u64; 3]| (k[1] & 0xffff) << 32 | k[2] >> 32;
        let full = |ka: &[u64; 3], kb: &[u64; 3]| full(index(ka)).cmp(&full(index(kb)));
        keys.sort_unstable_by(|ka, kb| {
            let (ka, kb) = (&ka.words(), &kb.words());
            ka[0]
                .cmp(&kb[0])
                .then((ka[1] >> 16).cmp(&(kb[1] >> 16)))
                .then_with(|| {
                    // A tied first address says nothing of the full
                    // one: the rest is compared on the full key.
                    if ka[1] >> 16 == ADDR_TIED {
                        return full(ka, kb);
                    }
                    second(ka).cmp(&second(kb)).then_with(|| {
                        if second(ka) == ADDR_TIED {
                            full(ka, kb)
                        } else {
                            Ordering::Equal
                        }
                    })
                })
                .then(index(ka).cmp(&index(kb)))
        });
    }

    /// Sorts 100,000s of items by their sockets ([`SortKey::sort_packed`]),
    /// equal keys in their original order; then the items are moved into
    /// place once.
    pub fn sort<'s, T, S: Listed + 's>(self, items: &mut [T], socket: impl Fn(&T) -> &'s S) {
        if self == SortKey::None {
            return;
        }
        let mut order: Vec<[u64; 3]> = items
            .iter()
            .enumerate()
            .map(|(i, t)| self.packed(socket(t), i as u32))
            .collect();
        self.sort_packed(&mut order, |i| self.key_of(socket(&items[i as usize])));
        // Position i takes the item at index(order[i]): follow each
        // cycle, marking a placed position with its own index (the keys
        // are spent; no second array).
        let index = Self::index;
        for start in 0..order.len() {
            let mut at = start;
            while index(&order[at]) as usize != start {
                let next = index(&order[at]) as usize;
                items.swap(at, next);
                order[at][2] = at as u64;
                at = next;
            }
            order[at][2] = at as u64;
        }
    }
}

/// Keeps the items whose sockets match (`risk` classifies one, asked only
/// with `--risk`), sorted by their sockets. The items (a reference each)
/// are kept, not views: a view is ~100 bytes, made where it is printed,
/// and 100,000s of them held at once were a quarter of a listing's memory.
pub fn select<'a, T: Copy, S: Listed + 'a>(
    items: impl IntoIterator<Item = T>,
    socket: impl Fn(T) -> &'a S,
    risk: impl Fn(&S) -> Option<Risk>,
    filter: &Filter,
    sort: SortKey,
) -> Vec<T> {
    let mut v: Vec<T> = items
        .into_iter()
        .filter(|t| {
            let s = socket(*t);
            filter.matches(s, || risk(s))
        })
        .collect();
    sort.sort(&mut v, |t| socket(*t));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{
            fixture::{bytes, raw},
            Observation, Record,
        },
        policy::Policy,
        sockets::{tests::record, Socket},
    };
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

    fn ports(all: &[Socket], f: &Filter, sort: SortKey) -> Vec<u16> {
        let p = Policy::default();
        select(all.iter(), |s| s, |s| p.risk(s), f, sort)
            .iter()
            .map(|s| s.local.port())
            .collect()
    }

    #[test]
    fn the_packed_sort_is_a_stable_sort_on_the_full_key() {
        // IPv4 and IPv6 ends (the packed key ties every IPv6 one), the
        // address that packs like an IPv6 one, equal keys, each state.
        let addrs = [
            "10.0.0.1:80",
            "10.0.0.1:81",
            "255.255.255.255:65535",
            "[::1]:80",
            "[::1]:79",
            "[fe80::1]:80",
            "0.0.0.0:0",
            "10.0.0.2:80",
        ];
        let mut all = vec![];
        for (i, l) in addrs.iter().enumerate() {
            for (j, r) in addrs.iter().enumerate().step_by(2) {
                let mut s = sock(0, [1, 10, 6][(i + j) % 3], true, (i * 37 % 5) as u32);
                s.local = l.parse().unwrap();
                s.remote = r.parse().unwrap();
                s.probes_unanswered = (j % 3) as u8;
                all.push(s.clone());
                // The same key again: it stays after the first.
                s.inode = 7;
                all.push(s);
            }
        }
        for k in ["local", "remote", "state", "pid", "timer", "idle", "probes"] {
            let key: SortKey = k.parse().unwrap();
            let mut got: Vec<&Socket> = all.iter().collect();
            key.sort(&mut got, |s| *s);
            let mut want: Vec<&Socket> = all.iter().collect();
            want.sort_by_key(|s| key.key_of(*s));
            let id = |v: &[&Socket]| -> Vec<(SocketAddr, SocketAddr, u64)> {
                v.iter().map(|s| (s.local, s.remote, s.inode)).collect()
            };
            assert_eq!(id(&got), id(&want), "--sort {k}");
            if key.primary_free() {
                // The 16-byte keys of the address sorts order as the 24.
                let mut short: Vec<[u64; 2]> = all
                    .iter()
                    .enumerate()
                    .map(|(i, s)| PackedKey::pack(key.packed(s, i as u32)))
                    .collect();
                key.sort_packed(&mut short, |i| key.key_of(&all[i as usize]));
                let got: Vec<&Socket> = short
                    .iter()
                    .map(|k| &all[SortKey::index(k) as usize])
                    .collect();
                assert_eq!(id(&got), id(&want), "--sort {k}, 16-byte keys");
            }
        }
    }

    #[test]
    fn socket_filters() {
        let all = [
            sock(1, 1, true, 0),
            sock(2, 1, false, 0),
            sock(3, 10, false, 0),
        ];
        let q = |f: Filter| ports(&all, &f, SortKey::Local);
        assert_eq!(q(Filter::default()), [1, 2, 3]);
        assert_eq!(
            q(Filter {
                keepalive: Some(true),
                ..Default::default()
            }),
            [1]
        );
        assert_eq!(
            q(Filter {
                keepalive: Some(false),
                ..Default::default()
            }),
            [2, 3]
        );
        assert_eq!(
            q(Filter {
                states: vec![TcpState::Listen],
                ..Default::default()
            }),
            [3]
        );
        assert_eq!(
            q(Filter {
                ports: vec![2, 5432],
                ..Default::default()
            })
            .len(),
            3,
            "remote port matches too"
        );
        assert!(q(Filter {
            pids: vec![1],
            ..Default::default()
        })
        .is_empty());
        assert_eq!(
            q(Filter {
                addrs: vec!["::ffff:10.0.0.2".parse().unwrap()],
                ..Default::default()
            })
            .len(),
            3
        );
    }

    #[test]
    fn sorts() {
        let all = [
            sock(2, 1, true, 250),
            sock(1, 10, true, 1000),
            sock(3, 1, true, 500),
        ];
        let order = |k: &str| ports(&all, &Filter::default(), k.parse().unwrap());
        assert_eq!(order("local"), [1, 2, 3]);
        assert_eq!(order("state"), [2, 3, 1]);
        assert_eq!(
            order("idle"),
            [3, 2, 1],
            "longest idle first; LISTEN has none"
        );
        assert_eq!(order("none"), [2, 1, 3], "none: the order read");
        assert!("bogus"
            .parse::<SortKey>()
            .unwrap_err()
            .to_string()
            .contains("bogus"));
    }

    #[test]
    fn a_compact_entry_filters_and_sorts_as_its_socket() {
        let all = [
            sock(2, 1, true, 250),
            sock(1, 10, false, 1000),
            sock(3, 1, true, 500),
        ];
        let filters = [
            Filter::default(),
            Filter {
                keepalive: Some(true),
                ..Default::default()
            },
            Filter {
                states: vec![TcpState::Listen],
                ports: vec![1],
                ..Default::default()
            },
            Filter {
                pids: vec![1],
                ..Default::default()
            },
        ];
        for s in &all {
            let c = Compact::of(s);
            for f in &filters {
                assert_eq!(f.matches(s, || None), f.matches(&c, || None), "{f:?}");
            }
            for k in ["local", "remote", "state", "pid", "timer", "idle", "probes"] {
                let k: SortKey = k.parse().unwrap();
                assert_eq!(k.key_of(s), k.key_of(&c), "{k:?}");
            }
        }
    }

    fn matches(f: &Filter, owner: Option<Owner>) -> bool {
        let rec = Record::decode(&bytes(&raw(keepalive_common::kind::ARMED))).unwrap();
        let obs = Observation {
            record: &rec,
            events: &[],
            reset: None,
            error: None,
            idle_s: None,
            data_idle_s: None,
            closed: None,
            owner,
            hz: 250,
            reuse: None,
            peer: None,
            path_timeout_s: None,
        };
        f.matches_event(&obs)
    }

    #[test]
    fn sport_and_dport_are_one_end_each() {
        let l: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let r: SocketAddr = "10.0.0.2:5432".parse().unwrap();
        let f = |sports: Vec<u16>, dports: Vec<u16>| Filter {
            sports,
            dports,
            ..Default::default()
        };
        assert!(f(vec![40000], vec![]).endpoints(l, r));
        assert!(f(vec![], vec![5432]).endpoints(l, r));
        assert!(
            !f(vec![5432], vec![]).endpoints(l, r),
            "sport is the local end"
        );
        assert!(
            !f(vec![], vec![40000]).endpoints(l, r),
            "dport is the remote end"
        );
        assert!(f(vec![40000], vec![5432]).endpoints(l, r));
    }

    #[test]
    fn an_address_filter_takes_networks() {
        let s = |l: &str, r: &str| {
            (
                l.parse::<SocketAddr>().unwrap(),
                r.parse::<SocketAddr>().unwrap(),
            )
        };
        let f = |a: &str| Filter {
            addrs: vec![a.parse().unwrap()],
            ..Default::default()
        };
        let (l, r) = s("10.1.2.3:40000", "192.168.0.9:5432");
        assert!(f("10.0.0.0/8").endpoints(l, r));
        assert!(f("192.168.0.0/16").endpoints(l, r));
        assert!(f("192.168.0.9").endpoints(l, r));
        assert!(!f("10.1.2.4").endpoints(l, r));
        assert!(!f("172.16.0.0/12").endpoints(l, r));
        // IPv4-mapped IPv6 ends are their IPv4 addresses.
        let (l, r) = s("[::ffff:10.1.2.3]:40000", "[::1]:5432");
        assert!(f("10.0.0.0/8").endpoints(l, r));
        assert!(f("::1").endpoints(l, r));
        assert!("10.0.0.0/40".parse::<Cidr>().is_err());
    }

    #[test]
    fn event_filters_match_either_end_and_need_owners() {
        let f = |ports: Vec<u16>, addrs: Vec<&str>| Filter {
            ports,
            addrs: addrs.into_iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        };
        assert!(matches(&Filter::default(), None));
        assert!(matches(&f(vec![8080], vec![]), None));
        assert!(matches(&f(vec![41234], vec![]), None));
        assert!(!matches(&f(vec![22], vec![]), None));
        assert!(matches(&f(vec![], vec!["127.0.0.2"]), None));
        assert!(matches(&f(vec![], vec!["::ffff:127.0.0.1"]), None));
        assert!(
            !matches(&f(vec![8080], vec!["10.0.0.1"]), None),
            "all filters must hold"
        );
        let by_pid = Filter {
            pids: vec![42],
            ..Default::default()
        };
        assert!(by_pid.needs_owner());
        assert!(!matches(&by_pid, None));
        let curl = Owner {
            pid: 42,
            comm: "curl".into(),
        };
        assert!(matches(&by_pid, Some(curl.clone())));
        let wget = Filter {
            comms: vec!["wget".into()],
            ..Default::default()
        };
        assert!(!matches(&wget, Some(curl)));
        assert!(!matches(
            &Filter {
                netns: vec![1],
                ..Default::default()
            },
            None
        ));
    }
}
