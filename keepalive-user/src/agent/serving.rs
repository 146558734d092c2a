//! The HTTP side of the agent runs on its own thread, which gives up every
//! privilege before it reads a byte from the network: its bounding,
//! effective, permitted, inheritable and ambient capability sets are
//! emptied, it switches to uid/gid 65534 (nobody) where the agent may
//! (CAP_SETUID + CAP_SETGID), and sets no_new_privs. Linux keeps
//! credentials per thread, so the core thread keeps what snapshots need
//! (CAP_BPF, CAP_PERFMON, ...) while the thread that parses requests can
//! make no privileged system call. The raw syscalls matter: glibc's
//! setresuid() would change every thread of the process.
//!
//! What this does not give: the threads share memory. docs/security.md
//! says what that means and why a separate process was not chosen yet.

use std::{
    net::TcpListener,
    sync::{mpsc, Arc, Mutex},
};

use caps::CapSet;

use super::{
    http::{self, Limits},
    state::AgentState,
};

/// The uid and gid the serving thread takes (nobody on Debian and most
/// distributions).
pub const NOBODY: u32 = 65534;

/// What the serving thread gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The thread's uid after the drop.
    pub uid: u32,
    /// Whether it switched to [`NOBODY`] (it needs CAP_SETUID + CAP_SETGID).
    pub switched: bool,
    pub bounding_emptied: bool,
}

fn check(rc: libc::c_long, what: &str) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    }
}

/// Drops every privilege of the calling thread.
pub fn drop_thread_privileges() -> Result<Dropped, String> {
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    let bounding_emptied = has(caps::Capability::CAP_SETPCAP);
    if bounding_emptied {
        caps::clear(None, CapSet::Bounding).map_err(|e| format!("bounding set: {e}"))?;
    }
    let switched = has(caps::Capability::CAP_SETUID) && has(caps::Capability::CAP_SETGID);
    if switched {
        let n = libc::c_long::from(NOBODY);
        // SAFETY: raw credential syscalls with plain integer arguments;
        // they act on this thread only (no glibc broadcast).
        unsafe {
            check(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                "setgroups",
            )?;
            check(libc::syscall(libc::SYS_setresgid, n, n, n), "setresgid")?;
            check(libc::syscall(libc::SYS_setresuid, n, n, n), "setresuid")?;
        }
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("{set:?} capabilities: {e}"))?;
    }
    // SAFETY: prctl with constant arguments.
    check(
        libc::c_long::from(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
        "no_new_privs",
    )?;
    Ok(Dropped {
        // SAFETY: getuid has no arguments; glibc reads this thread's uid.
        uid: unsafe { libc::getuid() },
        switched,
        bounding_emptied,
    })
}

/// Starts the serving thread (`kato-http`) on `listener`; returns once it
/// has dropped its privileges, or with why it could not.
pub fn spawn(
    listener: TcpListener,
    state: Arc<Mutex<AgentState>>,
    limits: Limits,
) -> Result<Dropped, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kato-http".into())
        .spawn(move || {
            let dropped = drop_thread_privileges();
            let ok = dropped.is_ok();
            let _ = tx.send(dropped);
            if !ok {
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return log::error!("the HTTP runtime did not start: {e}"),
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => http::serve(l, state, limits).await,
                    Err(e) => log::error!("the HTTP listener: {e}"),
                }
            });
        })
        .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the HTTP thread ended at start".to_owned())?
}
