//! The session's ring buffers as tokio streams: decoded events in batches and control
//! records, woken by epoll (no polling loop).

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::events::{Control, DecodeError, Event, VmNames};

/// Registering a ring buffer with tokio, or waiting on it (`what`: which ring buffer).
#[derive(Debug, thiserror::Error)]
#[error("{what} with tokio")]
pub struct StreamError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// Registers `ring` with tokio's reactor, for readability.
fn register(
    ring: RingBuf<MapData>,
    what: &'static str,
) -> Result<AsyncFd<RingBuf<MapData>>, StreamError> {
    // SAFETY: the ring buffer's fd stays valid while the ring lives inside the AsyncFd.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }.map_err(|e| {
        StreamError {
            what,
            source: e.into_parts().1,
        }
    })
}

impl ControlStream {
    pub fn new(ring: RingBuf<MapData>) -> Result<ControlStream, StreamError> {
        Ok(ControlStream {
            fd: register(ring, "registering the control ring buffer")?,
        })
    }
}

impl EventStream {
    /// Events decoded with `key` naming their VMs.
    pub fn new(ring: RingBuf<MapData>, key: VmNames) -> Result<EventStream, StreamError> {
        Ok(EventStream {
            fd: register(ring, "registering the ring buffer")?,
            key,
        })
    }
}

/// Module loads and unloads, woken by epoll.
pub struct ControlStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl ControlStream {
    /// Waits for control records and appends them to `out` (undecodable ones as `None`).
    pub async fn next_batch(&mut self, out: &mut Vec<Option<Control>>) -> Result<(), StreamError> {
        let mut guard = self.fd.readable_mut().await.map_err(|source| StreamError {
            what: "waiting on the control ring buffer",
            source,
        })?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            out.push(Control::from_bytes(&item));
        }
        guard.clear_ready();
        Ok(())
    }
}

/// How long the reader waits after the ring buffer became readable before it reads: the
/// records committed meanwhile wake no one (the kernel wakes the reader only for a record
/// committed while it had consumed everything), so a burst of calls costs one wakeup, one
/// batch and one pass of the loop per window instead of one per record. Bounds the added
/// latency to `/metrics`; at this window a 256 KiB ring buffer overflows only above about
/// 200,000 records per second.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// Decoded events from the ring buffer, in batches, woken by epoll (no polling loop).
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
    key: VmNames,
}

impl EventStream {
    /// Waits until events are available, then [`BATCH_WINDOW`], and appends everything
    /// readable to `out`. Cancel-safe: nothing is consumed before the window has passed.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Result<Event, DecodeError>>,
    ) -> Result<(), StreamError> {
        let mut guard = self.fd.readable_mut().await.map_err(|source| StreamError {
            what: "waiting on the ring buffer",
            source,
        })?;
        tokio::time::sleep(BATCH_WINDOW).await;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let item: &[u8] = &item;
            out.push(Event::from_bytes(item, &self.key));
        }
        guard.clear_ready();
        Ok(())
    }
}

impl EventStream {
    /// Appends whatever is in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Result<Event, DecodeError>>) {
        let ring = self.fd.get_mut();
        while let Some(item) = ring.next() {
            let item: &[u8] = &item;
            out.push(Event::from_bytes(item, &self.key));
        }
    }
}
