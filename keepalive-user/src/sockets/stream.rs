//! A census that hands each socket over as the iterator reads it, holding
//! none: `kato sockets --sort none`. What a held census joins after the
//! walk is read before it instead: the owners (the task_file walk), every
//! conntrack entry (a held census asks only for its own flows' entries),
//! the running protects' pins. Memory then follows the owners (16 bytes a
//! held socket) and the conntrack tables, not the sockets.
//!
//! A sorted listing ([`Joins::pack`]) packs each socket as it is read and
//! reads the owners beside the sockets, on a thread of their own; each
//! packed row is given its owner after both walks.

use super::{
    compact::{packed::Packed, Compact},
    owners::{Naming, Owners},
    row::Row,
    snapshot::{discover, Conntracks, NetnsSnapshot, SnapshotError, Targets},
    Socket,
};
use crate::{bpf::Bpf, policy::Policy, protect::pin::Pins, tcp::TcpState, workload::Resolver};

/// What every socket is joined with, read before the first one.
pub struct Stream {
    owners: Owners,
    joins: Joins,
}

/// What every socket is joined with but its owner: the conntrack entries
/// and the running protects' pins.
pub struct Joins {
    conntracks: Conntracks,
    pins: Pins,
}

impl Stream {
    /// Reads the owners, then [`Joins::prepare`].
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
        Ok(Self {
            owners,
            joins: Joins::prepare(targets, policy)?,
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
                self.joins.join(&mut s, resolver);
                each(s);
            })?;
        }
        Ok(())
    }
}

impl Joins {
    /// Reads the conntrack tables and pins, and the timeouts discovered
    /// from them into `policy` (as [`discover`] does for a held census).
    pub fn prepare(targets: &Targets, policy: &mut Policy) -> Result<Self, SnapshotError> {
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
            conntracks,
            pins: Pins::open(),
        })
    }

    /// Joins `s` with its workload, conntrack entry and pin.
    fn join(&self, s: &mut Socket, resolver: &mut Resolver) {
        if let Some(id) = s.cgroup_id {
            s.set_workload(resolver.resolve(id));
        }
        if s.state != TcpState::Listen {
            s.conntrack = self.conntracks.tracked(s.local, s.remote);
        }
        self.pins.mark(s);
    }

    /// Every socket of every target that `keep` keeps (it sees no owner
    /// yet), packed as read while the owners are read on a thread beside,
    /// and handed to `packed` with its offset; then each row is given its
    /// owner.
    pub fn pack(
        &self,
        bpf: &mut Bpf,
        targets: &Targets,
        resolver: &mut Resolver,
        mut keep: impl FnMut(&Socket) -> bool + Send,
        mut packed: impl FnMut(&Compact, u32) + Send,
    ) -> Result<Packed, SnapshotError> {
        let t0 = std::time::Instant::now();
        let hz = bpf.kernel.hz;
        let mut naming = Naming::default();
        let (mut rows, mut n) = (Packed::default(), 0usize);
        let mut full = None;
        let (held, _) = bpf.sockets_and_owners(
            targets,
            |r| Some(naming.held(&r)),
            |_, r| -> Option<()> {
                let mut s = match Socket::from_record(&r, hz, None) {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("skipping a socket record: {e}");
                        return None;
                    }
                };
                self.join(&mut s, resolver);
                if full.is_none() && keep(&s) {
                    let c = Compact::of(&s);
                    match rows.push(&c) {
                        Ok(a) => {
                            n += 1;
                            packed(&c, a);
                        }
                        Err(e) => full = Some(e),
                    }
                }
                None
            },
        )?;
        if let Some(e) = full {
            return Err(e.into());
        }
        let owners = naming.finish(held);
        rows.set_owners(&owners);
        log::debug!(
            "{n} rows packed in {} bytes beside {} owners, in {:?}",
            rows.len_bytes(),
            owners.len(),
            t0.elapsed()
        );
        Ok(rows)
    }
}
