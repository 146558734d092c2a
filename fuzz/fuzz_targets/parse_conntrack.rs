//! Netlink answers kato reads: any datagram walks into messages or is an
//! error; any message decodes as a conntrack entry, an IPVS family id or
//! timeout, or is an error; /proc/net/ip_vs text parses or is an error.
//! Never a panic.
#![no_main]
use keepalive_user::{conntrack::ctnetlink, ipvs, netlink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ctnetlink::decode(data);
    let _ = (ipvs::parse_family(data), ipvs::parse_tcp_timeout(data));
    let _ = ipvs::parse_services(&String::from_utf8_lossy(data));
    let _ = netlink::walk(data, &mut |_, msg| {
        let _ = ctnetlink::decode(msg);
    });
});
