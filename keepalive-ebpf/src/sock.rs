//! Reads of kernel memory at offsets resolved from BTF by userspace.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel};
use keepalive_common::{counter, flags, port_key, Event, OwnerSlot, WATCHED_FEW_MAX};

use crate::{bump, conf, OWNERS, PORT_OWNERS};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Where a socket's fields are read from: the socket itself, a probe read
/// per field, or a copy of the ranges that hold them, a few reads (the
/// keepalive timer path: `timer::copied`).
#[derive(Clone, Copy)]
pub struct Src {
    pub sk: u64,
    /// A per-CPU buffer holding the copy (0: none).
    copy: u64,
}

impl Src {
    /// Fields read from the socket, one probe read each.
    #[inline(always)]
    pub fn live(sk: u64) -> Self {
        Src { sk, copy: 0 }
    }

    /// Fields read from `copy`, which holds the socket's bytes at their
    /// offsets (those of the `sk_copy_*` ranges).
    #[inline(always)]
    pub fn copied(sk: u64, copy: u64) -> Self {
        Src { sk, copy }
    }

    /// A `T` at offset `off` of the socket.
    #[inline(always)]
    pub fn get<T>(&self, off: u32) -> Result<T, u32> {
        if self.copy != 0 {
            Ok(load::<T>(self.copy, off))
        } else {
            read::<T>(self.sk, off)
        }
    }
}

/// In quiet mode: is `sk` worth a record at all? Keepalive on, or (with
/// `idle`) silent for at least the threshold. Everything else ends here.
#[inline(always)]
pub fn worth_a_record(sk: &Src, idle: bool) -> Result<bool, u32> {
    if conf!(quiet) == 0 {
        return Ok(true);
    }
    let flags = sk.get::<u64>(conf!(skc_flags))?;
    if flags & (1u64 << (conf!(sock_keepopen_bit) & 63)) != 0 {
        return Ok(true);
    }
    if !idle {
        return Ok(false);
    }
    let data = sk.get::<u32>(conf!(icsk_lrcvtime))?;
    let ack = sk.get::<u32>(conf!(tp_rcv_tstamp))?;
    Ok(idle_past_threshold(data, ack))
}

/// A plain load from a BTF-typed pointer (a tp_btf argument, or a pointer
/// loaded through one): no helper call. The offset is a load-time constant
/// (frozen .rodata) and the verifier checks the access against the struct.
#[inline(always)]
pub fn load<T>(base: u64, off: u32) -> T {
    unsafe { core::ptr::read_volatile((base + off as u64) as *const T) }
}

/// Sixteen bytes (an IPv6 address, a comm) as two plain 8-byte loads.
#[inline(always)]
pub fn load16(base: u64, off: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&load::<u64>(base, off).to_ne_bytes());
    a[8..].copy_from_slice(&load::<u64>(base, off + 8).to_ne_bytes());
    a
}

/// The socket's cookie, generated where none was yet (as `ss -e` and
/// sock_diag do): `sk` must be a BTF `struct sock *` (a tracepoint's
/// argument), which the helper requires. Records made where the socket is
/// only an address (the keepalive timer) read the field instead, 0 until
/// someone asked.
#[inline(always)]
pub fn cookie_direct(sk: u64) -> u64 {
    unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(sk as *mut core::ffi::c_void) }
}

/// `sk`'s protocol, read directly (`sk` must be a BTF `struct sock *`).
#[inline(always)]
pub fn protocol_direct(sk: u64) -> u16 {
    load::<u16>(sk, conf!(sk_protocol))
}

/// [`worth_a_record`] with plain loads, for a BTF `struct sock *`: the
/// close path of every connection pays this, so no probe reads. The TCP
/// stamps live past `struct sock`, reached through `bpf_skc_to_tcp_sock`.
#[inline(always)]
pub fn worth_a_record_direct(sk: u64) -> bool {
    if conf!(quiet) == 0 {
        return true;
    }
    let flags = load::<u64>(sk, conf!(skc_flags));
    if flags & (1u64 << (conf!(sock_keepopen_bit) & 63)) != 0 {
        return true;
    }
    let tp = unsafe { aya_ebpf::helpers::bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) } as u64;
    if tp == 0 {
        return true;
    }
    idle_past_threshold(
        load::<u32>(tp, conf!(icsk_lrcvtime)),
        load::<u32>(tp, conf!(tp_rcv_tstamp)),
    )
}

