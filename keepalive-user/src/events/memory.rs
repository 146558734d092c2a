//! What kato last knew of recent sockets: their 4-tuple and owner, by
//! kernel address and by namespace and 4-tuple (two namespaces often hold
//! the same loopback 4-tuple). Records taken in softirq, after the
//! owner closed the socket, or from a TIME_WAIT socket that replaced it
//! still name the process; a reset whose other end is on this host names
//! that end too. Bounded: two generations of at most `CAPACITY / 2`
//! entries each, the older dropped whole when the newer fills.

use std::{collections::HashMap, net::SocketAddr};

use crate::owner::Owner;

const CAPACITY: usize = 1 << 16;

#[derive(Debug, Clone)]
struct Known {
    local: SocketAddr,
    remote: SocketAddr,
    owner: Option<Owner>,
}

#[derive(Default)]
struct Generation {
    by_sk: HashMap<u64, Known>,
    by_tuple: HashMap<(u32, SocketAddr, SocketAddr), Option<Owner>>,
}

/// Listeners remembered at most (the census refreshes them).
const LISTENERS: usize = 4096;

#[derive(Default)]
pub struct Memory {
    new: Generation,
    old: Generation,
    /// (netns, port) of listening sockets and their owner: the peer of a
    /// local connection to one, where kato saw nothing of the accepted end
    /// (a TIME_WAIT reply, untraced before 6.10).
    listeners: HashMap<(u32, u16), Owner>,
}

impl Memory {
    /// Remembers socket `sk` of namespace `netns` (0: a reply without a
    /// socket, by tuple only).
    pub fn learn(
        &mut self,
        sk: u64,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
        owner: Option<&Owner>,
    ) {
        if self.new.by_sk.len() + self.new.by_tuple.len() >= CAPACITY {
            self.old = std::mem::take(&mut self.new);
        }
        let owner = owner
            .cloned()
            .or_else(|| self.owner_of(sk, netns, local, remote));
        if sk != 0 {
            self.new.by_sk.insert(
                sk,
                Known {
                    local,
                    remote,
                    owner: owner.clone(),
                },
            );
        }
        if remote.port() != 0 {
            self.new.by_tuple.insert((netns, local, remote), owner);
        }
    }

    fn sk(&self, sk: u64) -> Option<&Known> {
        self.new.by_sk.get(&sk).or_else(|| self.old.by_sk.get(&sk))
    }

    fn tuple(&self, netns: u32, local: SocketAddr, remote: SocketAddr) -> Option<&Option<Owner>> {
        let key = (netns, local, remote);
        self.new
            .by_tuple
            .get(&key)
            .or_else(|| self.old.by_tuple.get(&key))
    }

    /// The last owner of `sk`, or of the connection with this 4-tuple in
    /// namespace `netns` (the full socket a TIME_WAIT socket replaced).
    pub fn owner_of(
        &self,
        sk: u64,
        netns: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<Owner> {
        self.sk(sk)
            .filter(|k| k.local.port() == local.port())
            .and_then(|k| k.owner.clone())
            .or_else(|| self.tuple(netns, local, remote).cloned().flatten())
    }

    /// The 4-tuple `sk` had before the kernel cleared its remote port (and
    /// its local address: an abortive close disconnects the socket), by
    /// its local port.
    pub fn tuple_of(&self, sk: u64, local_port: u16) -> Option<(SocketAddr, SocketAddr)> {
        self.sk(sk)
            .filter(|k| k.local.port() == local_port)
            .map(|k| (k.local, k.remote))
    }

    /// Remembers the listeners a census found (replacing the last ones).
    pub fn know_listeners(&mut self, listeners: impl IntoIterator<Item = ((u32, u16), Owner)>) {
        self.listeners.clear();
        for (k, o) in listeners.into_iter().take(LISTENERS) {
            self.listeners.insert(k, o);
        }
    }

    /// The owner of the other end of a connection in namespace `netns`,
    /// when that end is a socket on this host kato saw, or else a local
    /// listener's at the remote port (a loopback or same-address peer is
    /// the socket that listener accepted): `local`/`remote` as this end
    /// sees them.
    pub fn peer_owner(&self, netns: u32, local: SocketAddr, remote: SocketAddr) -> Option<Owner> {
        self.tuple(netns, remote, local)
            .cloned()
            .flatten()
            .or_else(|| {
                let here = remote.ip().is_loopback() || remote.ip() == local.ip();
                here.then(|| self.listeners.get(&(netns, remote.port())).cloned())
                    .flatten()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: "nginx".into(),
        }
    }

    #[test]
    fn owners_by_socket_tuple_and_peer() {
        let mut m = Memory::default();
        let (l, r) = (a("127.0.0.1:8081"), a("127.0.0.1:40000"));
        m.learn(1, 7, l, r, Some(&owner(10)));
        // A TIME_WAIT socket at another address, same connection.
        assert_eq!(m.owner_of(2, 7, l, r).map(|o| o.pid), Some(10));
        assert_eq!(m.owner_of(1, 7, l, r).map(|o| o.pid), Some(10));
        // The client end sees the server's process as its peer.
        assert_eq!(m.peer_owner(7, r, l).map(|o| o.pid), Some(10));
        assert!(m.peer_owner(7, l, r).is_none());
        // The same loopback tuple in another namespace is someone else's.
        assert!(m.peer_owner(8, r, l).is_none());
        assert!(m.owner_of(2, 8, l, r).is_none());
        // A later record without an owner keeps the one known.
        m.learn(1, 7, l, r, None);
        assert_eq!(m.owner_of(1, 7, l, r).map(|o| o.pid), Some(10));
        // The port (and address) the kernel cleared.
        assert_eq!(m.tuple_of(1, 8081), Some((l, r)));
        assert_eq!(m.tuple_of(1, 1), None);
    }

    #[test]
    fn a_local_listener_names_an_unseen_peer() {
        let mut m = Memory::default();
        m.know_listeners([((7, 8081), owner(10))]);
        let me = a("127.0.0.1:40000");
        assert_eq!(
            m.peer_owner(7, me, a("127.0.0.1:8081")).map(|o| o.pid),
            Some(10)
        );
        // Another namespace, another port, or a remote host: not its peer.
        assert!(m.peer_owner(8, me, a("127.0.0.1:8081")).is_none());
        assert!(m.peer_owner(7, me, a("127.0.0.1:8082")).is_none());
        assert!(m
            .peer_owner(7, a("10.0.0.1:40000"), a("10.0.0.2:8081"))
            .is_none());
        assert_eq!(
            m.peer_owner(7, a("10.0.0.1:40000"), a("10.0.0.1:8081"))
                .map(|o| o.pid),
            Some(10)
        );
    }

    #[test]
    fn bounded_by_two_generations() {
        let mut m = Memory::default();
        let l = a("10.0.0.1:80");
        for i in 0..(CAPACITY as u64 * 2) {
            m.learn(
                i + 1,
                7,
                l,
                SocketAddr::new(l.ip(), (i % 60000) as u16 + 1),
                None,
            );
        }
        assert!(m.new.by_sk.len() + m.new.by_tuple.len() <= CAPACITY);
        assert!(m.old.by_sk.len() + m.old.by_tuple.len() <= CAPACITY);
    }
}
