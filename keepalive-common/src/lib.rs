//! The ABI shared by kato's eBPF programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the byte
//! layout is identical on both sides; sizes are asserted at compile time.
//! Kernel struct offsets are *not* compiled in: userspace resolves them from
//! the running kernel's BTF and writes them into [`KernelConfig`] before load.
#![no_std]

use core::mem::size_of;

/// Raw event kinds written by the kernel programs.
///
/// Kept as plain `u32` constants (not a Rust enum) because the kernel side
/// writes them and userspace must reject unknown values rather than transmute.
pub mod kind {
    /// `timer_start` on a socket's keepalive timer outside its own callback:
    /// keepalive switched on, re-configured, or a connection established.
    pub const ARMED: u32 = 1;
    /// One run of `tcp_keepalive_timer` (entry and exit joined). Userspace
    /// derives probe sent / peer answered / keepalive timeout from it.
    pub const FIRED: u32 = 2;
    /// `timer_cancel` on a pending keepalive timer (keepalive off, close,
    /// or re-arm of a pending timer).
    pub const DISARMED: u32 = 3;
    /// `tcp_send_reset` with a NULL skb: `tcp_send_active_reset`.
    pub const RESET_SENT: u32 = 4;
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// The keepalive timer was pending when the event was taken, so
    /// [`super::Event::expires`] is its deadline.
    pub const TIMER_PENDING: u32 = 1 << 0;
    /// [`super::Event::reason`] holds the kernel's `enum sk_rst_reason`.
    pub const HAS_REASON: u32 = 1 << 1;
}

/// Index of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// A ring-buffer reserve failed: the event is lost.
    pub const LOST: u32 = 0;
    /// A kernel read (`bpf_probe_read_kernel`) failed: the event was dropped.
    pub const READ_FAILED: u32 = 1;
    /// Events written to the ring buffer.
    pub const EMITTED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// One record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of `struct sock`; unique while the socket lives.
    pub sk: u64,
    /// `jiffies_64` when the event was taken (to turn `expires` into time).
    pub jiffies: u64,
    /// Keepalive timer deadline in jiffies (valid with `TIMER_PENDING`).
    pub expires: u64,
    /// Inode of the owning `struct socket` (0 when orphaned).
    pub ino: u64,
    /// Local address: 4 bytes for AF_INET, 16 for AF_INET6.
    pub saddr: [u8; 16],
    /// Remote address, same encoding as `saddr`.
    pub daddr: [u8; 16],
    /// One of [`kind`].
    pub kind: u32,
    /// Network namespace inode of the socket.
    pub netns: u32,
    /// `enum sk_rst_reason` for `RESET_SENT` (with `HAS_REASON`).
    pub reason: u32,
    /// Bits of [`flags`].
    pub flags: u32,
    /// `sk->sk_err` after the event (ETIMEDOUT = 110 after a keepalive timeout).
    pub sk_err: i32,
    pub _pad0: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// TCP state (`TCP_ESTABLISHED` = 1 ...) after the event.
    pub state: u8,
    /// TCP state before a `FIRED` run (equals `state` for other kinds).
    pub state_before: u8,
    /// `icsk_probes_out` after the event: unanswered keepalive probes.
    pub probes_out: u8,
    /// `icsk_probes_out` when a `FIRED` run began.
    pub probes_before: u8,
    pub _pad1: [u8; 6],
}

pub const EVENT_SIZE: usize = 112;
const _: () = assert!(size_of::<Event>() == EVENT_SIZE);

/// What userspace tells the programs about the running kernel, resolved from
/// its BTF and /proc/kallsyms. Written once before load as a read-only global
/// (`KATO_CONFIG`), so the verifier sees constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Address of `tcp_keepalive_timer`, compared with `timer->function`.
    pub keepalive_fn: u64,
    /// `offsetof(struct sock, sk_timer)`.
    pub sk_timer: u32,
    /// `offsetof(struct timer_list, function)`.
    pub timer_function: u32,
    /// `offsetof(struct timer_list, expires)`.
    pub timer_expires: u32,
    /// `offsetof(struct timer_list, entry) + offsetof(struct hlist_node, pprev)`:
    /// non-NULL while the timer is pending.
    pub timer_pprev: u32,
    /// `struct sock_common` fields, offsets within `struct sock`.
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_net: u32,
    /// `offsetof(struct net, ns.inum)`.
    pub net_inum: u32,
    /// `offsetof(struct sock, sk_err)`.
    pub sk_err: u32,
    /// `offsetof(struct sock, sk_socket)`.
    pub sk_socket: u32,
    /// From a `struct socket *` to its inode number: `offsetof(socket_alloc,
    /// vfs_inode) - offsetof(socket_alloc, socket) + offsetof(inode, i_ino)`.
    pub socket_ino: u32,
    /// `offsetof(struct inet_connection_sock, icsk_probes_out)` (a `__u8`).
    pub icsk_probes_out: u32,
    /// 1 when the `tcp_send_reset` tracepoint carries `enum sk_rst_reason`.
    pub has_reset_reason: u32,
    pub _pad0: u32,
}

pub const KERNEL_CONFIG_SIZE: usize = 88;
const _: () = assert!(size_of::<KernelConfig>() == KERNEL_CONFIG_SIZE);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), contain only integers and byte arrays, and
    // have explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::KernelConfig {}
}
