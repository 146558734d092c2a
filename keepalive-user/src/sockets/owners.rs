//! `sk` → owning process, from `iter/task_file` records, in 12 bytes per
//! socket: a sorted vector, searched by halves within a coarse index of
//! address slices, rather than a hash map of [`Owner`]s (~43 bytes per
//! socket, plus the 40-byte records it was made from). A listing of
//! 100,000s of sockets holds this for the whole walk.

use std::{collections::HashMap, sync::Arc};

use keepalive_common::OwnerRecord;

use crate::owner::Owner;

/// One socket's holder: its `sk` and its process (PID and name) as an
/// index into [`Owners::pairs`]. Packed to 4-byte alignment: 12 bytes, not
/// 16, for each of a listing's 100,000s of sockets.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
pub struct Held {
    sk: u64,
    owner: u32,
}

const _: () = assert!(size_of::<Held>() == 12);

/// Turns records into [`Held`] entries as they are read, naming each
/// process once however many sockets it holds.
#[derive(Default)]
pub struct Naming {
    pairs: Vec<(u32, Arc<str>)>,
    index: HashMap<(u32, [u8; 16]), u32>,
}

impl Naming {
    pub fn held(&mut self, r: &OwnerRecord) -> Held {
        let pairs = &mut self.pairs;
        let owner = *self.index.entry((r.tgid, r.comm)).or_insert_with(|| {
            pairs.push((r.tgid, crate::text::comm(&r.comm).into()));
            // A process per socket at most: fewer than 2^32.
            u32::try_from(pairs.len() - 1).unwrap_or(u32::MAX)
        });
        Held { sk: r.sk, owner }
    }

    /// The table, once every record is read.
    pub fn finish(self, mut held: Vec<Held>) -> Owners {
        // A socket shared by several processes (fork) is attributed to the
        // lowest PID, like `ss -p`'s first entry: sorted by (sk, pid), the
        // first of each sk stays. Within one PID (threads with file tables
        // of their own, named apart), the name seen first in the walk: the
        // lower index.
        let pairs = &self.pairs;
        held.sort_unstable_by_key(|h| {
            let (sk, owner) = (h.sk, h.owner);
            (
                sk,
                pairs.get(owner as usize).map_or(u32::MAX, |p| p.0),
                owner,
            )
        });
        held.dedup_by_key(|h| h.sk);
        held.shrink_to_fit();
        Owners {
            buckets: Buckets::new(&held),
            held,
            pairs: self.pairs,
        }
    }
}

pub struct Owners {
    held: Vec<Held>,
    buckets: Buckets,
    /// Each distinct (PID, name), by index.
    pairs: Vec<(u32, Arc<str>)>,
}

/// A coarse index over the sorted `held`: where each equal slice of the
/// address range starts. A lookup searches by halves one slice's entries,
/// not a million (some twenty cache misses): a listing of 1M sockets spent
/// 11% of its time in that search, 3-6% now. The kernel's socket slabs
/// are dense where they lie, so a slice holds none or many (~200 at 1M
/// loopback sockets here, 22 GB apart end to end).
#[derive(Debug, Default)]
struct Buckets {
    min: u64,
    shift: u32,
    /// `starts[b]`: the first entry in slice `b` or after; one more than
    /// the slices, the last being the entries' count.
    starts: Vec<u32>,
}

/// At most 256 KiB of index (at 1M sockets spread evenly, ~16 entries a
/// slice).
const MAX_BUCKETS: usize = 1 << 16;

impl Buckets {
    fn new(held: &[Held]) -> Self {
        let (Some(first), Some(last)) = (held.first(), held.last()) else {
            return Buckets::default();
        };
        let (min, span) = (first.sk, last.sk - first.sk);
        let n = (held.len() / 8).next_power_of_two().min(MAX_BUCKETS);
        // Every entry's slice, (sk - min) >> shift, is below n.
        let shift = (64 - span.leading_zeros()).saturating_sub(n.trailing_zeros());
        let mut starts = Vec::with_capacity(n + 1);
        let mut i = 0;
        for b in 0..n as u64 {
            while held.get(i).is_some_and(|h| (h.sk - min) >> shift < b) {
                i += 1;
            }
            starts.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        starts.push(u32::try_from(held.len()).unwrap_or(u32::MAX));
        Buckets { min, shift, starts }
    }

    /// The entries that may hold `sk`.
    fn range(&self, sk: u64) -> Option<std::ops::Range<usize>> {
        let b = usize::try_from(sk.checked_sub(self.min)? >> self.shift).ok()?;
        Some(*self.starts.get(b)? as usize..*self.starts.get(b + 1)? as usize)
    }
}

impl Owners {
    pub fn get(&self, sk: u64) -> Option<Owner> {
        let (pid, comm) = self.pairs.get(self.index(sk)? as usize)?;
        Some(Owner {
            pid: *pid,
            comm: Arc::clone(comm),
        })
    }

