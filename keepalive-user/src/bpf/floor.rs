//! The benchmark floor: a separate object of empty programs on the same
//! tracepoints as kato's, which `cargo xtask bench` measures kato against.
//! It shares nothing with [`super::Bpf`]: no maps, no configuration.

use aya::{programs::BtfTracePoint, Ebpf};

use super::LoadError;

static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive-floor"));

/// (program, tracepoint).
const PROGRAMS: [(&str, &str); 8] = [
    ("floor_timer_start", "timer_start"),
    ("floor_timer_expire_entry", "timer_expire_entry"),
    ("floor_timer_expire_exit", "timer_expire_exit"),
    ("floor_timer_cancel", "timer_cancel"),
    ("floor_tcp_send_reset", "tcp_send_reset"),
    ("floor_tcp_receive_reset", "tcp_receive_reset"),
    ("floor_inet_sock_set_state", "inet_sock_set_state"),
    ("floor_inet_sk_error_report", "inet_sk_error_report"),
];

/// The empty sock_ops program, attached to the cgroup directory `cgroup`
/// (`kato protect`'s floor); dropping it detaches it.
pub fn attach_sock_ops(cgroup: &std::path::Path) -> Result<Ebpf, LoadError> {
    let name = "floor_sock_ops";
    let err = |source| LoadError::Program {
        name,
        tracepoint: "sock_ops",
        source,
    };
    let cg = std::fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.display().to_string(),
        source,
    })?;
    let mut ebpf = Ebpf::load(FLOOR)?;
    let prog: &mut aya::programs::SockOps = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(err)?;
    prog.load().map_err(err)?;
    prog.attach(cg, aya::programs::links::CgroupAttachMode::Single)
        .map_err(err)?;
    Ok(ebpf)
}

/// Loads and attaches every floor program; dropping it detaches them.
pub fn attach(btf: &std::path::Path) -> Result<Ebpf, LoadError> {
    crate::caps::require_tracing().map_err(LoadError::Privilege)?;
    let btf = aya::Btf::parse_file(btf, aya::Endianness::default())?;
    let mut ebpf = Ebpf::load(FLOOR)?;
    for (name, tracepoint) in PROGRAMS {
        let err = |source| LoadError::Program {
            name,
            tracepoint,
            source,
        };
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(err)?;
        prog.load(tracepoint, &btf).map_err(err)?;
        prog.attach().map_err(err)?;
    }
    Ok(ebpf)
}
