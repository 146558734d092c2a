//! Taking a snapshot of the TCP sockets of one or more network namespaces:
//! through the BPF iterators, or through sock_diag where they are missing.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use thiserror::Error;

use super::{diag, owners::Naming, row::Row, Socket};
use crate::{
    bpf::{Bpf, Iterators, LoadError},
    conntrack::{self, FlowKey, Tracked},
    netns::{self, NetnsError, NetnsRef},
    owner::OwnerCache,
};

/// Where sockets are read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Listing {
    /// BPF iterators, or sock_diag if the kernel cannot load them.
    #[default]
    Auto,
    Iter,
    Diag,
}

/// A namespace's `net.ipv4.tcp_keepalive_*` (seconds, seconds, probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sysctls {
    pub time_s: u32,
    pub intvl_s: u32,
    pub probes: u32,
}

#[derive(Debug, Clone)]
pub struct NetnsSnapshot<S = Socket> {
    pub inode: u32,
    pub sockets: Vec<S>,
    /// Read from the namespace's sockets (unknown without full sockets or
    /// through sock_diag).
    pub sysctls: Option<Sysctls>,
    /// The namespace's conntrack, when loaded (sockets carry their entries).
    pub conntrack: Option<conntrack::Namespace>,
}

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("sock_diag dump of netns {inode}: {source}")]
    Diag { inode: u32, source: std::io::Error },
    #[error("cannot read /proc/self/ns/net: {0}")]
    OwnNetns(std::io::Error),
    #[error(transparent)]
    Full(#[from] super::compact::packed::Full),
}

/// The namespaces to read; `None` stands for the caller's own (no setns).
pub type Targets = Vec<Option<NetnsRef>>;

pub(super) fn inode_of(t: &Option<NetnsRef>) -> Result<u32, SnapshotError> {
    Ok(match t {
        Some(ns) => ns.inode,
        None => netns::current().map_err(SnapshotError::OwnNetns)?.inode,
    })
}

impl Listing {
    /// What to ask of [`Bpf::open`] for this source.
    pub fn iterators(self) -> Iterators {
        match self {
            Listing::Auto => Iterators::Try,
            Listing::Iter => Iterators::Require,
            Listing::Diag => Iterators::Skip,
        }
    }
}

/// Reads sockets from the iterators, or sock_diag when they are
/// unavailable; the choice is made once, from what the kernel loaded.
pub struct Snapshotter {
    diag: bool,
    /// Why the iterators are not used, when they should have been.
    pub degraded: Option<String>,
}

impl Snapshotter {
    /// `bpf`: the object opened with [`Listing::iterators`] (None: no eBPF).
    pub fn new(source: Listing, bpf: Option<&Bpf>) -> Self {
        match (source, bpf.map(|b| &b.iterators)) {
            (Listing::Diag, _) | (_, None) => Self {
                diag: true,
                degraded: None,
            },
            (_, Some(Ok(()))) => Self {
                diag: false,
                degraded: None,
            },
            (_, Some(Err(e))) => Self {
                diag: true,
                degraded: Some(format!(
                    "BPF iterators unavailable ({e}); using sock_diag, keepalive settings unknown"
                )),
            },
        }
    }

    /// Are sockets read from the iterators (not sock_diag)?
    pub fn reads_iterators(&self) -> bool {
        !self.diag
    }

    pub fn take<S: Row>(
        &self,
        bpf: Option<&mut Bpf>,
        targets: &[Option<NetnsRef>],
    ) -> Result<Vec<NetnsSnapshot<S>>, SnapshotError> {
        match bpf {
            Some(b) if !self.diag => snapshot_iter(b, targets),
            _ => snapshot_diag(targets),
        }
    }
}

