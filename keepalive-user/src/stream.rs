//! The `EVENTS` ring buffer, drained through tokio's `AsyncFd`: the task
//! sleeps in epoll until the kernel signals data, no busy polling.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::event::{DecodeError, Record};

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

    /// Waits until records are available, then decodes all of them into `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Result<Record, DecodeError>>) -> std::io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        // Clear readiness before draining: a record committed during the drain
        // re-arms the wakeup instead of being stranded until the next event.
        guard.clear_ready();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            out.push(Record::decode(&item));
        }
        Ok(())
    }
}
