//! The ABI shared by kato's eBPF programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the byte
//! layout is identical on both sides; sizes are asserted at compile time.
//! Kernel struct offsets are *not* compiled in: userspace resolves them from
//! the running kernel's BTF and writes them into [`KernelConfig`] before load.
#![no_std]

use core::mem::size_of;

pub mod names;
pub mod protect;

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
    /// A reset this kernel sent: `tcp_send_active_reset` (a NULL skb), or
    /// a reply to a segment it got (`tcp_v4/v6_send_reset`, flag `REPLY`).
    pub const RESET_SENT: u32 = 4;
    /// `tcp_receive_reset`: `tcp_reset()` ran. A RST arrived, or (flag
    /// `RCV_SHUT`, paired in userspace with the reply that follows) the
    /// kernel aborted a closed socket that got data (TCPAbortOnData).
    pub const RESET_RECEIVED: u32 = 5;
    /// `inet_sock_set_state` to TCP_CLOSE: the socket is gone from the
    /// tables (closed, reset, timed out, or handed to a TIME_WAIT socket).
    pub const CLOSED: u32 = 6;
    /// ESTABLISHED -> CLOSE_WAIT: the peer's FIN arrived.
    pub const FIN_RECEIVED: u32 = 7;
    /// ESTABLISHED -> FIN_WAIT1: this side closed first.
    pub const FIN_SENT: u32 = 8;
    /// `sock:inet_sk_error_report` on a TCP socket: an error was reported to
    /// its owner (`sk_err`: ETIMEDOUT from keepalive or retransmission
    /// timeouts, ECONNRESET, ...).
    pub const ERROR_REPORT: u32 = 9;
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// The keepalive timer was pending when the event was taken, so
    /// [`super::Event::expires`] is its deadline.
    pub const TIMER_PENDING: u32 = 1 << 0;
    /// [`super::Event::reason`] holds the kernel's `enum sk_rst_reason`.
    pub const HAS_REASON: u32 = 1 << 1;
    /// Taken inside this socket's own `tcp_keepalive_timer` run: on kernels
    /// whose resets carry no reason (before 6.12), the context names it.
    pub const IN_KEEPALIVE_TIMER: u32 = 1 << 2;
    /// `RESET_SENT` in reply to a segment this kernel got (data for a
    /// closed socket, a segment for no socket, ...), not an active reset.
    pub const REPLY: u32 = 1 << 3;
    /// The socket is a TIME_WAIT or request mini-socket, or there is none
    /// (`sk` 0, a reply for no socket): only the 4-tuple, the state (a
    /// TIME_WAIT socket's substate), the namespace and the cookie are read.
    pub const MINI_SOCK: u32 = 1 << 4;
    /// `sk_shutdown` has RCV_SHUTDOWN: the owner closed (or shut down
    /// reading), so data arriving now aborts the socket.
    pub const RCV_SHUT: u32 = 1 << 5;
    /// A listener's child (accepted): `sk_max_ack_backlog` came from it.
    pub const PASSIVE: u32 = 1 << 6;
    /// [`super::Event::tgid`] and `comm` hold the socket's owner, seen by
    /// the kernel in the owner's own system call (connect, listen, close).
    pub const OWNER: u32 = 1 << 7;
    pub const ALL: u32 = TIMER_PENDING
        | HAS_REASON
        | IN_KEEPALIVE_TIMER
        | REPLY
        | MINI_SOCK
        | RCV_SHUT
        | PASSIVE
        | OWNER;
}

