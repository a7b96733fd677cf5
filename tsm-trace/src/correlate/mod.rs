//! Correlation: nested calls into operations, the binding table, leaks.
//!
//! Events arrive at *return* time, so the inner calls of one operation complete first:
//!
//! ```text
//! ioctl(IOMMU_VDEVICE_TSM_OP) ─▶ tsm_bind ─▶ pci_tsm_bind ─▶ driver bind     (call order)
//! driver bind, pci_tsm_bind, tsm_bind, ioctl                                   (event order)
//! ```
//!
//! The [`Correlator`] keeps, per thread, the completed frames that no outer frame has claimed
//! yet ("chains"). A new event absorbs the pending chains that lie inside its `[start, end]`
//! and are deeper in the stack; an outermost frame (the ioctl, the vdevice teardown) closes
//! the operation at once. A chain that no outer frame can claim any more (a later event on the
//! thread started after it ended, or [`Config::pending_timeout_ns`] passed) becomes an operation
//! of its own: a bare `tsm_bind` on a kernel without the iommufd patch, or another caller.
//!
//! All timers run on event time (the latest return handled), so every time the correlator
//! reports comes from the events, and the same events give the same outputs whatever the
//! batches they arrive in; [`Correlator::tick`] runs them on the caller's clock when no event
//! comes. Pending chains and due VM checks are resolved in event-time order.
//!
//! Each operation updates the binding table and may detect or clear a [`Leak`]. Everything is
//! bounded (threads, chains per thread, bindings, leaks, pending VM checks); whatever had to be
//! dropped is counted as an [`Anomaly`], never a panic.
//!
//! ## Data flow and where each part lives
//!
//! ```text
//!  Event ─▶ Correlator::handle ─┬─▶ nesting.rs   per-thread chains: absorb, join, time out
//!            (mod.rs)           │        │ a chain nobody can claim any more
//!                               │        ▼
//!                               │    build.rs     chain ─▶ Operation (kind, result, errno layer)
//!                               │        │
//!                               │        ▼
//!                               └─▶ bindings.rs  binding table, leak table, VM/VMM checks
//!                                   devices.rs   connect state per device; bindings the
//!                                                core ends on disconnect/removal
//!                                        ▲
//!  Snapshot ─▶ Correlator::reconcile ────┘      (reconcile.rs: sysfs vs. the binding table)
//! ```
//!
//! - `types.rs`: the data that goes in and out: [`Operation`], [`Frame`], [`OpKind`],
//!   [`OpResult`], [`Binding`], [`Leak`], [`LeakReason`], [`ClearCause`], [`Anomaly`],
//!   [`Mismatch`], [`VmEvent`], [`Output`] (all re-exported here).
//! - `mod.rs` (this file): [`Correlator`], [`Config`], [`Stats`] and the entry points
//!   [`Correlator::handle`], [`Correlator::tick`], [`Correlator::finish`].
//! - `nesting.rs`: call nesting per thread (point events go to `bindings.rs`: VM destroyed,
//!   VMM exited). Closed chains go through `build.rs`, whose operations update the tables in
//!   `bindings.rs`.
//! - `reconcile.rs`: [`Correlator::reconcile`]. The tables hash with rustc-hash's FxHash:
//!   keys are thread ids and device names chosen by the kernel, not by an adversary.

mod bindings;
mod build;
#[cfg(test)]
#[path = "tests/deep.rs"]
mod deep_tests;
mod devices;
mod ide;
#[cfg(test)]
#[path = "tests/ide.rs"]
mod ide_tests;
#[cfg(test)]
#[path = "tests/lifecycle.rs"]
mod lifecycle_tests;
mod nesting;
mod reconcile;
pub mod state;
#[cfg(test)]
pub(crate) mod tests;
mod types;
mod vm_names;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use crate::events::{Event, Name, ProbeId};

use bindings::VmCheck;
pub use ide::{
    IdeCounts, IdeLeak, IdeLeakChange, IdeLeakReason, IdePort, IdeState, IdeStreamRecord,
};
use nesting::{Chain, Key, ThreadState};
use rustc_hash::FxBuildHasher as FxBuild;
pub use types::{
    Anomaly, AnomalyKind, BindPath, Binding, BindingClosed, ClearCause, Frame, GuestRequest, Leak,
    LeakReason, Mismatch, MismatchKind, OpKind, OpResult, Operation, Output, TsmState,
    UAPI_OP_BIND, UAPI_OP_UNBIND, VmEvent, VmEventKind, label,
};

