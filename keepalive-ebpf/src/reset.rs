//! Resets, error reports and the ends of connections. `tcp:tcp_send_reset`
//! fires for active resets (a NULL skb: `tcp_send_active_reset`) and for
//! replies to segments (`tcp_v4/v6_send_reset`: data for a socket that was
//! closed, a segment for no socket, ...); `tcp:tcp_receive_reset` for
//! every `tcp_reset()`, which the kernel also calls itself when a closed
//! socket gets data (userspace pairs that with the reply that follows).

use aya_ebpf::{
    helpers::bpf_skc_to_tcp_timewait_sock, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use keepalive_common::{flags, kind, Event};

use crate::{
    conf,
    emit::emit,
    sock::{
        admit, admitted_direct, cookie_direct, fill, fill_owner, fill_stamps, fill_unacked, load,
        protocol_direct, read, read_into, remember_listener, remember_owner, worth_a_record_direct,
        Src,
    },
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const TCP_NEW_SYN_RECV: u8 = 12;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `RCV_SHUTDOWN` in `sk_shutdown`.
const RCV_SHUTDOWN: u8 = 1;

/// A record of `kind` for `sk` with its activity stamps and owner:
/// resets, error reports (the moments that say how long the connection
/// sat idle); none when its namespace is not watched. `reason`: the
/// kernel's reset reason.
#[inline(always)]
fn stamped(kind: u32, sk: u64, reason: Option<u32>, extra: u32, skb: u64) -> Result<u32, u32> {
    // `sk` is a BTF `struct sock *` on every path here: the namespace
    // with plain loads, so a filtered reset costs no probe read.
    let Some(ns) = admitted_direct(sk) else {
        return Ok(0);
    };
    let src = Src::live(sk);
    emit(kind, |ev| {
        if crate::timer::running_here(sk + conf!(sk_timer) as u64) {
            ev.flags |= flags::IN_KEEPALIVE_TIMER;
        }
        ev.flags |= extra;
        if let Some(r) = reason {
            ev.reason = r;
            ev.flags |= flags::HAS_REASON;
        }
        let ok = fill(ev, &src, ns).is_ok()
            && fill_stamps(ev, &src).is_ok()
            && fill_unacked(ev, &src).is_ok();
        if ok {
            fill_owner(ev);
            ev.cookie = cookie_direct(sk);
        }
        if ok && skb != 0 {
            ev.seg_flags = segment_flags(skb);
        }
        if ok && kind == kind::ERROR_REPORT {
            // When the oldest unacknowledged data first left: a send
            // after a long silence that never got through is how a path
            // that silently dropped a forgotten flow shows.
            ev.first_unacked_ms = src.get::<u32>(conf!(tp_retrans_stamp)).unwrap_or(0);
        }
        ok
    })
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_send_reset(&ctx, true) {
        Ok(r) | Err(r) => r,
    }
}

/// The same tracepoint on the fentry path, where `tcp_send_active_reset`
/// has its own trampoline: replies only.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_replies(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_send_reset(&ctx, false) {
        Ok(r) | Err(r) => r,
    }
}

// Shared by two programs: inlined into each, or LLVM makes it a function
// taking a stack pointer, which 6.1's verifier refuses for a global one.
#[inline(always)]
fn try_tcp_send_reset(ctx: &BtfTracePointContext, active: bool) -> Result<u32, u32> {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    // Kernels before 6.12 have no reason argument: reading it would fail verification.
    let has = conf!(has_reset_reason) != 0;
    let reason = if has { ctx.arg::<u32>(2) } else { 0 };
    if skb != 0 {
        // A full connection's own reply: no nested frame (the verifier's
        // 512 bytes cover the whole call chain).
        if sk != 0 && is_connection(sk) {
            return stamped(
                kind::RESET_SENT,
                sk,
                has.then_some(reason),
                flags::REPLY,
                skb,
            );
        }
        return on_mini_reply(sk, skb, has, reason);
    }
    if !active || sk == 0 {
        return Ok(0);
    }
    on_active_reset(sk, has, reason)
}

/// A full socket of a connection (not a listener, nor a TIME_WAIT or
/// request mini-socket).
#[inline(always)]
fn is_connection(sk: u64) -> bool {
    let state = load::<u8>(sk, conf!(skc_state));
    i32::from(state) != TCP_LISTEN && state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV
}

/// `tcp_send_active_reset(sk, ...)`, with the kernel's reason where it gives
/// one. Not an `Option`: LLVM leaves the payload of `None` undefined and
/// older verifiers reject the spill of an unwritten register.
#[inline(always)]
pub(crate) fn on_active_reset(sk: u64, has_reason: bool, reason: u32) -> Result<u32, u32> {
    stamped(kind::RESET_SENT, sk, has_reason.then_some(reason), 0, 0)
}

