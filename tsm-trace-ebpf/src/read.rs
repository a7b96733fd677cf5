//! Reading kernel memory at offsets that userspace resolved from BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};
use tsm_trace_common::{IntKind, OFFSET_UNKNOWN, Offsets, ProgError, STATS_ID_LEN};

use crate::maps::fail;

/// The offsets userspace resolved (all unknown until it has written them).
#[inline(always)]
pub fn offsets() -> &'static Offsets {
    match crate::maps::OFFSETS.get(0) {
        Some(o) => o,
        None => &Offsets::UNKNOWN,
    }
}

/// A kernel read faulted: counted ([`ProgError::ReadFault`], in `KernelCounter::ReadFault`), and at `--log-level debug` named
/// (the field and its offset; never the address) through aya-log. A rare path: the success
/// path logs nothing. Not inlined, so each program carries the log code once.
#[inline(never)]
pub fn fault(field: &'static str, off: u32) -> ProgError {
    let e = fail(ProgError::ReadFault);
    aya_log_ebpf::debug!(
        &(),
        "faulted read of {} at offset {}: the field is reported missing and counted (tsm_trace_kernel_read_faults_total)",
        field,
        off
    );
    e
}

/// Reads a `T` at `base + off`; `field` names it in the fault diagnostic.
#[inline(always)]
pub fn at<T>(field: &'static str, base: u64, off: u32) -> Result<T, ProgError> {
    if off == OFFSET_UNKNOWN || base == 0 {
        return Err(ProgError::Unresolved);
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|_| fault(field, off))
}

/// Reads the integer at `base + off` with the width and signedness BTF gave (`kind`, an
/// [`IntKind`]), sign- or zero-extended to 64 bits. An unknown kind is not read.
#[inline(always)]
pub fn int_at(field: &'static str, base: u64, off: u32, kind: u32) -> Result<i64, ProgError> {
    let signed = kind & IntKind::SIGNED != 0;
    Ok(match kind & IntKind::SIZE_MASK {
        1 => {
            let v: u8 = at(field, base, off)?;
            if signed { v as i8 as i64 } else { v as i64 }
        }
        2 => {
            let v: u16 = at(field, base, off)?;
            if signed { v as i16 as i64 } else { v as i64 }
        }
        4 => {
            let v: u32 = at(field, base, off)?;
            if signed { v as i32 as i64 } else { v as i64 }
        }
        8 => at::<u64>(field, base, off)? as i64,
        _ => return Err(ProgError::Unresolved),
    })
}

/// An integer register value (a return value, an argument) of `kind`'s width, extended to
/// 64 bits (the register's upper bits are undefined for narrower types).
#[inline(always)]
pub fn int_reg(raw: u64, kind: u32) -> Option<i64> {
    let signed = kind & IntKind::SIGNED != 0;
    Some(match kind & IntKind::SIZE_MASK {
        1 if signed => raw as i8 as i64,
        1 => raw as u8 as i64,
        2 if signed => raw as i16 as i64,
        2 => raw as u16 as i64,
        4 if signed => raw as i32 as i64,
        4 => raw as u32 as i64,
        8 => raw as i64,
        _ => return None,
    })
}

/// Reads the NUL-terminated string that the `const char *` at `base + off` points to.
#[inline(always)]
pub fn str_ptr_at(
    field: &'static str,
    base: u64,
    off: u32,
    dst: &mut [u8],
) -> Result<(), ProgError> {
    let p: u64 = at(field, base, off)?;
    if p == 0 {
        return Err(ProgError::Unresolved);
    }
    // The string behind the pointer: offset 0 of it.
    unsafe { bpf_probe_read_kernel_str_bytes(p as *const u8, dst) }
        .map(|_| ())
        .map_err(|_| fault(field, 0))
}

/// Reads the NUL-terminated string at `base + off` (a sysfs buffer).
#[inline(always)]
pub fn str_at(field: &'static str, base: u64, off: u32, dst: &mut [u8]) -> Result<(), ProgError> {
    if off == OFFSET_UNKNOWN || base == 0 {
        return Err(ProgError::Unresolved);
    }
    unsafe { bpf_probe_read_kernel_str_bytes((base + off as u64) as *const u8, dst) }
        .map(|_| ())
        .map_err(|_| fault(field, off))
}

/// Reads an inline char array of `len` bytes (its BTF length) at `base + off`, at most
/// [`STATS_ID_LEN`] bytes: never past the array's end.
#[inline(always)]
pub fn char_array_at(
    field: &'static str,
    base: u64,
    off: u32,
    len: u32,
    dst: &mut [u8; STATS_ID_LEN],
) -> Result<(), ProgError> {
    if off == OFFSET_UNKNOWN || base == 0 || len == 0 {
        return Err(ProgError::Unresolved);
    }
    let n = if len as usize > STATS_ID_LEN {
        STATS_ID_LEN
    } else {
        len as usize
    };
    let Some(dst) = dst.get_mut(..n) else {
        return Err(ProgError::Unresolved);
    };
    str_at(field, base, off, dst)
}
