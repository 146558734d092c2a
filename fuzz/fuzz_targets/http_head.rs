//! Requests to the agent's HTTP endpoint: the untrusted parts kato parses
//! itself (hyper parses the rest): query strings, /sockets parameters, Host.
#![no_main]
use keepalive_user::agent::http::{parse_query, query_from, HostAllow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(q) = parse_query(s) {
            let _ = query_from(&q);
        }
        let _ = HostAllow::new(&[]).allows(s);
    }
});
