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

/// BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP (uapi/linux/bpf.h).
const RB_AVAIL_DATA: u64 = 0;
const RB_NO_WAKEUP: u64 = 1;
const RB_FORCE_WAKEUP: u64 = 2;
/// Wake the reader once this much is pending (~500 records); below it the
/// reader's 100 ms tick drains. One wakeup per batch instead of per event.
const WAKE_AT: u64 = 64 * 1024;
/// A record as the ring stores it: the event plus the 8-byte header.
const RECORD_BYTES: u64 = core::mem::size_of::<Event>() as u64 + 8;

/// Writes `ev` to the ring buffer; a full buffer is counted as lost. The
/// programs asked `sock::admitted` (the namespace filter) before building it.
/// Wakes the reader only when this record crosses a WAKE_AT boundary of
/// pending data: once per batch. (Forcing a wakeup on every record past the
/// threshold made each one cost ~6 µs of irq_work while the reader slept.)
#[inline(always)]
pub fn submit(ev: &Event) {
    let avail = EVENTS.query(RB_AVAIL_DATA);
    let after = avail + RECORD_BYTES;
    let flags = if after / WAKE_AT > avail / WAKE_AT {
        RB_FORCE_WAKEUP
    } else {
        RB_NO_WAKEUP
    };
    match EVENTS.output::<Event>(ev, flags) {
        Ok(()) => bump(counter::EMITTED),
        Err(_) => bump(counter::LOST),
    }
}
