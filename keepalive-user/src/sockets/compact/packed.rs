//! [`Compact`] rows packed end to end in one byte array, for a sorted
//! listing that must hold every row until the last is read: numbers as
//! LEB128 varints, IPv4 addresses in 4 bytes, owners, workloads and
//! namespaces as indices into tables of the distinct ones, zero counts
//! left out. A loopback socket takes ~61 bytes here against a
//! `Compact`'s 176. A row is read back whole ([`Packed::get`]) by its
//! offset, which the listing keeps in its sort key. The owner sits at a
//! fixed place at the front ([`Packed::set_owners`]), so that rows packed
//! while the owners are still being read can be given theirs after.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use super::{bit, Compact};
use crate::{
    conntrack::{CtState, Tracked},
    sockets::{owners::Owners, TimerKind},
    tcp::TcpState,
    workload::Workload,
};

/// Which optional parts a row has (its first byte after `bits`).
mod has {
    pub const WORKLOAD: u8 = 1 << 0;
    pub const CONNTRACK: u8 = 1 << 1;
    /// Addresses in 16 bytes each: IPv6, or bytes an IPv4 row does not use.
    pub const WIDE: u8 = 1 << 3;
}

/// Where a row's fixed front ends: bits (2), `has` (1), state, timer
/// kind, the mask of small counts (1 each), the owner's index (4,
/// [`NO_OWNER`]: none), the kernel address (8).
const AT_HAS: usize = 2;
const AT_MASK: usize = 5;
const AT_OWNER: usize = 6;
const AT_SOCK: usize = 10;
const FRONT: usize = 18;
const NO_OWNER: u32 = u32::MAX;

/// Varints after a row's addresses: cookie, cgroup, inode, and the 13 of
/// [`Packed::push`]'s second list; one more with a workload, three more
/// with a conntrack entry.
const VARINTS: usize = 16;

/// The rows grew past what a 32-bit offset reaches (4 GiB).
#[derive(Debug, thiserror::Error)]
#[error("the listing's rows passed 4 GiB packed: list fewer (a filter) or with --sort none")]
pub struct Full;

/// Distinct values, each given the index of its first push.
#[derive(Debug, Default)]
struct Table<K, V> {
    index: HashMap<K, u32>,
    values: Vec<V>,
}

impl<K: Eq + Hash, V: Clone> Table<K, V> {
    fn of(&mut self, key: K, value: &V) -> u32 {
        let next = self.values.len() as u32;
        *self.index.entry(key).or_insert_with(|| {
            self.values.push(value.clone());
            next
        })
    }
}

/// A row's owner: PID and name (a row made from a `Compact` may know one
/// without the other).
type OwnerPair = (u32, Option<Arc<str>>);

#[derive(Debug, Default)]
pub struct Packed {
    bytes: Vec<u8>,
    owners: Table<OwnerPair, OwnerPair>,
    /// Workloads by their `Arc`: a census resolves each cgroup once.
    workloads: Table<usize, Arc<Workload>>,
    namespaces: Table<u32, u32>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A reader over one row; rows are written by [`Packed::push`] only, so a
/// short or malformed one is a bug, not input: it panics.
struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.b.split_first().expect("a packed row ends early");
        self.b = rest;
        *first
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().expect("split at N")
    }
    fn varint(&mut self) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    fn u32(&mut self) -> u32 {
        self.varint() as u32
    }
}

const TIMERS: [TimerKind; 5] = [
    TimerKind::Off,
    TimerKind::On,
    TimerKind::Keepalive,
    TimerKind::TimeWait,
    TimerKind::Probe,
];

fn timer_code(k: TimerKind) -> u8 {
    match k {
        TimerKind::Off => 0,
        TimerKind::On => 1,
        TimerKind::Keepalive => 2,
        TimerKind::TimeWait => 3,
        TimerKind::Probe => 4,
    }
}

/// Conntrack's own numbers, and one past them for kato's `Forgotten`.
fn ct_code(s: CtState) -> u8 {
    match s {
        CtState::Forgotten => 10,
        s => (0..10)
            .find(|&v| CtState::from_raw(v) == Some(s))
            .expect("every other state has its raw value"),
    }
}

fn ct_state(code: u8) -> CtState {
    match code {
        10 => CtState::Forgotten,
        v => CtState::from_raw(v).expect("written by ct_code"),
    }
}

