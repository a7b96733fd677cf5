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
//! Each operation updates the binding table and may detect or clear a [`Leak`]. Everything is
//! bounded (threads, chains per thread, bindings, leaks, pending VM checks); whatever had to be
//! dropped is counted as an [`Anomaly`], never a panic.

#[cfg(test)]
pub(crate) mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::errno;
use crate::events::{Event, Layer, Probe, Vm};
use crate::sysfs::{DeviceState, Snapshot};

/// What an operation did, from the ioctl's `op` or from the functions it called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Bind,
    Unbind,
    /// `iommufd_vdevice_abort`: vdevice destroyed (which, with the patch, unbinds).
    Teardown,
    /// The ioctl with an `op` that is neither bind nor unbind (or unreadable, with no inner call).
    Invalid,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [
        OpKind::Bind,
        OpKind::Unbind,
        OpKind::Teardown,
        OpKind::Invalid,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            OpKind::Bind => "bind",
            OpKind::Unbind => "unbind",
            OpKind::Teardown => "teardown",
            OpKind::Invalid => "invalid",
        }
    }
}

/// `IOMMU_VDEVICE_TSM_BIND` / `IOMMU_VDEVICE_TSM_UNBIND`.
pub const UAPI_OP_BIND: u32 = 1;
pub const UAPI_OP_UNBIND: u32 = 2;

/// One function call inside an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub probe: Probe,
    pub layer: Layer,
    /// CLOCK_MONOTONIC ns; `start_ns` is meaningless when `entry_missing`.
    pub start_ns: u64,
    pub end_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    #[serde(
        serialize_with = "ser_errno_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub errno: Option<i32>,
    /// 0 when the entry was missed.
    pub duration_ns: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub entry_missing: bool,
}

impl Frame {
    fn from_event(ev: &Event) -> Frame {
        Frame {
            probe: ev.probe,
            layer: ev.probe.layer(),
            start_ns: ev.start_ns,
            end_ns: ev.end_ns,
            ret: ev.ret,
            errno: ev.errno(),
            duration_ns: ev.duration_ns(),
            entry_missing: ev.entry_missing,
        }
    }

    pub fn ok(&self) -> bool {
        self.errno.is_none()
    }
}

/// How an operation ended. A failure names the layer (and function) that produced the errno:
/// the deepest frame that returned the same errno as the outermost frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpResult {
    Ok,
    #[serde(rename = "error")]
    Err {
        #[serde(serialize_with = "ser_errno")]
        errno: i32,
        layer: Layer,
        function: Probe,
    },
}

/// One TSM operation: an outer frame and the calls it made (or a bare call without outer frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub kind: OpKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdevice_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdi_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virt_id: Option<u64>,
    /// Outermost first.
    pub frames: Vec<Frame>,
    #[serde(flatten)]
    pub result: OpResult,
}

impl Operation {
    pub fn ok(&self) -> bool {
        matches!(self.result, OpResult::Ok)
    }

    pub fn errno(&self) -> Option<i32> {
        match self.result {
            OpResult::Ok => None,
            OpResult::Err { errno, .. } => Some(errno),
        }
    }

    /// The layer used in metrics: the attributed layer for errors, the outer frame's for
    /// successes.
    pub fn layer(&self) -> Layer {
        match &self.result {
            OpResult::Err { layer, .. } => *layer,
            OpResult::Ok => self.frames.first().map_or(Layer::Iommufd, |f| f.layer),
        }
    }

    pub fn outer(&self) -> Option<&Frame> {
        self.frames.first()
    }
}

/// Which outermost function made a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindPath {
    /// `IOMMU_VDEVICE_TSM_OP` ioctl (the iommufd patch).
    Ioctl,
    /// `tsm_bind` called by something other than the ioctl.
    TsmBind,
    /// `pci_tsm_bind` called directly.
    PciTsmBind,
    /// Only the driver's bind op was seen.
    DriverBind,
}

/// A device believed bound to a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Binding {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    /// The process that bound it (the VMM).
    pub vmm_tgid: u32,
    pub vmm_comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdevice_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdi_id: Option<u64>,
    pub since_ns: u64,
    pub path: BindPath,
}

/// Why a binding is believed leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakReason {
    /// The vdevice was destroyed without an unbind while its device was bound.
    VdeviceTeardownWithoutUnbind,
    /// The ioctl returned an error although the inner bind succeeded (the -EFAULT path).
    IoctlFailedAfterBind,
    /// The VM was destroyed and the device was still bound after the grace period.
    VmDestroyed,
    /// The VMM process exited and the device was still bound after the grace period.
    VmmExited,
    /// sysfs shows the device bound but no bind was seen.
    SysfsBoundWithoutOwner,
}

impl LeakReason {
    pub const ALL: [LeakReason; 5] = [
        LeakReason::VdeviceTeardownWithoutUnbind,
        LeakReason::IoctlFailedAfterBind,
        LeakReason::VmDestroyed,
        LeakReason::VmmExited,
        LeakReason::SysfsBoundWithoutOwner,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            LeakReason::VdeviceTeardownWithoutUnbind => "vdevice_teardown_without_unbind",
            LeakReason::IoctlFailedAfterBind => "ioctl_failed_after_bind",
            LeakReason::VmDestroyed => "vm_destroyed",
            LeakReason::VmmExited => "vmm_exited",
            LeakReason::SysfsBoundWithoutOwner => "sysfs_bound_without_owner",
        }
    }
}

/// Why a leak stopped being one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClearCause {
    /// An unbind (or a teardown that unbinds) was seen.
    Unbound,
    /// A later successful bind of the device: it has an owner again.
    Rebound,
    /// sysfs shows the device unbound.
    SysfsUnbound,
    /// The binding was evicted from the full table.
    Evicted,
}