/// A reset this kernel sends back for segment `skb` without a full
/// connection: `sk` is a TIME_WAIT or request mini-socket, a listener, or
/// none (6.10+ traces these; 6.1 only full sockets). The 4-tuple is the
/// segment's, reversed.
#[inline(never)]
fn on_mini_reply(sk: u64, skb: u64, has_reason: bool, reason: u32) -> Result<u32, u32> {
    let state = if sk != 0 {
        load::<u8>(sk, conf!(skc_state))
    } else {
        0
    };
    let listener = i32::from(state) == TCP_LISTEN;
    let ns = if sk != 0 {
        admitted_direct(sk)
    } else {
        admit(skb_netns(skb))
    };
    let Some(ns) = ns else {
        return Ok(0);
    };
    emit(kind::RESET_SENT, |ev| {
        ev.flags |= flags::REPLY | flags::MINI_SOCK;
        if has_reason {
            ev.reason = reason;
            ev.flags |= flags::HAS_REASON;
        }
        ev.netns = ns;
        ev.state = TCP_CLOSE as u8;
        if sk != 0 {
            ev.cookie = cookie_direct(sk);
            ev.state = state;
            if listener {
                ev.state = TCP_LISTEN as u8;
            } else {
                // The connection's own identity: a TIME_WAIT socket shows
                // its substate (FIN_WAIT2 for one its owner closed), as ss does.
                ev.sk = sk;
                if state == TCP_TIME_WAIT {
                    let tw = unsafe { bpf_skc_to_tcp_timewait_sock(sk as *mut _) } as u64;
                    if tw != 0 {
                        ev.state = load::<u8>(tw, conf!(tw_substate));
                    }
                }
            }
        }
        ev.state_before = ev.state;
        let ok = segment_tuple(ev, skb).is_ok();
        if ok {
            fill_owner(ev);
        }
        ok
    })
}

/// The namespace a segment arrived in, for a reply that has no socket.
#[inline(always)]
fn skb_netns(skb: u64) -> u32 {
    let dev = load::<u64>(skb, conf!(skb_dev));
    if dev == 0 {
        return 0;
    }
    let net = load::<u64>(dev, conf!(dev_nd_net));
    if net == 0 {
        return 0;
    }
    load::<u32>(net, conf!(net_inum))
}

/// A reply's 4-tuple: the segment's, reversed (the reset goes back).
/// Read straight into the record: stack is short on this path.
#[inline(always)]
fn segment_tuple(ev: &mut Event, skb: u64) -> Result<(), u32> {
    let head = load::<u64>(skb, conf!(skb_head));
    let ip = head + u64::from(load::<u16>(skb, conf!(skb_network_header)));
    let tcp = head + u64::from(load::<u16>(skb, conf!(skb_transport_header)));
    match read::<u8>(ip, 0)? >> 4 {
        4 => {
            ev.family = AF_INET;
            read_into(ev.daddr.as_mut_ptr(), 4, ip + 12)?;
            read_into(ev.saddr.as_mut_ptr(), 4, ip + 16)?;
        }
        6 => {
            ev.family = AF_INET6;
            read_into(ev.daddr.as_mut_ptr(), 16, ip + 8)?;
            read_into(ev.saddr.as_mut_ptr(), 16, ip + 24)?;
        }
        _ => return Err(0),
    }
    // Source and destination ports, as they are on the wire.
    read_into((&raw mut ev.dport).cast(), 2, tcp)?;
    read_into((&raw mut ev.sport).cast(), 2, tcp + 2)?;
    ev.dport = u16::from_be(ev.dport);
    ev.sport = u16::from_be(ev.sport);
    ev.seg_flags = read::<u8>(tcp, 13)?;
    Ok(())
}

