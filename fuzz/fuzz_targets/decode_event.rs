//! Ring-buffer bytes: any input decodes or is an error, never a panic, and
//! the whole pipeline (held resets paired with replies, the memory of owners
//! and 4-tuples, derived events, close tracking) accepts every decoded record.
#![no_main]
use std::ops::ControlFlow;

use keepalive_common::EVENT_SIZE;
use keepalive_user::events::{Observation, Pipeline, Record, ResetReasons, Sink};
use libfuzzer_sys::fuzz_target;

/// Knows a 2 s idle timeout for every path; reads what a sink would.
struct Look;

impl Sink for Look {
    fn path_timeout(&mut self, _rec: &Record) -> Option<f64> {
        Some(2.0)
    }

    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
        let r = obs.record;
        let _ = (
            r.idle_secs(250),
            r.data_idle_secs(250),
            r.timer_remaining(250),
            r.reuse_gap_secs(250),
            r.silence_before_send_secs(250),
            obs.timeout_ambiguous(),
            obs.reset_name(),
        );
        ControlFlow::Continue(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut p = Pipeline::new(250, ResetReasons::default());
    let mut batch: Vec<_> = data.chunks(EVENT_SIZE).map(Record::decode).collect();
    let _ = p.feed(&mut batch, &mut Look);
    let _ = p.settle(u64::MAX, &mut Look);
});