/// Index of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// A ring-buffer reserve failed: the event is lost.
    pub const LOST: u32 = 0;
    /// A kernel read (`bpf_probe_read_kernel`) failed: the event was dropped.
    pub const READ_FAILED: u32 = 1;
    /// Events written to the ring buffer.
    pub const EMITTED: u32 = 2;
    /// Not a count: 1 + the offset of this CPU's last failed read, so a
    /// kernel whose layout kato misreads names the field (0: none failed).
    pub const LAST_FAILED_OFFSET: u32 = 3;
    /// Events of namespaces outside the watched set, not written (by design).
    pub const FILTERED: u32 = 4;
    /// Connections that closed without a record (quiet mode): keepalive
    /// never on, never idle past the threshold; resets are always recorded.
    pub const QUIET_CLOSES: u32 = 5;
    /// `kato protect`: keepalive switched on or tightened on a socket.
    pub const PROTECT_SET: u32 = 6;
    /// `kato protect`: a socket in scope whose own settings were as tight.
    pub const PROTECT_TIGHT: u32 = 7;
    /// `kato protect`: `bpf_setsockopt` refused.
    pub const PROTECT_FAILED: u32 = 8;
    /// `kato protect`: a record of a change lost (its ring was full).
    pub const PROTECT_LOST: u32 = 9;
    /// Keepalive probes the kernel sent (timer runs that raised
    /// `icsk_probes_out`), counted with `quiet_probes`, recorded or not.
    pub const PROBES_SENT: u32 = 10;
    /// Peers that answered with `k` probes outstanding (`quiet_probes`):
    /// `PROBES_ANSWERED + k - 1` for k in 1..=[`ANSWERED_MAX`], the last
    /// one for `ANSWERED_MAX` or more.
    pub const PROBES_ANSWERED: u32 = 11;
    pub const ANSWERED_MAX: u32 = 16;
    /// `quiet_probes`: the `PROBING` map was full; the run made a record
    /// instead, and that socket's answers go uncounted.
    pub const PROBING_FULL: u32 = PROBES_ANSWERED + ANSWERED_MAX;
    /// A routine record (a probe, a timer armed or stopped) not written
    /// because the ring was fuller than `shed_at`: the rest is kept for
    /// records that change a verdict (timeouts, resets, closes).
    pub const SHED: u32 = PROBING_FULL + 1;
    pub const COUNT: u32 = SHED + 1;
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
    /// `sk->sk_cookie` (`ss -e` prints it as `sk:`): 0 until something
    /// asked for it (kato's iterator, sock_diag, a socket filter).
    pub cookie: u64,
    /// The socket's cgroup v2 id (`sk_cgrp_data.cgroup->kn->id`): the
    /// cgroup of the task that created it, whoever runs the event (timers
    /// run in softirq). 0 where the kernel has no socket cgroup data.
    pub cgroup_id: u64,
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
    /// Last data segment received (`icsk_ack.lrcvtime`), low 32 bits of jiffies.
    pub lrcvtime: u32,
    /// Last data sent (`tcp_sock.lsndtime`), low 32 bits of jiffies.
    pub lsndtime: u32,
    /// Last ACK received (`tcp_sock.rcv_tstamp`), low 32 bits of jiffies.
    pub rcv_tstamp: u32,
    /// Receive-then-send turns (a server's responses), counted by the
    /// opt-in send/recv programs; reported on CLOSED.
    pub turns_out: u32,
    /// Send-then-receive turns (a client's answered requests).
    pub turns_in: u32,
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
    /// A reply reset: the TCP flags of the segment it answers (SYN 0x02,
    /// ACK 0x10, ...).
    pub seg_flags: u8,
    pub _pad1: u8,
    /// `ERROR_REPORT`: `tcp_sock.retrans_stamp`, when the oldest unacked
    /// data was first sent (milliseconds of CLOCK_MONOTONIC, low 32 bits;
    /// 0: nothing was retransmitted).
    pub first_unacked_ms: u32,
    /// With `OWNER`: the owning process (thread group id) ...
    pub tgid: u32,
    /// Bytes written and not yet acknowledged (`write_seq - snd_una`) on
    /// resets received, error reports and FINs of full sockets: a reset
    /// that meets data the peer never took answered that write.
    pub unacked: u32,
    /// ... and its name.
    pub comm: [u8; 16],
}

