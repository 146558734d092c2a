//! Every kernel field the programs read, resolved from the running kernel's
//! BTF into [`KernelConfig`]. Nothing about kernel layout is compiled in.

use keepalive_common::KernelConfig;
use thiserror::Error;

use crate::btf::{Btf, BtfError};

#[derive(Debug, Error)]
pub enum OffsetError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("`struct {ty}.{field}` is {found} bytes in the running kernel; kato reads {expected}")]
    Size { ty: &'static str, field: &'static str, expected: u32, found: u32 },
}

/// Offset of `ty.field`, checked to be `size` bytes wide (0: any size).
fn at(btf: &Btf, ty: &'static str, field: &'static str, size: u32) -> Result<u32, OffsetError> {
    let f = btf.field(ty, field)?;
    if size != 0 && f.size != size {
        return Err(OffsetError::Size { ty, field, expected: size, found: f.size });
    }
    Ok(f.offset)
}

/// Resolves all offsets. `keepalive_fn` is the address of `tcp_keepalive_timer`.
pub fn resolve(btf: &Btf, keepalive_fn: u64) -> Result<KernelConfig, OffsetError> {
    let sk = |field, size| at(btf, "sock", field, size);
    let socket_ino = at(btf, "socket_alloc", "vfs_inode", 0)? - at(btf, "socket_alloc", "socket", 0)?
        + at(btf, "inode", "i_ino", 8)?;
    let reset_args = btf.tracepoint_args("tcp_send_reset")?;
    Ok(KernelConfig {
        keepalive_fn,
        sk_timer: sk("sk_timer", 0)?,
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
        _pad0: 0,
    })
}
