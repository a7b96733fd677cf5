//! Function arguments at the locations userspace computed from the BTF prototype (x86-64
//! SysV): a register, or a slot above the stack pointer at entry. `pci_tsm_guest_req` passes
//! two 16-byte `sockptr_t`s by value, so its later arguments do not sit where a naive "n-th
//! register" reading would look.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::ProbeContext};
use tsm_trace_common::{ArgLoc, OFFSET_UNKNOWN};

/// The 8-byte argument at `loc` ([`ArgLoc`] encoding), or `None` if unknown or unreadable.
#[inline(always)]
pub fn arg_at(ctx: &ProbeContext, loc: u32) -> Option<u64> {
    if loc == OFFSET_UNKNOWN {
        return None;
    }
    if loc < ArgLoc::STACK {
        return match loc {
            0 => ctx.arg(0),
            1 => ctx.arg(1),
            2 => ctx.arg(2),
            3 => ctx.arg(3),
            4 => ctx.arg(4),
            5 => ctx.arg(5),
            _ => None,
        };
    }
    // SAFETY: kprobe programs may read their pt_regs context directly.
    let sp = unsafe { (*ctx.regs).rsp };
    let addr = sp + (loc - ArgLoc::STACK) as u64;
    match unsafe { bpf_probe_read_kernel(addr as *const u64) } {
        Ok(v) => Some(v),
        Err(_) => {
            crate::read::fault("stack argument", loc - ArgLoc::STACK);
            None
        }
    }
}
