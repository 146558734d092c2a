//! Every kernel field the programs read, resolved from the running kernel's
//! BTF into [`KernelConfig`]. Nothing about kernel layout is compiled in.

use keepalive_common::{IterConfig, KernelConfig, SK_COPY_BYTES, SK_COPY_RANGES};
use thiserror::Error;

use crate::kernel::btf::{Btf, BtfError};

#[derive(Debug, Error)]
pub enum OffsetError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("`struct {ty}.{field}` is {found} bytes in the running kernel; kato reads {expected}")]
    Size {
        ty: &'static str,
        field: &'static str,
        expected: u32,
        found: u32,
    },
    #[error("the running kernel's `enum sock_flags` has no SOCK_KEEPOPEN")]
    NoKeepopen,
}

/// Offset of `ty.field`, checked to be `size` bytes wide (0: any size).
fn at(btf: &Btf, ty: &'static str, field: &'static str, size: u32) -> Result<u32, OffsetError> {
    let f = btf.field(ty, field)?;
    if size != 0 && f.size != size {
        return Err(OffsetError::Size {
            ty,
            field,
            expected: size,
            found: f.size,
        });
    }
    Ok(f.offset)
}

/// Where a TCP socket's keepalive timer lives. Upstream it is
/// `struct sock.sk_timer`; some stable kernels moved it into
/// `inet_connection_sock.icsk_keepalive_timer` (Debian's 6.1.0-56, kernel
/// 6.1.192, unions it with MPTCP's timeout timer), and a socket is read
/// through a `struct sock *` at offset 0 of either. Returns the offset and
/// the field's name (for `kato doctor`).
pub fn keepalive_timer(btf: &Btf) -> Result<(u32, &'static str), OffsetError> {
    let [icsk, sock] = TIMER_PLACES;
    match btf.field("inet_connection_sock", "icsk_keepalive_timer") {
        Ok(f) => Ok((f.offset, icsk)),
        _ => Ok((at(btf, "sock", "sk_timer", 0)?, sock)),
    }
}

/// Where kernels keep a socket's keepalive timer, as [`keepalive_timer`]
/// names them.
pub const TIMER_PLACES: [&str; 2] = ["inet_connection_sock.icsk_keepalive_timer", "sock.sk_timer"];

/// Resolves all offsets. `keepalive_fn` is the address of `tcp_keepalive_timer`.
pub fn resolve(btf: &Btf, keepalive_fn: u64) -> Result<KernelConfig, OffsetError> {
    let c = resolve_fields(btf, keepalive_fn)?;
    let (n, off, len) = sk_copy_ranges(&c);
    Ok(KernelConfig {
        sk_copy_n: n,
        sk_copy_off: off,
        sk_copy_len: len,
        ..c
    })
}

/// The byte ranges of a TCP socket holding every field the keepalive
/// timer's record reads through `sock::Src` (offset and width as the
/// programs read them), fields a few bytes apart merged, at most
/// `SK_COPY_RANGES`. None (0 ranges) when a field lies past
/// `SK_COPY_BYTES` (a kernel built with lock debugging, say): the programs
/// then read field by field.
pub fn sk_copy_ranges(c: &KernelConfig) -> (u32, [u16; SK_COPY_RANGES], [u16; SK_COPY_RANGES]) {
    let none = (0, [0; SK_COPY_RANGES], [0; SK_COPY_RANGES]);
    let timer = c.sk_timer;
    let mut fields = vec![
        (c.skc_family, 2),
        (c.skc_state, 1),
        (c.skc_num, 2),
        (c.inet_sport, 2),
        (c.skc_dport, 2),
        (c.skc_rcv_saddr, 4),
        (c.skc_daddr, 4),
        (c.skc_v6_rcv_saddr, 16),
        (c.skc_v6_daddr, 16),
        (c.skc_net, 8),
        (c.sk_err, 4),
        (c.sk_socket, 8),
        (c.icsk_probes_out, 1),
        (c.skc_cookie, 8),
        (c.skc_flags, 8),
        (c.icsk_lrcvtime, 4),
        (c.tp_lsndtime, 4),
        (c.tp_rcv_tstamp, 4),
        (c.sk_max_ack_backlog, 4),
        (timer + c.timer_pprev, 8),
        (timer + c.timer_expires, 8),
    ];
    if c.sk_cgrp != 0 {
        fields.push((c.sk_cgrp, 8));
    }
    if fields
        .iter()
        .any(|&(off, len)| (off + len) as usize > SK_COPY_BYTES)
    {
        return none;
    }
    fields.sort_unstable();
    // Copying a few bytes between two fields costs less than another
    // read; widen the gap merged over until the ranges fit.
    for gap in [32, 64, 128, 256, 512, 1024, SK_COPY_BYTES as u32] {
        let mut ranges: Vec<(u32, u32)> = vec![];
        for &(off, len) in &fields {
            match ranges.last_mut() {
                Some((_, end)) if off <= *end + gap => *end = (*end).max(off + len),
                _ => ranges.push((off, off + len)),
            }
        }
        if ranges.len() <= SK_COPY_RANGES {
            let (mut offs, mut lens) = ([0u16; SK_COPY_RANGES], [0u16; SK_COPY_RANGES]);
            for (i, (start, end)) in ranges.iter().enumerate() {
                // Within SK_COPY_BYTES (4096), checked above.
                offs[i] = *start as u16;
                lens[i] = (end - start) as u16;
            }
            return (ranges.len() as u32, offs, lens);
        }
    }
    none
}

