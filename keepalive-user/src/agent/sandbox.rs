//! What the agent's HTTP process gives up before it reads a byte from the
//! network: every capability (effective, permitted, inheritable, ambient,
//! and the bounding set where CAP_SETPCAP allows), its uid and gid (to
//! 65534, nobody, where CAP_SETUID and CAP_SETGID allow), the right to gain
//! any back (no_new_privs), and every system call serving does not need
//! (a seccomp filter; the rest fail with EPERM). The process is single
//! threaded when it drops, so the credentials it sets are everyone's.

use std::collections::BTreeMap;

use caps::CapSet;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// A step of the drop or of confinement that failed: the HTTP process
/// then refuses to serve.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Caps {
        what: String,
        source: caps::errors::CapsError,
    },
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccompiler::Error),
    #[error("seccomp: {0}")]
    SeccompBackend(#[from] seccompiler::BackendError),
}

/// The uid and gid it takes (nobody on Debian and most distributions).
pub const NOBODY: u32 = 65534;

/// What the process gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Its uid after the drop.
    pub uid: u32,
    /// Whether it switched to [`NOBODY`] (it needs CAP_SETUID + CAP_SETGID).
    pub switched: bool,
    pub bounding_emptied: bool,
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), SandboxError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(SandboxError::Os {
            what,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Drops every privilege of this (single-threaded) process.
pub fn drop_privileges() -> Result<Dropped, SandboxError> {
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    let bounding_emptied = has(caps::Capability::CAP_SETPCAP);
    if bounding_emptied {
        caps::clear(None, CapSet::Bounding).map_err(|source| SandboxError::Caps {
            what: "bounding set".into(),
            source,
        })?;
    }
    let switched = has(caps::Capability::CAP_SETUID) && has(caps::Capability::CAP_SETGID);
    if switched {
        // SAFETY: credential calls with plain integer arguments.
        unsafe {
            check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
            check(libc::setresgid(NOBODY, NOBODY, NOBODY), "setresgid")?;
            check(libc::setresuid(NOBODY, NOBODY, NOBODY), "setresuid")?;
        }
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|source| SandboxError::Caps {
            what: format!("{set:?} capabilities"),
            source,
        })?;
    }
    // SAFETY: prctl with constant arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "no_new_privs",
    )?;
    Ok(Dropped {
        // SAFETY: getuid has no arguments.
        uid: unsafe { libc::getuid() },
        switched,
        bounding_emptied,
    })
}

/// The system calls serving HTTP(S) needs once the process is set up:
/// reading and writing sockets, waiting on them, memory, time, threads
/// for blocking work (clone with CLONE_THREAD only: no new process),
/// signals, exit. No open, exec, connect, bind, ptrace, bpf, mount.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_prctl,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
];

const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;

/// Installs the filter on every thread of the process. `outbound`: the
/// OTLP exporter may open TCP connections (IPv4 and IPv6 stream sockets
/// and `connect`, to any address: a filter cannot read the address);
/// without it no socket can be made.
pub fn confine(outbound: bool) -> Result<(), SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|&n| (n, vec![])).collect();
    if outbound {
        // TCP only: the family, and the type without its SOCK_NONBLOCK and
        // SOCK_CLOEXEC flags (the low four bits).
        let family = |f: libc::c_int| {
            let family =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, f as u64)?;
            let stream = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xf),
                libc::SOCK_STREAM as u64,
            )?;
            SeccompRule::new(vec![family, stream])
        };
        rules.insert(
            libc::SYS_socket,
            vec![family(libc::AF_INET)?, family(libc::AF_INET6)?],
        );
        rules.insert(libc::SYS_connect, vec![]);
    }
    let thread_only = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(CLONE_THREAD),
        CLONE_THREAD,
    )
    .and_then(|c| SeccompRule::new(vec![c]))?;
    rules.insert(libc::SYS_clone, vec![thread_only]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into()?,
    )?;
    let mut with_clone3: BpfProgram = filter.try_into()?;
    // clone3's flags sit behind a pointer the filter cannot read: ENOSYS,
    // and glibc falls back to clone, whose flags it can.
    with_clone3.splice(0..0, clone3_enosys());
    Ok(seccompiler::apply_filter_all_threads(&with_clone3)?)
}

/// A prologue answering clone3 with ENOSYS before the allow-list runs.
fn clone3_enosys() -> Vec<seccompiler::sock_filter> {
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    vec![
        // seccomp_data.nr is at offset 0.
        seccompiler::sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        seccompiler::sock_filter {
            code: JEQ,
            jt: 0,
            jf: 1,
            k: libc::SYS_clone3 as u32,
        },
        seccompiler::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ]
}
