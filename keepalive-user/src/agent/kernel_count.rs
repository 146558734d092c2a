//! The kernel's own keepalive probe count in the namespaces the agent
//! watches (`kato_kernel_keepalive_probes_total`): TcpExt TCPKeepAlive of
//! each, read at scrape time and summed from the agent's start. It stands
//! beside kato's count from its timer programs, which the kernel does not
//! run for every timer under load (docs/benchmarks.md, "Where the rest go").

use crate::{
    mib::{self, Since},
    netns,
    sockets::snapshot::Targets,
};

#[derive(Default)]
pub struct KernelProbes {
    since: Since,
    /// The namespaces of the last census (None: the agent's own): a
    /// scrape reads these, it lists no namespaces itself.
    in_scope: Targets,
}

impl KernelProbes {
    /// Counts from now, in `in_scope`.
    pub fn start(in_scope: Targets) -> Self {
        let since = Since::start(counts(&in_scope));
        KernelProbes { since, in_scope }
    }

    /// The namespaces of a new census, read from the next scrape on.
    pub fn rescope(&mut self, in_scope: &Targets) {
        self.in_scope.clone_from(in_scope);
    }

    /// The total since the start, read now.
    pub fn total(&mut self) -> u64 {
        self.since.update(counts(&self.in_scope))
    }
}

/// TcpExt TCPKeepAlive of each namespace, by inode; one that cannot be
/// read now (gone, not enterable) is left out.
fn counts(in_scope: &Targets) -> Vec<(u32, u64)> {
    let Ok(own) = netns::current() else {
        return vec![];
    };
    in_scope
        .iter()
        .filter_map(|t| {
            let inode = t.as_ref().map_or(own.inode, |n| n.inode);
            match mib::keepalive_probes(t.as_ref()) {
                Ok(n) => Some((inode, n)),
                Err(e) => {
                    log::debug!("TCPKeepAlive of netns {inode}: {e}");
                    None
                }
            }
        })
        .collect()
}