/// Silent for at least the quiet threshold, by the later of the last data
/// (`data`) and the last ACK (`ack`) received. Both zero: the socket never
/// heard from a peer (a listener, a connect that failed): not idle, there
/// was no conversation to go quiet.
#[inline(always)]
fn idle_past_threshold(data: u32, ack: u32) -> bool {
    if data == 0 && ack == 0 {
        return false;
    }
    let heard = if (ack.wrapping_sub(data) as i32) > 0 {
        ack
    } else {
        data
    };
    let now = unsafe { aya_ebpf::helpers::bpf_jiffies64() } as u32;
    now.wrapping_sub(heard) >= conf!(quiet_idle_jiffies)
}

/// [`admitted`] with plain loads, for a BTF `struct sock *`.
#[inline(always)]
pub fn admitted_direct(sk: u64) -> Option<u32> {
    admit(netns_direct(sk))
}

/// Namespace `ns`, when its records are wanted (counted when not).
#[inline(always)]
pub fn admit(ns: u32) -> Option<u32> {
    if conf!(netns_filter) == 0 || watched(ns) {
        return Some(ns);
    }
    crate::bump(counter::FILTERED);
    None
}

/// [`admitted_direct`] without counting: for hooks that make no records.
#[inline(always)]
pub fn in_watched_netns(sk: u64) -> bool {
    conf!(netns_filter) == 0 || watched(netns_direct(sk))
}

/// [`netns`] with plain loads, for a BTF `struct sock *`.
#[inline(always)]
fn netns_direct(sk: u64) -> u32 {
    let net = load::<u64>(sk, conf!(skc_net));
    if net == 0 {
        0
    } else {
        load::<u32>(net, conf!(net_inum))
    }
}

/// Is namespace `ns` watched? A handful are compared in place (an array
/// lookup the verifier inlines), more are asked of the hash map.
#[inline(always)]
fn watched(ns: u32) -> bool {
    if let Some(few) = crate::WATCHED_FEW.get(0) {
        if few.len as usize <= WATCHED_FEW_MAX {
            let mut i = 0;
            while i < WATCHED_FEW_MAX {
                if (i as u32) < few.len && few.inums[i] == ns {
                    return true;
                }
                i += 1;
            }
            return false;
        }
    }
    unsafe { crate::WATCHED_NETNS.get(&ns) }.is_some()
}

/// Does `sk`'s namespace make events (with the namespace filter on; all do
/// without)? Its namespace when it does, for the record; asked before
/// anything else is read, so a filtered event costs two reads and a
/// compare; counted when not.
#[inline(always)]
pub fn admitted(sk: &Src) -> Result<Option<u32>, u32> {
    let ns = netns(sk)?;
    if conf!(netns_filter) == 0 || watched(ns) {
        return Ok(Some(ns));
    }
    crate::bump(counter::FILTERED);
    Ok(None)
}

/// Reads a `T` at `base + off`; a failed read is counted and ends the program.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, u32> {
    match unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) } {
        Ok(v) => Ok(v),
        Err(_) => {
            read_failed(off);
            Err(0)
        }
    }
}

/// The rare path, out of line so that the log call is not copied into every
/// read site: counted per CPU, the field offset kept, and with aya-log on
/// (`RUST_LOG=kato::ebpf=debug`) a debug line. With logging off userspace
/// loads `AYA_LOG_LEVEL = 0` into frozen .rodata and the verifier drops the
/// log code as dead.
#[inline(never)]
pub(crate) fn read_failed(off: u32) {
    bump(counter::READ_FAILED);
    crate::set(counter::LAST_FAILED_OFFSET, off as u64 + 1);
    // aya-log's macros take a context but do not use it yet.
    aya_log_ebpf::debug!(&(), "kernel read failed at field offset {}", off);
}

