//! `xtask churn`: open and close `count` loopback connections as fast as
//! possible (the client aborts with SO_LINGER 0, so no TIME_WAIT sockets
//! linger), for the agent's churn soak. Prints the elapsed seconds.

use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Instant,
};

use anyhow::Result;

fn abort_on_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        );
    }
}

pub fn run(count: usize) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || {
        for _ in 0..count {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => return,
            }
        }
    });
    let t = Instant::now();
    for _ in 0..count {
        let s = TcpStream::connect(addr)?;
        abort_on_close(&s);
    }
    server.join().expect("accept thread");
    println!("{:.3}", t.elapsed().as_secs_f64());
    Ok(())
}