/// Through the BPF iterators, owners joined in. Records become sockets as
/// they are read; owners, read alongside, are joined after.
pub fn snapshot_iter<S: Row>(
    bpf: &mut Bpf,
    targets: &[Option<NetnsRef>],
) -> Result<Vec<NetnsSnapshot<S>>, SnapshotError> {
    let t0 = std::time::Instant::now();
    let hz = bpf.kernel.hz;
    let mut sysctls: Vec<Option<Sysctls>> = vec![None; targets.len()];
    let mut naming = Naming::default();
    let held = |r| Some(naming.held(&r));
    let (held, per_ns) = bpf.sockets_and_owners(targets, held, |i, r| {
        if sysctls[i].is_none() && r.flags & keepalive_common::sock_flags::FULL != 0 {
            sysctls[i] = Some(Sysctls {
                time_s: r.sysctl_ka_time / hz,
                intvl_s: r.sysctl_ka_intvl / hz,
                probes: u32::from(r.sysctl_ka_probes),
            });
        }
        Socket::from_record(&r, hz, None)
            .map(S::of)
            .map_err(|e| log::warn!("skipping a socket record: {e}"))
            .ok()
    })?;
    log::debug!("iterators read in {:?}", t0.elapsed());
    let owner_of = naming.finish(held);
    log::debug!("{} owners sorted at {:?}", owner_of.len(), t0.elapsed());
    let mut out = Vec::with_capacity(targets.len());
    for ((t, mut sockets), sysctls) in targets.iter().zip(per_ns).zip(sysctls) {
        for s in &mut sockets {
            if let Some(o) = owner_of.get(s.sk()) {
                s.set_owner(o);
            }
        }
        out.push(NetnsSnapshot {
            inode: inode_of(t)?,
            sockets,
            sysctls,
            conntrack: None,
        });
    }
    log::debug!("owners joined at {:?}", t0.elapsed());
    join_conntrack(targets, &mut out)?;
    log::debug!("snapshot decoded in {:?}", t0.elapsed());
    Ok(out)
}

/// Through sock_diag; owners found by inode via /proc.
pub fn snapshot_diag<S: Row>(
    targets: &[Option<NetnsRef>],
) -> Result<Vec<NetnsSnapshot<S>>, SnapshotError> {
    let mut owners = OwnerCache::default();
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let inode = inode_of(t)?;
        let mut sockets = in_netns(t, || diag::dump(inode))?
            .map_err(|source| SnapshotError::Diag { inode, source })?;
        for s in &mut sockets {
            if let Some(o) = owners.lookup(s.inode) {
                (s.pid, s.comm) = (Some(o.pid), Some(o.comm));
            }
        }
        out.push(NetnsSnapshot {
            inode,
            sockets: sockets.into_iter().map(S::of).collect(),
            sysctls: None,
            conntrack: None,
        });
    }
    join_conntrack(targets, &mut out)?;
    Ok(out)
}

/// (namespace, established timeout) of each namespace whose conntrack
/// tracks flows (loaded, with entries: the module is host-wide once loaded,
/// a namespace without NAT or `ct` rules tracks nothing).
pub fn conntrack_rules<S>(snaps: &[NetnsSnapshot<S>]) -> Vec<(u32, u32)> {
    snaps
        .iter()
        .filter_map(|n| {
            n.conntrack
                .filter(|c| c.entries > 0)
                .map(|c| (n.inode, c.established_timeout_s))
        })
        .collect()
}

/// The timeouts found rather than declared, into `policy`: each tracking
/// namespace's conntrack, and the IPVS virtual services of the caller's
/// namespace (the host's, where kube-proxy programs them).
pub fn discover<S>(policy: &mut crate::policy::Policy, snaps: &[NetnsSnapshot<S>]) {
    policy.set_conntrack(conntrack_rules(snaps));
    policy.ipvs = crate::ipvs::rules().unwrap_or_else(|e| {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!("reading IPVS services and timeouts: {e} (IPVS left out of risk)");
        }
        vec![]
    });
}

/// Runs `f` in the target namespace (the caller's own for None).
fn in_netns<T: Send>(t: &Option<NetnsRef>, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    match t {
        Some(ns) => netns::run_in(ns, f),
        None => Ok(f()),
    }
}

/// Every conntrack table that can see a connection: its own namespace's,
/// the caller's (the host's, which tracks containers' and Kubernetes pods'
/// flows), and any other snapshot namespace's (a router between two) that
/// holds the flow's tuple, original or NATed. A socket gets the entry of
/// the table with the shortest established timeout (the first to forget
/// it), and each namespace its conntrack. A table is dumped once, for the
/// flows of every namespace; none without CAP_NET_ADMIN or entries. A
/// failed dump leaves the entries unknown and says so once per process.
pub struct Conntracks(Vec<(u32, conntrack::Namespace, HashMap<FlowKey, Tracked>)>);

impl Conntracks {
    /// The tables of `targets` and the caller's namespace, each with the
    /// entries it holds of the flows `wanted()` makes (called only when
    /// some table holds entries); every entry where `wanted` is None.
    fn read<'w, W: Fn() -> &'w HashSet<FlowKey> + Sync>(
        targets: &[Option<NetnsRef>],
        wanted: Option<&W>,
    ) -> Result<Self, SnapshotError> {
        let mut tables = vec![];
        let with_own = targets.iter().any(Option::is_none);
        let mut each = |t: &Option<NetnsRef>| -> Result<(), SnapshotError> {
            let inode = inode_of(t)?;
            if let Some((ns, entries)) = in_netns(t, || table(wanted))? {
                tables.push((inode, ns, entries));
            }
            Ok(())
        };
        for t in targets {
            each(t)?;
        }
        if !with_own {
            each(&None)?;
        }
        Ok(Self(tables))
    }