impl ClearCause {
    pub const fn as_str(self) -> &'static str {
        match self {
            ClearCause::Unbound => "unbound",
            ClearCause::Rebound => "rebound",
            ClearCause::SysfsUnbound => "sysfs_unbound",
            ClearCause::Evicted => "evicted",
        }
    }
}

/// A binding believed leaked (or, in [`Output::LeakCleared`], one that no longer is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leak {
    pub device: String,
    pub reason: LeakReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_tgid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdevice_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdi_id: Option<u64>,
    /// When the binding was made (unknown for `sysfs_bound_without_owner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_since_ns: Option<u64>,
    /// The TSM sysfs names as the device's owner (`sysfs_bound_without_owner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsm: Option<String>,
    pub detected_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<ClearCause>,
}

impl Leak {
    /// The `vm` label: [`Vm::name`], or empty when unknown.
    pub fn vm_name(&self) -> String {
        self.vm.as_ref().map(Vm::name).unwrap_or_default()
    }
}

/// Something in the event stream that did not fit: counted, never fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// The same event twice: dropped.
    DuplicateEvent,
    /// A return without its entry: start time and arguments unknown.
    EntryMissing,
    /// A return that precedes its entry (only possible in edited captures): start set to end.
    TimeReversed,
    /// An inner frame that arrived after its operation was closed: dropped.
    LateFrame,
    /// Two frames of the same layer inside one operation.
    OverlappingFrames,
    /// A successful bind whose device name is unknown: no binding recorded.
    BindWithoutDevice,
    /// A successful unbind whose device is unknown and could not be found by vdevice id.
    UnbindWithoutDevice,
    /// A successful bind of a device the table had bound to another VM (an unbind was missed).
    BindingReplaced,
    /// The binding table was full: the oldest binding was dropped.
    BindingEvicted,
    /// The leak table was full: a leak was not recorded.
    LeakTableFull,
    /// Too many threads with pending frames: the least recently seen was flushed.
    ThreadEvicted,
    /// Too many pending chains on one thread: the oldest was flushed.
    PendingOverflow,
    /// A VM lifecycle event without a usable VM identity.
    VmEventWithoutVm,
    /// Too many pending VM checks: the oldest was run early.
    VmCheckOverflow,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 14] = [
        AnomalyKind::DuplicateEvent,
        AnomalyKind::EntryMissing,
        AnomalyKind::TimeReversed,
        AnomalyKind::LateFrame,
        AnomalyKind::OverlappingFrames,
        AnomalyKind::BindWithoutDevice,
        AnomalyKind::UnbindWithoutDevice,
        AnomalyKind::BindingReplaced,
        AnomalyKind::BindingEvicted,
        AnomalyKind::LeakTableFull,
        AnomalyKind::ThreadEvicted,
        AnomalyKind::PendingOverflow,
        AnomalyKind::VmEventWithoutVm,
        AnomalyKind::VmCheckOverflow,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::DuplicateEvent => "duplicate_event",
            AnomalyKind::EntryMissing => "entry_missing",
            AnomalyKind::TimeReversed => "time_reversed",
            AnomalyKind::LateFrame => "late_frame",
            AnomalyKind::OverlappingFrames => "overlapping_frames",
            AnomalyKind::BindWithoutDevice => "bind_without_device",
            AnomalyKind::UnbindWithoutDevice => "unbind_without_device",
            AnomalyKind::BindingReplaced => "binding_replaced",
            AnomalyKind::BindingEvicted => "binding_evicted",
            AnomalyKind::LeakTableFull => "leak_table_full",
            AnomalyKind::ThreadEvicted => "thread_evicted",
            AnomalyKind::PendingOverflow => "pending_overflow",
            AnomalyKind::VmEventWithoutVm => "vm_event_without_vm",
            AnomalyKind::VmCheckOverflow => "vm_check_overflow",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// sysfs disagrees with the binding table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// sysfs shows a binding nobody was seen to make (also a `sysfs_bound_without_owner` leak).
    BoundWithoutOwner,
    /// The table holds a binding that sysfs says is gone (a missed unbind): dropped.
    DeniesBinding,
}

impl MismatchKind {
    pub const ALL: [MismatchKind; 2] =
        [MismatchKind::BoundWithoutOwner, MismatchKind::DeniesBinding];

    pub const fn as_str(self) -> &'static str {
        match self {
            MismatchKind::BoundWithoutOwner => "bound_without_owner",
            MismatchKind::DeniesBinding => "denies_binding",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub kind: MismatchKind,
    pub device: String,
    /// The binding the table dropped (`denies_binding`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmEventKind {
    VmDestroyed,
    VmmExited,
}

impl VmEventKind {
    pub const ALL: [VmEventKind; 2] = [VmEventKind::VmDestroyed, VmEventKind::VmmExited];

    pub const fn as_str(self) -> &'static str {
        match self {
            VmEventKind::VmDestroyed => "vm_destroyed",
            VmEventKind::VmmExited => "vmm_exited",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmEvent {
    pub event: VmEventKind,
    pub time_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    pub tgid: u32,
    pub comm: String,
    /// Bindings of this VM/VMM at the time of the event (checked again after the grace period).
    pub bound_devices: usize,
}

/// What the correlator tells exporters and trace printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Operation(Operation),
    LeakDetected(Leak),
    LeakCleared(Leak),
    Anomaly(Anomaly),
    Mismatch(Mismatch),
    VmEvent(VmEvent),
}

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
    /// How long a completed inner frame waits for an outer frame (after it was handled).
    pub pending_timeout_ns: u64,
    /// How long a finished outermost frame waits for inner frames delivered late (out of
    /// order). 0 (the default) closes it at once: the BPF ring buffer keeps one thread's events
    /// in order, so late frames are only counted (`late_frame`). Set it for merged captures.
    pub reorder_window_ns: u64,
    /// After a VM is destroyed or its VMM exits, how long its devices may stay bound before
    /// that is a leak (teardown order varies).
    pub leak_grace_ns: u64,
    /// A thread with nothing pending is forgotten after this long.
    pub idle_thread_ns: u64,
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
}

const RECENT_KEYS: usize = 16;
const RECENT_OPS: usize = 4;
/// More frames than any real operation has (4 layers); protects against floods of overlaps.
const MAX_CHAIN_FRAMES: usize = 8;

/// Identity of an event for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    // The most distinctive fields first: the derived `eq` stops at the first difference.
    end_ns: u64,
    start_ns: u64,
    probe: Probe,
    tgid: u32,
    tid: u32,
    ret: Option<i64>,
}

