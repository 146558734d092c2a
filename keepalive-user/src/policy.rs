//! Middlebox idle-timeout policy: how long NATs, load balancers and
//! firewalls on a path keep an idle flow (AWS NLB 350 s, Azure 4 min, GCP
//! 10 min, IPVS 900 s), and whether each socket's keepalive beats it.
//!
//! A rule is `[CIDR][:PORT]=DURATION` (`10.0.0.0/8:5432=350s`, `:443=4m`,
//! `[2001:db8::/32]:443=60s`), or a bare `DURATION` for every path. A rule
//! matches a socket when the CIDR holds the remote address and the port is
//! the remote port (a client's path) or the local port (a server behind a
//! load balancer). The most specific rule wins: a port beats no port, then
//! the longer prefix.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Serialize;

use crate::{duration, sockets::Socket};

/// A network (`10.0.0.0/8`) or one address (`10.0.0.5`: /32, /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        Cidr::parse(s)
    }
}

use crate::{invalid::Invalid, ip::canonical};

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr = canonical(
            a.parse::<IpAddr>()
                .map_err(|_| Invalid::not_a(a, "an IP address"))?,
        );
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(|| {
                Invalid::not_a(format!("/{p}"), format!("a prefix length (0 to {max})"))
            })?
        };
        Ok(Cidr { addr, prefix })
    }

    /// The network address (IPv4 for IPv4 networks).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length, in the address family's own bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// One address (/32 or /128).
    pub fn host(ip: IpAddr) -> Self {
        let addr = canonical(ip);
        Cidr {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        if self.prefix == 0 {
            return true;
        }
        let shift = (if ip.is_ipv4() { 32 } else { 128 }) - u32::from(self.prefix);
        let mask = if shift >= 128 {
            0
        } else {
            u128::MAX << (shift + if ip.is_ipv4() { 96 } else { 0 })
        };
        bits(ip) & mask == bits(self.addr) & mask
    }
}

/// Where an idle-timeout rule comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleSource {
    /// `--idle-timeout` or `[idle_timeouts]`.
    #[default]
    Declared,
    /// The default of the cloud the host runs in (`cloud.rs`).
    CloudAssumed,
    /// The socket's namespace tracks the flow (`conntrack`).
    Conntrack,
    /// Bracketed from idle connections that survived and were killed.
    Learned,
    /// An IPVS virtual service's TCP timeout (`ipvs`).
    Ipvs,
}

impl RuleSource {
    pub const ALL: [RuleSource; 5] = [
        RuleSource::Declared,
        RuleSource::CloudAssumed,
        RuleSource::Conntrack,
        RuleSource::Learned,
        RuleSource::Ipvs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RuleSource::Declared => "declared",
            RuleSource::CloudAssumed => "cloud-assumed",
            RuleSource::Conntrack => "conntrack",
            RuleSource::Learned => "learned",
            RuleSource::Ipvs => "ipvs",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub cidr: Option<Cidr>,
    pub port: Option<u16>,
    pub timeout: Duration,
    /// As written, normalized: `10.0.0.0/8:5432=350s`.
    pub text: String,
    pub source: RuleSource,
}

impl Rule {
    /// Parses `[CIDR][:PORT]=DURATION` or `DURATION`.
    pub fn parse(s: &str) -> Result<Rule, Invalid> {
        let s = s.trim();
        let (target, dur) = match s.rsplit_once('=') {
            Some((t, d)) => (t.trim(), d.trim()),
            None => ("", s),
        };
        let timeout = duration::parse(dur)?;
        if timeout.is_zero() {
            return Err(Invalid::malformed(dur, "an idle timeout must be positive"));
        }
        let (cidr, port) = parse_target(target)?;
        let text = if target.is_empty() {
            duration::format(timeout)
        } else {
            format!("{target}={}", duration::format(timeout))
        };
        Ok(Rule {
            cidr,
            port,
            timeout,
            text,
            source: RuleSource::Declared,
        })
    }

