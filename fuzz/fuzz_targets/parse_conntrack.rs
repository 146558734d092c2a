//! ctnetlink dump bytes: any datagram walks into messages or is an error,
//! any message decodes into an entry, None (not TCP) or an error; never a panic.
#![no_main]
use keepalive_user::{conntrack::ctnetlink, netlink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ctnetlink::decode(data);
    let _ = netlink::walk(data, &mut |_, msg| {
        let _ = ctnetlink::decode(msg);
    });
});