    /// Every entry of every table: for a listing that prints each socket
    /// as it reads it, and so cannot name its flows first. Memory follows
    /// the conntrack tables (bounded by `nf_conntrack_max`), not the sockets.
    pub fn every_entry(targets: &[Option<NetnsRef>]) -> Result<Self, SnapshotError> {
        Self::read(targets, None::<&fn() -> &'static HashSet<FlowKey>>)
    }

    /// Namespace `inode`'s conntrack, where loaded.
    pub fn of(&self, inode: u32) -> Option<conntrack::Namespace> {
        self.0
            .iter()
            .find(|(ns, _, _)| *ns == inode)
            .map(|(_, c, _)| *c)
    }

    fn has_entries(&self) -> bool {
        self.0.iter().any(|(_, _, entries)| !entries.is_empty())
    }

    /// The flow's entry in the table that forgets it first.
    pub fn tracked(&self, local: SocketAddr, remote: SocketAddr) -> Option<Tracked> {
        let k = conntrack::key(local, remote);
        self.0
            .iter()
            .filter_map(|(ns, c, entries)| {
                entries.get(&k).map(|e| {
                    let e = Tracked { netns: *ns, ..*e };
                    (c.established_timeout_s, e)
                })
            })
            .min_by_key(|(timeout, _)| *timeout)
            .map(|(_, e)| e)
    }
}

/// Each snapshot's conntrack, and each socket's entry (see [`Conntracks`]).
fn join_conntrack<S: Row>(
    targets: &[Option<NetnsRef>],
    snaps: &mut [NetnsSnapshot<S>],
) -> Result<(), SnapshotError> {
    // The flows asked about, made only when some table holds entries: at
    // 100,000s of sockets the set is megabytes.
    let wanted = std::sync::OnceLock::new();
    let flows = || {
        wanted.get_or_init(|| {
            snaps
                .iter()
                .flat_map(|n| &n.sockets)
                .map(Row::flow)
                .filter(|(state, _, _)| *state != crate::tcp::TcpState::Listen)
                .map(|(_, local, remote)| conntrack::key(local, remote))
                .collect::<HashSet<_>>()
        })
    };
    let tables = Conntracks::read(targets, Some(&flows))?;
    drop(wanted);
    for snap in snaps.iter_mut() {
        snap.conntrack = tables.of(snap.inode);
        // Rows are fresh from this snapshot, without an entry yet.
        if !tables.has_entries() {
            continue;
        }
        for s in &mut snap.sockets {
            let (_, local, remote) = s.flow();
            s.set_conntrack(tables.tracked(local, remote));
        }
    }
    Ok(())
}

/// In the calling thread's namespace: its conntrack, and the entries of
/// `wanted()` flows it holds (every entry for None; none dumped when it
/// holds no entries, or without CAP_NET_ADMIN). None where conntrack is
/// not loaded.
fn table<'w>(
    wanted: Option<&impl Fn() -> &'w HashSet<FlowKey>>,
) -> Option<(conntrack::Namespace, HashMap<FlowKey, Tracked>)> {
    let ns = conntrack::namespace()?;
    // Without CAP_NET_ADMIN ctnetlink refuses every request: the banner
    // and doctor say the capability is not kept; nothing to repeat here.
    if ns.entries == 0 || !crate::caps::has(crate::caps::CAP_NET_ADMIN) {
        return Some((ns, HashMap::new()));
    }
    let wanted = wanted.map(|w| w());
    if wanted.is_some_and(HashSet::is_empty) {
        return Some((ns, HashMap::new()));
    }
    match conntrack::lookup(|k| wanted.is_none_or(|w| w.contains(k))) {
        Ok((found, undecodable)) => {
            if undecodable > 0 {
                log::warn!("{undecodable} conntrack entries could not be decoded");
            }
            Some((ns, found))
        }
        Err(e) => {
            // Once: without CAP_NET_ADMIN every snapshot would say it again.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                log::warn!(
                    "reading conntrack entries over ctnetlink: {e} (conntrack left out of risk)"
                );
            }
            Some((ns, HashMap::new()))
        }
    }
}