    /// The path the rule covers, whatever its timeout: `10.0.0.0/8:5432`,
    /// `10.0.0.2:5432`, `:443`, `*` (every path), `conntrack`. A label
    /// value that stays put while learning moves a timeout.
    pub fn path(&self) -> String {
        if self.source == RuleSource::Conntrack {
            return "conntrack".into();
        }
        let net = self.cidr.map(|c| {
            let host = c.prefix == if c.addr.is_ipv4() { 32 } else { 128 };
            match (c.addr, host) {
                (IpAddr::V6(a), true) => format!("[{a}]"),
                (IpAddr::V6(a), false) => format!("[{a}/{}]", c.prefix),
                (a, true) => a.to_string(),
                (a, false) => format!("{a}/{}", c.prefix),
            }
        });
        match (net, self.port) {
            (None, None) => "*".into(),
            (None, Some(p)) => format!(":{p}"),
            (Some(n), None) => n,
            (Some(n), Some(p)) => format!("{n}:{p}"),
        }
    }

    /// The rule conntrack imposes on the flows it tracks in one namespace.
    pub fn conntrack(established_timeout_s: u32) -> Rule {
        let timeout = Duration::from_secs(u64::from(established_timeout_s));
        Rule {
            cidr: None,
            port: None,
            timeout,
            text: format!(
                "nf_conntrack_tcp_timeout_established={}",
                duration::format(timeout)
            ),
            source: RuleSource::Conntrack,
        }
    }

    /// Parses a TOML table entry: key `CIDR:PORT` (or `default`), value duration.
    pub fn from_entry(key: &str, value: &str) -> Result<Rule, Invalid> {
        if key == "default" {
            Rule::parse(value)
        } else {
            Rule::parse(&format!("{key}={value}"))
        }
    }

    /// A declared rule beats every other kind (the operator knows the
    /// path better than kato guesses it); among rules of one kind the more
    /// specific wins.
    pub fn specificity(&self) -> (bool, u32) {
        (
            self.source == RuleSource::Declared,
            u32::from(self.port.is_some()) * 256 + self.cidr.map_or(0, |c| u32::from(c.prefix) + 1),
        )
    }

    fn matches(&self, local: SocketAddr, remote: SocketAddr) -> bool {
        self.cidr.is_none_or(|c| c.contains(remote.ip()))
            && self
                .port
                .is_none_or(|p| p == remote.port() || p == local.port())
    }
}

fn parse_target(t: &str) -> Result<(Option<Cidr>, Option<u16>), Invalid> {
    if t.is_empty() {
        return Ok((None, None));
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| Invalid::not_a(p, "a port"))
    };
    if let Some(rest) = t.strip_prefix('[') {
        let (net, after) = rest
            .split_once(']')
            .ok_or_else(|| Invalid::malformed(t, "missing `]`"))?;
        let p = match after.strip_prefix(':') {
            Some(p) => Some(port(p)?),
            None if after.is_empty() => None,
            None => return Err(Invalid::malformed(t, "expected `:PORT` after `]`")),
        };
        return Ok((Some(Cidr::parse(net)?), p));
    }
    if let Some(p) = t.strip_prefix(':') {
        return Ok((None, Some(port(p)?)));
    }
    // IPv4 with a port has exactly one colon; IPv6 without brackets has several.
    match t.matches(':').count() {
        1 => {
            let (net, p) = t.split_once(':').expect("one colon");
            Ok((Some(Cidr::parse(net)?), Some(port(p)?)))
        }
        _ => Ok((Some(Cidr::parse(t)?), None)),
    }
}

/// Does a socket's keepalive beat the idle timeout on its path?
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    /// Keepalive on, and idle + one interval fits under the timeout.
    Safe,
    /// Keepalive on but too slow: the middlebox forgets the flow first.
    AtRisk,
    /// Keepalive off: an idle connection will be forgotten.
    Unprotected,
    /// No idle timeout declared for this path.
    Unknown,
    /// A zombie: nothing at all (no data, no keepalive probe either way)
    /// passed for longer than the path keeps a flow, or its conntrack entry
    /// is gone while the socket lives. The middlebox has already dropped
    /// it; the next packet meets a reset, or nothing.
    Forgotten,
    /// Keepalive off here, but the peer's probes keep the flow alive:
    /// segments without data pass more often than the path forgets.
    PeerProtected,
}

