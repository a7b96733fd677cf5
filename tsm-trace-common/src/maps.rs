//! The maps' names in the eBPF object (the `#[map]` statics of `tsm-trace-ebpf/src/maps.rs`
//! are named so). Pinned maps keep these names in bpffs (`maps/<NAME>`), and the pin layout
//! hashes them: never rename one.

/// Completed calls and point events, to userspace.
pub const EVENTS: &str = "EVENTS";
/// Module loads and unloads, to userspace.
pub const CONTROL: &str = "CONTROL";
/// Entry records waiting for their return.
pub const INFLIGHT: &str = "INFLIGHT";
/// Per-CPU scratch record.
pub const SCRATCH: &str = "SCRATCH";
/// Processes that performed a successful bind.
pub const VMM_TGIDS: &str = "VMM_TGIDS";
/// The self-counters, indexed by [`crate::KernelCounter`].
pub const STATS: &str = "STATS";
/// Struct offsets resolved from BTF.
pub const OFFSETS: &str = "OFFSETS";
/// The operation each thread is in (the exact aggregates' per-thread state).
pub const THREAD_OPS: &str = "THREAD_OPS";
/// The exact aggregates: operations by key, frame durations by histogram slot.
pub const OP_COUNTS: &str = "OP_COUNTS";
pub const OP_HIST: &str = "OP_HIST";
/// The aggregates' histogram bounds.
pub const AGG_CONFIG: &str = "AGG_CONFIG";
/// The epoch gate: the live epoch of a pinned handover.
pub const GATE: &str = "GATE";
/// The return each CPU completed last (handover).
pub const LAST_RETURN: &str = "LAST_RETURN";
/// `trace --deep`: each thread's open deep calls.
pub const DEEP_THREADS: &str = "DEEP_THREADS";