    /// `sk`'s owner as an index into [`Owners::pairs`].
    pub fn index(&self, sk: u64) -> Option<u32> {
        let part = &self.held[self.buckets.range(sk)?];
        let i = part.binary_search_by_key(&sk, |h| h.sk).ok()?;
        Some(part[i].owner)
    }

    /// Each distinct (PID, name) an [`Owners::index`] names.
    pub fn pairs(&self) -> &[(u32, Arc<str>)] {
        &self.pairs
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The table of `records`, all at hand.
#[cfg(test)]
pub(crate) fn owners(records: &[OwnerRecord]) -> Owners {
    let mut naming = Naming::default();
    let held = records.iter().map(|r| naming.held(r)).collect();
    naming.finish(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sk: u64, tgid: u32, comm: &[u8]) -> OwnerRecord {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        OwnerRecord {
            sk,
            tgid,
            fd: 3,
            comm: c,
            ..OwnerRecord::default()
        }
    }

    #[test]
    fn owner_is_lowest_pid() {
        let m = owners(&[
            rec(1, 200, b"child"),
            rec(1, 100, b"parent"),
            rec(2, 7, b"fifteen-chars-x"),
        ]);
        assert_eq!(
            m.get(1),
            Some(Owner {
                pid: 100,
                comm: "parent".into()
            })
        );
        assert_eq!(&*m.get(2).unwrap().comm, "fifteen-chars-x");
        assert_eq!(m.get(3), None);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn each_process_is_named_once() {
        let recs: Vec<OwnerRecord> = (0..1000u64)
            .map(|sk| rec(sk * 7919 % 1000, 40 + (sk % 3) as u32, b"holder"))
            .collect();
        let m = owners(&recs);
        assert_eq!(m.pairs.len(), 3);
        assert_eq!(m.len(), 1000);
        for sk in 0..1000u64 {
            let o = m.get(sk).unwrap();
            // sk*7919 % 1000 is a permutation: find which record made sk.
            let from = (0..1000u64).find(|i| i * 7919 % 1000 == sk).unwrap();
            assert_eq!(o.pid, 40 + (from % 3) as u32);
            // One name per process, shared by all its sockets.
            let other = (0..1000u64)
                .find(|&o| o != sk && m.get(o).unwrap().pid == o_pid(&m, sk))
                .unwrap();
            assert!(Arc::ptr_eq(&o.comm, &m.get(other).unwrap().comm));
        }
    }

    fn o_pid(m: &Owners, sk: u64) -> u32 {
        m.get(sk).unwrap().pid
    }

    #[test]
    fn every_address_is_found_through_its_slice_and_no_other() {
        // Kernel addresses in clusters far apart, a lone one at the top.
        for n in [0u64, 1, 7, 9, 100, 5000] {
            let mut sks: Vec<u64> = (0..n)
                .map(|i| 0xffff_8880_0000_0000 + (i % 4) * (1 << 34) + i * 2368 + (i * i % 97))
                .collect();
            if n > 1 {
                sks.push(u64::MAX - 1);
            }
            let recs: Vec<OwnerRecord> = sks
                .iter()
                .map(|&sk| rec(sk, (sk % 5) as u32 + 1, b"p"))
                .collect();
            let m = owners(&recs);
            assert!(m.buckets.starts.len() <= MAX_BUCKETS + 1);
            for &sk in &sks {
                assert_eq!(
                    m.get(sk).map(|o| o.pid),
                    Some((sk % 5) as u32 + 1),
                    "{n} {sk:x}"
                );
                for near in [sk.wrapping_sub(1), sk.wrapping_add(1)] {
                    if !sks.contains(&near) {
                        assert_eq!(m.get(near), None, "{n} {near:x}");
                    }
                }
            }
            for far in [0, 1, 0xffff_8880_0000_0000 - 1, u64::MAX] {
                assert_eq!(m.get(far), None, "{n} {far:x}");
            }
        }
    }

    #[test]
    fn one_process_under_two_names_keeps_the_name_seen_first() {
        // Threads with file tables of their own, renamed: the same socket
        // under one PID and two names.
        let m = owners(&[rec(5, 9, b"worker"), rec(6, 9, b"main"), rec(5, 9, b"main")]);
        assert_eq!(&*m.get(5).unwrap().comm, "worker");
        assert_eq!(m.get(5).unwrap().pid, 9);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_thread_of_the_same_process_with_another_name_is_named_apart() {
        // task_file walks threads too; a renamed thread shares the fd table.
        let m = owners(&[rec(5, 9, b"main"), rec(6, 9, b"worker")]);
        assert_eq!(&*m.get(5).unwrap().comm, "main");
        assert_eq!(&*m.get(6).unwrap().comm, "worker");
    }
}