impl Packed {
    /// Bytes held by the rows (not the tables).
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Appends `c`; its offset, to [`Packed::get`] it back by.
    pub fn push(&mut self, c: &Compact) -> Result<u32, Full> {
        let at = u32::try_from(self.bytes.len()).map_err(|_| Full)?;
        let wide = c.has(bit::V6) || c.local_ip[4..] != [0; 12] || c.remote_ip[4..] != [0; 12];
        let mut has = 0;
        let mut flag = |f: u8, on: bool| {
            if on {
                has |= f;
            }
        };
        flag(has::WORKLOAD, c.workload.is_some());
        flag(has::CONNTRACK, c.conntrack.is_some());
        flag(has::WIDE, wide);
        let small = [
            c.timer_retransmits,
            c.timer_probes,
            c.probes_unanswered,
            c.retransmits,
            c.ka_count,
            c.from_kato,
        ];
        let mask = small
            .iter()
            .enumerate()
            .fold(0u8, |m, (i, &v)| if v != 0 { m | 1 << i } else { m });
        // Table indices first: the tables and the bytes are both `self`'s.
        let netns = self.namespaces.of(c.netns, &c.netns);
        let workload = c
            .workload
            .as_ref()
            .map(|w| self.workloads.of(Arc::as_ptr(w) as usize, w));
        let owner = if c.pid != 0 || c.comm.is_some() {
            let pair = (c.pid, c.comm.clone());
            self.owners.of(pair.clone(), &pair)
        } else {
            NO_OWNER
        };
        let conntrack = c.conntrack.map(|t| {
            (
                t.remaining_s,
                self.namespaces.of(t.netns, &t.netns),
                ct_code(t.state),
            )
        });
        let o = &mut self.bytes;
        o.extend_from_slice(&c.bits.to_le_bytes());
        o.extend_from_slice(&[has, c.state as u8, timer_code(c.timer_kind), mask]);
        o.extend_from_slice(&owner.to_le_bytes());
        o.extend_from_slice(&c.sock.to_le_bytes());
        o.extend(small.iter().filter(|&&v| v != 0));
        o.extend_from_slice(&c.local_port.to_le_bytes());
        o.extend_from_slice(&c.remote_port.to_le_bytes());
        let n = if wide { 16 } else { 4 };
        o.extend_from_slice(&c.local_ip[..n]);
        o.extend_from_slice(&c.remote_ip[..n]);
        for v in [c.cookie, c.cgroup_id, c.inode] {
            put_varint(o, v);
        }
        for v in [
            netns,
            c.uid,
            c.recv_q,
            c.send_q,
            c.timer_ms,
            c.idle_ms,
            c.recv_ms,
            c.sent_ms,
            c.ka_idle_s,
            c.ka_intvl_s,
            c.user_timeout_ms,
            c.segs_in,
            c.segs_out,
        ]
        .into_iter()
        .chain(workload)
        {
            put_varint(o, v.into());
        }
        if let Some((remaining, netns, state)) = conntrack {
            for v in [remaining, netns, state.into()] {
                put_varint(o, v.into());
            }
        }
        Ok(at)
    }

