//! Records for unit tests: a plausible raw event of each kind, as bytes.

use keepalive_common::{Event as RawEvent, EVENT_SIZE};

use super::record::AF_INET;

pub fn raw(kind: u32) -> RawEvent {
    RawEvent {
        kind,
        ts_ns: 1_000,
        sk: 0xffff_8880_0000_1000,
        jiffies: 1000,
        family: AF_INET,
        saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sport: 41234,
        dport: 8080,
        state: 1,
        state_before: 1,
        netns: 4026531840,
        ..Default::default()
    }
}

pub fn bytes(e: &RawEvent) -> Vec<u8> {
    // SAFETY: RawEvent is repr(C) plain data with explicit padding.
    unsafe { std::slice::from_raw_parts((e as *const RawEvent).cast::<u8>(), EVENT_SIZE) }.to_vec()
}
