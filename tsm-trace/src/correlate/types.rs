//! The correlator's vocabulary: what goes in ([`Frame`]s of an [`Operation`]) and what comes
//! out ([`Output`]: operations, leaks, anomalies, sysfs mismatches, VM lifecycle events).
//! Plain data; the logic that produces it lives in the sibling modules.

use serde::{Deserialize, Serialize, Serializer};

use crate::errno;
use crate::events::{Event, IdeStream, Layer, Name, ProbeId, UnbindCause, Vm};

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
    /// `tsm/connect`: the TSM driver's probe and connect (SPDM session, IDE set-up).
    Connect,
    /// `tsm/disconnect`, device removal or TSM unregistration (see [`Operation::cause`]):
    /// every function unbound, then the link torn down.
    Disconnect,
    /// A guest's TDISP request (`pci_tsm_guest_req`).
    GuestRequest,
}

impl OpKind {
    pub const ALL: [OpKind; 7] = [
        OpKind::Bind,
        OpKind::Unbind,
        OpKind::Teardown,
        OpKind::Invalid,
        OpKind::Connect,
        OpKind::Disconnect,
        OpKind::GuestRequest,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            OpKind::Bind => "bind",
            OpKind::Unbind => "unbind",
            OpKind::Teardown => "teardown",
            OpKind::Invalid => "invalid",
            OpKind::Connect => "connect",
            OpKind::Disconnect => "disconnect",
            OpKind::GuestRequest => "guest_request",
        }
    }
}

/// What a guest request asked and got. Each value is the deepest frame's that carries it
/// (what the PCI TSM core or the driver saw), its name from BTF's enum where BTF has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestRequest {
    /// `enum pci_tsm_req_scope` at PCI TSM, or the request's `scope` (v2, v5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope_name: Option<Name>,
    /// Post-v5: the request's `op` and `tvm_arch` (they replace the UAPI scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_op: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub req_op_name: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tvm_arch: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tvm_arch_name: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_len: Option<u64>,
    /// The TSM's own result code for the guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsm_code: Option<u64>,
    /// Bytes of the response buffer left unfilled (a positive return).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residue: Option<u64>,
}

/// A value for trace lines: its name, else its number, else `unknown`.
pub fn label(name: Option<&str>, v: Option<u32>) -> String {
    match (name, v) {
        (Some(n), _) => n.to_string(),
        (None, Some(v)) => v.to_string(),
        (None, None) => "unknown".to_string(),
    }
}

impl GuestRequest {
    /// The scope's name (`info`, `state_change`, ... from BTF), else its number.
    pub fn scope_label(&self) -> String {
        label(self.scope_name.as_deref(), self.scope)
    }
}

/// `IOMMU_VDEVICE_TSM_BIND` / `IOMMU_VDEVICE_TSM_UNBIND`.
pub const UAPI_OP_BIND: u32 = tsm_trace_common::aggregates::UAPI_OP_BIND;
pub const UAPI_OP_UNBIND: u32 = tsm_trace_common::aggregates::UAPI_OP_UNBIND;

/// One function call inside an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub probe: ProbeId,
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
    /// Failed by returning NULL, with no errno (a driver's `probe`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub null_return: bool,
    /// PCIe IDE steps: the port the call acted on (the endpoint, or its root port for
    /// setup, enable, disable and teardown) and the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ide: Option<Box<IdeStream>>,
}

impl Frame {
    pub(super) fn from_event(ev: &Event) -> Frame {
        Frame {
            probe: ev.probe,
            layer: Layer::of(ev.probe),
            start_ns: ev.start_ns,
            end_ns: ev.end_ns,
            ret: ev.ret,
            errno: ev.errno(),
            duration_ns: ev.duration_ns(),
            entry_missing: ev.entry_missing,
            null_return: ev.errno().is_none() && !ev.ok(),
            device: ev.probe.is_ide().then(|| ev.device.clone()).flatten(),
            ide: ev.ide.clone(),
        }
    }

