//! BPF iterators: every TCP socket of a network namespace (`iter/tcp`), and
//! every socket file held by a process (`iter/task_file`). Userspace reads
//! the records from the iterator's file: kato's answer to `ss` and `netstat -p`.
//!
//! aya-ebpf 0.2 has no `#[iter]` macro; a function in an `iter/...` link
//! section is what the loader recognises.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{
        bpf_get_socket_cookie, bpf_jiffies64, bpf_seq_write, bpf_skc_to_tcp_request_sock,
        bpf_skc_to_tcp_sock, bpf_skc_to_tcp_timewait_sock, bpf_sock_from_file,
    },
};
use keepalive_common::{sock_flags, IterConfig, OwnerRecord, SockRecord, SOCK_RECORD_SIZE};

use crate::{
    conf,
    sock::{load, load16, read},
};

/// Resolved by userspace from the running kernel's BTF and kallsyms.
#[no_mangle]
pub(crate) static KATO_ITER_CONFIG: IterConfig = unsafe { core::mem::zeroed() };

macro_rules! iconf {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let v =
            unsafe { core::ptr::read_volatile(&raw const crate::iter::KATO_ITER_CONFIG.$field) };
        v
    }};
}
pub(crate) use iconf;

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_TIME_WAIT: u8 = 6;
const TCP_LISTEN: u8 = 10;
const TCP_NEW_SYN_RECV: u8 = 12;

/// Context fields are read with plain loads: the verifier types them
/// (`meta->seq` must reach bpf_seq_write as a real `struct seq_file *`).
#[inline(always)]
unsafe fn ctx_u64(ctx: *mut c_void, index: usize) -> u64 {
    unsafe { *(ctx as *const u64).add(index) }
}

#[no_mangle]
#[link_section = "iter/tcp"]
pub fn kato_iter_tcp(ctx: *mut c_void) -> i32 {
    let _ = unsafe { try_iter_tcp(ctx) };
    0
}

/// `struct bpf_iter__tcp { meta; sk_common; uid; }`
///
/// Every socket of the namespace passes here, so fields are plain loads
/// through BTF-typed pointers (`sk_common`, and the `bpf_skc_to_*` casts
/// for the rest of the socket): a helper-call probe read per field made
/// this program most of `kato sockets`' time. The verifier checks each
/// access against the kernel's types at load time; the offsets are
/// frozen .rodata constants.
unsafe fn try_iter_tcp(ctx: *mut c_void) -> Result<(), u32> {
    let meta = unsafe { ctx_u64(ctx, 0) };
    let sk = unsafe { ctx_u64(ctx, 1) };
    if sk == 0 || meta == 0 {
        return Ok(());
    }
    let seq = unsafe { *(meta as *const *mut seq_file) };
    let mut slot = core::mem::MaybeUninit::<SockRecord>::uninit();
    let r = crate::emit::zero(&mut slot);
    r.sk = sk;
    // Generates the cookie where none was yet (ss -e prints the same one);
    // events read it back from the socket.
    r.cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    r.uid = unsafe { *((ctx as *const u32).add(4)) };
    r.jiffies = unsafe { bpf_jiffies64() };
    fill_common(r, sk);
    let net = load::<u64>(sk, conf!(skc_net));
    if net != 0 {
        r.netns = load::<u32>(net, conf!(net_inum));
    }
    let any = sk as *mut c_void;
    match r.state {
        TCP_TIME_WAIT => {
            let tw = unsafe { bpf_skc_to_tcp_timewait_sock(any) } as u64;
            if tw == 0 {
                return Ok(());
            }
            r.flags |= sock_flags::TIMEWAIT;
            r.state = load::<u8>(tw, iconf!(tw_substate));
            if load::<u64>(tw, iconf!(tw_pprev)) != 0 {
                r.flags |= sock_flags::RTO_PENDING;
                r.rto_expires = load::<u64>(tw, iconf!(tw_expires));
            }
        }
        TCP_NEW_SYN_RECV => {
            let req = unsafe { bpf_skc_to_tcp_request_sock(any) } as u64;
            if req == 0 {
                return Ok(());
            }
            if load::<u64>(req, iconf!(rsk_pprev)) != 0 {
                r.flags |= sock_flags::RTO_PENDING;
                r.rto_expires = load::<u64>(req, iconf!(rsk_expires));
            }
            r.retransmits = load::<u8>(req, iconf!(rsk_num_retrans));
        }
        _ => {
            let tp = unsafe { bpf_skc_to_tcp_sock(any) } as u64;
            if tp == 0 {
                return Ok(());
            }
            fill_full(r, tp, net)?;
        }
    }
    unsafe {
        bpf_seq_write(
            seq,
            (r as *const SockRecord).cast(),
            SOCK_RECORD_SIZE as u32,
        )
    };
    Ok(())
}

