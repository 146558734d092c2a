//! The idle timeouts on this host's paths, each with its source, the
//! connections it endangers and the keepalive settings that would beat it.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::{
    policy::{Policy, Risk, Rule, RuleSource},
    sockets::Socket,
};

/// Connections listed per timeout at most (the counts cover all).
pub const EXAMPLES: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct Endangered {
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub netns: u32,
    pub risk: Risk,
    /// `PID/comm`, when known.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimeoutReport {
    pub source: RuleSource,
    /// The rule as kato shows it in Risk columns.
    pub rule: String,
    pub timeout_s: f64,
    /// For conntrack: the namespaces that impose it.
    pub namespaces: Vec<u32>,
    pub safe: usize,
    pub at_risk: usize,
    pub unprotected: usize,
    /// Connections whose conntrack entry is already gone.
    pub forgotten: usize,
    /// Kept alive by the peer's keepalive.
    pub peer_protected: usize,
    /// At-risk, unprotected and forgotten connections, the first few.
    pub endangered: Vec<Endangered>,
    pub suggestion: String,
}

/// Keepalive settings that beat `timeout`: the first probe at half of it,
/// a retry every tenth, so even one lost probe is retried in time.
pub fn suggestion(timeout: Duration) -> String {
    let t = timeout.as_secs();
    if t < 3 {
        return format!(
            "{:.1} s is below what keepalive can beat (1 s idle + 1 s interval at the least): raise the middlebox's timeout or send application-level heartbeats",
            timeout.as_secs_f64()
        );
    }
    let (idle, intvl) = (t / 2, (t / 10).max(1));
    format!(
        "keep TCP_KEEPIDLE + TCP_KEEPINTVL under {t} s: setsockopt SO_KEEPALIVE=1, TCP_KEEPIDLE={idle}, TCP_KEEPINTVL={intvl} (or, for every socket of the namespace that relies on defaults, sysctl net.ipv4.tcp_keepalive_time={idle} net.ipv4.tcp_keepalive_intvl={intvl})"
    )
}

fn key(r: &Rule) -> (RuleSource, String) {
    (r.source, r.text.clone())
}

/// Every timeout the policy knows, counted against the connections seen.
pub struct Tally(BTreeMap<(RuleSource, String), TimeoutReport>);

impl Tally {
    pub fn new(policy: &Policy) -> Self {
        let mut t = Tally(BTreeMap::new());
        let conntrack = policy.conntrack.iter().map(|(ns, r)| (r, Some(*ns)));
        for (r, ns) in policy
            .rules
            .iter()
            .chain(&policy.learned)
            .chain(&policy.ipvs)
            .map(|r| (r, None))
            .chain(conntrack)
        {
            let e = t.0.entry(key(r)).or_insert_with(|| TimeoutReport {
                source: r.source,
                rule: r.text.clone(),
                timeout_s: r.timeout.as_secs_f64(),
                namespaces: vec![],
                safe: 0,
                at_risk: 0,
                unprotected: 0,
                forgotten: 0,
                peer_protected: 0,
                endangered: vec![],
                suggestion: suggestion(r.timeout),
            });
            e.namespaces.extend(ns);
        }
        t
    }

    pub fn add(&mut self, s: &Socket, risk: Risk, rule: &Rule) {
        let Some(e) = self.0.get_mut(&key(rule)) else {
            return;
        };
        match risk {
            Risk::Safe => e.safe += 1,
            Risk::AtRisk => e.at_risk += 1,
            Risk::Unprotected => e.unprotected += 1,
            Risk::Forgotten => e.forgotten += 1,
            Risk::PeerProtected => e.peer_protected += 1,
            Risk::Unknown => return,
        }
        if !matches!(risk, Risk::Safe | Risk::PeerProtected) && e.endangered.len() < EXAMPLES {
            e.endangered.push(Endangered {
                local: s.local,
                remote: s.remote,
                netns: s.netns,
                risk,
                owner: s
                    .pid
                    .zip(s.comm.as_ref())
                    .map(|(p, c)| format!("{p}/{}", crate::text::printable(c))),
            });
        }
    }

    pub fn finish(self) -> Vec<TimeoutReport> {
        self.0.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::tests::record;

    #[test]
    fn every_known_timeout_is_listed_with_the_connections_it_endangers() {
        let mut p = Policy {
            rules: vec![Rule::parse("10.0.0.0/8=350s").unwrap()],
            ipvs: vec![Rule {
                source: RuleSource::Ipvs,
                ..Rule::parse("10.96.0.1:443=900s").unwrap()
            }],
            ..Policy::default()
        };
        p.set_conntrack([(7, 20), (8, 20)]);
        let mut t = Tally::new(&p);
        let s = Socket::from_record(&record(), 250, None).unwrap();
        let (risk, rule) = p.classify(&s).unwrap();
        t.add(&s, risk, rule.unwrap());
        let all = t.finish();
        assert_eq!(all.len(), 3, "declared, ipvs, conntrack: {all:?}");
        let declared = all
            .iter()
            .find(|r| r.source == RuleSource::Declared)
            .unwrap();
        assert_eq!(
            (declared.at_risk, declared.endangered.len()),
            (1, 1),
            "7200 s default idle"
        );
        let ct = all
            .iter()
            .find(|r| r.source == RuleSource::Conntrack)
            .unwrap();
        assert_eq!((ct.namespaces.as_slice(), ct.at_risk), (&[7, 8][..], 0));
        assert!(
            ct.suggestion.contains("TCP_KEEPIDLE=10, TCP_KEEPINTVL=2"),
            "{}",
            ct.suggestion
        );
        assert!(suggestion(Duration::from_secs_f64(1.2)).contains("below what keepalive can beat"));
    }
}