pub const EVENT_SIZE: usize = 168;
const _: () = assert!(size_of::<Event>() == EVENT_SIZE);

/// What userspace tells the programs about the running kernel, resolved from
/// its BTF and /proc/kallsyms. Written once before load as a read-only global
/// (`KATO_CONFIG`), so the verifier sees constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Address of `tcp_keepalive_timer`, compared with `timer->function`.
    pub keepalive_fn: u64,
    /// Offset of the keepalive timer in a TCP socket: `struct sock.sk_timer`,
    /// or `inet_connection_sock.icsk_keepalive_timer` where a kernel moved it.
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
    /// `offsetof(struct inet_connection_sock, icsk_ack.lrcvtime)` (u32 jiffies).
    pub icsk_lrcvtime: u32,
    /// `offsetof(struct tcp_sock, rcv_tstamp)` (u32 jiffies).
    pub tp_rcv_tstamp: u32,
    /// `offsetof(struct sock, sk_protocol)` (u16).
    pub sk_protocol: u32,
    /// `offsetof(struct inet_sock, inet_sport)` (__be16): still set after
    /// the close path releases the port and zeroes `skc_num`.
    pub inet_sport: u32,
    /// `offsetof(struct tcp_sock, lsndtime)` (u32 jiffies).
    pub tp_lsndtime: u32,
    /// 1 + the position of the function `tcp_send_active_reset`'s `enum
    /// sk_rst_reason` argument (fentry path): 3 upstream (sk, priority,
    /// reason), 2 where the compiler dropped `priority`; 0: none (< 6.10).
    pub active_reset_has_reason: u32,
    /// 1: only sockets of the namespaces in the `WATCHED_NETNS` map make
    /// events (an agent or trace scoped to namespaces does not fill the
    /// ring with everyone else's).
    pub netns_filter: u32,
    /// `offsetof(struct sock, __sk_common.skc_cookie)` (atomic64_t).
    pub skc_cookie: u32,
    /// `offsetof(struct sock, sk_cgrp_data.cgroup)` (a `struct cgroup *`);
    /// 0: the kernel keeps no cgroup on sockets, cgroup ids stay 0.
    pub sk_cgrp: u32,
    /// `offsetof(struct cgroup, kn)` (a `struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `offsetof(struct kernfs_node, id)` (u64): the cgroup v2 id.
    pub kn_id: u32,
    /// `offsetof(struct sock, __sk_common.skc_flags)` and SOCK_KEEPOPEN's
    /// bit in it.
    pub skc_flags: u32,
    pub sock_keepopen_bit: u32,
    /// 1: decide in the kernel what is worth a record. FIN and close
    /// records only for sockets with keepalive on or idle for at least
    /// `quiet_idle_jiffies`, timer records only with keepalive on; resets
    /// and error reports always. The rest is counted (`QUIET_CLOSES`).
    pub quiet: u32,
    pub quiet_idle_jiffies: u32,
    /// 1: the turn counters (`sock_send_length`/`sock_recv_length`) are
    /// attached, so every closing socket's entry in `CONN` is forgotten,
    /// in a watched namespace or not (a stale entry would count a turn
    /// for the next socket at the same address).
    pub turns: u32,
    /// The byte ranges of a TCP socket that hold every field a keepalive
    /// timer run's record reads (`sk_copy_n` of them, each `off..off+len`
    /// within [`SK_COPY_BYTES`]): the run copies them into a per-CPU buffer
    /// at the same offsets, a few reads instead of one per field. 0: the
    /// fields lie past the buffer, a read per field.
    pub sk_copy_n: u32,
    pub sk_copy_off: [u16; SK_COPY_RANGES],
    pub sk_copy_len: [u16; SK_COPY_RANGES],
    /// `offsetof(struct sock, sk_shutdown)` (u8; RCV_SHUTDOWN is bit 0).
    pub sk_shutdown: u32,
    /// `offsetof(struct sock, sk_max_ack_backlog)`: non-zero in a
    /// listener's children (copied from it), zero in connected sockets.
    pub sk_max_ack_backlog: u32,
    /// `offsetof(struct inet_timewait_sock, tw_substate)` (u8).
    pub tw_substate: u32,
    /// `offsetof(struct tcp_sock, retrans_stamp)` (u32).
    pub tp_retrans_stamp: u32,
    /// `struct sk_buff` `.head` (pointer), `.network_header` and
    /// `.transport_header` (u16 offsets from head), `.dev`: a reply
    /// reset's 4-tuple and, without a socket, its namespace.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_dev: u32,
    /// `offsetof(struct net_device, nd_net.net)`.
    pub dev_nd_net: u32,
    /// `offsetof(struct tcp_sock, write_seq)` and `snd_una` (u32).
    pub tp_write_seq: u32,
    pub tp_snd_una: u32,
    /// 1: keepalive probes are decided in the kernel (the agent without
    /// per-socket labels): probes sent and answered are counted per CPU
    /// (`PROBES_SENT`, `PROBES_ANSWERED`), and a timer run makes a record
    /// only when it changes a verdict: a probe while one is unanswered, an
    /// answer after two or more, a state change, the timeout.
    pub quiet_probes: u32,
    /// Bytes pending in the `EVENTS` ring at or above which routine
    /// records are shed (`counter::SHED`): the last part of the ring is
    /// kept for the records that change a verdict. 0: never shed.
    pub shed_at: u32,
    pub _pad: u32,
}

