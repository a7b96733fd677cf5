//! Coalesced ring-buffer wakeups ([`tsm_trace_common::Wake`]). Waking the reader costs an
//! irq_work, a scheduler wakeup and a context switch per record; in a burst (a storm of binds,
//! a VMM retrying a failing ioctl) that is most of what a record costs. A record within the
//! window of the last one allowed to wake is submitted with `BPF_RB_NO_WAKEUP`; the reader
//! polls again after each read that found records, so such a record waits at most about two
//! windows. A ring buffer a quarter full always wakes the reader, so coalescing never turns
//! into drops.

use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};

use crate::maps::{EVENTS, WAKE};

/// The flags for submitting a record to [`EVENTS`] at `now` (`bpf_ktime_get_ns`, taken by the
/// program at its start): 0 (the kernel wakes the reader if it has caught up), no wakeup, or a
/// forced one.
#[inline(always)]
pub fn flags(now: u64) -> u64 {
    let Some(w) = WAKE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a map value; racy by design between CPUs. Every value `last_ns` ever holds was
    // written by a record submitted with a wakeup allowed, and an older value only shortens
    // the window, so a lost update costs an extra wakeup, never a record left unread.
    unsafe {
        let window = (*w).window_ns;
        if window == 0 {
            return 0;
        }
        // A `last_ns` later than `now` (another CPU, after our timestamp) wraps to a huge
        // difference: outside the window, a wakeup allowed.
        if now.wrapping_sub((*w).last_ns) >= window {
            (*w).last_ns = now;
            return 0;
        }
        if EVENTS.query(BPF_RB_AVAIL_DATA as u64) * 4 >= EVENTS.query(BPF_RB_RING_SIZE as u64) {
            (*w).last_ns = now;
            return BPF_RB_FORCE_WAKEUP as u64;
        }
    }
    BPF_RB_NO_WAKEUP as u64
}