    /// The kernel address of the row at `at`.
    pub fn sock_at(&self, at: u32) -> u64 {
        let at = at as usize + AT_SOCK;
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    /// The length of the row at `at`, read from its front and varints.
    fn row_len(&self, at: usize) -> usize {
        let row = &self.bytes[at..];
        let (has, mask) = (row[AT_HAS], row[AT_MASK]);
        let ips = if has & has::WIDE != 0 { 32 } else { 8 };
        let mut r = Reader {
            b: &row[FRONT + mask.count_ones() as usize + 4 + ips..],
        };
        let varints = VARINTS
            + usize::from(has & has::WORKLOAD != 0)
            + 3 * usize::from(has & has::CONNTRACK != 0);
        for _ in 0..varints {
            r.varint();
        }
        row.len() - r.b.len()
    }

    /// Gives every row whose kernel address `owners` knows its owner (as
    /// `Row::set_owner`), walking the rows end to end: the listing keeps
    /// no list of offsets beside its keys.
    pub fn set_owners(&mut self, owners: &Owners) {
        // Each of the owners' pairs as an index into the rows' table.
        let ours: Vec<u32> = owners
            .pairs()
            .iter()
            .map(|(pid, comm)| {
                let pair = (*pid, Some(Arc::clone(comm)));
                self.owners.of(pair.clone(), &pair)
            })
            .collect();
        let mut at = 0;
        while at < self.bytes.len() {
            if let Some(i) = owners.index(self.sock_at(at as u32)) {
                let owner = ours.get(i as usize).copied().unwrap_or(NO_OWNER);
                let row = &mut self.bytes[at..at + FRONT];
                let bits = u16::from_le_bytes([row[0], row[1]]) | bit::PID;
                row[..2].copy_from_slice(&bits.to_le_bytes());
                row[AT_OWNER..AT_SOCK].copy_from_slice(&owner.to_le_bytes());
            }
            at += self.row_len(at);
        }
    }

    /// Touches the rows at `ats`, each one's first and 64th byte (a row is
    /// ~61 bytes on loopback, it may cross a cache line). Loads that wait
    /// on nothing: the CPU fetches many of the rows at once, where `get`
    /// meets each miss alone. A sorted listing visits its rows out of the
    /// order they were packed in, all over some 60 MB at 1M sockets.
    pub fn warm(&self, ats: impl Iterator<Item = u32>) {
        let Some(last) = self.bytes.len().checked_sub(1) else {
            return;
        };
        let mut x = 0u8;
        for at in ats {
            let at = at as usize;
            x ^= self.bytes[at.min(last)] ^ self.bytes[(at + 63).min(last)];
        }
        std::hint::black_box(x);
    }

    /// The row pushed at `at`.
    pub fn get(&self, at: u32) -> Compact {
        let mut r = Reader {
            b: &self.bytes[at as usize..],
        };
        let bits = u16::from_le_bytes(r.array());
        let [has, state, timer, mask] = r.array();
        let owner = u32::from_le_bytes(r.array());
        let sock = u64::from_le_bytes(r.array());
        let mut small = [0u8; 6];
        for (i, v) in small.iter_mut().enumerate() {
            if mask & 1 << i != 0 {
                *v = r.byte();
            }
        }
        let local_port = u16::from_le_bytes(r.array());
        let remote_port = u16::from_le_bytes(r.array());
        let (mut local_ip, mut remote_ip) = ([0u8; 16], [0u8; 16]);
        let n = if has & has::WIDE != 0 { 16 } else { 4 };
        for ip in [&mut local_ip, &mut remote_ip] {
            ip[..n].copy_from_slice(r.take(n));
        }
        let (cookie, cgroup_id, inode) = (r.varint(), r.varint(), r.varint());
        let netns = self.namespaces.values[r.u32() as usize];
        let [uid, recv_q, send_q] = [r.u32(), r.u32(), r.u32()];
        let [timer_ms, idle_ms, recv_ms, sent_ms] = [r.u32(), r.u32(), r.u32(), r.u32()];
        let [ka_idle_s, ka_intvl_s, user_timeout_ms] = [r.u32(), r.u32(), r.u32()];
        let [segs_in, segs_out] = [r.u32(), r.u32()];
        let workload = (has & has::WORKLOAD != 0)
            .then(|| Arc::clone(&self.workloads.values[r.u32() as usize]));
        let (pid, comm) = match owner {
            NO_OWNER => (0, None),
            i => self.owners.values[i as usize].clone(),
        };
        let conntrack = (has & has::CONNTRACK != 0).then(|| Tracked {
            remaining_s: r.u32(),
            netns: self.namespaces.values[r.u32() as usize],
            state: ct_state(r.u32() as u8),
        });
        let [timer_retransmits, timer_probes, probes_unanswered, retransmits, ka_count, from_kato] =
            small;
        Compact {
            sock,
            cookie,
            cgroup_id,
            inode,
            workload,
            comm,
            local_ip,
            remote_ip,
            netns,
            uid,
            recv_q,
            send_q,
            pid,
            timer_ms,
            idle_ms,
            recv_ms,
            sent_ms,
            ka_idle_s,
            ka_intvl_s,
            user_timeout_ms,
            segs_in,
            segs_out,
            conntrack,
            local_port,
            remote_port,
            bits,
            state: TcpState::from_raw(state).expect("written from a TcpState"),
            timer_kind: TIMERS[usize::from(timer)],
            timer_retransmits,
            timer_probes,
            probes_unanswered,
            retransmits,
            ka_count,
            from_kato,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sockets::{tests::timewait, Socket},
        workload::Named,
    };

    /// compact.rs's socket with every part known, at local port `port`.
    fn socket(port: u16) -> Socket {
        let mut s = super::super::tests::full();
        s.local.set_port(port);
        s
    }

    /// Every row reads back as the `Compact` it was, at its own offset,
    /// whatever came before it.
    #[test]
    fn rows_come_back_whole_by_their_offsets() {
        let mut v6 = socket(443);
        v6.local = "[2001:db8::1]:443".parse().unwrap();
        v6.remote = "[::ffff:10.0.0.2]:40000".parse().unwrap();
        v6.proto = "tcp6";
        let mut bare = socket(80);
        (bare.cookie, bare.cgroup_id, bare.pid, bare.comm) = (None, None, None, None);
        (bare.idle_s, bare.conntrack, bare.keepalive) = (None, None, None);
        bare.workload = Named(None);
        let mut rows: Vec<Compact> = [socket(5432), v6, bare, timewait()]
            .iter()
            .map(Compact::of)
            .collect();
        // Every timer kind, conntrack state and small count, and numbers
        // of every varint length.
        for (i, kind) in TIMERS.into_iter().enumerate() {
            let mut c = Compact::of(&socket(9000 + i as u16));
            c.timer_kind = kind;
            c.from_kato = 3;
            c.ka_count = u8::MAX;
            c.timer_probes = i as u8;
            c.sent_ms = u32::MAX;
            c.cookie = u64::MAX >> (i * 7);
            rows.push(c);
        }
        for code in 0..=10 {
            let mut c = Compact::of(&socket(10_000 + u16::from(code)));
            c.conntrack.as_mut().unwrap().state = ct_state(code);
            c.netns = u32::from(code);
            rows.push(c);
        }
        for (i, c) in rows.iter_mut().enumerate() {
            c.sock = 0xffff_8880_0000_0000 + i as u64 * 0x840;
        }
        let mut p = Packed::default();
        let at: Vec<u32> = rows.iter().map(|c| p.push(c).unwrap()).collect();
        for (c, at) in rows.iter().zip(&at).rev() {
            assert_eq!(&p.get(*at), c);
            assert_eq!(p.sock_at(*at), c.sock);
        }
        // Each row's length read from the row: the walk finds every offset.
        let mut walked = vec![0];
        while let Some(&a) = walked.last().filter(|&&a| a < p.len_bytes()) {
            walked.push(a + p.row_len(a));
        }
        let mut ends: Vec<usize> = at.iter().map(|&a| a as usize).collect();
        ends.push(p.len_bytes());
        assert_eq!(walked, ends);
        // An IPv4 row is small.
        let mut q = Packed::default();
        q.push(&rows[0]).unwrap();
        assert!(q.len_bytes() <= 68, "{} bytes", q.len_bytes());
    }

    fn record(sk: u64, tgid: u32, comm: &str) -> keepalive_common::OwnerRecord {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        keepalive_common::OwnerRecord {
            sk,
            tgid,
            comm: c,
            ..Default::default()
        }
    }

    /// Rows packed before their owners were known, given them after, read
    /// as the rows a census that knew them would have made; a row whose
    /// address no process holds stays unowned.
    #[test]
    fn owners_given_after_are_as_ones_known_before() {
        let mut unowned: Vec<Socket> = [5432, 6379, 443, 80].map(socket).into();
        unowned[1].remote = "[2001:db8::2]:50000".parse().unwrap();
        unowned[2].conntrack = None;
        unowned[3].workload = Named(None);
        let mut p = Packed::default();
        let mut at = vec![];
        for (i, s) in unowned.iter_mut().enumerate() {
            (s.pid, s.comm, s.sock) = (None, None, 100 + i as u64);
            at.push(p.push(&Compact::of(s)).unwrap());
        }
        assert_eq!(p.get(at[0]).pid(), None);
        let owners = crate::sockets::owners::owners(&[
            record(101, 7, "redis-server"),
            record(100, 4242, "pgbouncer"),
            record(102, 4242, "pgbouncer"),
            record(100, 9000, "child"),
        ]);
        p.set_owners(&owners);
        for (i, (s, at)) in unowned.into_iter().zip(at).enumerate() {
            let mut want = <Compact as crate::sockets::row::Row>::of(s);
            if i < 3 {
                let o = owners.get(want.sock).unwrap();
                crate::sockets::row::Row::set_owner(&mut want, o);
            }
            assert_eq!(p.get(at), want, "row {i}");
        }
        assert_eq!(p.get(0).pid(), Some(4242));
        // A row pushed after, with an owner given before: one entry each.
        let mut late = Compact::of(&socket(1));
        let owner = crate::owner::Owner {
            pid: 4242,
            comm: "pgbouncer".into(),
        };
        crate::sockets::row::Row::set_owner(&mut late, owner);
        let at = p.push(&late).unwrap();
        assert_eq!(p.get(at).pid(), Some(4242));
        assert_eq!(p.owners.values.len(), 3, "{:?}", p.owners.values);
    }

    #[test]
    fn every_conntrack_state_has_a_code_of_its_own() {
        for code in 0..=10 {
            assert_eq!(ct_code(ct_state(code)), code);
        }
        for k in TIMERS {
            assert_eq!(TIMERS[usize::from(timer_code(k))], k);
        }
    }

    #[test]
    fn tables_hold_each_distinct_value_once() {
        let mut p = Packed::default();
        let c = Compact::of(&socket(1));
        for _ in 0..3 {
            p.push(&c).unwrap();
        }
        let mut other = c.clone();
        other.comm = Some("redis".into());
        p.push(&other).unwrap();
        assert_eq!(p.owners.values.len(), 2);
        assert_eq!(p.workloads.values.len(), 1);
        // The socket's namespace and its conntrack entry's.
        assert_eq!(p.namespaces.values.len(), 2);
    }
}
