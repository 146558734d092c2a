//! [`Compact`] rows packed end to end in one byte array, for a sorted
//! listing that must hold every row until the last is read: numbers as
//! LEB128 varints, IPv4 addresses in 4 bytes, names, workloads and
//! namespaces as indices into tables of the distinct ones, zero counts
//! left out. A loopback socket takes ~65 bytes here against a
//! `Compact`'s 176. A row is read back whole ([`Packed::get`]) by its
//! offset, which the listing keeps in its sort key. The owner sits at a
//! fixed place at the front ([`Packed::set_owner`]), so that rows packed
//! while the owners are still being read can be given theirs after.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use super::{bit, Compact};
use crate::{
    conntrack::{CtState, Tracked},
    owner::Owner,
    sockets::TimerKind,
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
/// kind, the mask of small counts (1 each), PID (4), the owner's name's
/// index (4, [`NO_NAME`]: none), the kernel address (8).
const AT_HAS: usize = 2;
const AT_PID: usize = 6;
const AT_NAME: usize = 10;
const AT_SOCK: usize = 14;
const FRONT: usize = 22;
const NO_NAME: u32 = u32::MAX;

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

#[derive(Debug, Default)]
pub struct Packed {
    bytes: Vec<u8>,
    comms: Table<Arc<str>, Arc<str>>,
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
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.b.split_at(N);
        self.b = rest;
        head.try_into().expect("split at N")
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
        let name = c
            .comm
            .as_ref()
            .map_or(NO_NAME, |n| self.comms.of(Arc::clone(n), n));
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
        o.extend_from_slice(&c.pid.to_le_bytes());
        o.extend_from_slice(&name.to_le_bytes());
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

    /// Gives the row at `at` its owner (as `Row::set_owner`).
    pub fn set_owner(&mut self, at: u32, o: &Owner) {
        let name = self.comms.of(Arc::clone(&o.comm), &o.comm);
        let row = &mut self.bytes[at as usize..at as usize + FRONT];
        let bits = u16::from_le_bytes([row[0], row[1]]) | bit::PID;
        row[..2].copy_from_slice(&bits.to_le_bytes());
        row[AT_PID..AT_NAME].copy_from_slice(&o.pid.to_le_bytes());
        row[AT_NAME..AT_SOCK].copy_from_slice(&name.to_le_bytes());
        debug_assert_eq!(
            row[AT_HAS] & !(has::WORKLOAD | has::CONNTRACK | has::WIDE),
            0
        );
    }

    /// The row pushed at `at`.
    pub fn get(&self, at: u32) -> Compact {
        let mut r = Reader {
            b: &self.bytes[at as usize..],
        };
        let bits = u16::from_le_bytes(r.array());
        let [has, state, timer, mask] = r.array();
        let pid = u32::from_le_bytes(r.array());
        let name = u32::from_le_bytes(r.array());
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
            ip[..n].copy_from_slice(&r.b[..n]);
            r.b = &r.b[n..];
        }
        let (cookie, cgroup_id, inode) = (r.varint(), r.varint(), r.varint());
        let netns = self.namespaces.values[r.u32() as usize];
        let [uid, recv_q, send_q] = [r.u32(), r.u32(), r.u32()];
        let [timer_ms, idle_ms, recv_ms, sent_ms] = [r.u32(), r.u32(), r.u32(), r.u32()];
        let [ka_idle_s, ka_intvl_s, user_timeout_ms] = [r.u32(), r.u32(), r.u32()];
        let [segs_in, segs_out] = [r.u32(), r.u32()];
        let workload = (has & has::WORKLOAD != 0)
            .then(|| Arc::clone(&self.workloads.values[r.u32() as usize]));
        let comm = (name != NO_NAME).then(|| Arc::clone(&self.comms.values[name as usize]));
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
        owner::Owner,
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
        let mut p = Packed::default();
        let at: Vec<u32> = rows.iter().map(|c| p.push(c).unwrap()).collect();
        for (c, at) in rows.iter().zip(&at).rev() {
            assert_eq!(&p.get(*at), c);
            assert_eq!(p.sock_at(*at), c.sock);
        }
        // An IPv4 row is small.
        let mut q = Packed::default();
        q.push(&rows[0]).unwrap();
        assert!(q.len_bytes() <= 72, "{} bytes", q.len_bytes());
    }

    /// A row packed before its owner was known, given it after, reads as
    /// the row a census that knew it would have made.
    #[test]
    fn an_owner_given_after_is_as_one_known_before() {
        let mut unowned = socket(5432);
        (unowned.pid, unowned.comm) = (None, None);
        let mut p = Packed::default();
        let first = p.push(&Compact::of(&unowned)).unwrap();
        let second = p.push(&Compact::of(&socket(1))).unwrap();
        assert_eq!(p.get(first).pid(), None);
        let owner = Owner {
            pid: 4242,
            comm: "pgbouncer".into(),
        };
        p.set_owner(first, &owner);
        let mut owned = <Compact as crate::sockets::row::Row>::of(unowned);
        crate::sockets::row::Row::set_owner(&mut owned, owner);
        assert_eq!(p.get(first), owned);
        // Its neighbour is untouched.
        assert_eq!(p.get(second), Compact::of(&socket(1)));
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
        assert_eq!(p.comms.values.len(), 2);
        assert_eq!(p.workloads.values.len(), 1);
        // The socket's namespace and its conntrack entry's.
        assert_eq!(p.namespaces.values.len(), 2);
    }
}
