//! The agent's web config (YAML, exporter-toolkit format): any text parses
//! or is one error naming a key.
#![no_main]
use keepalive_user::agent::webconfig::WebConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = WebConfig::parse("fuzz.yml", text, std::path::Path::new("/")) {
            assert!(!e.key.is_empty());
        }
    }
});
