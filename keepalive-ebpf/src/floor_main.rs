//! Empty programs on kato's tracepoints: the benchmark floor, i.e. what any
//! BPF program attached there costs. A separate object, loaded only by the
//! hidden `kato bench-floor` that `cargo xtask bench` runs: it never ships
//! inside the programs kato attaches.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{btf_tracepoint, sock_ops},
    programs::{BtfTracePointContext, SockOpsContext},
};

macro_rules! floor {
    ($($name:ident => $tp:literal),* $(,)?) => {$(
        #[btf_tracepoint(function = $tp)]
        pub fn $name(_ctx: BtfTracePointContext) -> u32 {
            0
        }
    )*};
}

floor! {
    floor_timer_start => "timer_start",
    floor_timer_expire_entry => "timer_expire_entry",
    floor_timer_expire_exit => "timer_expire_exit",
    floor_timer_cancel => "timer_cancel",
    floor_tcp_send_reset => "tcp_send_reset",
    floor_tcp_receive_reset => "tcp_receive_reset",
    floor_inet_sock_set_state => "inet_sock_set_state",
    floor_inet_sk_error_report => "inet_sk_error_report",
}

/// `kato protect`'s floor: an empty sock_ops program (what running any
/// program per connection state change costs).
#[sock_ops]
pub fn floor_sock_ops(_ctx: SockOpsContext) -> u32 {
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
