//! Reading kernel memory at offsets that userspace resolved from BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use tsm_trace_common::{OFFSET_UNKNOWN, Offsets, stat};

use crate::maps::count;

/// The offsets userspace resolved (all unknown until it has written them).
#[inline(always)]
pub fn offsets() -> &'static Offsets {
    match crate::maps::OFFSETS.get(0) {
        Some(o) => o,
        None => &Offsets::UNKNOWN,
    }
}

/// Why a read did not produce a value.
pub enum ReadError {
    /// BTF gave no offset for this field, or the base pointer is NULL.
    Unresolved,
    /// The kernel read faulted (counted in `stat::READ_FAULTS`).
    Fault,
}

/// Reads a `T` at `base + off`.
#[inline(always)]
pub fn at<T>(base: u64, off: u32) -> Result<T, ReadError> {
    if off == OFFSET_UNKNOWN || base == 0 {
        return Err(ReadError::Unresolved);
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| {
        count(stat::READ_FAULTS);
        ReadError::Fault
    })
}

/// Reads the NUL-terminated string that the `const char *` at `base + off` points to.
#[inline(always)]
pub fn str_ptr_at(base: u64, off: u32, dst: &mut [u8]) -> Result<(), ReadError> {
    let p: u64 = at(base, off)?;
    if p == 0 {
        return Err(ReadError::Unresolved);
    }
    unsafe { bpf_probe_read_kernel_str_bytes(p as *const u8, dst) }
        .map(|_| ())
        .map_err(|_| {
            count(stat::READ_FAULTS);
            ReadError::Fault
        })
}

/// Reads an inline char array at `base + off`.
#[inline(always)]
pub fn str_at(base: u64, off: u32, dst: &mut [u8]) -> Result<(), ReadError> {
    if off == OFFSET_UNKNOWN || base == 0 {
        return Err(ReadError::Unresolved);
    }
    unsafe { bpf_probe_read_kernel_str_bytes((base + off as u64) as *const u8, dst) }
        .map(|_| ())
        .map_err(|_| {
            count(stat::READ_FAULTS);
            ReadError::Fault
        })
}