pub const KERNEL_CONFIG_SIZE: usize = 240;
/// The `EVENTS` ring's size when the loader does not set one.
pub const EVENTS_RING_BYTES: u32 = 8 << 20;
/// The share of the ring kept for verdict records: routine ones are shed
/// once less than a quarter is free.
pub fn shed_at(ring_bytes: u32) -> u32 {
    ring_bytes - ring_bytes / 4
}
pub const SK_COPY_RANGES: usize = 8;
/// The keepalive timer path's per-CPU copy of a socket's first bytes.
pub const SK_COPY_BYTES: usize = 4096;

/// Up to [`WATCHED_FEW_MAX`] watched namespaces in one array slot: the
/// filter compares them with no hash lookup (`len` beyond the maximum:
/// ask the `WATCHED_NETNS` hash map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchedFew {
    pub len: u32,
    pub inums: [u32; WATCHED_FEW_MAX],
}

pub const WATCHED_FEW_MAX: usize = 7;
const _: () = assert!(size_of::<WatchedFew>() == 32);
/// Namespaces the netns filter admits at most.
pub const MAX_WATCHED_NETNS: u32 = 4096;
const _: () = assert!(size_of::<KernelConfig>() == KERNEL_CONFIG_SIZE);

/// A socket's owning process as the kernel saw it in the owner's own
/// system call (`OWNERS`, by socket; `PORT_OWNERS`, a listener's, by
/// namespace and port): records of sockets in softirq or already closed
/// still name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerSlot {
    pub tgid: u32,
    pub _pad0: u32,
    pub comm: [u8; 16],
}

pub const OWNER_SLOT_SIZE: usize = 24;
const _: () = assert!(size_of::<OwnerSlot>() == OWNER_SLOT_SIZE);
/// Sockets and listeners whose owners the kernel remembers at most.
pub const MAX_OWNERS: u32 = 65536;

/// `PORT_OWNERS` key: a listener's namespace inode and port.
#[inline(always)]
pub const fn port_key(netns: u32, port: u16) -> u64 {
    ((netns as u64) << 16) | port as u64
}

/// Per-socket request/response turn counting (`CONN` map), fed by the
/// opt-in `sock_send_length` / `sock_recv_length` programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turns {
    /// 1 = last data moved in (recv), 2 = out (send).
    pub last_dir: u32,
    pub turns_out: u32,
    pub turns_in: u32,
    pub _pad0: u32,
}