impl Key {
    fn of(ev: &Event) -> Key {
        Key {
            probe: ev.probe,
            start_ns: ev.start_ns,
            end_ns: ev.end_ns,
            tgid: ev.tgid,
            tid: ev.tid,
            ret: ev.ret,
        }
    }
}

/// Completed frames of one (partial) operation, outermost first.
#[derive(Debug)]
struct Chain {
    frames: Vec<Event>,
    deadline_ns: u64,
}

impl Chain {
    fn outer(&self) -> &Event {
        &self.frames[0]
    }

    fn outer_depth(&self) -> u8 {
        self.outer().probe.layer().depth()
    }

    /// Start of the outermost frame, if its entry was seen.
    fn outer_start(&self) -> Option<u64> {
        let o = self.outer();
        (!o.entry_missing).then_some(o.start_ns)
    }

    /// Earliest known start (for containment tests of the whole chain).
    fn start(&self) -> u64 {
        self.frames
            .iter()
            .map(|f| {
                if f.entry_missing {
                    f.end_ns
                } else {
                    f.start_ns
                }
            })
            .min()
            .unwrap_or(0)
    }

    fn end(&self) -> u64 {
        self.frames.iter().map(|f| f.end_ns).max().unwrap_or(0)
    }

    fn sort(&mut self) {
        let key = |f: &Event| (f.probe.layer().depth(), f.start_ns, f.end_ns);
        // Usually already in order (outer frames arrive last and are put first); a stable
        // sort of sorted input is the identity, so skip the moves.
        if !self.frames.is_sorted_by_key(key) {
            self.frames.sort_by_key(key);
        }
    }
}

#[derive(Debug, Default)]
struct ThreadState {
    lru_seq: u64,
    last_seen_ns: u64,
    pending: Vec<Chain>,
    recent: VecDeque<Key>,
    /// Recently closed operations: (start, end, outer depth), to recognise late frames.
    closed: VecDeque<(u64, u64, u8)>,
}

#[derive(Debug)]
enum VmCheckTarget {
    Kvm(u64),
    Tgid(u32),
}

#[derive(Debug)]
struct VmCheck {
    deadline_ns: u64,
    event_ns: u64,
    target: VmCheckTarget,
}

/// Is `[s, e]` inside `[outer_start, outer_end]`? An unknown outer start contains anything
/// that ends before the outer end.
fn contains(outer_start: Option<u64>, outer_end: u64, s: u64, e: u64) -> bool {
    e <= outer_end && outer_start.is_none_or(|os| os <= s)
}

fn is_bind_probe(p: Probe) -> bool {
    matches!(p, Probe::TsmBind | Probe::PciTsmBind | Probe::DriverBind)
}

fn is_unbind_probe(p: Probe) -> bool {
    matches!(
        p,
        Probe::TsmUnbind | Probe::PciTsmUnbind | Probe::DriverUnbind
    )
}

/// A small, fast, non-cryptographic hasher (FxHash) for the correlator's tables: keys are
/// thread ids and device names chosen by the kernel, not by an adversary.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

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
    bindings: HashMap<Arc<str>, (Binding, u64), FxBuild>,
    /// insertion seq → device, oldest first.
    binding_order: BTreeMap<u64, Arc<str>>,
    leaks: BTreeMap<(String, LeakReason), Leak>,
    /// Current leaks per reason (indexed by `LeakReason as usize`).
    leak_count: [usize; LeakReason::ALL.len()],
    /// Frames in all threads' pending chains.
    pending_count: usize,
    vm_checks: VecDeque<VmCheck>,
    recent_points: VecDeque<Key>,
    stats: Stats,
    /// Reusable buffers (no allocation per event in the steady state).
    scratch: Scratch,
    /// Emptied `Operation::frames` vectors given back by [`Self::recycle_frames`].
    frame_vecs: Vec<Vec<Frame>>,
}

#[derive(Debug, Default)]
struct Scratch {
    to_close: Vec<Chain>,
    absorbed: Vec<Chain>,
    keep: Vec<Chain>,
    effects: Vec<Output>,
    /// Emptied frame vectors of closed chains.
    frame_pool: Vec<Vec<Event>>,
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
            binding_order: BTreeMap::new(),
            leaks: BTreeMap::new(),
            leak_count: [0; LeakReason::ALL.len()],
            pending_count: 0,
            vm_checks: VecDeque::new(),
            recent_points: VecDeque::new(),
            stats: Stats::default(),
            scratch: Scratch::default(),
            frame_vecs: Vec::new(),
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

    /// Handles one event; `now_ns` is the current CLOCK_MONOTONIC time (in a replay, the
    /// event's time). Also runs whatever timers are due.
    pub fn handle(&mut self, ev: Event, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.handle_into(ev, now_ns, &mut out);
        out
    }

