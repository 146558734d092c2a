//! `xtask rr`: a loopback TCP request/response load (64-byte ping-pong on
//! N connections, one client and one server thread each) for the overhead
//! benchmark. Prints `round_trips p50_us p99_us`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Result;

/// Latency histogram in 1 µs buckets up to 100 ms.
const BUCKETS: usize = 100_000;

fn percentile(h: &[u64], total: u64, p: f64) -> usize {
    let want = (total as f64 * p).ceil() as u64;
    let mut seen = 0;
    for (i, n) in h.iter().enumerate() {
        seen += n;
        if seen >= want {
            return i;
        }
    }
    BUCKETS
}

pub fn run(conns: usize, secs: f64) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = l.local_addr()?;
    let server = std::thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<Vec<u64>> {
                let mut s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                let mut h = vec![0u64; BUCKETS + 1];
                let mut buf = [7u8; 64];
                while Instant::now() < deadline {
                    let t = Instant::now();
                    s.write_all(&buf)?;
                    s.read_exact(&mut buf)?;
                    h[(t.elapsed().as_micros() as usize).min(BUCKETS)] += 1;
                }
                Ok(h)
            })
        })
        .collect();
    let mut h = vec![0u64; BUCKETS + 1];
    for c in clients {
        for (a, b) in h.iter_mut().zip(c.join().expect("client thread")?) {
            *a += b;
        }
    }
    drop(server);
    let total: u64 = h.iter().sum();
    println!(
        "{total} {} {}",
        percentile(&h, total, 0.5),
        percentile(&h, total, 0.99)
    );
    Ok(())
}
