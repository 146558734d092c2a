//! The only way events leave the kernel: the `EVENTS` ring buffer.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use keepalive_common::{counter, Event};

use crate::{bump, EVENTS};

/// A zeroed event of `kind`, stamped with both clocks.
#[inline(always)]
pub fn new_event(kind: u32) -> Event {
    let mut ev = Event::default();
    ev.kind = kind;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.jiffies = unsafe { bpf_jiffies64() };
    ev
}

/// Writes `ev` to the ring buffer; a full buffer is counted as lost.
#[inline(always)]
pub fn submit(ev: &Event) {
    match EVENTS.output::<Event>(ev, 0) {
        Ok(()) => bump(counter::EMITTED),
        Err(_) => bump(counter::LOST),
    }
}