    /// [`Self::handle`], appending the outputs to `out` (which the caller can reuse).
    pub fn handle_into(&mut self, ev: Event, now_ns: u64, out: &mut Vec<Output>) {
        self.stats.events += 1;
        let mut ev = ev;
        if ev.end_ns < ev.start_ns {
            self.anomaly(AnomalyKind::TimeReversed, Some(ev.tid), None, out);
            ev.start_ns = ev.end_ns;
        }
        match ev.probe {
            // Not a TSM event (the session acts on it); nothing to correlate.
            Probe::ModuleLoad => {}
            Probe::KvmDestroyVm | Probe::VmmExit => self.point_event(ev, now_ns, out),
            _ => self.frame_event(ev, now_ns, out),
        }
        if now_ns >= self.next_due_ns
            || self
                .vm_checks
                .front()
                .is_some_and(|c| c.deadline_ns <= now_ns)
        {
            self.expire(now_ns, false, out);
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

    /// End of input (end of a capture, shutdown): every pending frame becomes an operation and
    /// every pending VM check runs now, whatever its grace period.
    pub fn finish(&mut self, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        self.expire(now_ns, true, &mut out);
        #[cfg(debug_assertions)]
        self.check_counts();
        out
    }

    /// Compares the binding table with what sysfs says.
    ///
    /// - sysfs bound, no binding known (and none pending) → leak `sysfs_bound_without_owner`.
    /// - binding known, sysfs `tsm/bound` empty → mismatch `denies_binding`: binding dropped.
    /// - sysfs unbound clears `sysfs_bound_without_owner` leaks.
    /// - a device without `tsm/` (or not listed) is unknown: nothing changes.
    pub fn reconcile(&mut self, snapshot: &Snapshot, now_ns: u64) -> Vec<Output> {
        let mut out = Vec::new();
        if snapshot.listing_error.is_some() {
            return out;
        }
        for (device, state) in &snapshot.devices {
            match state {
                DeviceState::Bound(tsm) => {
                    if self.bindings.contains_key(device.as_str()) || self.pending_mentions(device)
                    {
                        continue;
                    }
                    let key = (device.clone(), LeakReason::SysfsBoundWithoutOwner);
                    if self.leaks.contains_key(&key) {
                        continue;
                    }
                    let leak = Leak {
                        device: device.clone(),
                        reason: LeakReason::SysfsBoundWithoutOwner,
                        vm: None,
                        vmm_tgid: None,
                        vmm_comm: None,
                        vdevice_id: None,
                        tdi_id: None,
                        bound_since_ns: None,
                        tsm: Some(tsm.clone()),
                        detected_ns: now_ns,
                        cleared_ns: None,
                        cleared_by: None,
                    };
                    *self
                        .stats
                        .mismatches
                        .entry(MismatchKind::BoundWithoutOwner)
                        .or_default() += 1;
                    out.push(Output::Mismatch(Mismatch {
                        kind: MismatchKind::BoundWithoutOwner,
                        device: device.clone(),
                        binding: None,
                    }));
                    self.insert_leak(leak, &mut out);
                }
                DeviceState::Unbound => {
                    if self.bindings.contains_key(device.as_str()) {
                        *self
                            .stats
                            .mismatches
                            .entry(MismatchKind::DeniesBinding)
                            .or_default() += 1;
                        let binding = self.remove_binding(device);
                        out.push(Output::Mismatch(Mismatch {
                            kind: MismatchKind::DeniesBinding,
                            device: device.clone(),
                            binding,
                        }));
                    }
                    self.clear_leaks(device, ClearCause::SysfsUnbound, now_ns, &mut out);
                }
                DeviceState::Unknown => {}
            }
        }
        out
    }

    // ---- events ------------------------------------------------------------------------

    fn point_event(&mut self, ev: Event, now_ns: u64, out: &mut Vec<Output>) {
        let key = Key::of(&ev);
        if self.recent_points.contains(&key) {
            self.anomaly(AnomalyKind::DuplicateEvent, Some(ev.tid), None, out);
            return;
        }
        if self.recent_points.len() >= RECENT_KEYS * 4 {
            self.recent_points.pop_front();
        }
        self.recent_points.push_back(key);

        let (event, target, bound) = match ev.probe {
            Probe::KvmDestroyVm => {
                let Some(vm) = ev.vm.as_ref() else {
                    self.anomaly(AnomalyKind::VmEventWithoutVm, Some(ev.tid), None, out);
                    return;
                };
                let kvm = vm.kvm;
                let bound = self
                    .bindings
                    .values()
                    .filter(|(b, _)| b.vm.as_ref().is_some_and(|v| v.kvm == kvm))
                    .count();
                (VmEventKind::VmDestroyed, VmCheckTarget::Kvm(kvm), bound)
            }
            _ => {
                let tgid = ev.tgid;
                let bound = self
                    .bindings
                    .values()
                    .filter(|(b, _)| binding_of_tgid(b, tgid))
                    .count();
                (VmEventKind::VmmExited, VmCheckTarget::Tgid(tgid), bound)
            }
        };
        out.push(Output::VmEvent(VmEvent {
            event,
            time_ns: ev.end_ns,
            vm: ev.vm.clone(),
            tgid: ev.tgid,
            comm: ev.comm.clone(),
            bound_devices: bound,
        }));
        if self.vm_checks.len() >= self.cfg.max_vm_checks {
            // Run the oldest check early rather than grow.
            self.anomaly(AnomalyKind::VmCheckOverflow, None, None, out);
            if let Some(c) = self.vm_checks.pop_front() {
                self.run_vm_check(&c, now_ns, out);
            }
        }
        self.vm_checks.push_back(VmCheck {
            deadline_ns: now_ns.saturating_add(self.cfg.leak_grace_ns),
            event_ns: ev.end_ns,
            target,
        });
    }

    fn frame_event(&mut self, ev: Event, now_ns: u64, out: &mut Vec<Output>) {
        let tid = ev.tid;
        if ev.entry_missing {
            self.anomaly(AnomalyKind::EntryMissing, Some(tid), None, out);
        }
        let mut to_close = std::mem::take(&mut self.scratch.to_close);
        self.touch_thread(tid, now_ns, &mut to_close, out);
        let window = self.cfg.reorder_window_ns;
        let pending_timeout = self.cfg.pending_timeout_ns.max(window);
        let max_pending = self.cfg.max_pending_per_thread;
        let Some(ts) = self.threads.get_mut(&tid) else {
            self.close_all(to_close, now_ns, out);
            return;
        };

        // Duplicates.
        let key = Key::of(&ev);
        if ts.recent.contains(&key) {
            self.close_all(to_close, now_ns, out);
            self.anomaly(
                AnomalyKind::DuplicateEvent,
                Some(tid),
                ev.device.clone(),
                out,
            );
            return;
        }
        if ts.recent.len() >= RECENT_KEYS {
            ts.recent.pop_front();
        }
        ts.recent.push_back(key);

        let depth = ev.probe.layer().depth();
        let ev_start = (!ev.entry_missing).then_some(ev.start_ns);
        let ev_s = ev_start.unwrap_or(ev.end_ns);
        let ev_end = ev.end_ns;

        // A frame of an operation already closed: too late.
        if ts
            .closed
            .iter()
            .any(|&(s, e, d)| d < depth && contains(Some(s), e, ev_s, ev_end))
        {
            self.close_all(to_close, now_ns, out);
            self.anomaly(AnomalyKind::LateFrame, Some(tid), ev.device.clone(), out);
            return;
        }

        // The thread's pending chains, split three ways; `pending` keeps its allocation and
        // receives what remains pending.
        let mut pending = std::mem::take(&mut ts.pending);
        self.pending_count -= pending.iter().map(|c| c.frames.len()).sum::<usize>();
        let mut absorbed = std::mem::take(&mut self.scratch.absorbed);
        let mut keep = std::mem::take(&mut self.scratch.keep);
        for chain in pending.drain(..) {
            if chain.outer_depth() > depth && contains(ev_start, ev_end, chain.start(), chain.end())
            {
                absorbed.push(chain);
            } else if window == 0 && ev_start.is_some_and(|s| s > chain.end()) {
                // The thread moved on: nothing can contain that chain any more.
                to_close.push(chain);
            } else {
                keep.push(chain);
            }
        }
        if ev_start.is_none() && absorbed.len() > 1 {
            // Unknown start: only the latest deeper chain can be ours.
            absorbed.sort_by_key(Chain::end);
            let last = absorbed.pop();
            to_close.append(&mut absorbed);
            absorbed.extend(last);
        }

        let mut overlapping = false;
        // Out of order: an outer frame that arrived before this inner one.
        let host = if absorbed.is_empty() {
            keep.iter().position(|c| {
                c.outer_depth() < depth
                    && contains(c.outer_start(), c.outer().end_ns, ev_s, ev_end)
                    && c.frames.len() < MAX_CHAIN_FRAMES
            })
        } else {
            None
        };
        if let Some(i) = host {
            let host = &mut keep[i];
            overlapping = host.frames.iter().any(|f| f.probe.layer().depth() == depth);
            host.frames.push(ev);
            host.sort();
        } else {
            let mut frames = self.scratch.frame_pool.pop().unwrap_or_default();
            frames.push(ev);
            let mut extra = Vec::new();
            for c in absorbed.drain(..) {
                let mut cf = c.frames;
                for f in cf.drain(..) {
                    if frames.len() < MAX_CHAIN_FRAMES {
                        frames.push(f);
                    } else {
                        extra.push(f);
                    }
                }
                if self.scratch.frame_pool.len() < FRAME_POOL_MAX {
                    self.scratch.frame_pool.push(cf);
                }
            }
            let mut chain = Chain {
                frames,
                deadline_ns: 0,
            };
            chain.sort();
            // Sorted by depth: two frames of one layer are neighbours.
            overlapping |= chain
                .frames
                .windows(2)
                .any(|w| w[0].probe.layer().depth() == w[1].probe.layer().depth());
            chain.deadline_ns = if depth <= Layer::Iommufd.depth() {
                now_ns.saturating_add(window)
            } else {
                now_ns.saturating_add(pending_timeout)
            };
            if !extra.is_empty() {
                to_close.push(Chain {
                    frames: extra,
                    deadline_ns: 0,
                });
            }
            keep.push(chain);
        }

        // Close outermost chains now unless a reorder window holds them.
        for c in keep.drain(..) {
            if window == 0 && c.outer_depth() <= Layer::Iommufd.depth() {
                to_close.push(c);
            } else {
                pending.push(c);
            }
        }
        let mut overflow = 0;
        while pending.len() > max_pending {
            to_close.push(pending.remove(0));
            overflow += 1;
        }
        let next_due = pending.iter().map(|c| c.deadline_ns).min();
        self.pending_count += pending.iter().map(|c| c.frames.len()).sum::<usize>();
        ts.pending = pending;
        self.scratch.absorbed = absorbed;
        self.scratch.keep = keep;
        if let Some(d) = next_due {
            self.next_due_ns = self.next_due_ns.min(d);
        }
        for _ in 0..overflow {
            self.anomaly(AnomalyKind::PendingOverflow, Some(tid), None, out);
        }
        if overlapping {
            self.anomaly(AnomalyKind::OverlappingFrames, Some(tid), None, out);
        }
        self.close_all(to_close, now_ns, out);
    }

    /// Drops stale entries from the thread LRU queue once they outnumber the live ones
    /// (amortised constant time per event).
    fn compact_lru(&mut self) {
        if self.thread_lru.len() > 2 * self.threads.len() + 64 {
            let threads = &self.threads;
            self.thread_lru
                .retain(|(s, t)| threads.get(t).is_some_and(|ts| ts.lru_seq == *s));
        }
    }

    /// Creates or refreshes a thread's state; evicts the least recently seen thread if full.
    fn touch_thread(
        &mut self,
        tid: u32,
        now_ns: u64,
        to_close: &mut Vec<Chain>,
        out: &mut Vec<Output>,
    ) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(ts) = self.threads.get_mut(&tid) {
            ts.lru_seq = seq;
            ts.last_seen_ns = ts.last_seen_ns.max(now_ns);
            self.thread_lru.push_back((seq, tid));
            self.compact_lru();
            return;
        }
        while self.threads.len() >= self.cfg.max_threads {
            let Some((s, old)) = self.thread_lru.pop_front() else {
                break;
            };
            if self.threads.get(&old).is_none_or(|t| t.lru_seq != s) {
                continue; // stale entry
            }
            if let Some(ots) = self.threads.remove(&old)
                && !ots.pending.is_empty()
            {
                self.pending_count -= ots.pending.iter().map(|c| c.frames.len()).sum::<usize>();
                to_close.extend(ots.pending);
                self.anomaly(AnomalyKind::ThreadEvicted, Some(old), None, out);
            }
        }
        self.threads.insert(
            tid,
            ThreadState {
                lru_seq: seq,
                last_seen_ns: now_ns,
                ..Default::default()
            },
        );
        self.thread_lru.push_back((seq, tid));
        self.compact_lru();
        self.next_due_ns = self
            .next_due_ns
            .min(now_ns.saturating_add(self.cfg.idle_thread_ns));
    }

    fn expire(&mut self, now_ns: u64, all: bool, out: &mut Vec<Output>) {
        let mut to_close = std::mem::take(&mut self.scratch.to_close);
        let mut idle = Vec::new();
        let mut next_due = u64::MAX;
        let idle_ns = self.cfg.idle_thread_ns;
        let mut closed_frames = 0;
        for (tid, ts) in self.threads.iter_mut() {
            let first = to_close.len();
            let mut i = 0;
            while i < ts.pending.len() {
                if all || ts.pending[i].deadline_ns <= now_ns {
                    to_close.push(ts.pending.remove(i));
                } else {
                    i += 1;
                }
            }
            for c in &ts.pending {
                next_due = next_due.min(c.deadline_ns);
            }
            for c in &to_close[first..] {
                closed_frames += c.frames.len();
                push_closed(ts, c);
            }
            if ts.pending.is_empty() {
                let idle_at = ts.last_seen_ns.saturating_add(idle_ns);
                if all || idle_at <= now_ns {
                    idle.push(*tid);
                } else {
                    next_due = next_due.min(idle_at);
                }
            }
        }
        self.pending_count -= closed_frames;
        for tid in idle {
            // Its LRU entry goes stale and is skipped.
            self.threads.remove(&tid);
        }
        self.compact_lru();
        self.next_due_ns = next_due;
        to_close.sort_by_key(|c| (c.end(), c.outer().tid));
        for c in to_close.drain(..) {
            self.close(c, now_ns, out);
        }
        self.scratch.to_close = to_close;
        while let Some(c) = self.vm_checks.front() {
            if !all && c.deadline_ns > now_ns {
                break;
            }
            if let Some(c) = self.vm_checks.pop_front() {
                self.run_vm_check(&c, now_ns, out);
            }
        }
    }

    /// Closes `chains` (and gives the emptied vector back to the scratch buffers).
    fn close_all(&mut self, mut chains: Vec<Chain>, now_ns: u64, out: &mut Vec<Output>) {
        chains.sort_by_key(|c| (c.end(), c.outer().tid));
        for c in chains.drain(..) {
            if let Some(ts) = self.threads.get_mut(&c.outer().tid) {
                push_closed(ts, &c);
            }
            self.close(c, now_ns, out);
        }
        self.scratch.to_close = chains;
    }

    /// Turns a chain into an operation and applies it to the binding table.
    fn close(&mut self, chain: Chain, now_ns: u64, out: &mut Vec<Output>) {
        let mut frames = chain.frames;
        let op_frames = self.frame_vecs.pop().unwrap_or_default();
        let op = build_operation(&mut frames, op_frames);
        self.stats.operations += 1;
        // The operation first, then what it caused (bindings, leaks).
        let mut effects = std::mem::take(&mut self.scratch.effects);
        self.apply(&op, &frames, now_ns, &mut effects);
        out.push(Output::Operation(op));
        out.append(&mut effects);
        self.scratch.effects = effects;
        frames.clear();
        if self.scratch.frame_pool.len() < FRAME_POOL_MAX {
            self.scratch.frame_pool.push(frames);
        }
    }

    fn apply(&mut self, op: &Operation, frames: &[Event], now_ns: u64, out: &mut Vec<Output>) {
        let Some(outer) = frames.first() else {
            return;
        };
        match op.kind {
            OpKind::Bind => {
                // The deepest of ioctl / tsm_bind / pci_tsm_bind decides; else the driver's op.
                let decider = frames
                    .iter()
                    .rev()
                    .find(|f| {
                        matches!(
                            f.probe,
                            Probe::TsmOpIoctl | Probe::TsmBind | Probe::PciTsmBind
                        )
                    })
                    .or_else(|| frames.iter().find(|f| f.probe == Probe::DriverBind));
                let Some(decider) = decider else { return };
                if !decider.ok() {
                    return;
                }
                let device = op
                    .device
                    .clone()
                    .or_else(|| self.device_by_vdevice(op.tgid, op.vdevice_id));
                let Some(device) = device else {
                    self.anomaly(AnomalyKind::BindWithoutDevice, Some(op.tid), None, out);
                    return;
                };
                let path = match outer.probe {
                    Probe::TsmOpIoctl => BindPath::Ioctl,
                    Probe::TsmBind => BindPath::TsmBind,
                    Probe::PciTsmBind => BindPath::PciTsmBind,
                    _ => BindPath::DriverBind,
                };
                self.clear_leaks(&device, ClearCause::Rebound, now_ns, out);
                let mut binding = Binding {
                    device: device.clone(),
                    vm: op.vm.clone(),
                    vmm_tgid: op.tgid,
                    vmm_comm: op.comm.clone(),
                    vdevice_id: op.vdevice_id,
                    tdi_id: op.tdi_id,
                    since_ns: op.end_ns,
                    path,
                };
                if let Some((old, _)) = self.bindings.get(device.as_str()) {
                    let same_vm = match (&old.vm, &binding.vm) {
                        (Some(a), Some(b)) => a.kvm == b.kvm,
                        _ => true,
                    };
                    if same_vm {
                        // Idempotent rebind: keep the original time and fill unknowns.
                        binding.since_ns = old.since_ns;
                        binding.vm = binding.vm.or_else(|| old.vm.clone());
                        binding.vdevice_id = binding.vdevice_id.or(old.vdevice_id);
                        binding.tdi_id = binding.tdi_id.or(old.tdi_id);
                    } else {
                        self.anomaly(
                            AnomalyKind::BindingReplaced,
                            Some(op.tid),
                            Some(device.clone()),
                            out,
                        );
                    }
                }
                self.insert_binding(binding, now_ns, out);
                if outer.probe == Probe::TsmOpIoctl && !outer.ok() {
                    self.detect_leak(&device, LeakReason::IoctlFailedAfterBind, now_ns, out);
                }
            }
            OpKind::Unbind | OpKind::Teardown => {
                let mut unbind_frames = false;
                let mut unbind_ok = false;
                for f in frames.iter().filter(|f| is_unbind_probe(f.probe)) {
                    unbind_frames = true;
                    unbind_ok |= f.ok();
                }
                let unbound = unbind_ok
                    || (op.kind == OpKind::Unbind
                        && outer.probe == Probe::TsmOpIoctl
                        && outer.ok());
                let device: Option<Cow<'_, str>> = match op.device.as_deref() {
                    Some(d) => Some(Cow::Borrowed(d)),
                    None => self
                        .device_by_vdevice(op.tgid, op.vdevice_id)
                        .map(Cow::Owned),
                };
                if unbound {
                    match device {
                        Some(d) => {
                            if self.remove_binding(&d).is_some() || self.has_leaks(&d) {
                                self.clear_leaks(&d, ClearCause::Unbound, now_ns, out);
                            }
                        }
                        None => {
                            self.anomaly(AnomalyKind::UnbindWithoutDevice, Some(op.tid), None, out)
                        }
                    }
                } else if op.kind == OpKind::Teardown
                    && !unbind_frames
                    && let Some(d) = device
                    && self.bindings.contains_key(&*d)
                {
                    self.detect_leak(&d, LeakReason::VdeviceTeardownWithoutUnbind, now_ns, out);
                }
            }
            OpKind::Invalid => {}
        }
    }

