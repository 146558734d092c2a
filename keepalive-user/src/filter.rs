//! Which events the user asked to see (`--pid`, `--comm`, `--port`, `--addr`, `--netns`).

use std::net::IpAddr;

use crate::{event::Record, owner::Owner};

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// Matches the local or the remote port.
    pub ports: Vec<u16>,
    /// Matches the local or the remote address.
    pub addrs: Vec<IpAddr>,
    pub netns: Vec<u32>,
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) compares equal to the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Filter {
    /// True when the filter needs the socket's owner to decide.
    pub fn needs_owner(&self) -> bool {
        !self.pids.is_empty() || !self.comms.is_empty()
    }

    pub fn matches(&self, rec: &Record, owner: Option<&Owner>) -> bool {
        fn any<T>(v: &[T], f: impl Fn(&T) -> bool) -> bool {
            v.is_empty() || v.iter().any(f)
        }
        any(&self.ports, |p: &u16| {
            rec.local.port() == *p || rec.remote.port() == *p
        }) && any(&self.addrs, |a: &IpAddr| {
            let a = canonical(*a);
            canonical(rec.local.ip()) == a || canonical(rec.remote.ip()) == a
        }) && any(&self.netns, |n: &u32| rec.netns == *n)
            && any(&self.pids, |p: &u32| owner.is_some_and(|o| o.pid == *p))
            && any(&self.comms, |c: &String| {
                owner.is_some_and(|o| o.comm == *c)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        tests::{bytes, raw},
        Record,
    };

    fn rec() -> Record {
        Record::decode(&bytes(&raw(keepalive_common::kind::ARMED))).unwrap()
    }

    #[test]
    fn empty_filter_matches_all() {
        assert!(Filter::default().matches(&rec(), None));
    }

    #[test]
    fn ports_and_addresses_match_either_end() {
        let f = |ports: Vec<u16>, addrs: Vec<&str>| Filter {
            ports,
            addrs: addrs.into_iter().map(|a| a.parse().unwrap()).collect(),
            ..Default::default()
        };
        assert!(f(vec![8080], vec![]).matches(&rec(), None));
        assert!(f(vec![41234], vec![]).matches(&rec(), None));
        assert!(!f(vec![22], vec![]).matches(&rec(), None));
        assert!(f(vec![], vec!["127.0.0.2"]).matches(&rec(), None));
        assert!(f(vec![], vec!["::ffff:127.0.0.1"]).matches(&rec(), None));
        assert!(
            !f(vec![8080], vec!["10.0.0.1"]).matches(&rec(), None),
            "all filters must hold"
        );
    }

    #[test]
    fn owner_filters_need_an_owner() {
        let f = Filter {
            pids: vec![42],
            ..Default::default()
        };
        assert!(f.needs_owner());
        assert!(!f.matches(&rec(), None));
        let o = Owner {
            pid: 42,
            comm: "curl".into(),
        };
        assert!(f.matches(&rec(), Some(&o)));
        let f = Filter {
            comms: vec!["wget".into()],
            ..Default::default()
        };
        assert!(!f.matches(&rec(), Some(&o)));
        assert!(!Filter {
            netns: vec![1],
            ..Default::default()
        }
        .matches(&rec(), None));
    }
}