impl Risk {
    pub const ALL: [Risk; 6] = [
        Risk::Safe,
        Risk::AtRisk,
        Risk::Unprotected,
        Risk::Unknown,
        Risk::Forgotten,
        Risk::PeerProtected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Risk::Safe => "safe",
            Risk::AtRisk => "at-risk",
            Risk::Unprotected => "unprotected",
            Risk::Unknown => "unknown",
            Risk::Forgotten => "forgotten",
            Risk::PeerProtected => "peer-protected",
        }
    }

    pub fn parse(s: &str) -> Option<Risk> {
        Self::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// What kato saw pass on a connection across snapshots: the part of the
/// verdict one look at a socket cannot give.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Silence {
    /// Seconds kato has watched the connection's segment counters stand
    /// still (None: not watched across two snapshots yet).
    pub silent_s: Option<f64>,
    /// The last segments that passed carried no data and this end's
    /// keepalive is off: the peer's keepalive probes and their answers.
    pub peer_probes: bool,
    /// The flow's conntrack entry was there and is gone while the socket
    /// lives: forgotten, for certain.
    pub conntrack_gone: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Path rules: declared, assumed, learned; the most specific applies.
    pub rules: Vec<Rule>,
    /// Per network namespace (inode): the conntrack rule for its tracked
    /// flows. Conntrack is a middlebox of its own on the path, so the
    /// shorter of it and the path rule is the one that kills the flow.
    pub conntrack: BTreeMap<u32, Rule>,
    /// Learned from idle kills and survivals (`learned`), replaced as
    /// they change; path rules like the declared ones.
    pub learned: Vec<Rule>,
    /// IPVS virtual services of the host's namespace (`ipvs`), re-read
    /// with each snapshot.
    pub ipvs: Vec<Rule>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.conntrack.is_empty()
            && self.learned.is_empty()
            && self.ipvs.is_empty()
    }

    /// Replaces the conntrack rules: (namespace inode, established timeout s).
    pub fn set_conntrack(&mut self, namespaces: impl IntoIterator<Item = (u32, u32)>) {
        self.conntrack = namespaces
            .into_iter()
            .map(|(ns, t)| (ns, Rule::conntrack(t)))
            .collect();
    }

    /// The rule that decides a socket's fate: the path's, or its
    /// namespace's conntrack when the flow is tracked and that is shorter.
    pub fn rule_for(&self, s: &Socket) -> Option<&Rule> {
        self.rule_for_flow(s.netns, s.local, s.remote, s.conntrack)
    }

    /// [`Policy::rule_for`] for a flow known by its addresses: `tracked`,
    /// its conntrack entry where one was found.
    pub fn rule_for_flow(
        &self,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        tracked: Option<crate::conntrack::Tracked>,
    ) -> Option<&Rule> {
        let path = self.lookup(local, remote);
        // The table that tracks the flow: its own namespace's where the
        // entry says none (older callers), else the one that holds it.
        let ct = tracked.and_then(|t| {
            self.conntrack
                .get(&if t.netns == 0 { netns } else { t.netns })
        });
        match (path, ct) {
            // A table kato reads beats a timeout it assumed or estimated.
            (Some(p), Some(c))
                if c.timeout < p.timeout
                    || matches!(p.source, RuleSource::Learned | RuleSource::CloudAssumed) =>
            {
                Some(c)
            }
            (Some(p), _) => Some(p),
            (None, c) => c,
        }
    }

    /// Adds assumed rules; declared ones keep precedence (`specificity`).
    #[must_use]
    pub fn with_assumed(mut self, assumed: impl IntoIterator<Item = Rule>) -> Self {
        self.rules.extend(assumed);
        self
    }

    /// The most specific rule for a connection.
    pub fn lookup(&self, local: SocketAddr, remote: SocketAddr) -> Option<&Rule> {
        self.rules
            .iter()
            .chain(&self.learned)
            .chain(&self.ipvs)
            .filter(|r| r.matches(local, remote))
            .max_by_key(|r| r.specificity())
    }

    /// [`Policy::classify`]'s risk class alone.
    pub fn risk(&self, s: &Socket) -> Option<Risk> {
        self.classify(s).map(|(r, _)| r)
    }

    /// The risk class and the rule behind it; None for sockets that are not
    /// connections (listening, TIME_WAIT, request sockets). One look: a
    /// zombie needs watching ([`Policy::classify_watched`]).
    pub fn classify(&self, s: &Socket) -> Option<(Risk, Option<&Rule>)> {
        self.classify_watched(s, &Silence::default())
    }

    /// [`Policy::classify`] with what kato saw pass across snapshots.
    pub fn classify_watched(&self, s: &Socket, seen: &Silence) -> Option<(Risk, Option<&Rule>)> {
        let ka = s.keepalive?;
        if s.state == crate::tcp::TcpState::Listen {
            return None;
        }
        let Some(rule) = self.rule_for(s) else {
            return Some((Risk::Unknown, None));
        };
        let established = s.state == crate::tcp::TcpState::Established;
        let silent_past = seen
            .silent_s
            .is_some_and(|q| Duration::from_secs_f64(q) > rule.timeout);
        let risk = if established && (seen.conntrack_gone || silent_past) {
            Risk::Forgotten
        } else if ka.enabled
            && Duration::from_secs(u64::from(ka.idle_s.value) + u64::from(ka.interval_s.value))
                < rule.timeout
        {
            Risk::Safe
        } else if seen.peer_probes && !ka.enabled {
            Risk::PeerProtected
        } else if ka.enabled {
            Risk::AtRisk
        } else {
            Risk::Unprotected
        };
        Some((risk, Some(rule)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::tests::{record, timewait};
    use keepalive_common::{sock_flags, SockRecord};

    fn policy(rules: &[&str]) -> Policy {
        Policy {
            rules: rules.iter().map(|r| Rule::parse(r).unwrap()).collect(),
            ..Policy::default()
        }
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_rules() {
        let r = Rule::parse("10.0.0.0/8:5432=350s").unwrap();
        assert_eq!(
            (r.port, r.timeout, r.text.as_str()),
            (Some(5432), Duration::from_secs(350), "10.0.0.0/8:5432=350s")
        );
        assert_eq!(
            Rule::parse(":443=4m").unwrap().timeout,
            Duration::from_secs(240)
        );
        assert_eq!(Rule::parse("350s").unwrap().text, "350s");
        let v6 = Rule::parse("[2001:db8::/32]:443=60s").unwrap();
        assert_eq!(v6.port, Some(443));
        assert!(Rule::parse("2001:db8::/32=60s").unwrap().port.is_none());
        for bad in [
            "10.0.0.0/33=5s",
            "10.0.0.0/8:http=5s",
            "10.0.0.0/8=",
            "x=5s",
            "10.0.0.0/8=0s",
            ":0=5s",
            "[::1=5s",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rule::from_entry("default", "10m").unwrap().text, "600s");
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::5".parse().unwrap()));
        assert!(Cidr::parse("192.168.1.7")
            .unwrap()
            .contains("192.168.1.7".parse().unwrap()));
    }

    #[test]
    fn most_specific_rule_wins() {
        let p = policy(&[
            "600s",
            "10.0.0.0/8=300s",
            "10.1.0.0/16=200s",
            ":5432=100s",
            "10.1.0.0/16:5432=50s",
        ]);
        let t = |l: &str, r: &str| p.lookup(a(l), a(r)).unwrap().timeout.as_secs();
        assert_eq!(t("10.9.9.9:40000", "10.1.2.3:5432"), 50);
        assert_eq!(t("10.9.9.9:40000", "10.2.2.3:5432"), 100);
        assert_eq!(t("10.9.9.9:40000", "10.1.2.3:80"), 200);
        assert_eq!(t("10.9.9.9:40000", "10.2.2.3:80"), 300);
        assert_eq!(t("192.168.0.1:40000", "8.8.8.8:53"), 600);
        // A server behind a load balancer: its local port matches.
        assert_eq!(t("10.9.9.9:5432", "172.16.0.1:40000"), 100);
        assert!(policy(&[":443=4m"])
            .lookup(a("1.1.1.1:1"), a("2.2.2.2:2"))
            .is_none());
    }

    #[test]
    fn declared_rules_beat_assumed_ones() {
        let assumed = Rule {
            source: RuleSource::CloudAssumed,
            text: "350s (assumed)".into(),
            ..Rule::parse("350s").unwrap()
        };
        let only = Policy::default().with_assumed([assumed.clone()]);
        assert_eq!(
            only.lookup(a("1.1.1.1:1"), a("2.2.2.2:2")).unwrap().source,
            RuleSource::CloudAssumed
        );
        let both = policy(&["100s"]).with_assumed([assumed]);
        let r = both.lookup(a("1.1.1.1:1"), a("2.2.2.2:2")).unwrap();
        assert_eq!((r.source, r.timeout.as_secs()), (RuleSource::Declared, 100));
    }

    #[test]
    fn classification() {
        let p = policy(&["10.0.0.2:5432=350s"]);
        let sock = |flags: u32, ka_time: u32, ka_intvl: u32| {
            Socket::from_record(
                &SockRecord {
                    flags: sock_flags::FULL | flags,
                    ka_time: ka_time * 250,
                    ka_intvl: ka_intvl * 250,
                    ..record()
                },
                250,
                None,
            )
            .unwrap()
        };
        let class = |s: &Socket| p.risk(s);
        assert_eq!(
            class(&sock(sock_flags::KEEPALIVE_ON, 300, 30)),
            Some(Risk::Safe)
        );
        assert_eq!(
            class(&sock(sock_flags::KEEPALIVE_ON, 330, 30)),
            Some(Risk::AtRisk),
            "330 + 30 is not under 350"
        );
        assert_eq!(
            class(&sock(sock_flags::KEEPALIVE_ON, 0, 0)),
            Some(Risk::AtRisk),
            "sysctl default 7200 s"
        );
        assert_eq!(class(&sock(0, 60, 10)), Some(Risk::Unprotected));
        assert_eq!(
            class(&Socket {
                remote: a("10.0.0.3:80"),
                ..sock(0, 0, 0)
            }),
            Some(Risk::Unknown)
        );
        let tw = timewait();
        assert_eq!(class(&tw), None);
        let s = sock(sock_flags::KEEPALIVE_ON, 300, 30);
        let (risk, rule) = p.classify(&s).unwrap();
        assert_eq!(
            (risk, rule.map(|r| r.text.as_str())),
            (Risk::Safe, Some("10.0.0.2:5432=350s"))
        );
    }

    #[test]
    fn conntrack_applies_to_tracked_flows_when_shorter() {
        let tracked = |netns: u32| Socket {
            netns,
            conntrack: Some(crate::conntrack::Tracked {
                remaining_s: 15,
                state: crate::conntrack::CtState::Established,
                netns,
            }),
            ..Socket::from_record(
                &SockRecord {
                    flags: sock_flags::FULL | sock_flags::KEEPALIVE_ON,
                    ka_time: 60 * 250,
                    ka_intvl: 10 * 250,
                    ..record()
                },
                250,
                None,
            )
            .unwrap()
        };
        let mut p = Policy::default();
        p.set_conntrack([(7, 20)]);
        let (risk, rule) = p.classify(&tracked(7)).unwrap();
        assert_eq!(
            (risk, rule.unwrap().source),
            (Risk::AtRisk, RuleSource::Conntrack)
        );
        assert_eq!(
            rule.unwrap().text,
            "nf_conntrack_tcp_timeout_established=20s"
        );
        // Another namespace, or an untracked flow: conntrack says nothing.
        assert_eq!(p.classify(&tracked(8)).unwrap().0, Risk::Unknown);
        let untracked = Socket {
            conntrack: None,
            ..tracked(7)
        };
        assert_eq!(p.classify(&untracked).unwrap().0, Risk::Unknown);
        // A shorter path rule wins; a longer one does not.
        let mut short = policy(&["10s"]);
        short.conntrack = p.conntrack.clone();
        assert_eq!(
            short.rule_for(&tracked(7)).unwrap().source,
            RuleSource::Declared
        );
        let mut long = policy(&["350s"]);
        long.conntrack = p.conntrack.clone();
        assert_eq!(
            long.rule_for(&tracked(7)).unwrap().source,
            RuleSource::Conntrack
        );
        // A learned bracket is an estimate: the table kato reads beats it,
        // however short the estimate.
        let mut learned = p.clone();
        learned.learned = vec![Rule {
            source: RuleSource::Learned,
            ..Rule::parse("1s").unwrap()
        }];
        assert_eq!(
            learned.rule_for(&tracked(7)).unwrap().source,
            RuleSource::Conntrack
        );
    }
}
