//! Requests to the agent's HTTP endpoint: head and /sockets query parsing.
#![no_main]
use keepalive_user::agent::http::{parse_head, query_from};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(req) = parse_head(s) {
            let _ = query_from(&req.query);
        }
    }
});
