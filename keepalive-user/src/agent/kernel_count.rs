//! The kernel's own keepalive probe count in the namespaces the agent
//! watches (`kato_kernel_keepalive_probes_total`): TcpExt TCPKeepAlive of
//! each, read at scrape time and summed from the agent's start. It stands
//! beside kato's count from its timer programs, which the kernel does not
//! run for every timer under load (docs/benchmarks.md, "Where the rest go").

use std::collections::HashMap;

use crate::{
    mib::{Netstat, Since},
    netns,
    sockets::snapshot::Targets,
};

#[derive(Default)]
pub struct KernelProbes {
    since: Since,
    /// The netstat of each namespace of the last census, by inode, opened
    /// once: a scrape reads these files, it enters no namespace. An open
    /// file holds its namespace until the next census lets it go.
    open: HashMap<u32, Netstat>,
}

impl KernelProbes {
    /// Counts from now, in `in_scope` (None: the agent's own namespace,
    /// at inode `own`).
    pub fn start(in_scope: &Targets, own: u32) -> Self {
        let mut k = KernelProbes::default();
        k.rescope(in_scope, own);
        k.since = Since::start(k.counts(), in_scope.iter().map(|t| inode_of(t, own)));
        k
    }

    /// The namespaces of a new census: opens the new ones' netstat, lets
    /// go of those gone from it.
    pub fn rescope(&mut self, in_scope: &Targets, own: u32) {
        let inode = |t: &Option<netns::NetnsRef>| inode_of(t, own);
        let wanted: Vec<u32> = in_scope.iter().map(inode).collect();
        self.open.retain(|i, _| wanted.contains(i));
        for t in in_scope {
            let i = inode(t);
            if self.open.contains_key(&i) {
                continue;
            }
            match Netstat::open(t.as_ref()) {
                Ok(f) => {
                    self.open.insert(i, f);
                }
                Err(e) => log::debug!("netstat of netns {i}: {e}"),
            }
        }
    }

    /// The total since the start, read now.
    pub fn total(&mut self) -> u64 {
        let counts = self.counts();
        self.since.update(counts)
    }

    /// TcpExt TCPKeepAlive of each open namespace, by inode; one that
    /// cannot be read now is left out.
    fn counts(&self) -> Vec<(u32, u64)> {
        self.open
            .iter()
            .filter_map(|(&i, f)| match f.keepalive_probes() {
                Ok(n) => Some((i, n)),
                Err(e) => {
                    log::debug!("TCPKeepAlive of netns {i}: {e}");
                    None
                }
            })
            .collect()
    }
}

/// A target's namespace inode (None: the agent's own, `own`).
fn inode_of(t: &Option<netns::NetnsRef>, own: u32) -> u32 {
    t.as_ref().map_or(own, |n| n.inode)
}
