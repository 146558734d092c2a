//! A census that hands each socket over as the iterator reads it, holding
//! none: `kato sockets --sort none`. What a held census joins after the
//! walk is read before it instead: the owners (the task_file walk), every
//! conntrack entry (a held census asks only for its own flows' entries),
//! the running protects' pins. Memory then follows the owners (16 bytes a
//! held socket) and the conntrack tables, not the sockets.

use super::{
    owners::{Naming, Owners},
    row::Row,
    snapshot::{discover, Conntracks, NetnsSnapshot, SnapshotError, Targets},
    Socket,
};
use crate::{bpf::Bpf, policy::Policy, protect::pin::Pins, tcp::TcpState, workload::Resolver};

/// What every socket is joined with, read before the first one.
pub struct Stream {
    owners: Owners,
    conntracks: Conntracks,
    pins: Pins,
}

impl Stream {
    /// Reads the owners, conntrack tables and pins, and the timeouts
    /// discovered from them into `policy` (as [`discover`] does for a held
    /// census).
    pub fn prepare(
        bpf: &mut Bpf,
        targets: &Targets,
        policy: &mut Policy,
    ) -> Result<Self, SnapshotError> {
        let t0 = std::time::Instant::now();
        let mut naming = Naming::default();
        let held = bpf.read_owners(|r| Some(naming.held(&r)))?;
        let owners = naming.finish(held);
        log::debug!(
            "streaming: {} owners read before the sockets, in {:?}",
            owners.len(),
            t0.elapsed()
        );
        let conntracks = Conntracks::every_entry(targets)?;
        let namespaces = targets
            .iter()
            .map(|t| {
                let inode = super::snapshot::inode_of(t)?;
                Ok(NetnsSnapshot::<Socket> {
                    inode,
                    sockets: vec![],
                    sysctls: None,
                    conntrack: conntracks.of(inode),
                })
            })
            .collect::<Result<Vec<_>, SnapshotError>>()?;
        discover(policy, &namespaces);
        Ok(Self {
            owners,
            conntracks,
            pins: Pins::open(),
        })
    }

    /// Hands every socket of every target to `each`, namespace by
    /// namespace, as it is read.
    pub fn each(
        &self,
        bpf: &mut Bpf,
        targets: &Targets,
        resolver: &mut Resolver,
        mut each: impl FnMut(Socket) + Send,
    ) -> Result<(), SnapshotError> {
        let hz = bpf.kernel.hz;
        for t in targets {
            bpf.each_socket(t.as_ref(), |r| {
                let mut s = match Socket::from_record(&r, hz, None) {
                    Ok(s) => s,
                    Err(e) => return log::warn!("skipping a socket record: {e}"),
                };
                if let Some(o) = self.owners.get(s.sock) {
                    s.set_owner(o);
                }
                if let Some(id) = s.cgroup_id {
                    s.set_workload(resolver.resolve(id));
                }
                if s.state != TcpState::Listen {
                    s.conntrack = self.conntracks.tracked(s.local, s.remote);
                }
                self.pins.mark(&mut s);
                each(s);
            })?;
        }
        Ok(())
    }
}
