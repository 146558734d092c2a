//! The socket keepalive timer (`sk->sk_timer` running `tcp_keepalive_timer`),
//! seen through the `timer:*` tracepoints. Every kernel timer passes through
//! them, so the keepalive filter comes first and is one kernel read.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_jiffies64, generated::bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use keepalive_common::{counter, flags, kind, SK_COPY_BYTES, SK_COPY_RANGES};

use crate::{
    conf,
    emit::{emit, emit_routine},
    sock::{
        admitted, fill, fill_stamps, fill_timer, is_keepalive_timer, probes_out, read, sk_of_timer,
        state, worth_a_record, Src,
    },
};

/// The keepalive timer whose callback runs on this CPU, with what it saw on
/// entry. Timer callbacks run one at a time per CPU, so one slot suffices;
/// `timer` is checked at exit in case a run was missed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InFlight {
    /// Set for every keepalive run, watched or not, so that the callback's
    /// own re-arm is known as such (and not counted as filtered again).
    timer: u64,
    /// The socket's namespace, read (and admitted) at entry.
    netns: u32,
    probes_before: u8,
    state_before: u8,
    /// 0: the socket's namespace is not watched, the exit makes no record.
    watched: u8,
    _pad: u8,
}

#[map]
static IN_FLIGHT: PerCpuArray<InFlight> = PerCpuArray::with_max_entries(1, 0);

/// `quiet_probes`: the probes a socket's last keepalive run left
/// outstanding, by `struct sock` address (0: none). The next run that
/// starts with none outstanding was answered. Allocated as used, from a
/// socket's first probe on, and kept (written in place) until the socket
/// changes state on a run (the timeout), its timer is stopped (`kato
/// trace`), or a keepalive socket closes.
#[map]
static PROBING: HashMap<u64, Probing> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// A `PROBING` entry: the probes outstanding, and whose they are (the
/// ports): an entry a closed socket left behind (a close that raced the
/// run, keepalive switched off before a close kato does not record) is
/// not taken for the next socket at the same address.
#[repr(C)]
#[derive(Clone, Copy)]
struct Probing {
    ports: u32,
    probes: u8,
    _pad: [u8; 3],
}

#[inline(always)]
fn in_flight() -> Option<*mut InFlight> {
    IN_FLIGHT.get_ptr_mut(0)
}