/// Limits and timers. All times are CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// Binding table size; the oldest binding is evicted beyond it.
    pub max_bindings: usize,
    /// Leak table size.
    pub max_leaks: usize,
    /// Threads tracked at once (each with its pending frames).
    pub max_threads: usize,
    /// Pending chains per thread.
    pub max_pending_per_thread: usize,
    /// Pending VM-destroyed / VMM-exited checks.
    pub max_vm_checks: usize,
    /// How long a completed inner frame waits for an outer frame (after it returned: event
    /// time).
    pub pending_timeout_ns: u64,
    /// How long a finished outermost frame waits for inner frames delivered late (out of
    /// order). 0 (the default) closes it at once: the BPF ring buffer keeps one thread's events
    /// in order, so late frames are only counted (`late_frame`). Set it for merged captures.
    pub reorder_window_ns: u64,
    /// After a VM is destroyed or its VMM exits (the event's time), how long its devices may
    /// stay bound before that is a leak (teardown order varies).
    pub leak_grace_ns: u64,
    /// A thread with nothing pending is forgotten after this long.
    pub idle_thread_ns: u64,
    /// Name VMs by what their VMM's command line calls them (`--vm-name auto`, the default);
    /// `false` (`--vm-name stats-id`) drops those names: VMs go by their KVM stats id.
    pub vmm_names: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_bindings: 65_536,
            max_leaks: 65_536,
            max_threads: 4_096,
            max_pending_per_thread: 16,
            max_vm_checks: 4_096,
            pending_timeout_ns: 1_000_000_000,
            reorder_window_ns: 0,
            leak_grace_ns: 5_000_000_000,
            idle_thread_ns: 60_000_000_000,
            vmm_names: true,
        }
    }
}

/// Counters the correlator keeps about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub events: u64,
    pub operations: u64,
    pub anomalies: BTreeMap<AnomalyKind, u64>,
    pub leaks_detected: BTreeMap<LeakReason, u64>,
    pub mismatches: BTreeMap<MismatchKind, u64>,
    /// Devices a reconciliation left alone because a bind or unbind of theirs was running.
    pub reconcile_in_flight: u64,
    /// Device links learned from sysfs (`tsm/connect`) rather than from a connect or
    /// disconnect seen: at start, or after one made while no daemon watched.
    pub links_from_sysfs: u64,
    /// IDE steps that could not be followed to a stream: its numbers unreadable, or a stream
    /// allocated before the daemon watched.
    pub ide_untracked: u64,
    /// Registered IDE streams sysfs stopped showing with no unregister seen.
    pub ide_sysfs_gone: u64,
    /// Registered IDE streams learned from sysfs (registered while no daemon watched).
    pub ide_from_sysfs: u64,
    /// IDE streams not tracked because the stream table was full.
    pub ide_table_full: u64,
    /// IDE stream leaks detected, in `IdeLeakReason::ALL` order.
    pub ide_leaks_detected: [u64; 3],
}

/// Turns events into operations, bindings and leaks. See the module documentation.
#[derive(Debug)]
pub struct Correlator {
    cfg: Config,
    threads: HashMap<u32, ThreadState, FxBuild>,
    /// (lru_seq, tid), oldest first. Entries whose seq is no longer the thread's `lru_seq`
    /// (the thread was seen again, or forgotten) are stale: skipped, and compacted away.
    thread_lru: VecDeque<(u64, u32)>,
    seq: u64,
    /// Earliest time at which some pending chain or idle thread may be due.
    next_due_ns: u64,
    bindings: HashMap<Name, (Binding, u64), FxBuild>,
    /// insertion seq → device, oldest first.
    binding_order: BTreeMap<u64, Name>,
    leaks: BTreeMap<(Name, LeakReason), Leak>,
    /// Current leaks per reason (indexed by `LeakReason as usize`).
    leak_count: [usize; LeakReason::ALL.len()],
    /// Frames in all threads' pending chains.
    pending_count: usize,
    vm_checks: VecDeque<VmCheck>,
    /// VM events waiting for pending chains that ended before them (bounded by
    /// `max_vm_checks`), in arrival order.
    deferred_points: VecDeque<Event>,
    recent_points: VecDeque<Key>,
    /// Connect state per device (devices.rs), bounded by `max_bindings`.
    devices: BTreeMap<Name, devices::DeviceLink>,
    /// PCIe IDE streams (ide.rs), bounded by `max_bindings`.
    ide_streams: ide::Streams,
    stats: Stats,
    /// Reusable buffers (no allocation per event in the steady state).
    scratch: Scratch,
    /// Emptied `Operation::frames` vectors given back by [`Self::recycle_frames`].
    frame_vecs: Vec<Vec<Frame>>,
    /// Bumped on every change of the binding or leak table (`state.rs` saves on change).
    table_version: u64,
    /// Event time: the latest return time handled. Timers of [`Self::handle`] run on it, so
    /// what the correlator reports does not depend on when (or in which batches) it got the
    /// events.
    clock_ns: u64,
    /// The first full name (pid, stats id) learned for each VM (vm_names.rs).
    vm_names: vm_names::Names,
}

