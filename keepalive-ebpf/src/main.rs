//! kato's kernel programs: the keepalive timer and the active-reset path.
//!
//! Every program is a thin wrapper around a `try_` function; events that
//! cannot be delivered are counted per CPU in `COUNTERS`, never dropped silently.
#![no_std]
#![no_main]

mod emit;
mod fentry;
mod iter;
mod protect;
mod reset;
mod sock;
mod timer;
mod turns;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use keepalive_common::{
    counter, KernelConfig, OwnerSlot, WatchedFew, MAX_OWNERS, MAX_WATCHED_NETNS,
};

/// Resolved by userspace from the running kernel's BTF and kallsyms.
#[no_mangle]
static KATO_CONFIG: KernelConfig = unsafe { core::mem::zeroed() };

/// 8 MiB of events: ~47,000 records (168 B + 8 B header) of slack while
/// the reader sleeps between batched wakeups.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(keepalive_common::EVENTS_RING_BYTES, 0);

/// Network namespace inodes whose sockets make events, when
/// `KATO_CONFIG.netns_filter` is set; kept current by userspace.
#[map]
static WATCHED_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_WATCHED_NETNS, 0);

/// The watched namespaces when there are few ([`WatchedFew`]): the filter
/// compares them in place. Kept current by userspace with `WATCHED_NETNS`.
#[map]
static WATCHED_FEW: Array<WatchedFew> = Array::with_max_entries(1, 0);

/// Sockets' owners by `struct sock` address, taken in the owner's own
/// system call (connect, close, shutdown) and seeded by userspace from the
/// task walk; forgotten when the socket closes.
#[map]
static OWNERS: LruHashMap<u64, OwnerSlot> = LruHashMap::with_max_entries(MAX_OWNERS, 0);

/// Listeners' owners by namespace and port (`keepalive_common::port_key`):
/// the owner of an accepted socket nobody saw in a system call yet.
#[map]
static PORT_OWNERS: LruHashMap<u64, OwnerSlot> = LruHashMap::with_max_entries(MAX_OWNERS, 0);

/// Per-CPU counters, indexed by `keepalive_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot and programs don't nest on one CPU for these hooks.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn set(index: u32, value: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        unsafe { *slot = value };
    }
}

/// Reads one field of the load-time configuration. Volatile, so the compiler
/// cannot fold the all-zero placeholder into the code.
macro_rules! conf {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&raw const crate::KATO_CONFIG.$field) };
        v
    }};
}
pub(crate) use conf;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
