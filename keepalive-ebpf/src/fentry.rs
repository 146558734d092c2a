//! The fentry/fexit path: programs on the keepalive functions themselves,
//! so no other kernel timer runs kato's code (the `timer:*` tracepoints see
//! every timer of the system and filter). Where the kernel allows
//! trampolines; the events are the same records as the tracepoint path's.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};

use crate::{
    conf,
    reset::on_active_reset,
    sock::{keepalive_deadline, Src},
    timer::{on_armed, on_disarmed, on_entry, on_exit},
};

/// `static void tcp_keepalive_timer(struct timer_list *t)`.
#[fentry(function = "tcp_keepalive_timer")]
pub fn fentry_keepalive_timer(ctx: FEntryContext) -> u32 {
    match on_entry(ctx.arg(0)) {
        Ok(r) | Err(r) => r,
    }
}

#[fexit(function = "tcp_keepalive_timer")]
pub fn fexit_keepalive_timer(ctx: FExitContext) -> u32 {
    match on_exit(ctx.arg(0)) {
        Ok(r) | Err(r) => r,
    }
}

/// `void tcp_send_active_reset(struct sock *sk, gfp_t priority[, enum sk_rst_reason reason])`.
#[fentry(function = "tcp_send_active_reset")]
pub fn fentry_send_active_reset(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    // The reason argument exists from 6.10; reading a missing one fails
    // verification (a frozen constant: the verifier drops the branch).
    let has = conf!(active_reset_has_reason) == 3;
    match on_active_reset(sk, has, if has { ctx.arg::<u32>(2) } else { 0 }) {
        Ok(r) | Err(r) => r,
    }
}

/// The same where the compiler dropped `priority` (Debian's 6.12 has
/// `tcp_send_active_reset(sk, reason)`): the reason second. A program of
/// its own: choosing the argument in one program made LLVM load from a
/// computed context offset, which the verifier refuses.
#[fentry(function = "tcp_send_active_reset")]
pub fn fentry_send_active_reset_r1(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    match on_active_reset(sk, true, ctx.arg::<u32>(1)) {
        Ok(r) | Err(r) => r,
    }
}

/// `void inet_csk_reset_keepalive_timer(struct sock *sk, unsigned long len)`:
/// every arm of the keepalive timer (connect, accept, SO_KEEPALIVE, FIN_WAIT2).
/// At exit the timer holds its new deadline.
#[fexit(function = "inet_csk_reset_keepalive_timer")]
pub fn fexit_reset_keepalive_timer(ctx: FExitContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    match on_armed(sk + conf!(sk_timer) as u64) {
        Ok(r) | Err(r) => r,
    }
}

/// `void inet_csk_delete_keepalive_timer(struct sock *sk)`: keepalive off.
/// Only a pending timer is a disarm (the same rule as `timer_cancel`).
#[fentry(function = "inet_csk_delete_keepalive_timer")]
pub fn fentry_delete_keepalive_timer(ctx: FEntryContext) -> u32 {
    let sk = Src::live(ctx.arg(0));
    match keepalive_deadline(&sk) {
        Ok(Some(_)) => match on_disarmed(&sk) {
            Ok(r) | Err(r) => r,
        },
        Ok(None) | Err(_) => 0,
    }
}
