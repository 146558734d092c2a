//! BPF iterators: every TCP socket of a network namespace (`iter/tcp`), and
//! every socket file held by a process (`iter/task_file`). Userspace reads
//! the records from the iterator's file: kato's answer to `ss` and `netstat -p`.
//!
//! aya-ebpf 0.2 has no `#[iter]` macro; a function in an `iter/...` link
//! section is what the loader recognises.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{bpf_get_socket_cookie, bpf_jiffies64, bpf_seq_write},
};
use keepalive_common::{sock_flags, IterConfig, OwnerRecord, SockRecord, SOCK_RECORD_SIZE};

use crate::sock::{fill_addrs, read};

/// Resolved by userspace from the running kernel's BTF and kallsyms.
#[no_mangle]
static KATO_ITER_CONFIG: IterConfig = unsafe { core::mem::zeroed() };

macro_rules! iconf {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&raw const KATO_ITER_CONFIG.$field) };
        v
    }};
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
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
unsafe fn try_iter_tcp(ctx: *mut c_void) -> Result<(), u32> {
    let meta = unsafe { ctx_u64(ctx, 0) };
    let sk = unsafe { ctx_u64(ctx, 1) };
    if sk == 0 || meta == 0 {
        return Ok(());
    }
    let seq = unsafe { *(meta as *const *mut seq_file) };
    let mut r = SockRecord::default();
    r.sk = sk;
    // Generates the cookie where none was yet (ss -e prints the same one);
    // events read it back from the socket.
    r.cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    r.uid = unsafe { *((ctx as *const u32).add(4)) };
    r.jiffies = unsafe { bpf_jiffies64() };
    fill_addrs(
        &mut r.saddr,
        &mut r.daddr,
        &mut r.family,
        &mut r.sport,
        &mut r.dport,
        &mut r.state,
        sk,
    )?;
    r.netns = crate::sock::netns(sk)?;
    match r.state {
        TCP_TIME_WAIT => {
            r.flags |= sock_flags::TIMEWAIT;
            r.state = read::<u8>(sk, iconf!(tw_substate))?;
            if read::<u64>(sk, iconf!(tw_pprev))? != 0 {
                r.flags |= sock_flags::RTO_PENDING;
                r.rto_expires = read::<u64>(sk, iconf!(tw_expires))?;
            }
        }
        TCP_NEW_SYN_RECV => {
            if read::<u64>(sk, iconf!(rsk_pprev))? != 0 {
                r.flags |= sock_flags::RTO_PENDING;
                r.rto_expires = read::<u64>(sk, iconf!(rsk_expires))?;
            }
            r.retransmits = read::<u8>(sk, iconf!(rsk_num_retrans))?;
        }
        _ => fill_full(&mut r, sk)?,
    }
    unsafe { bpf_seq_write(seq, (&raw const r).cast(), SOCK_RECORD_SIZE as u32) };
    Ok(())
}

/// The fields of a full socket (`struct tcp_sock`).
#[inline(always)]
fn fill_full(r: &mut SockRecord, sk: u64) -> Result<(), u32> {
    r.flags |= sock_flags::FULL;
    r.ino = crate::sock::ino(sk)?;
    r.cgroup_id = crate::sock::cgroup_id(sk)?;
    let skc_flags = read::<u64>(sk, iconf!(skc_flags))?;
    if skc_flags & (1 << (iconf!(sock_keepopen_bit) & 63)) != 0 {
        r.flags |= sock_flags::KEEPALIVE_ON;
    }
    if let Some(expires) = crate::sock::keepalive_deadline(sk)? {
        r.flags |= sock_flags::KA_PENDING;
        r.ka_expires = expires;
    }
    if read::<u64>(sk, iconf!(icsk_rto_pprev))? != 0 {
        r.flags |= sock_flags::RTO_PENDING;
        r.rto_expires = read::<u64>(sk, iconf!(icsk_rto_expires))?;
    }
    r.icsk_pending = read::<u8>(sk, iconf!(icsk_pending))?;
    r.retransmits = read::<u8>(sk, iconf!(icsk_retransmits))?;
    r.backoff = read::<u8>(sk, iconf!(icsk_backoff))?;
    r.probes_out = crate::sock::probes_out(sk)?;
    r.user_timeout = read::<u32>(sk, iconf!(icsk_user_timeout))?;
    r.lrcvtime = read::<u32>(sk, iconf!(icsk_lrcvtime))?;
    r.ka_time = read::<u32>(sk, iconf!(tp_keepalive_time))?;
    r.ka_intvl = read::<u32>(sk, iconf!(tp_keepalive_intvl))?;
    r.ka_probes = read::<u8>(sk, iconf!(tp_keepalive_probes))?;
    r.lsndtime = read::<u32>(sk, iconf!(tp_lsndtime))?;
    r.rcv_tstamp = read::<u32>(sk, iconf!(tp_rcv_tstamp))?;
    let net = crate::sock::net(sk)?;
    if net != 0 {
        r.sysctl_ka_time = read::<u32>(net, iconf!(net_ka_time))?;
        r.sysctl_ka_intvl = read::<u32>(net, iconf!(net_ka_intvl))?;
        r.sysctl_ka_probes = read::<u8>(net, iconf!(net_ka_probes))?;
    }
    if r.state == TCP_LISTEN {
        r.rx_queue = read::<u32>(sk, iconf!(sk_ack_backlog))?;
        r.tx_queue = read::<u32>(sk, iconf!(sk_max_ack_backlog))?;
    } else {
        let rcv_nxt = read::<u32>(sk, iconf!(tp_rcv_nxt))?;
        let copied = read::<u32>(sk, iconf!(tp_copied_seq))?;
        r.rx_queue = (rcv_nxt.wrapping_sub(copied) as i32).max(0) as u32;
        let write_seq = read::<u32>(sk, iconf!(tp_write_seq))?;
        let snd_una = read::<u32>(sk, iconf!(tp_snd_una))?;
        r.tx_queue = write_seq.wrapping_sub(snd_una);
    }
    if let Ok(uid) = read::<u32>(sk, iconf!(sk_uid)) {
        r.uid = uid;
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
    let inode = read::<u64>(file, iconf!(file_f_inode))?;
    if inode == 0 || read::<u16>(inode, iconf!(inode_i_mode))? & S_IFMT != S_IFSOCK {
        return Ok(());
    }
    let socket = read::<u64>(file, iconf!(file_private_data))?;
    if socket == 0 {
        return Ok(());
    }
    let sk = read::<u64>(socket, iconf!(socket_sk))?;
    if sk == 0 || read::<u16>(sk, iconf!(sk_protocol))? != IPPROTO_TCP {
        return Ok(());
    }
    let family = read::<u16>(sk, crate::conf!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let seq = unsafe { *(meta as *const *mut seq_file) };
    let r = OwnerRecord {
        sk,
        tgid: read::<u32>(task, iconf!(task_tgid))?,
        fd: unsafe { *((ctx as *const u32).add(4)) },
        comm: read::<[u8; 16]>(task, iconf!(task_comm))?,
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