/// The TCP flags of segment `skb` (0 when unreadable).
#[inline(always)]
fn segment_flags(skb: u64) -> u8 {
    let head = load::<u64>(skb, conf!(skb_head));
    let tcp = head + u64::from(load::<u16>(skb, conf!(skb_transport_header)));
    read::<u8>(tcp, 13).unwrap_or(0)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_receive_reset(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// `tcp_reset()`: a RST arrived on an established socket, or the kernel
/// aborts a socket whose owner closed it for data that still arrived
/// (`RCV_SHUT`: userspace waits for the reply reset that then follows).
/// Read before the kernel closes it, so the idle time is the connection's.
fn try_tcp_receive_reset(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return Ok(0);
    }
    let shut = if load::<u8>(sk, conf!(sk_shutdown)) & RCV_SHUTDOWN != 0 {
        flags::RCV_SHUT
    } else {
        0
    };
    stamped(kind::RESET_RECEIVED, sk, None, shut, 0)
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> u32 {
    match try_inet_sk_error_report(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// `sk_error_report()` (5.13+): the kernel tells a TCP socket's owner about
/// an error. Inside the socket's own keepalive timer run, an ETIMEDOUT is
/// the keepalive giving up; elsewhere it is retransmissions (or
/// TCP_USER_TIMEOUT) giving up: both are dead peers, found two ways.
fn try_inet_sk_error_report(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let sk: u64 = ctx.arg(0);
    if sk == 0 || protocol_direct(sk) != IPPROTO_TCP {
        return Ok(0);
    }
    stamped(kind::ERROR_REPORT, sk, None, 0, 0)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// Three moments of every TCP connection's end: the first FIN either way
/// (with the activity stamps: how long it sat idle before closing) and the
/// socket leaving the kernel's tables, so tables forget it at once. And
/// the transitions a socket's owner makes in its own system call (connect,
/// listen, close after the peer's FIN), where the running process is the
/// owner: remembered for the records that come later in softirq or after
/// the owner let go. Other transitions cost a few compares.
fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let k = match (oldstate, newstate) {
        (_, TCP_CLOSE) => kind::CLOSED,
        (TCP_ESTABLISHED, TCP_CLOSE_WAIT) => kind::FIN_RECEIVED,
        (TCP_ESTABLISHED, TCP_FIN_WAIT1) => kind::FIN_SENT,
        (_, TCP_SYN_SENT | TCP_LISTEN) | (TCP_CLOSE_WAIT, TCP_LAST_ACK) => 0,
        _ => return Ok(0),
    };
    let sk: u64 = ctx.arg(0);
    // Every connection's end passes here: plain loads through the BTF
    // pointer.
    if sk == 0 || protocol_direct(sk) != IPPROTO_TCP {
        return Ok(0);
    }
    // Taken before any filter: a socket that leaves no record must not
    // leave its turns behind for the next socket at its address.
    let turns = if k == kind::CLOSED && conf!(turns) != 0 {
        crate::turns::take(sk)
    } else {
        (0, 0)
    };
    // The namespace first: two plain loads and a compare, where the quiet
    // decision costs two helper calls.
    let Some(ns) = admitted_direct(sk) else {
        return Ok(0);
    };
    if k == 0 {
        return owner_seen(sk, ns, newstate);
    }
    let worth = worth_a_record_direct(sk);
    let passive = load::<u32>(sk, conf!(sk_max_ack_backlog)) != 0;
    if k == kind::FIN_SENT && worth {
        // close()/shutdown(): the process running is the owner.
        remember_owner(sk);
    }
    if !worth {
        if k == kind::CLOSED {
            crate::bump(keepalive_common::counter::QUIET_CLOSES);
            // connect() remembered every active socket's owner.
            if !passive {
                let _ = crate::OWNERS.remove(&sk);
            }
        }
        return Ok(0);
    }
    let src = Src::live(sk);
    let r = emit(k, |ev| {
        let ok = fill(ev, &src, ns).is_ok();
        // The tracepoint fires before the state is stored.
        ev.state_before = oldstate as u8;
        ev.state = newstate as u8;
        if k == kind::CLOSED {
            (ev.turns_out, ev.turns_in) = turns;
        }
        let ok = ok
            && (k == kind::CLOSED
                || (fill_stamps(ev, &src).is_ok() && fill_unacked(ev, &src).is_ok()));
        if ok {
            fill_owner(ev);
            ev.cookie = cookie_direct(sk);
        }
        ok
    });
    if k == kind::CLOSED {
        let _ = crate::OWNERS.remove(&sk);
        // Keepalive sockets only (those worth a record): the arming hooks
        // that would see the timer stop are not attached in the agent.
        crate::timer::forget_probing(sk);
    }
    r
}

/// connect() (SYN_SENT), listen(), or close() after the peer's FIN
/// (LAST_ACK, for sockets worth a record): the running process owns `sk`.
#[inline(always)]
fn owner_seen(sk: u64, ns: u32, newstate: i32) -> Result<u32, u32> {
    match newstate {
        TCP_LISTEN => remember_listener(ns, load::<u16>(sk, conf!(skc_num))),
        TCP_LAST_ACK if !worth_a_record_direct(sk) => {}
        _ => remember_owner(sk),
    }
    Ok(0)
}