/// Copies `len` bytes at `src` into `dst` (a record field in the ring):
/// no stack temporary, which the verifier's 512-byte budget across
/// nested calls cannot spare. A failed read is counted.
#[inline(always)]
pub fn read_into(dst: *mut u8, len: u32, src: u64) -> Result<(), u32> {
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst.cast(),
            len,
            src as *const core::ffi::c_void,
        )
    };
    if r < 0 {
        read_failed(0);
        return Err(0);
    }
    Ok(())
}

/// `struct sock *` from its embedded `sk_timer`.
#[inline(always)]
pub fn sk_of_timer(timer: u64) -> u64 {
    timer - conf!(sk_timer) as u64
}

/// Is this `struct timer_list` a socket keepalive timer? Every kernel timer
/// event takes this path, so it is a plain load, not a helper call: tp_btf
/// passes `timer` as a BTF-typed pointer, the offset is a load-time constant
/// (frozen .rodata), and the verifier checks the access against
/// `struct timer_list` at load time.
#[inline(always)]
pub fn is_keepalive_timer(timer: u64) -> bool {
    let f =
        unsafe { core::ptr::read_volatile((timer + conf!(timer_function) as u64) as *const u64) };
    f == conf!(keepalive_fn)
}

#[inline(always)]
pub fn state(sk: &Src) -> Result<u8, u32> {
    sk.get::<u8>(conf!(skc_state))
}

#[inline(always)]
pub fn probes_out(sk: &Src) -> Result<u8, u32> {
    sk.get::<u8>(conf!(icsk_probes_out))
}

/// Family, state and 4-tuple from `struct sock_common` (ports in host order).
#[inline(always)]
pub fn fill_addrs(ev: &mut Event, sk: &Src) -> Result<(), u32> {
    let f = sk.get::<u16>(conf!(skc_family))?;
    ev.family = f;
    ev.state = state(sk)?;
    ev.sport = sk.get::<u16>(conf!(skc_num))?;
    if ev.sport == 0 {
        // Closing: the port is released, inet_sport still has it.
        ev.sport = u16::from_be(sk.get::<u16>(conf!(inet_sport))?);
    }
    ev.dport = u16::from_be(sk.get::<u16>(conf!(skc_dport))?);
    if f == AF_INET6 {
        ev.saddr = sk.get::<[u8; 16]>(conf!(skc_v6_rcv_saddr))?;
        ev.daddr = sk.get::<[u8; 16]>(conf!(skc_v6_daddr))?;
    } else if f == AF_INET {
        let s = sk.get::<[u8; 4]>(conf!(skc_rcv_saddr))?;
        let d = sk.get::<[u8; 4]>(conf!(skc_daddr))?;
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    }
    Ok(())
}

/// Inode number of the network namespace `sk` lives in.
#[inline(always)]
pub fn netns(sk: &Src) -> Result<u32, u32> {
    let net = sk.get::<u64>(conf!(skc_net))?;
    if net == 0 {
        return Ok(0);
    }
    read::<u32>(net, conf!(net_inum))
}

/// Inode of the `struct socket` owning `sk` (0 when orphaned).
#[inline(always)]
pub fn ino(sk: &Src) -> Result<u64, u32> {
    let socket = sk.get::<u64>(conf!(sk_socket))?;
    if socket == 0 {
        return Ok(0);
    }
    read::<u64>(socket, conf!(socket_ino))
}

/// The keepalive timer's deadline (jiffies) when it is pending.
#[inline(always)]
pub fn keepalive_deadline(sk: &Src) -> Result<Option<u64>, u32> {
    let timer = conf!(sk_timer);
    if sk.get::<u64>(timer + conf!(timer_pprev))? == 0 {
        return Ok(None);
    }
    Ok(Some(sk.get::<u64>(timer + conf!(timer_expires))?))
}

/// Fills identity, addresses, state and timer fields of `ev` from `sk`,
/// which lives in namespace `netns` ([`admitted`] read it).
#[inline(always)]
pub fn fill(ev: &mut Event, sk: &Src, netns: u32) -> Result<(), u32> {
    ev.sk = sk.sk;
    fill_addrs(ev, sk)?;
    // A listener's children inherit its backlog; connect() leaves it 0.
    if sk.get::<u32>(conf!(sk_max_ack_backlog))? != 0 {
        ev.flags |= flags::PASSIVE;
    }
    ev.state_before = ev.state;
    ev.probes_out = probes_out(sk)?;
    ev.probes_before = ev.probes_out;
    ev.sk_err = sk.get::<i32>(conf!(sk_err))?;
    ev.netns = netns;
    ev.ino = ino(sk)?;
    ev.cookie = sk.get::<u64>(conf!(skc_cookie))?;
    ev.cgroup_id = cgroup_id(sk)?;
    Ok(())
}

