//! One look at the host's TCP sockets, taken the same way by the agent,
//! `kato sockets` (once and with `--watch`) and `kato doctor`: a snapshot of
//! the namespaces asked for (the iterators or sock_diag, with owners and
//! every conntrack table that sees a flow joined in), each socket's
//! workload named from its cgroup, and the idle timeouts found rather than
//! declared (conntrack, IPVS) put into the policy.

use crate::{
    bpf::Bpf,
    netns::NetnsRef,
    policy::Policy,
    sockets::{
        row::Row,
        snapshot::{discover, NetnsSnapshot, SnapshotError, Snapshotter},
        Socket,
    },
    workload::Resolver,
};

/// Takes the census of `targets` (None: the caller's own namespace).
pub fn take(
    snapshotter: &Snapshotter,
    bpf: Option<&mut Bpf>,
    targets: &[Option<NetnsRef>],
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> Result<Vec<NetnsSnapshot>, SnapshotError> {
    take_rows::<Socket>(snapshotter, bpf, targets, resolver, policy)
}

/// [`take`], each socket held as an `S` (a listing's are [`Compact`](crate::sockets::compact::Compact)).
pub fn take_rows<S: Row>(
    snapshotter: &Snapshotter,
    bpf: Option<&mut Bpf>,
    targets: &[Option<NetnsRef>],
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> Result<Vec<NetnsSnapshot<S>>, SnapshotError> {
    let mut snaps = snapshotter.take::<S>(bpf, targets)?;
    for s in snaps.iter_mut().flat_map(|n| &mut n.sockets) {
        // Cached per cgroup: one lookup however many sockets share it.
        if let Some(id) = s.cgroup() {
            s.set_workload(resolver.resolve(id));
        }
    }
    discover(policy, &snaps);
    Ok(snaps)
}
