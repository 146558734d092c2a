//! Idle-timeout rules from flags and config.
#![no_main]
use keepalive_user::policy::Rule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = Rule::parse(s) {
            assert!(!r.timeout.is_zero());
        }
    }
});