/// Bits of [`SockRecord::flags`].
pub mod sock_flags {
    /// SO_KEEPALIVE is on (SOCK_KEEPOPEN in `sk_flags`).
    pub const KEEPALIVE_ON: u32 = 1 << 0;
    /// The keepalive timer (`sk_timer`) is pending: `ka_expires` is valid.
    pub const KA_PENDING: u32 = 1 << 1;
    /// The retransmit/probe timer (or TIME_WAIT / SYN_RECV timer) is pending:
    /// `rto_expires` is valid.
    pub const RTO_PENDING: u32 = 1 << 2;
    /// A full `tcp_sock` (not TIME_WAIT or a request socket): the TCP and
    /// keepalive fields are valid.
    pub const FULL: u32 = 1 << 3;
    /// A TIME_WAIT mini-socket: `state` is its `tw_substate` (TIME_WAIT, or
    /// FIN_WAIT2 for an orphan), as netstat and ss report it.
    pub const TIMEWAIT: u32 = 1 << 4;
    /// Accepted from a listener (passive open): the local port is the
    /// service's. Without it a connection was opened by connect().
    pub const PASSIVE: u32 = 1 << 5;
}

/// One TCP socket as the `iter/tcp` iterator sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRecord {
    pub sk: u64,
    /// The socket cookie, generated by the iterator (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// The socket's cgroup v2 id (full sockets; 0 otherwise or unknown).
    pub cgroup_id: u64,
    /// Socket inode (0 for TIME_WAIT, request and orphaned sockets).
    pub ino: u64,
    /// `jiffies_64` when the record was taken.
    pub jiffies: u64,
    /// Keepalive timer deadline (jiffies), with `KA_PENDING`.
    pub ka_expires: u64,
    /// Retransmit / zero-window probe / TIME_WAIT / SYN_RECV timer deadline.
    pub rto_expires: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub netns: u32,
    pub uid: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub state: u8,
    /// `icsk_pending`: which of the retransmit-timer uses is armed.
    pub icsk_pending: u8,
    pub flags: u32,
    /// `icsk_retransmits` (request sockets: `num_retrans`).
    pub retransmits: u8,
    pub probes_out: u8,
    pub backoff: u8,
    /// TCP_KEEPCNT set on the socket (0: the netns sysctl applies).
    pub ka_probes: u8,
    /// TCP_KEEPIDLE in jiffies (0: the netns sysctl applies).
    pub ka_time: u32,
    /// TCP_KEEPINTVL in jiffies (0: the netns sysctl applies).
    pub ka_intvl: u32,
    /// The socket's netns `tcp_keepalive_time`, jiffies.
    pub sysctl_ka_time: u32,
    /// The socket's netns `tcp_keepalive_intvl`, jiffies.
    pub sysctl_ka_intvl: u32,
    /// The socket's netns `tcp_keepalive_probes`.
    pub sysctl_ka_probes: u8,
    pub _pad0: [u8; 3],
    /// TCP_USER_TIMEOUT, milliseconds (0: off).
    pub user_timeout: u32,
    /// Last data received (`icsk_ack.lrcvtime`), low 32 bits of jiffies.
    pub lrcvtime: u32,
    /// Last ACK received (`rcv_tstamp`), low 32 bits of jiffies.
    pub rcv_tstamp: u32,
    /// Last data sent (`lsndtime`), low 32 bits of jiffies.
    pub lsndtime: u32,
    /// Recv-Q: unread bytes (LISTEN: accept backlog).
    pub rx_queue: u32,
    /// Send-Q: unacknowledged bytes (LISTEN: max backlog).
    pub tx_queue: u32,
    /// Segments received and sent (`tcp_sock.segs_in`/`segs_out`): every
    /// segment, keepalive probes and their answers included. A count that
    /// stands still between two snapshots proves silence either way.
    pub segs_in: u32,
    pub segs_out: u32,
    pub _pad1: u32,
}