/// The socket's cgroup v2 id, from the socket (the current task is
/// meaningless in softirq); 0 where the kernel keeps none.
#[inline(always)]
pub fn cgroup_id(sk: &Src) -> Result<u64, u32> {
    if conf!(sk_cgrp) == 0 {
        return Ok(0);
    }
    let cgrp = sk.get::<u64>(conf!(sk_cgrp))?;
    if cgrp == 0 {
        return Ok(0);
    }
    let kn = read::<u64>(cgrp, conf!(cgroup_kn))?;
    if kn == 0 {
        return Ok(0);
    }
    read::<u64>(kn, conf!(kn_id))
}

/// A full socket's activity stamps: last data received and sent, last ACK.
/// Userspace derives each idle notion from them and the event's jiffies.
#[inline(always)]
pub fn fill_stamps(ev: &mut Event, sk: &Src) -> Result<(), u32> {
    ev.lrcvtime = sk.get::<u32>(conf!(icsk_lrcvtime))?;
    ev.lsndtime = sk.get::<u32>(conf!(tp_lsndtime))?;
    ev.rcv_tstamp = sk.get::<u32>(conf!(tp_rcv_tstamp))?;
    Ok(())
}

/// Bytes written and not acknowledged yet.
#[inline(always)]
pub fn fill_unacked(ev: &mut Event, sk: &Src) -> Result<(), u32> {
    let write_seq = sk.get::<u32>(conf!(tp_write_seq))?;
    let snd_una = sk.get::<u32>(conf!(tp_snd_una))?;
    ev.unacked = write_seq.wrapping_sub(snd_una);
    Ok(())
}

/// Fills the keepalive timer's deadline when it is pending.
#[inline(always)]
pub fn fill_timer(ev: &mut Event, sk: &Src) -> Result<(), u32> {
    if let Some(expires) = keepalive_deadline(sk)? {
        ev.flags |= keepalive_common::flags::TIMER_PENDING;
        ev.expires = expires;
    }
    Ok(())
}

/// The process running now: the socket's owner in the hooks that run in
/// its own system call (connect, listen, close, shutdown).
#[inline(always)]
pub fn current_owner() -> OwnerSlot {
    OwnerSlot {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad0: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    }
}

/// Remembers the current process as `sk`'s owner.
#[inline(always)]
pub fn remember_owner(sk: u64) {
    let _ = OWNERS.insert(&sk, &current_owner(), 0);
}

/// Remembers the current process as the owner of the listener on `port`
/// of namespace `netns` (its children's owner until one is seen closing).
#[inline(always)]
pub fn remember_listener(netns: u32, port: u16) {
    let _ = PORT_OWNERS.insert(&port_key(netns, port), &current_owner(), 0);
}

/// The socket's owner as the kernel saw it last: the process that
/// connected or closed it, else (for an accepted socket) its listener's.
/// Softirq records (resets, FINs received, timers) and orphans thus name
/// a process the task walk may no longer find.
#[inline(always)]
pub fn fill_owner(ev: &mut Event) {
    // The key copied to the stack: `ev` is ring-buffer memory, which
    // 6.1's verifier does not take as a map key.
    let sk = unsafe { core::ptr::read_volatile(&raw const ev.sk) };
    let mut o = unsafe { OWNERS.get(&sk) };
    // An accepted socket, or a reply for one that is gone: its listener's.
    if o.is_none() && ev.flags & (flags::PASSIVE | flags::MINI_SOCK) != 0 {
        o = unsafe { PORT_OWNERS.get(&port_key(ev.netns, ev.sport)) };
    }
    if let Some(o) = o {
        ev.tgid = o.tgid;
        ev.comm = o.comm;
        ev.flags |= flags::OWNER;
    }
}
