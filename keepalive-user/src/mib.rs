//! The kernel's own TCP counters (`TcpExt:` in `/proc/net/netstat`), read
//! in one network namespace at a time: the count kato's own is checked
//! against. On a loaded 2-core 6.18 machine the kernel did not run kato's
//! timer programs for a few percent of keepalive runs (docs/benchmarks.md,
//! "Where the rest go"); this count has every probe.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, Read, Seek, SeekFrom},
};

use thiserror::Error;

use crate::netns::{self, NetnsError, NetnsRef};

#[derive(Debug, Error)]
pub enum MibError {
    #[error("reading the namespace's /proc/net/netstat: {0}")]
    Read(#[from] io::Error),
    #[error(transparent)]
    Enter(#[from] NetnsError),
    #[error("/proc/net/netstat has no TcpExt {0}")]
    Missing(&'static str),
}

/// `name`'s value on the `TcpExt:` lines of a `/proc/net/netstat` text
/// (a line of names, then a line of values).
pub fn tcpext(netstat: &str, name: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// A namespace's `/proc/net/netstat`, opened by a thread inside it. The
/// open file stays bound to that namespace: each read after is a `read`,
/// with no thread and no `setns`.
pub struct Netstat(File);

impl Netstat {
    /// Opens the netstat of `ns` (None: the calling thread's namespace).
    pub fn open(ns: Option<&NetnsRef>) -> Result<Self, MibError> {
        // A thread's /proc/thread-self/net is the namespace it entered.
        let open = || File::open("/proc/thread-self/net/netstat");
        let file = match ns {
            Some(ns) => netns::run_in(ns, open)??,
            None => open()?,
        };
        Ok(Netstat(file))
    }

    /// Keepalive probes the kernel has sent in the namespace since it was
    /// made: `TcpExt TCPKeepAlive`, now.
    pub fn keepalive_probes(&self) -> Result<u64, MibError> {
        let mut file = &self.0;
        file.seek(SeekFrom::Start(0))?;
        let mut text = String::with_capacity(8192);
        file.read_to_string(&mut text)?;
        tcpext(&text, "TCPKeepAlive").ok_or(MibError::Missing("TCPKeepAlive"))
    }
}

/// A count summed over namespaces that come and go, from a start: each
/// namespace seen at the start counts from its value then; one first seen
/// later was made since (its count starts at 0 when it is made), and so
/// counts whole. A namespace in scope at the start whose value could not
/// be read then counts from its first value read: it was not made since.
/// A namespace whose value fell is a new one at a reused inode. One that
/// vanished keeps what it added.
#[derive(Debug, Default)]
pub struct Since {
    last: HashMap<u32, u64>,
    /// In scope at the start, not read yet.
    unread: HashSet<u32>,
    total: u64,
}

impl Since {
    /// The values at the start, by namespace inode, and every namespace in
    /// scope then (those without a value among them).
    pub fn start(
        values: impl IntoIterator<Item = (u32, u64)>,
        in_scope: impl IntoIterator<Item = u32>,
    ) -> Self {
        let last: HashMap<u32, u64> = values.into_iter().collect();
        let unread = in_scope
            .into_iter()
            .filter(|i| !last.contains_key(i))
            .collect();
        Since {
            last,
            unread,
            total: 0,
        }
    }

    /// The namespaces read now: the total since the start.
    pub fn update(&mut self, values: impl IntoIterator<Item = (u32, u64)>) -> u64 {
        for (inode, now) in values {
            if self.unread.remove(&inode) {
                self.last.insert(inode, now);
                continue;
            }
            let was = self.last.insert(inode, now).unwrap_or(0);
            self.total += if now >= was { now - was } else { now };
        }
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPKeepAlive TCPAbortOnData\n\
                           TcpExt: 0 42 7\n\
                           IpExt: InNoRoutes TCPKeepAlive\n\
                           IpExt: 1 99\n";

    #[test]
    fn tcpext_reads_the_named_column_of_its_own_lines() {
        assert_eq!(tcpext(NETSTAT, "TCPKeepAlive"), Some(42));
        assert_eq!(tcpext(NETSTAT, "TCPAbortOnData"), Some(7));
        assert_eq!(tcpext(NETSTAT, "InNoRoutes"), None);
        assert_eq!(tcpext("TcpExt: TCPKeepAlive\n", "TCPKeepAlive"), None);
        assert_eq!(tcpext("", "TCPKeepAlive"), None);
    }

    #[test]
    fn the_own_namespace_has_a_count_read_again_and_again() {
        let own = netns::current().unwrap();
        let here = Netstat::open(None).unwrap();
        let entered = Netstat::open(Some(&own)).unwrap();
        let a = here.keepalive_probes().unwrap();
        let b = entered.keepalive_probes().unwrap();
        let c = here.keepalive_probes().unwrap();
        assert!(
            a <= b && b <= c,
            "one namespace, read three times: {a}, {b}, {c}"
        );
    }

    #[test]
    fn since_counts_from_the_start_and_new_namespaces_whole() {
        let mut s = Since::start([(1, 100), (2, 5)], [1, 2]);
        assert_eq!(s.update([(1, 100), (2, 5)]), 0);
        assert_eq!(s.update([(1, 130), (2, 6)]), 31);
        // Namespace 3 was made after the start: all of its count is new.
        assert_eq!(s.update([(1, 130), (3, 4)]), 35);
        // 2 vanished and is back with less: a new namespace at its inode.
        assert_eq!(s.update([(2, 2), (3, 4)]), 37);
    }

    #[test]
    fn a_namespace_unread_at_the_start_counts_from_its_first_reading() {
        // 2 was in scope at the start but could not be read: its 50 are
        // from before the start. 3 was not in scope: made since.
        let mut s = Since::start([(1, 100)], [1, 2]);
        assert_eq!(s.update([(1, 101), (2, 50)]), 1);
        assert_eq!(s.update([(1, 101), (2, 53), (3, 4)]), 8);
    }
}
