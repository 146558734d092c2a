//! The only way events leave the kernel: the `EVENTS` ring buffer.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};
use keepalive_common::{counter, Event};

use crate::{bump, conf, EVENTS};

/// `*v` zeroed with 8-byte stores. `Default` (or a zeroed value moved into
/// place) made LLVM call the BPF target's `memset`, a byte loop: ~120
/// iterations for every record.
#[inline(always)]
pub fn zero<T>(v: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 8 == 0) };
    let p = v.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < size_of::<T>() / 8 {
        // SAFETY: within the value; volatile so that LLVM keeps the stores
        // instead of turning them back into a memset call.
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is written, and T is plain data.
    unsafe { v.assume_init_mut() }
}

/// BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP (uapi/linux/bpf.h).
const RB_AVAIL_DATA: u64 = 0;
const RB_NO_WAKEUP: u64 = 1;
const RB_FORCE_WAKEUP: u64 = 2;
/// Wake the reader once this much is pending (~370 records); below it the
/// reader's 100 ms tick drains. One wakeup per batch instead of per event.
const WAKE_AT: u64 = 64 * 1024;
/// A record as the ring stores it: the event plus the 8-byte header.
const RECORD_BYTES: u64 = core::mem::size_of::<Event>() as u64 + 8;

/// One record of `kind`: reserved in the ring, zeroed, stamped with both
/// clocks, filled by `fill` in place (no copy on the stack), then
/// submitted, or discarded when `fill` fails (a failed kernel read, already
/// counted). `fill` answers a plain `bool`: LLVM may outline it, and a
/// `Result<(), u32>` left the register of `Ok`'s absent payload undefined,
/// which the verifier refused as a stack pointer returned. A full ring is counted as lost. The programs asked
/// `sock::admitted` (the namespace filter) before. Wakes the reader only
/// when this record crosses a WAKE_AT boundary of pending data: once per
/// batch. (Forcing a wakeup on every record past the threshold made each
/// one cost ~6 µs of irq_work while the reader slept.)
#[inline(always)]
pub fn emit(kind: u32, fill: impl FnOnce(&mut Event) -> bool) -> Result<u32, u32> {
    emit_as(kind, false, fill)
}

/// [`emit`] for a routine record (a probe, a timer armed or stopped): shed
/// when the ring is fuller than `shed_at`, so that bursts of them (a timer
/// wheel slot of thousands of sockets) leave room for the timeouts and
/// resets that follow a dead peer or a forgotten path.
#[inline(always)]
pub fn emit_routine(kind: u32, fill: impl FnOnce(&mut Event) -> bool) -> Result<u32, u32> {
    emit_as(kind, true, fill)
}

#[inline(always)]
fn emit_as(kind: u32, routine: bool, fill: impl FnOnce(&mut Event) -> bool) -> Result<u32, u32> {
    let avail = EVENTS.query(RB_AVAIL_DATA);
    let shed_at = u64::from(conf!(shed_at));
    if routine && shed_at != 0 && avail >= shed_at {
        bump(counter::SHED);
        return Ok(0);
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(counter::LOST);
        return Ok(0);
    };
    let ev = zero(&mut entry);
    ev.kind = kind;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.jiffies = unsafe { bpf_jiffies64() };
    if fill(ev) {
        {
            let after = avail + RECORD_BYTES;
            entry.submit(if after / WAKE_AT > avail / WAKE_AT {
                RB_FORCE_WAKEUP
            } else {
                RB_NO_WAKEUP
            });
            bump(counter::EMITTED);
            Ok(0)
        }
    } else {
        entry.discard(RB_NO_WAKEUP);
        Err(0)
    }
}
