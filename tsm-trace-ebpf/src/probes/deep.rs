//! `trace --deep MODULE:GLOB`: one program pair attached to every function the globs name.
//! A call is recorded only inside a TSM operation: the thread has an open operation in
//! [`THREAD_OPS`] (its outer probe opened it), the per-thread gate; outside, the entry costs
//! one map lookup. Entries push onto the thread's stack of open deep calls
//! ([`DEEP_THREADS`]), returns pop and emit a [`DeepRecord`] on the event ring. A return
//! that looks like an error none of the call's deep callees returned before it marks a
//! possible origin, and takes the kernel stack (rare: only failing calls).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{
    DEEP_NESTING, DEEP_NO_STACK, DEEP_ORIGIN, DEEP_RECORD_KIND, DEEP_STACK, DeepFrame,
    DeepRecord, DeepThread, KernelCounter, ProgError, maps as names,
};

use super::{exit_code, now};
use crate::maps::{DEEP_THREADS, EVENTS, THREAD_OPS, count, ensure_live, full};

#[kprobe]
pub fn deep_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_deep_entry(&ctx))
}

fn try_deep_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    ensure_live()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    // The gate: a TSM operation is open on this thread.
    match THREAD_OPS.get_ptr(pid_tgid) {
        // SAFETY: a per-thread entry; only this thread's programs write it.
        Some(op) if unsafe { (*op).depth } != 0 => {}
        _ => return Ok(()),
    }
    // SAFETY: a kprobe context.
    let ip = unsafe { generated::bpf_get_func_ip(ctx.as_ptr()) };
    let th = match DEEP_THREADS.get_ptr_mut(pid_tgid) {
        Some(th) => th,
        None => {
            if DEEP_THREADS
                .insert(pid_tgid, DeepThread::default(), 0)
                .is_err()
            {
                full(KernelCounter::DeepFull, names::DEEP_THREADS);
                return Ok(());
            }
            match DEEP_THREADS.get_ptr_mut(pid_tgid) {
                Some(th) => th,
                None => return Ok(()),
            }
        }
    };
    // SAFETY: see above.
    let th = unsafe { &mut *th };
    let d = th.depth as usize;
    if th.overflow != 0 || d >= DEEP_NESTING {
        th.overflow += 1;
        count(KernelCounter::DeepFull);
        return Ok(());
    }
    let Some(f) = th.frames.get_mut(d) else {
        return Ok(());
    };
    *f = DeepFrame {
        ip,
        start_ns: 0,
        child_err: 0,
    };
    th.depth = d as u32 + 1;
    // Last, so the entry's own work is not inside the call it times.
    f.start_ns = now();
    Ok(())
}

#[kretprobe]
pub fn deep_return(ctx: RetProbeContext) -> u32 {
    let t = now();
    exit_code(try_deep_return(&ctx, t))
}

fn try_deep_return(ctx: &RetProbeContext, t: u64) -> Result<(), ProgError> {
    ensure_live()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    // No open deep call: this call was not recorded (made outside a TSM operation).
    let Some(th) = DEEP_THREADS.get_ptr_mut(pid_tgid) else {
        return Ok(());
    };
    // SAFETY: a per-thread entry; only this thread's programs write it.
    let th = unsafe { &mut *th };
    if th.overflow != 0 {
        th.overflow -= 1;
        return Ok(());
    }
    // SAFETY: a kretprobe context (the kernel sets the function's kprobe as current).
    let ip = unsafe { generated::bpf_get_func_ip(ctx.as_ptr()) };
    let Some(d) = innermost(th, ip) else {
        // Not an open deep call: its entry was not recorded (missed, or before the gate).
        count(KernelCounter::DeepUnmatched);
        return Ok(());
    };
    let Some(f) = th.frames.get(d).copied() else {
        return Ok(());
    };
    th.depth = d as u32;
    let ret: u64 = ctx.ret();
    let looks = DeepRecord::looks_like_error(ret);
    let origin = looks && f.child_err != ret;
    if looks
        && d > 0
        && let Some(parent) = th.frames.get_mut(d - 1)
    {
        parent.child_err = ret;
    }
    if d == 0 {
        let _ = DEEP_THREADS.remove(pid_tgid);
    }
    let Some(mut slot) = EVENTS.reserve::<DeepRecord>(0) else {
        full(KernelCounter::DeepRingFull, names::EVENTS);
        return Ok(());
    };
    let r = slot.as_mut_ptr();
    // SAFETY: a reserved ring-buffer record, ours until submitted; every field is written.
    unsafe {
        (*r).kind = DEEP_RECORD_KIND;
        (*r).depth = d as u32 + 1;
        (*r).pid_tgid = pid_tgid;
        (*r).ip = f.ip;
        (*r).start_ns = f.start_ns;
        (*r).end_ns = t;
        (*r).ret = ret;
        (*r).flags = 0;
        (*r).nstack = 0;
        if origin {
            (*r).flags = DEEP_ORIGIN;
            let stack = core::ptr::addr_of_mut!((*r).stack);
            let n = generated::bpf_get_stack(
                ctx.as_ptr(),
                stack.cast(),
                (DEEP_STACK * 8) as u32,
                0,
            );
            if n > 0 {
                (*r).nstack = (n as u32) / 8;
            } else {
                (*r).flags |= DEEP_NO_STACK;
            }
        }
    }
    slot.submit(0);
    Ok(())
}

/// The index of the open deep call this return belongs to: the innermost, or (its return was
/// missed) the innermost with this function's address, the calls above it given up and
/// counted. `None` when no open call is this function's (an `ip` of 0, a kernel without the
/// function's address in kretprobes, trusts the innermost).
#[inline(always)]
fn innermost(th: &mut DeepThread, ip: u64) -> Option<usize> {
    let depth = th.depth as usize;
    if depth == 0 || depth > DEEP_NESTING {
        return None;
    }
    let top = depth - 1;
    if ip == 0 || th.frames.get(top).is_some_and(|f| f.ip == ip) {
        return Some(top);
    }
    for i in 1..DEEP_NESTING {
        if i > top {
            break;
        }
        let k = top - i;
        if th.frames.get(k).is_some_and(|f| f.ip == ip) {
            count(KernelCounter::DeepUnmatched);
            return Some(k);
        }
    }
    None
}
