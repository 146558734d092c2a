//! What a census holds per socket: the full [`Socket`], or the [`Compact`]
//! entry a one-shot listing holds instead (176 bytes against 288; at a
//! million sockets that is 100 MiB). The snapshot fills either as records
//! are decoded, so a listing never holds the full sockets at all.

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use super::{compact::Compact, Socket, ValueSource};
use crate::{conntrack::Tracked, owner::Owner, tcp::TcpState, workload::Workload};

pub trait Row: Send + Sync + Sized {
    fn of(s: Socket) -> Self;
    /// The whole socket, for views: itself, or made from the row.
    fn whole(&self) -> Cow<'_, Socket>;
    /// The kernel address: the key owners are joined on.
    fn sk(&self) -> u64;
    fn set_owner(&mut self, o: Owner);
    fn cgroup(&self) -> Option<u64>;
    fn set_workload(&mut self, w: Arc<Workload>);
    /// State and the two ends, for the conntrack join.
    fn flow(&self) -> (TcpState, SocketAddr, SocketAddr);
    fn set_conntrack(&mut self, t: Option<Tracked>);
    /// Says which of its keepalive settings equal what `kato protect` set
    /// (idle and interval seconds): those are kato's, where the socket set
    /// them at all and keepalive is on.
    fn mark_protected(&mut self, cookie_of: impl Fn(u64) -> Option<(u32, u32)>);
}

impl Row for Socket {
    fn of(s: Socket) -> Self {
        s
    }
    fn whole(&self) -> Cow<'_, Socket> {
        Cow::Borrowed(self)
    }
    fn sk(&self) -> u64 {
        self.sock
    }
    fn set_owner(&mut self, o: Owner) {
        Socket::set_owner(self, o);
    }
    fn cgroup(&self) -> Option<u64> {
        self.cgroup_id
    }
    fn set_workload(&mut self, w: Arc<Workload>) {
        self.workload = crate::workload::Named(Some(w));
    }
    fn flow(&self) -> (TcpState, SocketAddr, SocketAddr) {
        (self.state, self.local, self.remote)
    }
    fn set_conntrack(&mut self, t: Option<Tracked>) {
        self.conntrack = t;
    }
    fn mark_protected(&mut self, cookie_of: impl Fn(u64) -> Option<(u32, u32)>) {
        let (Some(cookie), Some(k)) = (self.cookie, self.keepalive.as_mut()) else {
            return;
        };
        if !k.enabled {
            return;
        }
        let Some((idle, intvl)) = cookie_of(cookie) else {
            return;
        };
        for (setting, value) in [(&mut k.idle_s, idle), (&mut k.interval_s, intvl)] {
            if setting.value == value && setting.source != ValueSource::Sysctl {
                setting.source = ValueSource::Kato;
            }
        }
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
        Compact::set_owner(self, o);
    }
    fn cgroup(&self) -> Option<u64> {
        self.cgroup_id()
    }
    fn set_workload(&mut self, w: Arc<Workload>) {
        Compact::set_workload(self, w);
    }
    fn flow(&self) -> (TcpState, SocketAddr, SocketAddr) {
        (self.state, self.local(), self.remote())
    }
    fn set_conntrack(&mut self, t: Option<Tracked>) {
        Compact::set_conntrack(self, t);
    }
    fn mark_protected(&mut self, cookie_of: impl Fn(u64) -> Option<(u32, u32)>) {
        let Some(cookie) = self.socket_cookie() else {
            return;
        };
        if self.keepalive_enabled() != Some(true) {
            return;
        }
        if let Some((idle, intvl)) = cookie_of(cookie) {
            self.mark_kato(idle, intvl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::{tests::record, Effective, Keepalive};

    fn socket() -> Socket {
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
        let mut full = socket();
        let mut compact = <Compact as Row>::of(socket());
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
            state: crate::conntrack::CtState::Established,
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
            let mut s = socket();
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
