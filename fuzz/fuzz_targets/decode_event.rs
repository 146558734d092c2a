//! Ring-buffer bytes: any input decodes or is an error, never a panic, and
//! derived events, formatting and close tracking accept every decoded record.
#![no_main]
use keepalive_common::EVENT_SIZE;
use keepalive_user::events::{closes::CloseTracker, Deriver, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = Deriver::with_idle_kill(250, 2.0);
    let mut t = CloseTracker::default();
    for chunk in data.chunks(EVENT_SIZE) {
        if let Ok(r) = Record::decode(chunk) {
            let mut out = vec![];
            d.derive(&r, &mut out);
            let _ = t.on(&r, &out, 250);
            let _ = (r.idle_secs(250), r.data_idle_secs(250), r.timer_remaining(250), r.reuse_gap_secs(250));
        }
    }
});