    fn run_vm_check(&mut self, check: &VmCheck, now_ns: u64, out: &mut Vec<Output>) {
        let (reason, mut devices): (LeakReason, Vec<String>) = match check.target {
            VmCheckTarget::Kvm(kvm) => (
                LeakReason::VmDestroyed,
                self.bindings
                    .values()
                    .filter(|(b, _)| {
                        b.since_ns <= check.event_ns && b.vm.as_ref().is_some_and(|v| v.kvm == kvm)
                    })
                    .map(|(b, _)| b.device.clone())
                    .collect(),
            ),
            VmCheckTarget::Tgid(tgid) => (
                LeakReason::VmmExited,
                self.bindings
                    .values()
                    .filter(|(b, _)| b.since_ns <= check.event_ns && binding_of_tgid(b, tgid))
                    .map(|(b, _)| b.device.clone())
                    .collect(),
            ),
        };
        devices.sort();
        for d in devices {
            self.detect_leak(&d, reason, now_ns, out);
        }
    }

    // ---- tables ------------------------------------------------------------------------

    fn device_by_vdevice(&self, tgid: u32, vdevice_id: Option<u32>) -> Option<String> {
        let id = vdevice_id?;
        self.bindings
            .values()
            .find(|(b, _)| b.vmm_tgid == tgid && b.vdevice_id == Some(id))
            .map(|(b, _)| b.device.clone())
    }

