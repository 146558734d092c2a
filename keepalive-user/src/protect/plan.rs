//! Which existing connections to protect, from a census: ESTABLISHED, in
//! scope, on a path with an idle timeout, and with keepalive off or slower
//! than it allows. The kernel re-reads each socket's settings under its
//! lock before it changes anything (they may have changed since).

use std::collections::HashSet;

use keepalive_common::protect::{self, Keepalive, ProtectPlan};

use super::rules::source_code;
use crate::{
    filter::Filter,
    policy::{Policy, Rule},
    sockets::{Socket, ValueSource},
    tcp::TcpState,
};

/// One connection to protect and why.
#[derive(Debug)]
pub struct Planned<'a> {
    pub socket: &'a Socket,
    pub rule: &'a Rule,
    pub cookie: u64,
    pub plan: ProtectPlan,
}

/// A socket's keepalive settings as the kernel side compares them.
pub fn settings_of(s: &Socket) -> Option<Keepalive> {
    let k = s.keepalive?;
    let own = |set: crate::sockets::Effective, bit: u8| {
        if set.source == ValueSource::Sysctl {
            0
        } else {
            bit
        }
    };
    Some(Keepalive {
        idle_s: k.idle_s.value,
        intvl_s: k.interval_s.value,
        cnt: u8::try_from(k.count.value).unwrap_or(u8::MAX),
        on: u8::from(k.enabled),
        own: own(k.idle_s, 1) | own(k.interval_s, 2) | own(k.count, 4),
        _pad: 0,
    })
}

/// The connections of `sockets` to protect (`done`: cookies already
/// protected, skipped).
pub fn plan<'a>(
    sockets: impl Iterator<Item = &'a Socket>,
    policy: &'a Policy,
    filter: &Filter,
    dry_run: bool,
    done: &HashSet<u64>,
) -> Vec<Planned<'a>> {
    sockets
        .filter(|s| s.state == TcpState::Established)
        .filter_map(|s| {
            let cookie = s.cookie?;
            if done.contains(&cookie) || !filter.matches(s, || None) {
                return None;
            }
            let rule = policy.rule_for(s)?;
            let timeout_ms = u32::try_from(rule.timeout.as_millis()).unwrap_or(u32::MAX);
            let want = protect::wanted(timeout_ms);
            protect::tighten(settings_of(s)?, want)?;
            Some(Planned {
                socket: s,
                rule,
                cookie,
                plan: ProtectPlan {
                    idle_s: want,
                    intvl_s: want,
                    timeout_ms,
                    source: source_code(rule.source),
                    dry_run: u8::from(dry_run),
                    _pad: [0; 2],
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::tests::record;

    fn socket(remote: &str, keepalive: bool, idle_s: u32) -> Socket {
        let mut r = record();
        if !keepalive {
            r.flags &= !keepalive_common::sock_flags::KEEPALIVE_ON;
        }
        r.ka_time = idle_s * 250;
        r.ka_intvl = idle_s * 250;
        let mut s = Socket::from_record(&r, 250, None).unwrap();
        s.remote = remote.parse().unwrap();
        s.cookie = Some(u64::from(idle_s) + 1);
        s
    }

    #[test]
    fn only_what_is_too_slow_in_scope_and_not_done() {
        let mut policy = Policy::default();
        policy.rules.push(Rule::parse("10.0.0.2/32=3s").unwrap());
        let off = socket("10.0.0.2:5432", false, 0);
        let tight = socket("10.0.0.2:5432", true, 1);
        let other = socket("10.0.0.3:5432", false, 0);
        let all = [off.clone(), tight, other];
        let got = plan(
            all.iter(),
            &policy,
            &Filter::default(),
            false,
            &HashSet::new(),
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].socket.remote, off.remote);
        assert_eq!(
            (
                got[0].plan.idle_s,
                got[0].plan.intvl_s,
                got[0].plan.timeout_ms
            ),
            (1, 1, 3000)
        );
        let done: HashSet<u64> = [off.cookie.unwrap()].into();
        assert!(plan(all.iter(), &policy, &Filter::default(), false, &done).is_empty());
        let ports = Filter {
            ports: vec![9],
            ..Filter::default()
        };
        assert!(plan(all.iter(), &policy, &ports, false, &HashSet::new()).is_empty());
    }
}
