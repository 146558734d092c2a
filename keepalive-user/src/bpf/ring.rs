//! The `EVENTS` ring buffer, drained through tokio's `AsyncFd` (the task
//! sleeps in epoll until the kernel signals data, no busy polling), or by
//! a thread of its own ([`RingThread`]) for a reader that sometimes works
//! too long to drain it (the agent's snapshots).

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::events::{DecodeError, Record};

/// Longest a record waits in the ring buffer when traffic is light.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Result<Record, DecodeError>>) {
    drain_at_most(ring, out, usize::MAX);
}

/// [`drain`], stopping once `out` holds `limit` records.
fn drain_at_most(
    ring: &mut RingBuf<MapData>,
    out: &mut Vec<Result<Record, DecodeError>>,
    limit: usize,
) {
    while out.len() < limit {
        match ring.next() {
            Some(item) => out.push(Record::decode(&item)),
            None => break,
        }
    }
}

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open for as long
        // as the AsyncFd holds it; nothing else closes or reuses that fd.
        let fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Decodes every record available now into `out`, without waiting: a
    /// snapshot first takes the records made before it, so that they are
    /// judged by the state they happened in.
    pub fn drain_now(&mut self, out: &mut Vec<Result<Record, DecodeError>>) {
        drain(self.fd.get_mut(), out);
    }

    /// Waits until the kernel signals a batch, or at most [`DRAIN_EVERY`],
    /// then decodes every available record into `out` (possibly none).
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Result<Record, DecodeError>>,
    ) -> std::io::Result<()> {
        match tokio::time::timeout(DRAIN_EVERY, self.fd.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard?;
                // Clear readiness before draining: a record committed during
                // the drain re-arms the wakeup instead of being stranded.
                guard.clear_ready();
                drain(guard.get_inner_mut(), out);
            }
            // The programs wake us only per ~64 KiB: small batches are
            // collected on this tick.
            Err(_) => drain(self.fd.get_mut(), out),
        }
        Ok(())
    }
}

/// What [`RingThread`] hands over: records, in the order the kernel wrote
/// them, and the mark that every record written before a [`RingThread::flush`]
/// came before it.
pub enum Drained {
    Records(Vec<Result<Record, DecodeError>>),
    Flushed,
}

/// Records handed over at most per message: a burst is passed on as it is
/// read, not held back until the ring is empty.
const BATCH: usize = 4096;
/// Messages in flight at most. When the consumer falls this far behind,
/// the thread waits, the kernel's ring fills and the kernel counts the
/// records it cannot write: memory stays bounded (128 × 4,096 decoded
/// records of ~192 B, ~100 MB at worst, while a snapshot of 100,000s of
/// sockets holds the consumer), nothing is lost uncounted.
const IN_FLIGHT: usize = 128;

/// The ring drained by a thread of its own, so that records keep leaving
/// the kernel's ring while the consumer is busy (an agent's snapshot of
/// 100,000s of sockets takes longer than a 4 MiB ring lasts at 100,000
/// records a second).
pub struct RingThread {
    rx: tokio::sync::mpsc::Receiver<Drained>,
    /// An eventfd: written to ask for a flush.
    flush: std::os::fd::OwnedFd,
    /// Joined on drop, so the ring's fd is closed when this is gone.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RingThread {
    pub fn spawn(mut ring: RingBuf<MapData>) -> std::io::Result<Self> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        // SAFETY: a plain syscall; the new fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let flush = unsafe { OwnedFd::from_raw_fd(efd) };
        let asked = flush.try_clone()?;
        // Edge-triggered, as tokio's `AsyncFd` is: poll(2) on a ring
        // reports data whenever any is pending, which ignores the
        // programs' batched wakeups (one per ~64 KiB) and turns the thread
        // into a loop of tiny drains under load.
        // SAFETY: a plain syscall; the new fd is owned below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        const RING: u64 = 0;
        const FLUSH: u64 = 1;
        for (fd, token, flags) in [
            (ring.as_raw_fd(), RING, libc::EPOLLIN | libc::EPOLLET),
            (asked.as_raw_fd(), FLUSH, libc::EPOLLIN),
        ] {
            let mut ev = libc::epoll_event {
                events: flags as u32,
                u64: token,
            };
            // SAFETY: valid fds and an event on the stack.
            if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) } < 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("kato-ring".into())
            .spawn(move || {
                let wait = i32::try_from(DRAIN_EVERY.as_millis()).unwrap_or(100);
                let mut batch = Vec::with_capacity(BATCH);
                loop {
                    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 2];
                    // SAFETY: room for two events on the stack.
                    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), evs.as_mut_ptr(), 2, wait) };
                    if n < 0 {
                        let e = std::io::Error::last_os_error();
                        if e.kind() != std::io::ErrorKind::Interrupted {
                            log::warn!("waiting on the event ring: {e}");
                            // Not a loop of failures: the tick's pace.
                            std::thread::sleep(DRAIN_EVERY);
                        }
                    }
                    let ready = &evs[..usize::try_from(n).unwrap_or(0)];
                    let flushed = ready.iter().any(|e| e.u64 == FLUSH);
                    if flushed {
                        let mut v = 0u64;
                        // SAFETY: reads the eventfd's 8-byte counter into `v`.
                        unsafe { libc::read(asked.as_raw_fd(), (&raw mut v).cast(), 8) };
                    }
                    // Whatever woke the thread (a batch, the 100 ms tick, a
                    // flush), the ring is drained to empty, in messages of
                    // at most BATCH records.
                    loop {
                        drain_at_most(&mut ring, &mut batch, BATCH);
                        let more = batch.len() == BATCH;
                        if !batch.is_empty() {
                            // Room for a whole batch only after a full one:
                            // a queued message of a few records stays small.
                            let next = if more {
                                Vec::with_capacity(BATCH)
                            } else {
                                Vec::new()
                            };
                            let full = std::mem::replace(&mut batch, next);
                            if tx.blocking_send(Drained::Records(full)).is_err() {
                                return; // the consumer is gone
                            }
                        }
                        if !more {
                            break;
                        }
                    }
                    // Every flush is answered: that is also how a dropped
                    // [`RingThread`] is noticed, with the ring empty.
                    if flushed && tx.blocking_send(Drained::Flushed).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            rx,
            flush,
            thread: Some(thread),
        })
    }

    /// The next message; None when the thread has ended.
    pub async fn next(&mut self) -> Option<Drained> {
        self.rx.recv().await
    }

    /// Asks the thread to drain the ring now and mark the point: every
    /// record the kernel wrote before this call comes before the next
    /// [`Drained::Flushed`].
    pub fn flush(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        let n = unsafe { libc::write(self.flush.as_raw_fd(), (&raw const one).cast(), 8) };
        if n == 8 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for RingThread {
    /// Closes the channel (a send the thread is blocked in fails) and wakes
    /// the thread with a flush, whose answer then fails: it returns within
    /// one drain, without waiting for records.
    fn drop(&mut self) {
        self.rx.close();
        if let Err(e) = self.flush() {
            log::warn!("stopping the event ring's thread: {e}");
            return; // not joined: it ends with the process
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