#[derive(Debug, Default)]
struct Scratch {
    to_close: Vec<Chain>,
    absorbed: Vec<Chain>,
    keep: Vec<Chain>,
    effects: Vec<Output>,
    /// Emptied frame vectors of closed chains.
    #[allow(clippy::vec_box)] // `Chain::frames`
    frame_pool: Vec<Vec<Box<Event>>>,
    /// Boxes of frames whose operation was built: the next events move into them (what a
    /// box still holds is dropped then) instead of into a fresh allocation.
    #[allow(clippy::vec_box)] // boxes kept to be reused, not values
    event_boxes: Vec<Box<Event>>,
}

const FRAME_POOL_MAX: usize = 64;

impl Default for Correlator {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Correlator {
    pub fn new(cfg: Config) -> Self {
        let mut cfg = cfg;
        cfg.max_bindings = cfg.max_bindings.max(1);
        cfg.max_threads = cfg.max_threads.max(1);
        cfg.max_pending_per_thread = cfg.max_pending_per_thread.max(1);
        cfg.max_vm_checks = cfg.max_vm_checks.max(1);
        Correlator {
            cfg,
            threads: HashMap::default(),
            thread_lru: VecDeque::new(),
            seq: 0,
            next_due_ns: u64::MAX,
            bindings: HashMap::default(),
            devices: BTreeMap::new(),
            ide_streams: BTreeMap::new(),
            binding_order: BTreeMap::new(),
            leaks: BTreeMap::new(),
            leak_count: [0; LeakReason::ALL.len()],
            pending_count: 0,
            vm_checks: VecDeque::new(),
            deferred_points: VecDeque::new(),
            recent_points: VecDeque::new(),
            stats: Stats::default(),
            scratch: Scratch::default(),
            frame_vecs: Vec::new(),
            table_version: 0,
            clock_ns: 0,
            vm_names: vm_names::Names::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current bindings, sorted by device.
    pub fn bindings(&self) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self.bindings.values().map(|(b, _)| b).collect();
        v.sort_by(|a, b| a.device.cmp(&b.device));
        v
    }

    pub fn binding(&self, device: &str) -> Option<&Binding> {
        self.bindings.get(device).map(|(b, _)| b)
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// Current leaks, sorted by device then reason.
    pub fn leaks(&self) -> impl Iterator<Item = &Leak> {
        self.leaks.values()
    }

    /// Current leaks per reason (every reason present, zero or not).
    pub fn leak_counts(&self) -> BTreeMap<LeakReason, usize> {
        LeakReason::ALL
            .iter()
            .map(|r| (*r, self.leak_count(*r)))
            .collect()
    }

    /// Current leaks for one reason (constant time).
    pub fn leak_count(&self, reason: LeakReason) -> usize {
        self.leak_count[reason as usize]
    }

    /// Frames waiting for an outer frame, over all threads (constant time).
    pub fn pending_frames(&self) -> usize {
        self.pending_count
    }

    /// Counts what [`Self::pending_frames`] and [`Self::leak_count`] keep incrementally.
    #[cfg(debug_assertions)]
    fn check_counts(&self) {
        let pending: usize = self
            .threads
            .values()
            .flat_map(|t| t.pending.iter())
            .map(|c| c.frames.len())
            .sum();
        debug_assert_eq!(pending, self.pending_count, "pending frame count");
        let mut leaks = [0usize; LeakReason::ALL.len()];
        for (_, r) in self.leaks.keys() {
            leaks[*r as usize] += 1;
        }
        debug_assert_eq!(leaks, self.leak_count, "leak counts");
    }

    /// Gives back the frame vector of an [`Operation`] the caller is done with, so the next
    /// operation can reuse its allocation.
    pub fn recycle_frames(&mut self, mut frames: Vec<Frame>) {
        frames.clear();
        if self.frame_vecs.len() < FRAME_POOL_MAX {
            self.frame_vecs.push(frames);
        }
    }

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    pub fn pending_vm_checks(&self) -> usize {
        self.vm_checks.len()
    }

    /// Handles one event. Also runs whatever timers are due by *event time* (the latest
    /// return time handled so far), never by `now_ns`, the time the caller got round to the
    /// event: every time the correlator reports comes from events, and the same events give
    /// the same outputs whatever the batches they came in. `now_ns` (the caller's clock) is
    /// not used here; [`Self::tick`] and [`Self::finish`] run the timers on it when no event
    /// comes.
    pub fn handle(&mut self, ev: Event, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.handle_into(ev, now_ns, &mut out);
        out
    }

    /// [`Self::handle`], appending the outputs to `out` (which the caller can reuse).
    pub fn handle_into(&mut self, ev: Event, now_ns: u64, out: &mut Vec<Output>) {
        let b = self.boxed(ev);
        self.handle_boxed(b, now_ns, out);
    }

    /// `ev` in a box for [`Self::handle_boxed`]: one given back by a closed operation when
    /// there is one (no allocation), else a new one.
    pub fn boxed(&mut self, ev: Event) -> Box<Event> {
        match self.scratch.event_boxes.pop() {
            Some(mut b) => {
                *b = ev;
                b
            }
            None => Box::new(ev),
        }
    }

    /// [`Self::handle_into`] for an event already in the box a frame keeps (see
    /// `nesting::Chain`): it is never copied again.
    pub fn handle_boxed(&mut self, mut ev: Box<Event>, _now_ns: u64, out: &mut Vec<Output>) {
        self.stats.events += 1;
        if !self.cfg.vmm_names
            && let Some(vm) = ev.vm.as_mut()
        {
            vm.vmm = None;
        }
        if ev.end_ns < ev.start_ns {
            self.anomaly(AnomalyKind::TimeReversed, Some(ev.tid), None, out);
            ev.start_ns = ev.end_ns;
        }
        self.clock_ns = self.clock_ns.max(ev.end_ns);
        let clock = self.clock_ns;
        match ev.probe {
            // Not a TSM event (the session acts on it); nothing to correlate.
            ProbeId::ModuleLoad => {}
            ProbeId::KvmDestroyVm | ProbeId::VmmExit => self.point_event(*ev, clock, out),
            _ => self.frame_event(ev, clock, out),
        }
        if clock >= self.next_due_ns
            || !self.deferred_points.is_empty()
            || self
                .vm_checks
                .front()
                .is_some_and(|c| c.deadline_ns <= clock)
        {
            self.expire(clock, false, out);
        }
        #[cfg(debug_assertions)]
        self.check_counts();
    }

    /// Runs the timers: pending frames that waited long enough become operations, VM checks
    /// whose grace period passed detect leaks, idle threads are forgotten.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.expire(now_ns, false, &mut out);
        #[cfg(debug_assertions)]
        self.check_counts();
        out
    }

    /// End of input (end of a capture, shutdown): every pending frame becomes an operation.
    /// A VM check whose grace period has expired by `now_ns` (in a replay, the last event's
    /// time) runs; one whose grace period has not is not a leak (nobody knows yet whether
    /// the VMM would have unbound in time): each device it would have judged is counted as
    /// [`AnomalyKind::LeakUnconfirmed`] (text summary, JSON with anomalies, metrics).
    pub fn finish(&mut self, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.expire(now_ns, true, &mut out);
        #[cfg(debug_assertions)]
        self.check_counts();
        out
    }

    fn anomaly(
        &mut self,
        kind: AnomalyKind,
        tid: Option<u32>,
        device: Option<Name>,
        out: &mut Vec<Output>,
    ) {
        *self.stats.anomalies.entry(kind).or_default() += 1;
        out.push(Output::Anomaly(Anomaly { kind, tid, device }));
    }
}
