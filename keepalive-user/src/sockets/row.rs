//! What a census holds per socket: the full [`Socket`], or the [`Compact`]
//! entry a one-shot listing holds instead (176 bytes against 288; at a
//! million sockets that is 100 MiB). The snapshot fills either as records
//! are decoded, so a listing never holds the full sockets at all.

use std::{borrow::Cow, net::SocketAddr, sync::Arc};

use super::{Socket, ValueSource};
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
    /// State and the two ends, for the conntrack join (`filter::Listed`
    /// has them too, but `filter` sits above `sockets`).
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
        (self.pid, self.comm) = (Some(o.pid), Some(o.comm));
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