/// Family, state and 4-tuple from `struct sock_common` (ports in host order).
#[inline(always)]
fn fill_common(r: &mut SockRecord, sk: u64) {
    r.family = load::<u16>(sk, conf!(skc_family));
    r.state = load::<u8>(sk, conf!(skc_state));
    r.sport = load::<u16>(sk, conf!(skc_num));
    r.dport = u16::from_be(load::<u16>(sk, conf!(skc_dport)));
    if r.family == AF_INET6 {
        r.saddr = load16(sk, conf!(skc_v6_rcv_saddr));
        r.daddr = load16(sk, conf!(skc_v6_daddr));
    } else if r.family == AF_INET {
        r.saddr[..4].copy_from_slice(&load::<u32>(sk, conf!(skc_rcv_saddr)).to_ne_bytes());
        r.daddr[..4].copy_from_slice(&load::<u32>(sk, conf!(skc_daddr)).to_ne_bytes());
    }
}

/// The fields of a full socket, `tp` a BTF `struct tcp_sock *`.
#[inline(always)]
fn fill_full(r: &mut SockRecord, tp: u64, net: u64) -> Result<(), u32> {
    r.flags |= sock_flags::FULL;
    if r.sport == 0 {
        // Closing: the port is released, inet_sport still has it.
        r.sport = u16::from_be(load::<u16>(tp, conf!(inet_sport)));
    }
    // SOCK_INODE(socket) lies past `struct socket`, out of the verifier's
    // reach: the one probe read left.
    let socket = load::<u64>(tp, conf!(sk_socket));
    if socket != 0 {
        r.ino = read::<u64>(socket, conf!(socket_ino))?;
    }
    if conf!(sk_cgrp) != 0 {
        let cgrp = load::<u64>(tp, conf!(sk_cgrp));
        if cgrp != 0 {
            let kn = load::<u64>(cgrp, conf!(cgroup_kn));
            if kn != 0 {
                r.cgroup_id = load::<u64>(kn, conf!(kn_id));
            }
        }
    }
    let skc_flags = load::<u64>(tp, iconf!(skc_flags));
    if skc_flags & (1 << (iconf!(sock_keepopen_bit) & 63)) != 0 {
        r.flags |= sock_flags::KEEPALIVE_ON;
    }
    let timer = tp + conf!(sk_timer) as u64;
    if load::<u64>(timer, conf!(timer_pprev)) != 0 {
        r.flags |= sock_flags::KA_PENDING;
        r.ka_expires = load::<u64>(timer, conf!(timer_expires));
    }
    if load::<u64>(tp, iconf!(icsk_rto_pprev)) != 0 {
        r.flags |= sock_flags::RTO_PENDING;
        r.rto_expires = load::<u64>(tp, iconf!(icsk_rto_expires));
    }
    r.icsk_pending = load::<u8>(tp, iconf!(icsk_pending));
    r.retransmits = load::<u8>(tp, iconf!(icsk_retransmits));
    r.backoff = load::<u8>(tp, iconf!(icsk_backoff));
    r.probes_out = load::<u8>(tp, conf!(icsk_probes_out));
    r.user_timeout = load::<u32>(tp, iconf!(icsk_user_timeout));
    r.lrcvtime = load::<u32>(tp, iconf!(icsk_lrcvtime));
    r.ka_time = load::<u32>(tp, iconf!(tp_keepalive_time));
    r.ka_intvl = load::<u32>(tp, iconf!(tp_keepalive_intvl));
    r.ka_probes = load::<u8>(tp, iconf!(tp_keepalive_probes));
    r.lsndtime = load::<u32>(tp, iconf!(tp_lsndtime));
    r.rcv_tstamp = load::<u32>(tp, iconf!(tp_rcv_tstamp));
    if net != 0 {
        r.sysctl_ka_time = load::<u32>(net, iconf!(net_ka_time));
        r.sysctl_ka_intvl = load::<u32>(net, iconf!(net_ka_intvl));
        r.sysctl_ka_probes = load::<u8>(net, iconf!(net_ka_probes));
    }
    if r.state == TCP_LISTEN {
        r.rx_queue = load::<u32>(tp, iconf!(sk_ack_backlog));
        r.tx_queue = load::<u32>(tp, iconf!(sk_max_ack_backlog));
    } else {
        let rcv_nxt = load::<u32>(tp, iconf!(tp_rcv_nxt));
        let copied = load::<u32>(tp, iconf!(tp_copied_seq));
        r.rx_queue = (rcv_nxt.wrapping_sub(copied) as i32).max(0) as u32;
        let write_seq = load::<u32>(tp, iconf!(tp_write_seq));
        let snd_una = load::<u32>(tp, iconf!(tp_snd_una));
        r.tx_queue = write_seq.wrapping_sub(snd_una);
    }
    r.uid = load::<u32>(tp, iconf!(sk_uid));
    r.segs_in = load::<u32>(tp, iconf!(tp_segs_in));
    r.segs_out = load::<u32>(tp, iconf!(tp_segs_out));
    // A listener's children inherit its backlog; connect() leaves it 0.
    if r.state != TCP_LISTEN && load::<u32>(tp, iconf!(sk_max_ack_backlog)) != 0 {
        r.flags |= sock_flags::PASSIVE;
    }
    Ok(())
}