    fn pending_mentions(&self, device: &str) -> bool {
        self.threads.values().any(|t| {
            t.pending
                .iter()
                .any(|c| c.frames.iter().any(|f| f.device.as_deref() == Some(device)))
        })
    }

    fn insert_binding(&mut self, binding: Binding, now_ns: u64, out: &mut Vec<Output>) {
        self.seq += 1;
        let seq = self.seq;
        let device: Arc<str> = match self.bindings.remove_entry(binding.device.as_str()) {
            // Same device again: keep its key.
            Some((key, (_, old_seq))) => {
                self.binding_order.remove(&old_seq);
                key
            }
            None => Arc::from(binding.device.as_str()),
        };
        while self.bindings.len() >= self.cfg.max_bindings {
            let Some((_, old)) = self.binding_order.pop_first() else {
                break;
            };
            self.bindings.remove(&*old);
            self.anomaly(
                AnomalyKind::BindingEvicted,
                None,
                Some(old.to_string()),
                out,
            );
            self.clear_leaks(&old, ClearCause::Evicted, now_ns, out);
        }
        self.binding_order.insert(seq, device.clone());
        self.bindings.insert(device, (binding, seq));
    }

    fn remove_binding(&mut self, device: &str) -> Option<Binding> {
        let (b, seq) = self.bindings.remove(device)?;
        self.binding_order.remove(&seq);
        Some(b)
    }