fn resolve_fields(btf: &Btf, keepalive_fn: u64) -> Result<KernelConfig, OffsetError> {
    let sk = |field, size| at(btf, "sock", field, size);
    let socket_ino = at(btf, "socket_alloc", "vfs_inode", 0)?
        - at(btf, "socket_alloc", "socket", 0)?
        + at(btf, "inode", "i_ino", 8)?;
    let reset_args = btf.tracepoint_args("tcp_send_reset")?;
    Ok(KernelConfig {
        keepalive_fn,
        sk_timer: keepalive_timer(btf)?.0,
        timer_function: at(btf, "timer_list", "function", 8)?,
        timer_expires: at(btf, "timer_list", "expires", 8)?,
        timer_pprev: at(btf, "timer_list", "entry.pprev", 8)?,
        skc_family: sk("__sk_common.skc_family", 2)?,
        skc_state: sk("__sk_common.skc_state", 1)?,
        skc_num: sk("__sk_common.skc_num", 2)?,
        skc_dport: sk("__sk_common.skc_dport", 2)?,
        skc_rcv_saddr: sk("__sk_common.skc_rcv_saddr", 4)?,
        skc_daddr: sk("__sk_common.skc_daddr", 4)?,
        skc_v6_rcv_saddr: sk("__sk_common.skc_v6_rcv_saddr", 16)?,
        skc_v6_daddr: sk("__sk_common.skc_v6_daddr", 16)?,
        skc_net: sk("__sk_common.skc_net", 8)?,
        net_inum: at(btf, "net", "ns.inum", 4)?,
        sk_err: sk("sk_err", 4)?,
        sk_socket: sk("sk_socket", 8)?,
        socket_ino,
        icsk_probes_out: at(btf, "inet_connection_sock", "icsk_probes_out", 1)?,
        has_reset_reason: (reset_args >= 3) as u32,
        icsk_lrcvtime: at(btf, "inet_connection_sock", "icsk_ack.lrcvtime", 4)?,
        tp_rcv_tstamp: at(btf, "tcp_sock", "rcv_tstamp", 4)?,
        sk_protocol: sk("sk_protocol", 2)?,
        inet_sport: at(btf, "inet_sock", "inet_sport", 2)?,
        tp_lsndtime: at(btf, "tcp_sock", "lsndtime", 4)?,
        // 1 + the position of its `reason` argument (the compiler may have
        // dropped `priority` before it); absent function: the fentry path
        // is not offered, nothing to read.
        active_reset_has_reason: btf
            .function_reason_arg("tcp_send_active_reset")
            .ok()
            .flatten()
            .map_or(0, |i| u32::from(i) + 1),
        // Set by the loader from LoadOptions.
        netns_filter: 0,
        skc_cookie: sk("__sk_common.skc_cookie", 8)?,
        skc_flags: sk("__sk_common.skc_flags", 8)?,
        sock_keepopen_bit: keepopen_bit(btf)?,
        // Set by the loader from LoadOptions.
        quiet: 0,
        quiet_idle_jiffies: 0,
        sk_shutdown: sk("sk_shutdown", 1)?,
        sk_max_ack_backlog: sk("sk_max_ack_backlog", 4)?,
        tw_substate: at(btf, "inet_timewait_sock", "tw_substate", 1)?,
        tp_retrans_stamp: at(btf, "tcp_sock", "retrans_stamp", 4)?,
        skb_head: at(btf, "sk_buff", "head", 8)?,
        skb_network_header: at(btf, "sk_buff", "network_header", 2)?,
        skb_transport_header: at(btf, "sk_buff", "transport_header", 2)?,
        skb_dev: at(btf, "sk_buff", "dev", 8)?,
        dev_nd_net: at(btf, "net_device", "nd_net.net", 8)?,
        tp_write_seq: at(btf, "tcp_sock", "write_seq", 4)?,
        tp_snd_una: at(btf, "tcp_sock", "snd_una", 4)?,
        // All three or none: without them cgroup ids are 0 (doctor says so).
        ..cgroup_offsets(btf).unwrap_or_default()
    })
}