/// The socket of the keepalive timer running on this CPU, the ranges of
/// it that hold a record's ~20 fields (`sk_copy_*`): one probe read each
/// cost most of the record. One slot per CPU for the same reason as
/// [`IN_FLIGHT`]: timer callbacks (softirq) run one at a time per CPU, and
/// only they use it.
#[map]
static SK_COPY: PerCpuArray<[u8; SK_COPY_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// `sk`'s fields from a copy of the ranges that hold them, a few reads,
/// where the kernel's layout allows (within [`SK_COPY_BYTES`]); else from
/// the socket field by field.
#[inline(always)]
fn copied(sk: u64) -> Result<Src, u32> {
    let n = conf!(sk_copy_n) as usize;
    if n == 0 {
        return Ok(Src::live(sk));
    }
    let buf = SK_COPY.get_ptr_mut(0).ok_or(0u32)?.cast::<u8>();
    // Element by element from the frozen config, so that the verifier
    // sees each offset and length as the constant it is.
    let at = |a: *const [u16; SK_COPY_RANGES], i: usize| unsafe {
        core::ptr::read_volatile(a.cast::<u16>().add(i)) as usize
    };
    let mut i = 0;
    while i < SK_COPY_RANGES && i < n {
        let off = at(&raw const crate::KATO_CONFIG.sk_copy_off, i);
        let len = at(&raw const crate::KATO_CONFIG.sk_copy_len, i);
        // Userspace keeps every range within the buffer; the verifier
        // checks it against these frozen constants.
        let r = unsafe {
            bpf_probe_read_kernel(
                buf.add(off).cast::<c_void>(),
                len as u32,
                (sk + off as u64) as *const c_void,
            )
        };
        if r < 0 {
            crate::sock::read_failed(off as u32);
            return Err(0);
        }
        i += 1;
    }
    Ok(Src::copied(sk, buf as u64))
}

/// Is `timer`'s callback running on this CPU now?
#[inline(always)]
pub(crate) fn running_here(timer: u64) -> bool {
    match in_flight() {
        Some(f) => unsafe { (*f).timer == timer },
        None => false,
    }
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> u32 {
    match try_timer_start(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_timer_start(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let timer: u64 = ctx.arg(0);
    if !is_keepalive_timer(timer) {
        return Ok(0);
    }
    // enqueue_timer() has set `expires` before this tracepoint.
    on_armed(timer)
}

/// The keepalive timer of a socket was (re)armed; `timer` is pending.
#[inline(always)]
pub(crate) fn on_armed(timer: u64) -> Result<u32, u32> {
    // A re-arm from inside the callback: the FIRED record carries the deadline.
    if running_here(timer) {
        return Ok(0);
    }
    let sk = Src::live(sk_of_timer(timer));
    // FIN_WAIT2 also runs on this timer: without keepalive, not a record.
    let Some(ns) = admitted(&sk)? else {
        return Ok(0);
    };
    if !worth_a_record(&sk, false)? {
        return Ok(0);
    }
    emit_routine(kind::ARMED, |ev| {
        let expires = read::<u64>(timer, conf!(timer_expires));
        ev.flags |= flags::TIMER_PENDING;
        fill(ev, &sk, ns).is_ok()
            && expires.is_ok_and(|e| {
                ev.expires = e;
                true
            })
    })
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> u32 {
    match try_timer_expire_entry(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_timer_expire_entry(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let timer: u64 = ctx.arg(0);
    if !is_keepalive_timer(timer) {
        return Ok(0);
    }
    on_entry(timer)
}

/// `tcp_keepalive_timer(timer)` starts: remember what the socket looked
/// like. A socket of a namespace not watched is let go here: its run costs
/// the namespace's two reads, and its exit two compares.
#[inline(always)]
pub(crate) fn on_entry(timer: u64) -> Result<u32, u32> {
    let sk = Src::live(sk_of_timer(timer));
    let slot = in_flight().ok_or(0u32)?;
    unsafe { (*slot).timer = 0 };
    let Some(ns) = admitted(&sk)? else {
        // Counted once, here; the run's re-arm sees `running_here`.
        unsafe {
            (*slot).watched = 0;
            (*slot).timer = timer;
        }
        return Ok(0);
    };
    unsafe {
        (*slot).netns = ns;
        (*slot).probes_before = probes_out(&sk)?;
        (*slot).state_before = state(&sk)?;
        (*slot).watched = 1;
        (*slot).timer = timer;
    }
    Ok(0)
}

#[btf_tracepoint(function = "timer_expire_exit")]
pub fn timer_expire_exit(ctx: BtfTracePointContext) -> u32 {
    match try_timer_expire_exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_timer_expire_exit(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let timer: u64 = ctx.arg(0);
    // Every timer of the system ends here: one load, no map lookup.
    if !is_keepalive_timer(timer) {
        return Ok(0);
    }
    on_exit(timer)
}

/// `tcp_keepalive_timer(timer)` returned: one FIRED record, before and after.
#[inline(always)]
pub(crate) fn on_exit(timer: u64) -> Result<u32, u32> {
    let slot = in_flight().ok_or(0u32)?;
    let seen = unsafe { *slot };
    if seen.timer != timer {
        return Ok(0);
    }
    unsafe { (*slot).timer = 0 };
    if seen.watched == 0 {
        return Ok(0);
    }
    // The decisions first, from the few fields they need: most runs end
    // there, before the copy a record needs.
    let live = Src::live(sk_of_timer(timer));
    if !worth_a_record(&live, false)? {
        return Ok(0);
    }
    if conf!(quiet_probes) != 0 && !decided_quietly(&live, &seen)? {
        return Ok(0);
    }
    // A run that changed the state (the timeout closed the socket) is a
    // verdict; one that only probed is routine, shed when the ring is
    // nearly full.
    let sk = copied(live.sk)?;
    let changed = state(&sk)? != seen.state_before;
    let record = |ev: &mut keepalive_common::Event| {
        let ok = fill(ev, &sk, seen.netns).is_ok() && fill_stamps(ev, &sk).is_ok();
        ev.probes_before = seen.probes_before;
        ev.state_before = seen.state_before;
        ok && fill_timer(ev, &sk).is_ok()
    };
    if changed {
        emit(kind::FIRED, record)
    } else {
        emit_routine(kind::FIRED, record)
    }
}

/// `quiet_probes`: counts the run's probe and answer, and says whether it
/// is worth a record: a probe sent while one was unanswered, an answer
/// after two or more, a change of state (the timeout closes the socket).
/// A healthy keepalive (probe, answer, probe) makes none.
#[inline(always)]
fn decided_quietly(sk: &Src, seen: &InFlight) -> Result<bool, u32> {
    let key = sk.sk;
    let after = probes_out(sk)?;
    let now = state(sk)?;
    let ports = u32::from(sk.get::<u16>(conf!(skc_num))?) << 16
        | u32::from(sk.get::<u16>(conf!(skc_dport))?);
    let slot = PROBING.get_ptr_mut(&key);
    // SAFETY: a hash map value read in place, on this CPU's program.
    let left = slot.map_or(0, |p| unsafe {
        if (*p).ports == ports {
            (*p).probes
        } else {
            0
        }
    });
    let answered = left > 0 && seen.probes_before == 0;
    if answered {
        let k = (left as u32).min(counter::ANSWERED_MAX);
        crate::bump(counter::PROBES_ANSWERED + k - 1);
    }
    if after > seen.probes_before {
        crate::bump(counter::PROBES_SENT);
    }
    let changed = now != seen.state_before;
    let mut record = changed || seen.probes_before > 0 || (answered && left > 1);
    if changed {
        if slot.is_some() {
            let _ = PROBING.remove(&key);
        }
    } else if let Some(p) = slot {
        // Kept, and written in place: a socket's entry is allocated once,
        // not at every probe (the allocator's per-CPU cache runs dry in
        // the bursts a timer wheel slot makes).
        unsafe {
            (*p).probes = after;
            (*p).ports = ports;
        }
    } else if after > 0 {
        let entry = Probing {
            ports,
            probes: after,
            _pad: [0; 3],
        };
        if PROBING.insert(&key, &entry, 0).is_err() {
            // No room: this socket's runs are recorded instead (its
            // answers are not counted: `PROBING_FULL` says how often).
            crate::bump(counter::PROBING_FULL);
            record = true;
        }
    }
    Ok(record)
}

/// `sk` will have no more keepalive runs (closed, timer stopped).
#[inline(always)]
pub(crate) fn forget_probing(sk: u64) {
    if conf!(quiet_probes) != 0 {
        let _ = PROBING.remove(&sk);
    }
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> u32 {
    match try_timer_cancel(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_timer_cancel(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let timer: u64 = ctx.arg(0);
    if !is_keepalive_timer(timer) || running_here(timer) {
        return Ok(0);
    }
    // The timer wheel also "cancels" (detaches) every timer it is about to
    // run; those are due. A real cancel stops a timer still in the future.
    let expires = read::<u64>(timer, conf!(timer_expires))?;
    if (expires.wrapping_sub(unsafe { bpf_jiffies64() }) as i64) <= 0 {
        return Ok(0);
    }
    on_disarmed(&Src::live(sk_of_timer(timer)))
}

/// A pending keepalive timer of `sk` was stopped before it was due.
#[inline(always)]
pub(crate) fn on_disarmed(sk: &Src) -> Result<u32, u32> {
    // Stopped: no run will find its probes answered.
    forget_probing(sk.sk);
    let Some(ns) = admitted(sk)? else {
        return Ok(0);
    };
    if !worth_a_record(sk, false)? {
        return Ok(0);
    }
    emit_routine(kind::DISARMED, |ev| fill(ev, sk, ns).is_ok())
}