    fn has_leaks(&self, device: &str) -> bool {
        !self.leaks.is_empty() && self.leak_keys(device).next().is_some()
    }

    fn leak_keys(&self, device: &str) -> impl Iterator<Item = &(String, LeakReason)> {
        let lo = (device.to_string(), LeakReason::ALL[0]);
        let hi = (
            device.to_string(),
            LeakReason::ALL[LeakReason::ALL.len() - 1],
        );
        self.leaks.range(lo..=hi).map(|(k, _)| k)
    }

    /// Records a leak of a bound device, unless it is already recorded for that reason.
    fn detect_leak(
        &mut self,
        device: &str,
        reason: LeakReason,
        now_ns: u64,
        out: &mut Vec<Output>,
    ) {
        let Some((b, _)) = self.bindings.get(device) else {
            return;
        };
        if self.leaks.contains_key(&(device.to_string(), reason)) {
            return;
        }
        let leak = Leak {
            device: device.to_string(),
            reason,
            vm: b.vm.clone(),
            vmm_tgid: Some(b.vmm_tgid),
            vmm_comm: Some(b.vmm_comm.clone()),
            vdevice_id: b.vdevice_id,
            tdi_id: b.tdi_id,
            bound_since_ns: Some(b.since_ns),
            tsm: None,
            detected_ns: now_ns,
            cleared_ns: None,
            cleared_by: None,
        };
        self.insert_leak(leak, out);
    }

