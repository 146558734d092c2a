//! Active resets: `tcp_send_active_reset()` fires `tcp:tcp_send_reset` with a
//! NULL skb (replies to incoming segments carry the skb and are skipped).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use keepalive_common::{flags, kind};

use crate::{
    conf,
    emit::{new_event, submit},
    sock::fill,
};

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
    let mut ev = new_event(kind::RESET_SENT);
    fill(&mut ev, sk)?;
    // Kernels before 6.12 have no reason argument: reading it would fail verification.
    if conf!(has_reset_reason) != 0 {
        let reason: u32 = ctx.arg(2);
        ev.reason = reason;
        ev.flags |= flags::HAS_REASON;
    }
    submit(&ev);
    Ok(0)
}
