//! `xtask hold`: a process that holds many loopback TCP connections open for
//! benchmarks. One process can hold at most 20,000 fds here, so benchmarks
//! start several. Prints `ready N` once all are up, exits when stdin closes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
};

use anyhow::{Context as _, Result};

/// Raises the soft fd limit to the hard one.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn wait_for_stdin_close() {
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

pub fn listen(addr: SocketAddr, count: usize, ka_secs: Option<i32>) -> Result<()> {
    raise_nofile();
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("listening {}", l.local_addr()?);
    std::io::stdout().flush()?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let s = l.accept().context("accept")?.0;
        if let Some(secs) = ka_secs {
            fast_keepalive(&s, secs);
        }
        held.push(s);
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;
    wait_for_stdin_close();
    Ok(())
}

pub fn connect(
    addr: SocketAddr,
    count: usize,
    keepalive: bool,
    ka_secs: Option<i32>,
) -> Result<()> {
    raise_nofile();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let s = TcpStream::connect(addr).with_context(|| format!("connect #{i} to {addr}"))?;
        if let Some(secs) = ka_secs {
            fast_keepalive(&s, secs);
        } else if keepalive && i % 2 == 0 {
            set_keepalive(&s);
        }
        held.push(s);
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;
    wait_for_stdin_close();
    Ok(())
}

/// Half the client sockets get keepalive, so the table has both kinds.
fn set_keepalive(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let one: i32 = 1;
    // SAFETY: valid fd and option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&one as *const i32).cast(),
            4,
        );
    }
}

/// Keepalive with TCP_KEEPIDLE = TCP_KEEPINTVL = `secs`: one probe per
/// socket per `secs` on a healthy connection, for the event benchmark.
fn fast_keepalive(s: &TcpStream, secs: i32) {
    use std::os::fd::AsRawFd;
    set_keepalive(s);
    for opt in [libc::TCP_KEEPIDLE, libc::TCP_KEEPINTVL] {
        // SAFETY: valid fd and option buffer.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                opt,
                (&secs as *const i32).cast(),
                4,
            );
        }
    }
}
