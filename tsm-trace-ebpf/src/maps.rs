//! Maps shared by all probes.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tsm_trace_common::{RawEvent, stat};

/// Completed calls and point events, to userspace. Userspace may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Key of an in-flight call: one entry per (task, probed function).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InflightKey {
    pub pid_tgid: u64,
    pub probe: u32,
    pub _pad: u32,
}

/// Entry-time records waiting for their return probe. LRU so a lost return can never fill it.
#[map]
pub static INFLIGHT: LruHashMap<InflightKey, RawEvent> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU scratch space for building a record (it is too large for the BPF stack budget once
/// combined with helper frames).
#[map]
pub static SCRATCH: PerCpuArray<RawEvent> = PerCpuArray::with_max_entries(1, 0);

/// Processes (tgid) that performed a successful bind: their exit is reported so userspace can
/// find bindings that outlive their VMM. Userspace also prunes it.
#[map]
pub static VMM_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Self-counters, indexed by [`tsm_trace_common::stat`].
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // Per-CPU: no other writer can race with us while we run with preemption disabled.
        unsafe { *p += 1 };
    }
}
