//! The policy as the kernel matches new connections against it: every
//! path rule (declared, assumed, learned, IPVS) as a [`ProtectRule`], and
//! each namespace's conntrack timeout. The sock_ops program picks the rule
//! as `Policy::rule_for_flow` does; a unit test holds the two together.

use std::net::IpAddr;

use keepalive_common::protect::{ProtectRule, MAX_RULES};

use crate::policy::{Policy, Rule, RuleSource};

/// `RuleSource` as the kernel records it.
pub fn source_code(s: RuleSource) -> u8 {
    match s {
        RuleSource::Declared => 0,
        RuleSource::CloudAssumed => 1,
        RuleSource::Conntrack => 2,
        RuleSource::Learned => 3,
        RuleSource::Ipvs => 4,
    }
}

/// The `RuleSource` a kernel record names; unknown values are errors.
pub fn source_of(code: u8) -> Option<RuleSource> {
    RuleSource::ALL
        .into_iter()
        .find(|&s| source_code(s) == code)
}

/// An address as the kernel compares it: IPv4 as `::ffff:a.b.c.d`.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match crate::ip::canonical(ip) {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    }
}

fn compile(r: &Rule) -> ProtectRule {
    let (declared, spec) = r.specificity();
    let (addr, mask) = match r.cidr {
        None => ([0; 16], [0; 16]),
        Some(c) => {
            let extra = if c.addr().is_ipv4() { 96 } else { 0 };
            let bits = u32::from(c.prefix()) + extra;
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            (mapped(c.addr()), mask.to_be_bytes())
        }
    };
    ProtectRule {
        addr,
        mask,
        port: r.port.unwrap_or(0),
        source: source_code(r.source),
        _pad: 0,
        timeout_ms: u32::try_from(r.timeout.as_millis()).unwrap_or(u32::MAX),
        specificity: (u32::from(declared) << 16) | spec,
        _pad2: 0,
    }
}

/// The policy's path rules for the kernel, at most [`MAX_RULES`] (the
/// most specific kept), and its conntrack timeouts per namespace (ms).
pub fn compile_policy(p: &Policy) -> (Vec<ProtectRule>, Vec<(u32, u32)>) {
    let mut rules: Vec<ProtectRule> = p
        .rules
        .iter()
        .chain(&p.learned)
        .chain(&p.ipvs)
        .map(compile)
        .collect();
    if rules.len() > MAX_RULES as usize {
        // Learned and IPVS rules can outgrow the kernel's table: the least
        // specific go, and say so (declared ones are capped at parse).
        log::warn!(
            "{} idle-timeout rules, the kernel holds {MAX_RULES}: the {} least specific are not protected",
            rules.len(),
            rules.len() - MAX_RULES as usize
        );
        rules.sort_by_key(|r| std::cmp::Reverse(r.specificity));
        rules.truncate(MAX_RULES as usize);
    }
    let ct = p
        .conntrack
        .iter()
        .map(|(&ns, r)| (ns, u32::try_from(r.timeout.as_millis()).unwrap_or(u32::MAX)))
        .collect();
    (rules, ct)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// The kernel's choice, in Rust: the program's `rule_for` and `matches`.
    fn kernel_pick(
        rules: &[ProtectRule],
        ct: Option<u32>,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<(u32, u8)> {
        let d = mapped(remote.ip());
        let hit = |r: &ProtectRule| {
            (r.port == 0 || r.port == remote.port() || r.port == local.port())
                && (0..16).all(|i| (r.addr[i] ^ d[i]) & r.mask[i] == 0)
        };
        let best = rules
            .iter()
            .filter(|r| hit(r))
            .max_by_key(|r| r.specificity);
        match (best, ct) {
            (Some(b), Some(c)) if c < b.timeout_ms || b.source == 1 || b.source == 3 => {
                Some((c, 2))
            }
            (Some(b), _) => Some((b.timeout_ms, b.source)),
            (None, Some(c)) => Some((c, 2)),
            (None, None) => None,
        }
    }

    #[test]
    fn the_kernel_picks_the_rule_the_policy_picks() {
        for catch_all in [true, false] {
            picks_like_the_policy(catch_all);
        }
    }

    fn picks_like_the_policy(catch_all: bool) {
        let mut p = Policy::default();
        for r in [
            "10.0.0.0/8=350s",
            "10.1.2.3:5432=3s",
            ":443=4m",
            "[2001:db8::/32]=10m",
        ] {
            p.rules.push(Rule::parse(r).unwrap());
        }
        if catch_all {
            p.rules.push(Rule::parse("60s").unwrap());
        }
        p.rules.push(Rule {
            source: RuleSource::CloudAssumed,
            ..Rule::parse("350s").unwrap()
        });
        p.learned.push(Rule {
            source: RuleSource::Learned,
            ..Rule::parse("192.168.1.1:6379=30s").unwrap()
        });
        p.set_conntrack([(7, 120)]);
        let (rules, ct) = compile_policy(&p);
        assert_eq!(ct, [(7, 120_000)]);
        let flows = [
            ("10.0.0.9:40000", "10.1.2.3:5432"),
            ("10.0.0.9:40000", "10.1.2.3:5433"),
            ("10.0.0.9:443", "172.16.0.1:50000"),
            ("[2001:db8::1]:40000", "[2001:db8::2]:80"),
            ("192.168.1.2:40000", "192.168.1.1:6379"),
            ("127.0.0.1:40000", "127.0.0.1:80"),
        ];
        for netns in [1, 7] {
            for (l, r) in flows {
                let (l, r): (SocketAddr, SocketAddr) = (l.parse().unwrap(), r.parse().unwrap());
                let tracked = (netns == 7).then_some(crate::conntrack::Tracked {
                    netns: 7,
                    remaining_s: 100,
                    state: crate::conntrack::CtState::Established,
                });
                let want = p
                    .rule_for_flow(netns, l, r, tracked)
                    .map(|x| (x.timeout.as_millis() as u32, source_code(x.source)));
                let ct = ct.iter().find(|(n, _)| *n == netns).map(|(_, t)| *t);
                assert_eq!(kernel_pick(&rules, ct, l, r), want, "{l} -> {r} in {netns}");
            }
        }
    }
}
