//! The session's ring buffers as tokio streams: decoded events in batches and control
//! records, woken by epoll (no polling loop).

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::ring::{Position, Ring, RingError};
use crate::events::deep::{DeepCalls, DeepSymbols};
use crate::events::{Control, DecodeError, Event, Identities, VmNames, VmmSeen};

/// Registering a ring buffer with tokio, or waiting on it (`what`: which ring buffer).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{what} with tokio")]
    Tokio {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// Registers `ring` with tokio's reactor, for readability.
fn register<T: std::os::fd::AsRawFd>(
    ring: T,
    what: &'static str,
) -> Result<AsyncFd<T>, StreamError> {
    // SAFETY: the ring buffer's fd stays valid while the ring lives inside the AsyncFd.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }.map_err(|e| {
        StreamError::Tokio {
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
    pub fn new(map: MapData, key: VmNames) -> Result<EventStream, StreamError> {
        let ring = Ring::new(map)?;
        Ok(EventStream {
            fd: register(ring, "registering the ring buffer")?,
            key,
            vmms: Identities::default(),
            auto_commit: true,
            busy: false,
            deep: None,
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
        let mut guard = self
            .fd
            .readable_mut()
            .await
            .map_err(|source| StreamError::Tokio {
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
/// latency to `/metrics`. Skipped while the ring buffer is filling faster than a window
/// drains it ([`BUSY_FRACTION`]).
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// A batch that took at least 1/`BUSY_FRACTION` of the ring buffer means records arrive fast
/// enough that waiting a [`BATCH_WINDOW`] again could let the ring fill (at 256 KiB, a window
/// holds about 1,100 records: 220,000 a second): the next batch is read as soon as anything
/// is readable, until a batch is smaller again.
pub const BUSY_FRACTION: u64 = 4;

/// Decoded events from the ring buffer, in batches, woken by epoll (no polling loop). Reading
/// commits, unless the owner commits itself once what the records changed is saved
/// ([`EventStream::commit_when_saved`]).
pub struct EventStream {
    fd: AsyncFd<Ring>,
    key: VmNames,
    /// The VMM names of binding threads ([`tsm_trace_common::VmmRecord`]s, which share the
    /// ring buffer with the events and precede their bind records).
    vmms: Identities,
    auto_commit: bool,
    /// The last batch took at least 1/[`BUSY_FRACTION`] of the ring: no window before the next.
    busy: bool,
    /// `trace --deep`: names for deep records and the calls waiting for their enclosing
    /// record.
    deep: Option<(DeepSymbols, DeepCalls)>,
}

impl EventStream {
    /// Commit records only through [`EventStream::commit`] (`run` with a state file),
    /// instead of as they are read (the default: `trace`, `run --no-persist`).
    pub fn commit_when_saved(&mut self) {
        self.auto_commit = false;
    }

    /// Waits until events are available, then [`BATCH_WINDOW`], and appends everything
    /// readable to `out`. Cancel-safe: nothing is read before the window has passed. Commits
    /// what was read before (the kernel wakes no reader that holds uncommitted records).
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Result<Event, DecodeError>>,
    ) -> Result<(), StreamError> {
        self.fd.get_mut().commit_all();
        while !self.fd.get_ref().readable() {
            let mut guard = self
                .fd
                .readable_mut()
                .await
                .map_err(|source| StreamError::Tokio {
                    what: "waiting on the ring buffer",
                    source,
                })?;
            // Cleared before looking: a wakeup from now on is not lost.
            guard.clear_ready();
        }
        if !self.busy {
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        self.drain_now(out);
        Ok(())
    }

    /// Appends whatever is in the ring buffer now, without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Result<Event, DecodeError>>) {
        let key = &self.key;
        let vmms = &mut self.vmms;
        let deep = &mut self.deep;
        let ring = self.fd.get_mut();
        let from = ring.position().pos;
        ring.read(|item| {
            if item.len() == tsm_trace_common::VmmRecord::SIZE
                && let Some(seen) = VmmSeen::from_bytes(item)
            {
                vmms.note(seen);
                return;
            }
            if let Some((symbols, calls)) = deep.as_mut()
                && let Some((tid, call)) = symbols.decode(item)
            {
                calls.hold(tid, call);
                return;
            }
            out.push(Event::from_bytes(item, key).map(|mut ev| {
                vmms.apply(&mut ev);
                if let Some((_, calls)) = deep.as_mut() {
                    let start = (!ev.entry_missing).then_some(ev.start_ns);
                    ev.calls = calls.claim(ev.tid, start, ev.end_ns);
                }
                ev
            }))
        });
        self.busy = ring.position().pos.wrapping_sub(from) * BUSY_FRACTION >= ring.size();
        if self.auto_commit {
            ring.commit_all();
        }
    }

    /// Decode deep records (`trace --deep`) with `symbols`.
    pub fn set_deep(&mut self, symbols: DeepSymbols) {
        self.deep = Some((symbols, DeepCalls::default()));
    }

    /// Deep calls decoded, and those never claimed by an enclosing record (counting those
    /// still waiting once `finish` is set: the session ends). `None` without `--deep`.
    pub fn deep_counts(&mut self, finish: bool) -> Option<(u64, u64)> {
        let (_, calls) = self.deep.as_mut()?;
        if finish {
            calls.finish();
        }
        Some((calls.recorded, calls.unclaimed))
    }

    /// Where the next record to read starts: what a state saved now covers.
    pub fn position(&self) -> Position {
        self.fd.get_ref().position()
    }

    /// The records before `pos` may be overwritten (their effect is saved).
    pub fn commit(&mut self, pos: Position) {
        self.fd.get_mut().commit(pos);
    }

    /// See [`Ring::resume_at`].
    pub fn resume_at(&mut self, pos: Position) -> Option<u64> {
        self.fd.get_mut().resume_at(pos)
    }

    /// Bytes read and not yet committed.
    pub fn uncommitted(&self) -> u64 {
        self.fd.get_ref().uncommitted()
    }
}
