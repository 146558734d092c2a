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
    sockets::snapshot::{discover, NetnsSnapshot, SnapshotError, Snapshotter},
    workload::{Named, Resolver},
};

/// Takes the census of `targets` (None: the caller's own namespace).
pub fn take(
    snapshotter: &Snapshotter,
    bpf: Option<&mut Bpf>,
    targets: &[Option<NetnsRef>],
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> Result<Vec<NetnsSnapshot>, SnapshotError> {
    let mut snaps = snapshotter.take(bpf, targets)?;
    for s in snaps.iter_mut().flat_map(|n| &mut n.sockets) {
        // Cached per cgroup: one lookup however many sockets share it.
        if let Some(id) = s.cgroup_id {
            s.workload = Named(Some(resolver.resolve(id)));
        }
    }
    discover(policy, &snaps);
    Ok(snaps)
}