/// Where a socket's cgroup v2 id is: `sk_cgrp_data.cgroup->kn->id`.
/// None on kernels without socket cgroup data (CONFIG_SOCK_CGROUP_DATA).
pub fn cgroup_offsets(btf: &Btf) -> Option<KernelConfig> {
    Some(KernelConfig {
        sk_cgrp: at(btf, "sock", "sk_cgrp_data.cgroup", 8).ok()?,
        cgroup_kn: at(btf, "cgroup", "kn", 8).ok()?,
        kn_id: at(btf, "kernfs_node", "id", 8).ok()?,
        ..KernelConfig::default()
    })
}

/// SOCK_KEEPOPEN's bit in `sk_flags`.
fn keepopen_bit(btf: &Btf) -> Result<u32, OffsetError> {
    btf.enum_values("sock_flags")
        .map_err(|_| OffsetError::NoKeepopen)?
        .into_iter()
        .find(|(n, _)| n == "SOCK_KEEPOPEN")
        .and_then(|(_, v)| u32::try_from(v).ok())
        .ok_or(OffsetError::NoKeepopen)
}

/// Offsets for the socket and process iterators.
pub fn resolve_iter(btf: &Btf) -> Result<IterConfig, OffsetError> {
    let sk = |field, size| at(btf, "sock", field, size);
    let icsk = |field, size| at(btf, "inet_connection_sock", field, size);
    let tp = |field, size| at(btf, "tcp_sock", field, size);
    let timer = |ty, field| -> Result<(u32, u32), OffsetError> {
        let base = at(btf, ty, field, 0)?;
        Ok((
            base + at(btf, "timer_list", "expires", 8)?,
            base + at(btf, "timer_list", "entry.pprev", 8)?,
        ))
    };
    let keepopen = keepopen_bit(btf)?;
    let (icsk_rto_expires, icsk_rto_pprev) =
        timer("inet_connection_sock", "icsk_retransmit_timer")?;
    let (tw_expires, tw_pprev) = timer("inet_timewait_sock", "tw_timer")?;
    let (rsk_expires, rsk_pprev) = timer("request_sock", "rsk_timer")?;
    Ok(IterConfig {
        sock_keepopen_bit: keepopen,
        skc_flags: sk("__sk_common.skc_flags", 8)?,
        sk_uid: sk("sk_uid", 4)?,
        sk_ack_backlog: sk("sk_ack_backlog", 4)?,
        sk_max_ack_backlog: sk("sk_max_ack_backlog", 4)?,
        icsk_rto_expires,
        icsk_rto_pprev,
        icsk_pending: icsk("icsk_pending", 1)?,
        icsk_retransmits: icsk("icsk_retransmits", 1)?,
        icsk_backoff: icsk("icsk_backoff", 1)?,
        icsk_user_timeout: icsk("icsk_user_timeout", 4)?,
        icsk_lrcvtime: icsk("icsk_ack.lrcvtime", 4)?,
        tp_keepalive_time: tp("keepalive_time", 4)?,
        tp_keepalive_intvl: tp("keepalive_intvl", 4)?,
        tp_keepalive_probes: tp("keepalive_probes", 1)?,
        tp_lsndtime: tp("lsndtime", 4)?,
        tp_rcv_tstamp: tp("rcv_tstamp", 4)?,
        tp_write_seq: tp("write_seq", 4)?,
        tp_snd_una: tp("snd_una", 4)?,
        tp_rcv_nxt: tp("rcv_nxt", 4)?,
        tp_copied_seq: tp("copied_seq", 4)?,
        net_ka_time: at(btf, "net", "ipv4.sysctl_tcp_keepalive_time", 4)?,
        net_ka_intvl: at(btf, "net", "ipv4.sysctl_tcp_keepalive_intvl", 4)?,
        net_ka_probes: at(btf, "net", "ipv4.sysctl_tcp_keepalive_probes", 1)?,
        tw_expires,
        tw_pprev,
        tw_substate: at(btf, "inet_timewait_sock", "tw_substate", 1)?,
        _pad0: 0,
        rsk_expires,
        rsk_pprev,
        rsk_num_retrans: at(btf, "request_sock", "num_retrans", 1)?,
        socket_sk: at(btf, "socket", "sk", 8)?,
        sk_protocol: sk("sk_protocol", 2)?,
        task_tgid: at(btf, "task_struct", "tgid", 4)?,
        task_comm: at(btf, "task_struct", "comm", 16)?,
        tp_segs_in: tp("segs_in", 4)?,
        tp_segs_out: tp("segs_out", 4)?,
    })
}
