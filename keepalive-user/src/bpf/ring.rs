//! The `EVENTS` ring buffer, drained through tokio's `AsyncFd`: the task
//! sleeps in epoll until the kernel signals data, no busy polling.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::events::{DecodeError, Record};

/// Longest a record waits in the ring buffer when traffic is light.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Result<Record, DecodeError>>) {
    while let Some(item) = ring.next() {
        out.push(Record::decode(&item));
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
