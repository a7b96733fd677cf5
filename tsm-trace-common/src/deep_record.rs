//! [`DeepRecord`]: one call of a function of `trace --deep`, made inside a TSM operation.
//!
//! **Why a record of its own.** A deep-traced function is any function a glob names (a
//! driver's SPDM helpers, its IDE steps): it has no [`crate::ProbeId`], no arguments we know
//! how to decode, and no place in the exact aggregates. What a kernel engineer needs of it is
//! which function, how deep, when, what it returned and, where an error began, the kernel
//! stack. One program pair (`deep_entry`/`deep_return`) serves every such function; it
//! records only inside a TSM operation (the thread has an entry in `THREAD_OPS`, opened by the
//! operation's outer probe), so a glob over a busy module costs one map lookup per call
//! outside TSM work. The record goes on the event ring, before the record of the probed call
//! that encloses it (it returns first); userspace tells it apart by size and
//! [`DEEP_RECORD_KIND`], and hangs it on that enclosing call.
//!
//! The function's address ([`DeepRecord::ip`]) and the stack are kernel addresses: userspace
//! turns them into names at once, and they go no further.

use crate::{RawEvent, VmmRecord};

/// [`DeepRecord::kind`]: "DEE1".
pub const DEEP_RECORD_KIND: u32 = 0x4445_4531;

/// Deep calls nested deeper than this in one thread are not recorded (counted:
/// [`crate::KernelCounter::DeepFull`]).
pub const DEEP_NESTING: usize = 16;

/// Kernel stack frames kept at the origin of an error.
pub const DEEP_STACK: usize = 24;

/// [`DeepRecord::flags`]: the function returned what looks like an error (a value in
/// `-4095..=-1`, as a 32-bit `int` or a 64-bit value or `ERR_PTR`) that none of its deep
/// callees returned before it: it may be where the error began, and the kernel stack was
/// taken. Userspace decides from the function's BTF return type whether it is an error.
pub const DEEP_ORIGIN: u32 = 1;
/// The stack could not be taken (`bpf_get_stack` failed).
pub const DEEP_NO_STACK: u32 = 2;

/// A completed deep call, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeepRecord {
    /// [`DEEP_RECORD_KIND`].
    pub kind: u32,
    /// Nesting among the thread's deep calls: 1 for a call made by a probed function (or by
    /// code between it and the first deep-traced function).
    pub depth: u32,
    pub pid_tgid: u64,
    /// The function's entry address (`bpf_get_func_ip`): resolved to its name in userspace.
    pub ip: u64,
    /// CLOCK_MONOTONIC at entry and return.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The raw return register.
    pub ret: u64,
    /// [`DEEP_ORIGIN`], [`DEEP_NO_STACK`].
    pub flags: u32,
    /// Frames in `stack` (0 unless [`DEEP_ORIGIN`]).
    pub nstack: u32,
    /// The kernel stack at the return, innermost first (the caller's return address first).
    pub stack: [u64; DEEP_STACK],
}

impl DeepRecord {
    pub const SIZE: usize = core::mem::size_of::<DeepRecord>();

    /// Whether a raw return register holds an errno-like value, as an `int` (upper half zero
    /// or sign-extended) or as a 64-bit value (`long`, `ERR_PTR`).
    pub const fn looks_like_error(ret: u64) -> bool {
        let lo = ret as u32 as i32;
        let hi = (ret >> 32) as u32;
        lo >= -4095 && lo <= -1 && (hi == 0 || hi == u32::MAX)
    }
}

/// One open deep call of a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeepFrame {
    pub ip: u64,
    pub start_ns: u64,
    /// The error-like value a callee of this call returned last (0: none): if this call
    /// returns the same, it only passed it on.
    pub child_err: u64,
}

/// A thread's open deep calls (map `DEEP_THREADS`): pushed at entry, popped at return; the
/// entry is removed when the last one returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeepThread {
    /// Open calls in `frames`.
    pub depth: u32,
    /// Open calls too deep to be kept (their returns are skipped).
    pub overflow: u32,
    pub frames: [DeepFrame; DEEP_NESTING],
}

const _: () = assert!(DeepRecord::SIZE != RawEvent::SIZE && DeepRecord::SIZE != VmmRecord::SIZE);

#[cfg(test)]
mod tests {
    use super::DeepRecord;

    #[test]
    fn error_like_returns() {
        assert!(DeepRecord::looks_like_error(-71i64 as u64));
        assert!(DeepRecord::looks_like_error((-71i32) as u32 as u64));
        assert!(DeepRecord::looks_like_error(-4095i64 as u64));
        assert!(!DeepRecord::looks_like_error(0));
        assert!(!DeepRecord::looks_like_error(1));
        assert!(!DeepRecord::looks_like_error(-4096i64 as u64));
        assert!(!DeepRecord::looks_like_error(0xffff_8880_0000_0000));
        assert!(!DeepRecord::looks_like_error(0x1234_5678_ffff_fffb));
    }
}
