//! The event ring buffer, read in two steps: **read** (decode the records, the kernel keeps
//! them) and **commit** (tell the kernel they may be overwritten). aya's reader does both at
//! once; `run` must not: a record is committed only once what it changed is saved in the
//! state file (`correlate/state.rs`), so a daemon killed at any instant leaves in the pinned
//! ring every record whose effect it had not saved, and its successor starts from the saved
//! position ([`Ring::resume_at`]): each record applied exactly once across restarts.
//!
//! The layout is the kernel's (`kernel/bpf/ringbuf.c`): a consumer page mapped read-write
//! (the consumer position), then a producer page and the data pages mapped twice, read-only
//! (a record that wraps reads as one piece). Each record has an 8-byte header: its length
//! with a busy and a discard bit, then the data, padded to 8 bytes. Positions are byte
//! counters that only grow (the ring's map id and a position identify a record within a
//! boot).
//!
//! The kernel wakes the reader only for a record committed while the consumer position was
//! at it (everything consumed), so a reader that holds records read but not committed gets no
//! wakeup: commit before waiting, and look for records produced while committing
//! ([`Ring::readable`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use aya::maps::MapData;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("reading the ring buffer's map info")]
    Info(#[source] aya::maps::MapError),
    #[error("the ring buffer's size {0} is not a power of two")]
    Size(u32),
    #[error("mapping the ring buffer's {what} pages")]
    Mmap {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: i32,
        offset: usize,
        what: &'static str,
    ) -> Result<Mapping, RingError> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the offset,
        // length and protection against the ring buffer's layout.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(RingError::Mmap {
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL without MAP_FIXED"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The event ring buffer, read without being consumed until [`Ring::commit`].
pub struct Ring {
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    mask: u64,
    /// Where the next record to read starts.
    read: u64,
    id: u32,
    /// Keeps the fd (and so the mappings' map) alive.
    map: MapData,
}

// SAFETY: the mappings are owned and only reached through `&mut self` (reads of kernel
// updates go through atomics).
unsafe impl Send for Ring {}

/// One ring buffer position: the map it belongs to and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub map_id: u32,
    pub pos: u64,
}

impl Ring {
    pub fn new(map: MapData) -> Result<Ring, RingError> {
        let info = map.info().map_err(RingError::Info)?;
        let size = info.max_entries();
        if !size.is_power_of_two() {
            return Err(RingError::Size(size));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0, "consumer")?;
        let producer = Mapping::new(
            fd,
            page + 2 * size as usize,
            libc::PROT_READ,
            page,
            "producer and data",
        )?;
        let mut ring = Ring {
            consumer,
            producer,
            page,
            mask: u64::from(size) - 1,
            read: 0,
            id: info.id(),
            map,
        };
        ring.read = ring.consumed();
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the consumer page, which stays mapped while `self` lives.
        unsafe { &*self.consumer.ptr.as_ptr().cast::<AtomicU64>() }
    }

    /// Up to where the kernel has committed records (the producer position).
    pub fn produced(&self) -> u64 {
        // SAFETY: the first word of the producer page; the kernel stores it with release.
        unsafe { &*self.producer.ptr.as_ptr().cast::<AtomicU64>() }.load(Ordering::Acquire)
    }

    /// Up to where the records are committed (the kernel may overwrite them).
    pub fn consumed(&self) -> u64 {
        self.consumer_pos().load(Ordering::Acquire)
    }

    /// The data area's size in bytes (a power of two).
    pub fn size(&self) -> u64 {
        self.mask + 1
    }

    /// Where the next record to read starts.
    pub fn position(&self) -> Position {
        Position {
            map_id: self.id,
            pos: self.read,
        }
    }

    /// Bytes read but not committed.
    pub fn uncommitted(&self) -> u64 {
        self.read.wrapping_sub(self.consumed())
    }

    /// Calls `f` with each record after the read position, in order, up to the first one
    /// still being written; discarded records are skipped. Nothing is committed.
    pub fn read(&mut self, mut f: impl FnMut(&[u8])) {
        let data = self.page;
        loop {
            if self.read == self.produced() {
                return;
            }
            let off = (self.read & self.mask) as usize;
            // SAFETY: the header lies in the first copy of the data pages (offset < size),
            // 8-aligned; the kernel commits it with a fully ordered xchg.
            let header = unsafe {
                &*self
                    .producer
                    .ptr
                    .as_ptr()
                    .add(data + off)
                    .cast::<AtomicU32>()
            }
            .load(Ordering::Acquire);
            if header & BUSY_BIT != 0 {
                return;
            }
            let len = header & !(BUSY_BIT | DISCARD_BIT);
            if u64::from(len) + HEADER > self.mask + 1 {
                // Cannot happen with the kernel's ring; never read past the mapping.
                log::warn!(
                    "a ring buffer record claims {len} bytes at position {}: skipping the rest of the ring",
                    self.read
                );
                self.read = self.produced();
                return;
            }
            if header & DISCARD_BIT == 0 {
                // SAFETY: the record lies within the double-mapped data (offset < size and
                // len + 8 <= size), written before the header was committed.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        self.producer.ptr.as_ptr().add(data + off + HEADER as usize),
                        len as usize,
                    )
                };
                f(bytes);
            }
            self.read += (u64::from(len) + HEADER).next_multiple_of(8);
        }
    }

    /// Lets the kernel reuse the space of the records before `pos` (a position of this ring
    /// at or before the read position; anything else is ignored).
    pub fn commit(&mut self, pos: Position) {
        if pos.map_id != self.id
            || pos.pos > self.read
            || pos.pos.wrapping_sub(self.consumed()) > self.mask + 1
        {
            return;
        }
        self.consumer_pos().store(pos.pos, Ordering::Release);
        // Either a record committed from now on sees the new consumer position (and wakes
        // us), or `readable` sees it.
        fence(Ordering::SeqCst);
    }

    /// Commits everything read.
    pub fn commit_all(&mut self) {
        let p = self.position();
        self.commit(p);
    }

    /// Records wait after the read position (without a wakeup: see the module doc).
    pub fn readable(&self) -> bool {
        self.read != self.produced()
    }

    /// Continues where a previous reader of this ring saved its state: the records before
    /// `pos` were applied already. Returns how many bytes were skipped, or `None` if `pos`
    /// is not of this ring or not between what is committed and what is produced (then
    /// reading starts at what is committed).
    pub fn resume_at(&mut self, pos: Position) -> Option<u64> {
        let (consumed, produced) = (self.consumed(), self.produced());
        if pos.map_id != self.id || pos.pos < consumed || pos.pos > produced || pos.pos & 7 != 0 {
            return None;
        }
        self.read = pos.pos;
        self.commit(pos);
        Some(pos.pos - consumed)
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
