//! Maps shared by all probes.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tsm_trace_common::{
    Offsets, RawEvent,
    agg::{self, AggConfig, ThreadOp},
    stat,
};

/// The operation each thread is in, for in-kernel counting (see `agg.rs`): an entry from the
/// operation's first entry to its outer return, which removes it. A plain hash (an LRU hash
/// takes its list locks and rotates its lists on every update, the dearest part of a probed
/// call under emulation): entries of threads that died mid-operation are swept by userspace
/// (`probes/expiry.rs`), and a full map is counted (`stat::AGG_FULL`), never silent.
#[map]
pub static THREAD_OPS: HashMap<u64, ThreadOp> = HashMap::with_max_entries(4096, 0);

/// Operations by `agg::count_key` (kind, attributed layer, errno): exact at any event rate.
#[map]
pub static OP_COUNTS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(1024, 0);

/// Frame durations by (kind, layer, ok): bucket counts and the sum (`agg::hist_index`).
#[map]
pub static OP_HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries(agg::HIST_LEN, 0);

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

/// Entry-time records waiting for their return probe. A plain hash, like [`THREAD_OPS`]: an
/// entry whose return never comes (a missed kretprobe, a thread that died in the call) is
/// swept by userspace (`probes/expiry.rs`: exited threads, `--inflight-timeout`), and a full
/// map is counted (`stat::INFLIGHT_FULL`).
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

/// Which generation of the programs is live (one entry). A daemon that finds pinned programs
/// of an earlier generation attaches its own, then writes its generation here: from that
/// instant the earlier programs stand aside (see [`live`]), so no call is seen twice or not
/// at all. Userspace pins it with the other state maps (`probes/pin.rs`).
#[map]
pub static GATE: Array<u32> = Array::with_max_entries(1, 0);

/// The generation these programs belong to, set by userspace at load time. 0 (and an unwritten
/// [`GATE`], also 0) for a session that pins nothing.
#[unsafe(no_mangle)]
static GENERATION: u32 = 0;

/// Whether these programs are the live generation.
#[inline(always)]
pub fn live() -> bool {
    // SAFETY: a load-time constant; volatile so the compiler keeps the load userspace patches.
    let mine = unsafe { core::ptr::read_volatile(&GENERATION) };
    GATE.get(0).copied().unwrap_or(0) == mine
}

/// The return a program on this CPU completed last: (pid_tgid, probe). During a handover two
/// generations' return probes fire for the same call, one after the other on this CPU; the
/// second finds the in-flight entry gone and must not report an orphan.
#[map]
pub static LAST_RETURN: PerCpuArray<InflightKey> = PerCpuArray::with_max_entries(1, 0);

/// Self-counters, indexed by [`tsm_trace_common::stat`].
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// A map (or the ring buffer) was full: counted in `index`, and named at `--log-level debug`
/// through aya-log. A rare path, not inlined. Logged at this CPU's 1st, 2nd, 4th, 8th, ...
/// drop of that kind, so a storm that fills the ring buffer cannot flood the log (or its own
/// log buffer); the count on /metrics stays exact.
#[inline(never)]
pub fn full(index: u32, map: &'static str) {
    let n = count(index);
    if n.is_power_of_two() {
        aya_log_ebpf::debug!(
            &(),
            "{} is full: a record or count was dropped ({} so far on this CPU; all counted in /metrics: tsm_trace_events_lost_total by reason)",
            map,
            n
        );
    }
}

/// Adds one to the per-CPU statistic `index` and returns this CPU's new count (0 if the
/// statistic does not exist).
#[inline(always)]
pub fn count(index: u32) -> u64 {
    match STATS.get_ptr_mut(index) {
        // Per-CPU: no other writer can race with us while we run with preemption disabled.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}
