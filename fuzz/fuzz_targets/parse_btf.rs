//! Kernel BTF from a file kato is pointed at: any bytes parse or fail cleanly.
#![no_main]
use keepalive_user::kernel::btf::Btf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Btf::parse(data) {
        let _ = b.field("sock", "__sk_common.skc_state");
        let _ = b.enum_values("sk_rst_reason");
        let _ = b.tracepoint_args("tcp_send_reset");
    }
});