pub const SOCK_RECORD_SIZE: usize = 168;
const _: () = assert!(size_of::<SockRecord>() == SOCK_RECORD_SIZE);

/// One socket file held by a process, from the `iter/task_file` iterator.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerRecord {
    /// The `struct sock` behind the file.
    pub sk: u64,
    /// Thread-group id: the PID users know.
    pub tgid: u32,
    pub fd: u32,
    pub comm: [u8; 16],
    /// The socket's namespace inode, local port and state, and whether it
    /// was accepted (passive open): enough to tell listeners, whose owner
    /// names their children, from the rest.
    pub netns: u32,
    pub sport: u16,
    pub state: u8,
    pub passive: u8,
}

pub const OWNER_RECORD_SIZE: usize = 40;
const _: () = assert!(size_of::<OwnerRecord>() == OWNER_RECORD_SIZE);

/// Offsets for the socket and process iterators (separate from
/// [`KernelConfig`] so the tracing programs' configuration stays small).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IterConfig {
    /// Bit number of SOCK_KEEPOPEN in `sk_flags`.
    pub sock_keepopen_bit: u32,
    pub skc_flags: u32,
    pub sk_uid: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    /// `icsk_retransmit_timer.expires` and `.entry.pprev`.
    pub icsk_rto_expires: u32,
    pub icsk_rto_pprev: u32,
    pub icsk_pending: u32,
    pub icsk_retransmits: u32,
    pub icsk_backoff: u32,
    pub icsk_user_timeout: u32,
    pub icsk_lrcvtime: u32,
    pub tp_keepalive_time: u32,
    pub tp_keepalive_intvl: u32,
    pub tp_keepalive_probes: u32,
    pub tp_lsndtime: u32,
    pub tp_rcv_tstamp: u32,
    pub tp_write_seq: u32,
    pub tp_snd_una: u32,
    pub tp_rcv_nxt: u32,
    pub tp_copied_seq: u32,
    /// `net.ipv4.sysctl_tcp_keepalive_{time,intvl,probes}`.
    pub net_ka_time: u32,
    pub net_ka_intvl: u32,
    pub net_ka_probes: u32,
    /// `inet_timewait_sock.tw_timer` `.expires` / `.entry.pprev`.
    pub tw_expires: u32,
    pub tw_pprev: u32,
    pub tw_substate: u32,
    pub _pad0: u32,
    /// `request_sock.rsk_timer` `.expires` / `.entry.pprev`, `num_retrans`.
    pub rsk_expires: u32,
    pub rsk_pprev: u32,
    pub rsk_num_retrans: u32,
    /// `socket.sk`, from the `struct socket *` of a socket file
    /// (`bpf_sock_from_file`).
    pub socket_sk: u32,
    /// `sock.sk_protocol` (u16): only IPPROTO_TCP sockets are reported.
    pub sk_protocol: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `tcp_sock.segs_in` / `segs_out`.
    pub tp_segs_in: u32,
    pub tp_segs_out: u32,
}

pub const ITER_CONFIG_SIZE: usize = 148;
const _: () = assert!(size_of::<IterConfig>() == ITER_CONFIG_SIZE);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), contain only integers and byte arrays, and
    // have explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::SockRecord {}
    unsafe impl aya::Pod for super::OwnerRecord {}
    unsafe impl aya::Pod for super::IterConfig {}
    unsafe impl aya::Pod for super::Turns {}
    unsafe impl aya::Pod for super::WatchedFew {}
    unsafe impl aya::Pod for super::OwnerSlot {}
    unsafe impl aya::Pod for super::protect::ProtectRule {}
    unsafe impl aya::Pod for super::protect::ProtectConf {}
    unsafe impl aya::Pod for super::protect::ProtectPlan {}
    unsafe impl aya::Pod for super::protect::ProtectRecord {}
    unsafe impl aya::Pod for super::protect::Protected {}
}