    pub fn ok(&self) -> bool {
        self.errno.is_none() && !self.null_return
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
        function: ProbeId,
    },
}

impl OpResult {
    pub fn errno(&self) -> Option<i32> {
        match self {
            OpResult::Ok => None,
            OpResult::Err { errno, .. } => Some(*errno),
        }
    }
}

/// One TSM operation: an outer frame and the calls it made (or a bare call without outer frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub kind: OpKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdevice_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdi_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virt_id: Option<u64>,
    /// The ioctl's `op` (`IOMMU_VDEVICE_TSM_OP`), as the caller passed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uapi_op: Option<u32>,
    /// The ioctl's `flags`, as the caller passed it (non-zero flags are refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// The TSM (`tsmN`) of a connect, disconnect or guest request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsm: Option<Name>,
    /// Why a disconnect ran (or an unbind): sysfs, device removal, TSM unregistration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<UnbindCause>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_request: Option<Box<GuestRequest>>,
    /// Outermost first.
    pub frames: Vec<Frame>,
    #[serde(flatten)]
    pub result: OpResult,
    /// `trace --deep`: its calls and the origin of its errno (`None` without deep calls;
    /// boxed: most operations have none).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub deep: Option<Box<Deep>>,
}

/// What `trace --deep` adds to an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deep {
    /// The deep-traced calls made inside the operation, by start time (their stacks are in
    /// [`Deep::origin`]).
    pub calls: Vec<crate::events::deep::DeepCall>,
    /// Where a failed operation's errno began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where a failed operation's errno began (`trace --deep`): the deep-traced call that returned
/// it first (the deepest of its chain: callees return before their callers), with the kernel
/// stack at that return when the kernel took one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// Its index in [`Deep::calls`].
    #[serde(skip)]
    pub call: usize,
    pub function: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    pub depth: u32,
    #[serde(serialize_with = "ser_errno")]
    pub errno: i32,
    /// Innermost first, the function itself first (`name+0xoff`); empty when the kernel took
    /// none (it takes one only where no deep callee returned the same value before).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
}

impl Origin {
    /// The origin of errno `e` among `calls`: the first call to return it, the deepest on a
    /// tie. Takes its stack out of the calls (an operation shows one stack, at its origin)
    /// and clears the others.
    pub fn find(calls: &mut [crate::events::deep::DeepCall], e: Option<i32>) -> Option<Origin> {
        let found = e.and_then(|e| {
            calls
                .iter()
                .enumerate()
                .filter(|(_, c)| c.errno == Some(e))
                .min_by_key(|(_, c)| (c.end_ns, std::cmp::Reverse(c.depth)))
                .map(|(i, _)| i)
        });
        let origin = found.map(|i| {
            let c = &mut calls[i];
            Origin {
                call: i,
                function: c.function.clone(),
                module: c.module.clone(),
                depth: c.depth,
                errno: c.errno.unwrap_or_default(),
                stack: std::mem::take(&mut c.stack),
            }
        });
        for c in calls.iter_mut() {
            c.stack.clear();
        }
        origin
    }
}

impl Operation {
    pub fn ok(&self) -> bool {
        matches!(self.result, OpResult::Ok)
    }

    pub fn errno(&self) -> Option<i32> {
        self.result.errno()
    }

    /// `trace --deep`: the calls made inside the operation, by start time.
    pub fn calls(&self) -> &[crate::events::deep::DeepCall] {
        self.deep.as_deref().map_or(&[], |d| &d.calls)
    }

