//! In-kernel counting of operations, exact whatever the ring buffer drops (see
//! [`tsm_trace_common::aggregates`] for the rules). Entry programs call [`enter`] as they park an
//! entry record ([`unenter`] if it could not be parked); return programs call [`exit`] with
//! what the frame returned. Costs two map lookups per probed call; nothing runs on other paths.

use tsm_trace_common::{
    KernelCounter, ProbeId, RawEvent,
    aggregates::{self, ERR_SLOTS, ErrSlot, ThreadOp},
    flags, maps as names, missing,
};

use crate::maps::{AGG_CONFIG, OP_COUNTS, OP_HIST, THREAD_OPS, count, full};

/// A probed call began (its entry record was parked).
#[inline(always)]
pub fn enter(ev: &RawEvent) {
    let Some(p) = ProbeId::from_u32(ev.probe) else {
        return;
    };
    let key = ev.pid_tgid;
    let st = match THREAD_OPS.get_ptr_mut(key) {
        Some(st) => st,
        None => {
            if THREAD_OPS.insert(key, ThreadOp::default(), 0).is_err() {
                full(KernelCounter::AggregationFull, names::THREAD_OPS);
                return;
            }
            match THREAD_OPS.get_ptr_mut(key) {
                Some(st) => st,
                None => return,
            }
        }
    };
    // SAFETY: a per-thread entry; only this thread's programs touch it, one at a time.
    let st = unsafe { &mut *st };
    let d = aggregates::depth(p);
    if st.depth != 0 && d <= st.root_depth {
        // Nothing the TSM path calls re-enters at its caller's depth: the open operation's
        // outer return was missed. It cannot be counted; this one starts afresh.
        count(KernelCounter::OperationUnfinished);
        st.depth = 0;
    }
    if st.depth == 0 {
        open(st, d);
        let op = (p == ProbeId::TsmOpIoctl && ev.missing & missing::OP == 0).then_some(ev.op);
        st.kind = aggregates::outer_kind(p, op);
    }
    // An undecided operation takes its kind from its shallowest bind or unbind frame.
    let inferred = aggregates::inferred_kind(p);
    if inferred != aggregates::OP_UNDECIDED
        && (st.kind == aggregates::OP_UNDECIDED || (st.kind_depth != 0 && d < st.kind_depth))
    {
        st.kind = inferred;
        st.kind_depth = d;
    }
    st.depth += 1;
}

/// Takes back an [`enter`] whose record could not be parked (`INFLIGHT` full): no return will
/// complete that frame, so the operation must not wait for it. A rare path.
#[inline(never)]
pub fn unenter(ev: &RawEvent) {
    let Some(st) = THREAD_OPS.get_ptr_mut(ev.pid_tgid) else {
        return;
    };
    // SAFETY: see `enter`.
    let st = unsafe { &mut *st };
    st.depth = st.depth.saturating_sub(1);
}

/// A probed call returned: `kept` is false when its record was dropped (not a TSM call, such
/// as `__pci_tsm_destroy` of a device without TSM context), which is then no frame at all.
/// The operation's outer return closes it (depth 0). The thread's entry stays for its next
/// operation, as its `INFLIGHT` slots do (an insert and a delete per operation cost more
/// than the counting itself); userspace removes the entries of threads that are gone.
#[inline(always)]
pub fn exit(p: ProbeId, pid_tgid: u64, ret: i64, ret_flags: u32, duration_ns: u64, kept: bool) {
    let Some(st) = THREAD_OPS.get_ptr_mut(pid_tgid) else {
        return;
    };
    // SAFETY: see `enter`.
    frame_returned(unsafe { &mut *st }, p, ret, ret_flags, duration_ns, kept);
}

