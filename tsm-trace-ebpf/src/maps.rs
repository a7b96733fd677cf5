//! Maps shared by all probes.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tsm_trace_common::{
    DeepThread, KernelCounter, Offsets, ProgError, RawEvent,
    aggregates::{self, AggConfig, ThreadOp},
};

/// The operation each thread is in, for in-kernel counting (see `aggregates.rs`): one entry
/// per thread that did TSM work, from its first probed call to its exit (`depth` 0 between
/// operations; the thread's exit removes it, `probes::free_thread_slots`). A plain hash (an
/// LRU hash takes its list locks and rotates its lists on every update, the dearest part of a
/// probed call under emulation): entries of threads that died mid-operation are swept by
/// userspace (`probes/expiry.rs`), and a full map is counted
/// (`KernelCounter::AggregationFull`), never silent.
#[map]
pub static THREAD_OPS: HashMap<u64, ThreadOp> = HashMap::with_max_entries(4096, 0);

/// `trace --deep`: each thread's open deep calls (`probes/deep.rs`), from its first deep
/// entry inside a TSM operation to the return of its outermost deep call, which removes it.
/// Only `trace --deep` attaches the programs that use it.
#[map]
pub static DEEP_THREADS: HashMap<u64, DeepThread> = HashMap::with_max_entries(1024, 0);

/// Operations by `aggregates::count_key` (kind, attributed layer, errno): exact at any event rate.
#[map]
pub static OP_COUNTS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(1024, 0);

/// Frame durations by (kind, layer, ok): bucket counts and the sum (`aggregates::hist_index`).
#[map]
pub static OP_HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(aggregates::HIST_LEN, 0);

/// Histogram bucket bounds, written by userspace after load.
#[map]
pub static AGG_CONFIG: Array<AggConfig> = Array::with_max_entries(1, 0);

/// Struct offsets and argument locations, resolved from BTF by userspace (one entry). Written
/// after load and again when a module brings new BTF: the programs are never reloaded for it.
#[map]
pub static OFFSETS: Array<Offsets> = Array::with_max_entries(1, 0);

/// Module loads and unloads, to userspace: control, not event data.
#[map]
pub static CONTROL: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);

/// Completed calls and point events, to userspace. Userspace may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

pub use tsm_trace_common::InflightKey;

/// Entry-time records waiting for their return probe: one slot per (thread, probe), which
/// the return frees (start time 0) and the thread's next call of that probe reuses in place
/// (`probes::stash`); the thread's exit removes its free slots. A plain hash, like
/// [`THREAD_OPS`]: an entry whose return never comes (a missed kretprobe, a thread that died
/// in the call) is swept by userspace (`probes/expiry.rs`: exited threads,
/// `--inflight-timeout`), and a full map is counted (`KernelCounter::InflightFull`).
#[map]
pub static INFLIGHT: HashMap<InflightKey, RawEvent> = HashMap::with_max_entries(4096, 0);

/// Per-CPU scratch space for building a record (it is too large for the BPF stack budget once
/// combined with helper frames).
#[map]
pub static SCRATCH: PerCpuArray<RawEvent> = PerCpuArray::with_max_entries(1, 0);

/// Processes (tgid) that performed a successful bind: their exit is reported so userspace can
/// find bindings that outlive their VMM. Userspace also prunes it.
#[map]
pub static VMM_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Which epoch of the programs is live (one entry). A daemon that finds pinned programs of an
/// earlier epoch attaches its own, then writes its epoch here: from that instant the earlier
/// programs stand aside (see [`live`]), so no call is seen twice or not at all. Userspace pins
/// it with the other state maps (`probes/pin.rs`).
#[map]
pub static GATE: Array<u32> = Array::with_max_entries(1, 0);

/// The epoch these programs belong to, set by userspace at load time
/// (`tsm_trace_common::EPOCH_GLOBAL`). 0 (and an unwritten [`GATE`], also 0) for a session
/// that pins nothing.
#[unsafe(no_mangle)]
static EPOCH: u32 = 0;

/// These programs' epoch.
#[inline(always)]
pub fn epoch() -> u32 {
    // SAFETY: a load-time constant; volatile so the compiler keeps the load userspace patches.
    unsafe { core::ptr::read_volatile(&EPOCH) }
}

/// Whether these programs are the live epoch.
#[inline(always)]
pub fn live() -> bool {
    GATE.get(0).copied().unwrap_or(0) == epoch()
}

/// Marks a [`LAST_RETURN`] slot written by an entry program (in `_pad`, with the epoch of the
/// program that parked the entry). A return writes `_pad` 0.
pub const ENTRY_MARK: u32 = 0x8000_0000;

/// [`ProgError::StandAside`] unless these programs are the live epoch.
#[inline(always)]
pub fn ensure_live() -> Result<(), ProgError> {
    if live() {
        Ok(())
    } else {
        Err(ProgError::StandAside)
    }
}

/// The return a program on this CPU completed last: (pid_tgid, probe). During a handover two
/// epochs' return probes fire for the same call, one after the other on this CPU; the
/// second finds the in-flight entry gone and must not report an orphan. Entry programs write
/// it too (`_pad` = [`ENTRY_MARK`] | their epoch): when the gate flips between the two
/// epochs' entry programs of one call, the second finds the entry the first parked and must
/// neither park it again nor count a missed return.
#[map]
pub static LAST_RETURN: PerCpuArray<InflightKey> = PerCpuArray::with_max_entries(1, 0);

/// Self-counters, indexed by [`KernelCounter`].
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KernelCounter::COUNT, 0);

/// A map (or the ring buffer) was full: counted in `counter`, and named at `--log-level debug`
/// through aya-log. A rare path, not inlined. Logged at this CPU's 1st, 2nd, 4th, 8th, ...
/// drop of that kind, so a storm that fills the ring buffer cannot flood the log (or its own
/// log buffer); the count on /metrics stays exact.
#[inline(never)]
pub fn full(counter: KernelCounter, map: &'static str) {
    let n = count(counter);
    if n.is_power_of_two() {
        aya_log_ebpf::debug!(
            &(),
            "{} is full: a record or count was dropped ({} so far on this CPU; all counted in /metrics: tsm_trace_events_lost_total by reason)",
            map,
            n
        );
    }
}

/// Adds one to the per-CPU counter and returns this CPU's new count (0 if the counter does
/// not exist).
#[inline(always)]
pub fn count(counter: KernelCounter) -> u64 {
    match STATS.get_ptr_mut(counter as u32) {
        // Per-CPU: no other writer can race with us while we run with preemption disabled.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

/// A program error where it happens: counted in its [`KernelCounter`], if it has one
/// ([`ProgError::counter`]), and returned.
#[inline(always)]
pub fn fail(e: ProgError) -> ProgError {
    if let Some(c) = e.counter() {
        count(c);
    }
    e
}

/// A program's return value: 0, or the error's discriminant.
#[inline(always)]
pub fn exit_code(r: Result<(), ProgError>) -> u32 {
    match r {
        Ok(()) => 0,
        Err(e) => e as u32,
    }
}
