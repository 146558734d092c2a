//! Active resets: `tcp_send_active_reset()` fires `tcp:tcp_send_reset` with a
//! NULL skb (replies to incoming segments carry the skb and are skipped).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::{flags, kind};

use crate::{
    conf,
    emit::emit,
    sock::{admitted_direct, fill, fill_stamps, protocol_direct, worth_a_record_direct, Src},
};

/// A record of `kind` for `sk` with its activity stamps: resets, error
/// reports (the moments that say how long the connection sat idle); none
/// when its namespace is not watched. `reason`: the kernel's reset reason.
#[inline(always)]
fn stamped(kind: u32, sk: u64, reason: Option<u32>) -> Result<u32, u32> {
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
        if let Some(r) = reason {
            ev.reason = r;
            ev.flags |= flags::HAS_REASON;
        }
        fill(ev, &src, ns).is_ok() && fill_stamps(ev, &src).is_ok()
    })
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_send_reset(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_tcp_send_reset(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let sk: u64 = ctx.arg(0);
    let skb: u64 = ctx.arg(1);
    if skb != 0 || sk == 0 {
        return Ok(0);
    }
    // Kernels before 6.12 have no reason argument: reading it would fail verification.
    let has = conf!(has_reset_reason) != 0;
    on_active_reset(sk, has, if has { ctx.arg::<u32>(2) } else { 0 })
}

/// `tcp_send_active_reset(sk, ...)`, with the kernel's reason where it gives
/// one. Not an `Option`: LLVM leaves the payload of `None` undefined and
/// older verifiers reject the spill of an unwritten register.
#[inline(always)]
pub(crate) fn on_active_reset(sk: u64, has_reason: bool, reason: u32) -> Result<u32, u32> {
    stamped(kind::RESET_SENT, sk, has_reason.then_some(reason))
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    match try_tcp_receive_reset(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// `tcp_reset()`: a RST arrived on an established socket. Read before the
/// kernel closes it, so the idle time is the connection's.
fn try_tcp_receive_reset(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return Ok(0);
    }
    stamped(kind::RESET_RECEIVED, sk, None)
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
    stamped(kind::ERROR_REPORT, sk, None)
}

const TCP_ESTABLISHED: i32 = 1;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const IPPROTO_TCP: u16 = 6;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// Three moments of every TCP connection's end: the first FIN either way
/// (with the activity stamps: how long it sat idle before closing) and the
/// socket leaving the kernel's tables, so tables forget it at once. Other
/// transitions cost two compares.
fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    let k = match (oldstate, newstate) {
        (_, TCP_CLOSE) => kind::CLOSED,
        (TCP_ESTABLISHED, TCP_CLOSE_WAIT) => kind::FIN_RECEIVED,
        (TCP_ESTABLISHED, TCP_FIN_WAIT1) => kind::FIN_SENT,
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
    if !worth_a_record_direct(sk) {
        if k == kind::CLOSED {
            crate::bump(keepalive_common::counter::QUIET_CLOSES);
        }
        return Ok(0);
    }
    let src = Src::live(sk);
    emit(k, |ev| {
        let ok = fill(ev, &src, ns).is_ok();
        // The tracepoint fires before the state is stored.
        ev.state_before = oldstate as u8;
        ev.state = newstate as u8;
        if k == kind::CLOSED {
            (ev.turns_out, ev.turns_in) = turns;
            ok
        } else {
            ok && fill_stamps(ev, &src).is_ok()
        }
    })
}
