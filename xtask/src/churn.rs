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
    // std listens with a backlog of 128: when the accept thread is
    // descheduled (two cores, the agent beside it) the queue overflows and
    // connects stall a whole second on SYN retransmission, which measured
    // the scheduler, not kato. Calling listen again raises it.
    // SAFETY: listen(2) on a socket we own.
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    let addr = l.local_addr()?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = std::sync::Arc::clone(&done);
    // Accepts until the client is done: a connection whose client aborts
    // while the accept queue is full never reaches accept(), so counting
    // accepts could wait forever.
    let server = std::thread::spawn(move || {
        // An aborted connection can fail its accept (ECONNABORTED): the
        // listener stays, or later connects would be refused.
        while !finished.load(std::sync::atomic::Ordering::Relaxed) {
            drop(l.accept());
        }
    });
    let t = Instant::now();
    for _ in 0..count {
        let s = TcpStream::connect(addr)?;
        abort_on_close(&s);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    // Wakes the accept loop to see it.
    drop(TcpStream::connect(addr));
    server.join().expect("accept thread");
    println!("{:.3}", t.elapsed().as_secs_f64());
    Ok(())
}