    fn insert_leak(&mut self, leak: Leak, out: &mut Vec<Output>) {
        if self.leaks.len() >= self.cfg.max_leaks {
            self.anomaly(
                AnomalyKind::LeakTableFull,
                None,
                Some(leak.device.clone()),
                out,
            );
            return;
        }
        *self.stats.leaks_detected.entry(leak.reason).or_default() += 1;
        self.leak_count[leak.reason as usize] += 1;
        self.leaks
            .insert((leak.device.clone(), leak.reason), leak.clone());
        out.push(Output::LeakDetected(leak));
    }

    fn clear_leaks(&mut self, device: &str, cause: ClearCause, now_ns: u64, out: &mut Vec<Output>) {
        if self.leaks.is_empty() {
            return;
        }
        let keys: Vec<(String, LeakReason)> = self.leak_keys(device).cloned().collect();
        for k in keys {
            if let Some(mut leak) = self.leaks.remove(&k) {
                self.leak_count[leak.reason as usize] -= 1;
                leak.cleared_ns = Some(now_ns);
                leak.cleared_by = Some(cause);
                out.push(Output::LeakCleared(leak));
            }
        }
    }

    fn anomaly(
        &mut self,
        kind: AnomalyKind,
        tid: Option<u32>,
        device: Option<String>,
        out: &mut Vec<Output>,
    ) {
        *self.stats.anomalies.entry(kind).or_default() += 1;
        out.push(Output::Anomaly(Anomaly { kind, tid, device }));
    }
}

fn binding_of_tgid(b: &Binding, tgid: u32) -> bool {
    b.vmm_tgid == tgid || b.vm.as_ref().and_then(|v| v.pid) == i32::try_from(tgid).ok()
}

fn push_closed(ts: &mut ThreadState, c: &Chain) {
    if ts.closed.len() >= RECENT_OPS {
        ts.closed.pop_front();
    }
    ts.closed.push_back((c.start(), c.end(), c.outer_depth()));
}

/// Builds an operation from frames sorted outermost first (non-empty). Moves the owned fields
/// (comm, device, VM) out of the frames, which are dropped afterwards; `frame_vec` is an empty
/// vector to reuse for [`Operation::frames`].
fn build_operation(frames: &mut [Event], mut frame_vec: Vec<Frame>) -> Operation {
    let comm = std::mem::take(&mut frames[0].comm);
    let device = frames.iter_mut().find_map(|f| f.device.take());
    let vm = frames.iter_mut().find_map(|f| f.vm.take());
    let frames: &[Event] = frames;
    let outer = &frames[0];
    let inferred = frames.iter().find_map(|f| {
        if is_bind_probe(f.probe) {
            Some(OpKind::Bind)
        } else if is_unbind_probe(f.probe) {
            Some(OpKind::Unbind)
        } else {
            None
        }
    });
    let kind = match outer.probe {
        Probe::TsmOpIoctl => match outer.op {
            Some(UAPI_OP_BIND) => OpKind::Bind,
            Some(UAPI_OP_UNBIND) => OpKind::Unbind,
            Some(_) => OpKind::Invalid,
            None => inferred.unwrap_or(OpKind::Invalid),
        },
        Probe::VdeviceAbort => OpKind::Teardown,
        _ => inferred.unwrap_or(OpKind::Invalid),
    };
    let result = match outer.errno() {
        None => OpResult::Ok,
        Some(e) => {
            let src = frames
                .iter()
                .rev()
                .find(|f| f.errno() == Some(e))
                .unwrap_or(outer);
            OpResult::Err {
                errno: e,
                layer: src.probe.layer(),
                function: src.probe,
            }
        }
    };
    let start_ns = if outer.entry_missing {
        frames
            .iter()
            .map(|f| {
                if f.entry_missing {
                    f.end_ns
                } else {
                    f.start_ns
                }
            })
            .min()
            .unwrap_or(outer.end_ns)
    } else {
        outer.start_ns
    };
    Operation {
        kind,
        start_ns,
        end_ns: frames
            .iter()
            .map(|f| f.end_ns)
            .max()
            .unwrap_or(outer.end_ns),
        tgid: outer.tgid,
        tid: outer.tid,
        comm,
        device,
        vdevice_id: frames.iter().find_map(|f| f.vdevice_id.or(f.obj_id)),
        vm,
        tdi_id: frames.iter().find_map(|f| f.tdi_id),
        virt_id: frames.iter().find_map(|f| f.virt_id),
        frames: {
            frame_vec.clear();
            frame_vec.extend(frames.iter().map(Frame::from_event));
            frame_vec
        },
        result,
    }
}

fn ser_errno<S: Serializer>(e: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&errno::name(*e))
}

fn ser_errno_opt<S: Serializer>(e: &Option<i32>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.serialize_str(&errno::name(*e)),
        None => s.serialize_none(),
    }
}