/// Counts one returned frame of the operation `st`; its outer frame closes it.
#[inline(always)]
fn frame_returned(
    st: &mut ThreadOp,
    p: ProbeId,
    ret: i64,
    ret_flags: u32,
    duration_ns: u64,
    kept: bool,
) {
    if st.depth == 0 {
        return;
    }
    st.depth -= 1;
    let root = st.depth == 0;
    if !kept {
        return;
    }
    let layer = aggregates::layer(p);
    let errno = aggregates::errno(ret, ret_flags);
    let ok = errno.is_none() && !(ret_flags & flags::RET_NULL_IS_ERR != 0 && ret == 0);
    let kind = if st.kind == aggregates::OP_UNDECIDED {
        aggregates::OP_INVALID
    } else {
        st.kind
    };
    observe(kind, layer, ok, duration_ns);
    let d = aggregates::depth(p);
    if !root {
        match errno {
            Some(e) => note_errno(st, e, layer, d),
            None if !ok && d >= st.nullfail_depth => {
                st.nullfail_layer = layer + 1;
                st.nullfail_depth = d;
            }
            None => {}
        }
        return;
    }
    let (layer, e) = match errno {
        None => (layer, 0),
        Some(e) => {
            let mut at = layer;
            let mut found = false;
            for i in 0..ERR_SLOTS {
                if (i as u32) < st.nerr && st.errs[i].errno == e {
                    at = st.errs[i].layer;
                    found = true;
                }
            }
            if !found && st.nullfail_layer != 0 {
                at = st.nullfail_layer - 1;
            }
            (at, e)
        }
    };
    let key = aggregates::count_key(kind, layer, e);
    match OP_COUNTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value.
        Some(v) => unsafe { *v += 1 },
        None => {
            if OP_COUNTS.insert(key, 1, 0).is_err() {
                full(KernelCounter::AggregationFull, names::OP_COUNTS);
            }
        }
    }
}

/// Remembers where errno `e` was returned: the deepest frame (ties: the latest) wins, as
/// userspace attributes it.
#[inline(always)]
fn note_errno(st: &mut ThreadOp, e: u32, layer: u32, d: u32) {
    for i in 0..ERR_SLOTS {
        if (i as u32) < st.nerr && st.errs[i].errno == e {
            if d >= st.errs[i].depth {
                st.errs[i].layer = layer;
                st.errs[i].depth = d;
            }
            return;
        }
    }
    let n = st.nerr as usize;
    if n < ERR_SLOTS {
        st.errs[n] = ErrSlot {
            errno: e,
            layer,
            depth: d,
            _pad: 0,
        };
        st.nerr += 1;
    } else {
        full(
            KernelCounter::AggregationFull,
            "the errno slots of an operation (aggregates::ERR_SLOTS)",
        );
    }
}

/// One frame duration into the histogram of (kind, layer, ok).
#[inline(always)]
fn observe(kind: u32, layer: u32, ok: bool, duration_ns: u64) {
    if kind >= aggregates::OPS || layer >= aggregates::LAYERS {
        return;
    }
    let slot = match AGG_CONFIG.get(0) {
        Some(cfg) => aggregates::bucket(&cfg.bounds_ns, duration_ns),
        None => aggregates::BOUNDS as u32,
    };
    if let Some(v) = OP_HIST.get_ptr_mut(aggregates::hist_index(kind, layer, ok, slot)) {
        // SAFETY: per-CPU value.
        unsafe { *v += 1 };
    }
    if let Some(v) = OP_HIST.get_ptr_mut(aggregates::hist_index(
        kind,
        layer,
        ok,
        aggregates::HIST_SUM,
    )) {
        // SAFETY: per-CPU value.
        unsafe { *v += duration_ns };
    }
}


/// Opens an operation in the thread's entry: its scalars start afresh; the errno slots are
/// read only below `nerr`, so they are not cleared. Each field its own store (volatile):
/// LLVM turns a whole-struct reset into a call of `memset`, on BPF a loop of one-byte stores
/// (about 450 instructions for this struct, on every operation).
#[inline(always)]
fn open(st: &mut ThreadOp, root_depth: u32) {
    // SAFETY: plain stores into the thread's entry, which `st` borrows exclusively.
    unsafe {
        core::ptr::write_volatile(&mut st.depth, 0);
        core::ptr::write_volatile(&mut st.kind, 0);
        core::ptr::write_volatile(&mut st.kind_depth, 0);
        core::ptr::write_volatile(&mut st.nerr, 0);
        core::ptr::write_volatile(&mut st.nullfail_layer, 0);
        core::ptr::write_volatile(&mut st.nullfail_depth, 0);
        core::ptr::write_volatile(&mut st.root_depth, root_depth);
    }
}
