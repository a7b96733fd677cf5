//! [`VmmRecord`]: the VMM's command line, read once per bind in the VMM's own context.
//!
//! **Why a record of its own, not a field of [`RawEvent`].** The name a user gives a VM lives
//! in its VMM's argv (`-name guest=web-1`, `--id web-1`, ...), up to [`ARGV_LEN`] bytes. Only
//! a bind needs it, and a bind is rare (a firmware operation); every other record (unbinds,
//! guest requests, connects, storms of them) would carry 256 unused bytes, more than
//! doubling [`RawEvent`] (232 bytes) and halving what the ring buffer holds before it drops.
//! So the outermost bind entry of a thread (`tsm_bind`, else `pci_tsm_bind`, else the
//! driver's bind op) emits one [`VmmRecord`] on the same ring buffer as the events, before
//! the bind's own record (which is emitted at its return): the ring's order puts it first,
//! and userspace tells the two apart by size ([`VmmRecord::SIZE`] != [`RawEvent::SIZE`]).
//! Userspace turns it into a name at once (the argv itself, which may hold secrets, goes no
//! further than the decoder) and gives it to that thread's bind records.

use crate::RawEvent;

/// Bytes of the VMM's argv read (`mm->arg_start`, at most this many bytes up to
/// `mm->arg_end`).
pub const ARGV_LEN: usize = 256;

/// [`VmmRecord::kind`]: the first word of the record, to tell it from a [`RawEvent`] (whose
/// first word is a [`crate::ProbeId`], a small number) on top of its size.
pub const VMM_RECORD_KIND: u32 = 0x564d_4d31; // "VMM1"

/// The argv of the task that entered a bind, as the kernel read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmmRecord {
    /// [`VMM_RECORD_KIND`].
    pub kind: u32,
    /// [`crate::missing::VMM_ARGV`] when the argv could not be read (`task_struct.mm`,
    /// `mm_struct.arg_start`/`arg_end` unresolved in BTF, no mm, or a faulted read).
    pub missing: u32,
    /// `bpf_get_current_pid_tgid()` of the binding thread.
    pub pid_tgid: u64,
    /// `bpf_ktime_get_ns()` when it was read.
    pub ktime_ns: u64,
    /// Bytes of `argv` read (`arg_end - arg_start`, at most [`ARGV_LEN`]).
    pub len: u32,
    /// 1 when the argv was longer than [`ARGV_LEN`] (cut).
    pub truncated: u32,
    /// The NUL-separated arguments, `len` bytes of them.
    pub argv: [u8; ARGV_LEN],
}

impl VmmRecord {
    pub const SIZE: usize = core::mem::size_of::<VmmRecord>();
}

const _: () = assert!(VmmRecord::SIZE != RawEvent::SIZE);