#[no_mangle]
#[link_section = "iter/task_file"]
pub fn kato_iter_task_file(ctx: *mut c_void) -> i32 {
    let _ = unsafe { try_iter_task_file(ctx) };
    0
}

/// `struct bpf_iter__task_file { meta; task; u32 fd; file; }`
unsafe fn try_iter_task_file(ctx: *mut c_void) -> Result<(), u32> {
    let meta = unsafe { ctx_u64(ctx, 0) };
    let task = unsafe { ctx_u64(ctx, 1) };
    let file = unsafe { ctx_u64(ctx, 3) };
    if meta == 0 || task == 0 || file == 0 {
        return Ok(());
    }
    // Every open file of every process passes here. The kernel tells a
    // socket file (by its file operations) and hands back a BTF-typed
    // `struct socket *`: from there on, plain loads, no probe reads.
    let socket = unsafe { bpf_sock_from_file(file as *mut _) } as u64;
    if socket == 0 {
        return Ok(());
    }
    let sk = load::<u64>(socket, iconf!(socket_sk));
    if sk == 0 || load::<u16>(sk, iconf!(sk_protocol)) != IPPROTO_TCP {
        return Ok(());
    }
    let family = load::<u16>(sk, conf!(skc_family));
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let seq = unsafe { *(meta as *const *mut seq_file) };
    let net = load::<u64>(sk, conf!(skc_net));
    let state = load::<u8>(sk, conf!(skc_state));
    let r = OwnerRecord {
        sk,
        tgid: load::<u32>(task, iconf!(task_tgid)),
        fd: unsafe { *((ctx as *const u32).add(4)) },
        comm: load16(task, iconf!(task_comm)),
        netns: if net != 0 {
            load::<u32>(net, conf!(net_inum))
        } else {
            0
        },
        sport: load::<u16>(sk, conf!(skc_num)),
        state,
        passive: u8::from(state != TCP_LISTEN && load::<u32>(sk, iconf!(sk_max_ack_backlog)) != 0),
    };
    unsafe {
        bpf_seq_write(
            seq,
            (&raw const r).cast(),
            keepalive_common::OWNER_RECORD_SIZE as u32,
        )
    };
    Ok(())
}
