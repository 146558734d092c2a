//! The agent's TOML config: any text parses or is one error naming a key.
#![no_main]
use keepalive_user::agent::config::Overrides;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Overrides::from_toml("fuzz.toml", text) {
            Ok(o) => {
                let _ = o.resolve();
            }
            Err(e) => assert!(!e.key.is_empty()),
        }
    }
});