    /// `trace --deep`: where the operation's errno began.
    pub fn origin(&self) -> Option<&Origin> {
        self.deep.as_deref().and_then(|d| d.origin.as_ref())
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl BindPath {
    /// The probe of the outermost function that made the binding.
    pub const fn probe(self) -> ProbeId {
        match self {
            BindPath::Ioctl => ProbeId::TsmOpIoctl,
            BindPath::TsmBind => ProbeId::TsmBind,
            BindPath::PciTsmBind => ProbeId::PciTsmBind,
            BindPath::DriverBind => ProbeId::DriverBind,
        }
    }
}

/// A device believed bound to a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub device: Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    /// The process that bound it (the VMM).
    pub vmm_tgid: u32,
    pub vmm_comm: Name,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdevice_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdi_id: Option<u64>,
    pub since_ns: u64,
    pub path: BindPath,
    /// The TSM the device was connected to when it was bound, if the connect was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsm: Option<Name>,
}

/// A binding that ended, and why: an explicit unbind, or the PCI TSM core unbinding it on a
/// disconnect, a device removal or a TSM unregistration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindingClosed {
    pub binding: Binding,
    pub cause: UnbindCause,
    pub closed_ns: u64,
}

/// Where a device is in the TSM lifecycle, as far as the probes saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TsmState {
    /// Connected to a TSM (SPDM session and IDE up), not bound.
    Connected,
    /// Bound to a VM (the binding table holds it).
    Bound,
    /// Disconnected (by sysfs, removal or TSM unregistration) since tsm-trace started.
    Disconnected,
}

impl TsmState {
    pub const ALL: [TsmState; 3] = [TsmState::Connected, TsmState::Bound, TsmState::Disconnected];

    pub const fn as_str(self) -> &'static str {
        match self {
            TsmState::Connected => "connected",
            TsmState::Bound => "bound",
            TsmState::Disconnected => "disconnected",
        }
    }
}

/// Why a binding is believed leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leak {
    pub device: Name,
    pub reason: LeakReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<Vm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_tgid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_comm: Option<Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vdevice_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdi_id: Option<u64>,
    /// When the binding was made (unknown for `sysfs_bound_without_owner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_since_ns: Option<u64>,
    /// The TSM sysfs names as the device's owner (`sysfs_bound_without_owner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsm: Option<Name>,
    pub detected_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<ClearCause>,
}

impl Leak {
    /// The `vm` label: [`Vm::name`], or empty when unknown.
    pub fn vm_name(&self) -> Name {
        self.vm.as_ref().map_or_else(|| Name::from(""), Vm::name)
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
    /// The device lifecycle table was full: a device's connect state was forgotten.
    DeviceTableFull,
    /// A device still bound to a destroyed VM (or an exited VMM) when the input ended
    /// before the grace period did: not reported as a leak, since the unbind may still have
    /// come in time. One per device.
    LeakUnconfirmed,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 16] = [
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
        AnomalyKind::DeviceTableFull,
        AnomalyKind::LeakUnconfirmed,
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
            AnomalyKind::DeviceTableFull => "device_table_full",
            AnomalyKind::LeakUnconfirmed => "leak_unconfirmed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
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
    pub device: Name,
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
    pub comm: Name,
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
    /// A binding ended (any cause); the unbind or disconnect operation comes first.
    BindingClosed(BindingClosed),
    /// A PCIe IDE stream left registered or enabled after its endpoint's disconnect.
    IdeStreamLeaked(super::IdeLeakChange),
    /// A leaked IDE stream was released, or sysfs stopped showing it.
    IdeStreamLeakCleared(super::IdeLeakChange),
}

impl Output {
    /// The CLOCK_MONOTONIC time this output is about (what its trace line starts with, its
    /// JSON `time`, its place in a replay's time order), if it has one.
    pub fn time_ns(&self) -> Option<u64> {
        match self {
            Output::Operation(op) => Some(op.start_ns),
            Output::LeakDetected(l) => Some(l.detected_ns),
            Output::LeakCleared(l) => Some(l.cleared_ns.unwrap_or(l.detected_ns)),
            Output::VmEvent(v) => Some(v.time_ns),
            Output::BindingClosed(c) => Some(c.closed_ns),
            Output::IdeStreamLeaked(l) | Output::IdeStreamLeakCleared(l) => Some(l.time_ns),
            Output::Anomaly(_) | Output::Mismatch(_) => None,
        }
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
