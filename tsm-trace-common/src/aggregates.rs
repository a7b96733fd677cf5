//! In-kernel aggregation of operations, exact at any event rate: what `/metrics` counts does
//! not depend on the ring buffer keeping up. The programs classify each call as userspace's
//! correlator does: the tables here are the correlator's too (`Layer::of`, `ProbeId::depth`,
//! `correlate/build.rs`). An operation is the outermost probed call on a thread; its
//! kind comes from that call (the ioctl's `op`), else from its first bind or unbind frame;
//! an error is attributed to the deepest frame that returned the same errno, else to a deeper
//! frame that failed without one (a driver `probe` returning NULL), else to the outer frame.

use super::ProbeId;

/// Layers, in `tsm_trace_operations_total{layer}` order.
pub const LAYER_IOMMUFD: u32 = 0;
pub const LAYER_TSM_CORE: u32 = 1;
pub const LAYER_PCI_TSM: u32 = 2;
pub const LAYER_TSM_DRIVER: u32 = 3;
pub const LAYER_VM: u32 = 4;
pub const LAYERS: u32 = 5;

/// Operation kinds, in userspace's `OpKind::ALL` order.
pub const OP_BIND: u32 = 0;
pub const OP_UNBIND: u32 = 1;
pub const OP_TEARDOWN: u32 = 2;
pub const OP_INVALID: u32 = 3;
pub const OP_CONNECT: u32 = 4;
pub const OP_DISCONNECT: u32 = 5;
pub const OP_GUEST_REQUEST: u32 = 6;
pub const OPS: u32 = 7;
/// Not decided by the outer frame: an inner bind or unbind decides, else invalid.
pub const OP_UNDECIDED: u32 = u32::MAX;

/// What the programs report as the ioctl's op (`RawEvent::op`) for a bind and an unbind,
/// whatever values the kernel's UAPI gives them (`Offsets::uapi_op_bind`); another value
/// is reported as read, unless it collides with these, then as [`UAPI_OP_OTHER`].
pub const UAPI_OP_BIND: u32 = 1;
pub const UAPI_OP_UNBIND: u32 = 2;
pub const UAPI_OP_OTHER: u32 = u32::MAX;

/// Histogram bucket upper bounds (`le`), set by userspace in [`AggConfig`].
pub const BOUNDS: usize = 20;
/// Per (op, layer, ok): `BOUNDS` buckets, the `+Inf` bucket, the sum of durations in ns.
pub const HIST_SLOTS: u32 = BOUNDS as u32 + 2;
pub const HIST_SUM: u32 = BOUNDS as u32 + 1;
pub const HIST_LEN: u32 = OPS * LAYERS * 2 * HIST_SLOTS;
/// Errors with these many distinct errnos are remembered per operation for attribution.
pub const ERR_SLOTS: usize = 4;

/// Index into the histogram array.
pub const fn hist_index(op: u32, layer: u32, ok: bool, slot: u32) -> u32 {
    ((op * LAYERS + layer) * 2 + ok as u32) * HIST_SLOTS + slot
}

/// Key of the per-operation counter: kind, attributed layer, errno (0: success).
pub const fn count_key(op: u32, layer: u32, errno: u32) -> u32 {
    (op << 24) | (layer << 16) | (errno & 0xffff)
}

/// (op, layer, errno) of a [`count_key`].
pub const fn split_key(key: u32) -> (u32, u32, u32) {
    (key >> 24, (key >> 16) & 0xff, key & 0xffff)
}

/// Bucket bounds for the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggConfig {
    pub bounds_ns: [u64; BOUNDS],
}

/// The first histogram bucket whose bound holds `duration_ns` (`BOUNDS`: the `+Inf`
/// bucket), by binary search over ascending bounds (`tsm-trace`'s `DURATION_BUCKETS`, padded
/// with `u64::MAX`): five halvings on every probed call where a scan compared up to 20 bounds.
#[inline(always)]
pub fn bucket(bounds_ns: &[u64; BOUNDS], duration_ns: u64) -> u32 {
    let (mut lo, mut hi) = (0usize, BOUNDS);
    for _ in 0..BUCKET_HALVINGS {
        if lo < hi {
            let mid = (lo + hi) / 2;
            match bounds_ns.get(mid) {
                Some(&b) if duration_ns <= b => hi = mid,
                _ => lo = mid + 1,
            }
        }
    }
    lo as u32
}

/// Halvings that narrow `BOUNDS + 1` candidate buckets to one.
const BUCKET_HALVINGS: u32 = usize::BITS - BOUNDS.leading_zeros();
const _: () = assert!(1 << BUCKET_HALVINGS > BOUNDS);

/// One errno seen in an operation's inner frames and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrSlot {
    pub errno: u32,
    pub layer: u32,
    pub depth: u32,
    pub _pad: u32,
}

/// The operation a thread is in (`THREAD_OPS`, keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadOp {
    /// Probed calls entered and not returned.
    pub depth: u32,
    pub kind: u32,
    /// Static depth of the frame that inferred `kind` (0: decided by the outer frame).
    pub kind_depth: u32,
    pub nerr: u32,
    pub errs: [ErrSlot; ERR_SLOTS],
    /// The deepest inner frame that failed without an errno (layer + 1; 0: none).
    pub nullfail_layer: u32,
    pub nullfail_depth: u32,
    /// Static depth of the operation's outer frame: a call entered at this depth or
    /// shallower while the operation is open means its outer return was missed.
    pub root_depth: u32,
}

/// The layer of a probe's frames.
pub const fn layer(p: ProbeId) -> u32 {
    match p {
        ProbeId::TsmOpIoctl | ProbeId::VdeviceAbort | ProbeId::GuestReqIoctl => LAYER_IOMMUFD,
        ProbeId::TsmBind | ProbeId::TsmUnbind | ProbeId::TsmGuestReq => LAYER_TSM_CORE,
        ProbeId::PciTsmBind
        | ProbeId::PciTsmUnbind
        | ProbeId::Connect
        | ProbeId::Disconnect
        | ProbeId::PciTsmDisconnect
        | ProbeId::PciTsmUnbindAny
        | ProbeId::PciTsmDestroy
        | ProbeId::PciTsmGuestReq => LAYER_PCI_TSM,
        // drivers/pci/ide.c: the PCI core's IDE code, beside drivers/pci/tsm.c.
        ProbeId::IdeStreamAlloc
        | ProbeId::IdeStreamRegister
        | ProbeId::IdeStreamSetup
        | ProbeId::IdeStreamEnable
        | ProbeId::IdeStreamDisable
        | ProbeId::IdeStreamTeardown
        | ProbeId::IdeStreamUnregister
        | ProbeId::IdeStreamRelease
        | ProbeId::IdeStreamFree => LAYER_PCI_TSM,
        ProbeId::DriverBind
        | ProbeId::DriverUnbind
        | ProbeId::DriverProbe
        | ProbeId::DriverConnect
        | ProbeId::DriverDisconnect
        | ProbeId::DriverGuestReq => LAYER_TSM_DRIVER,
        ProbeId::KvmDestroyVm | ProbeId::VmmExit | ProbeId::ModuleLoad => LAYER_VM,
    }
}

/// Static call depth (a frame contains only deeper frames), as userspace nests them.
pub const fn depth(p: ProbeId) -> u32 {
    match p {
        ProbeId::KvmDestroyVm | ProbeId::VmmExit | ProbeId::ModuleLoad => 0,
        ProbeId::TsmOpIoctl | ProbeId::VdeviceAbort | ProbeId::GuestReqIoctl => 1,
        ProbeId::TsmBind | ProbeId::TsmUnbind | ProbeId::TsmGuestReq => 2,
        ProbeId::PciTsmBind
        | ProbeId::PciTsmUnbind
        | ProbeId::PciTsmGuestReq
        | ProbeId::Connect
        | ProbeId::Disconnect
        | ProbeId::PciTsmDestroy => 3,
        ProbeId::PciTsmDisconnect => 4,
        ProbeId::PciTsmUnbindAny => 5,
        ProbeId::DriverProbe
        | ProbeId::DriverConnect
        | ProbeId::DriverDisconnect
        | ProbeId::DriverBind
        | ProbeId::DriverUnbind
        | ProbeId::DriverGuestReq => 6,
        // Called by the driver's connect/disconnect; release calls the others.
        ProbeId::IdeStreamRelease => 7,
        ProbeId::IdeStreamAlloc
        | ProbeId::IdeStreamRegister
        | ProbeId::IdeStreamSetup
        | ProbeId::IdeStreamEnable
        | ProbeId::IdeStreamDisable
        | ProbeId::IdeStreamTeardown
        | ProbeId::IdeStreamUnregister
        | ProbeId::IdeStreamFree => 8,
    }
}

/// The kind an outer frame gives its operation; `op` is the ioctl's UAPI op, if read.
pub const fn outer_kind(p: ProbeId, op: Option<u32>) -> u32 {
    match p {
        ProbeId::TsmOpIoctl => match op {
            Some(UAPI_OP_BIND) => OP_BIND,
            Some(UAPI_OP_UNBIND) => OP_UNBIND,
            Some(_) => OP_INVALID,
            None => OP_UNDECIDED,
        },
        ProbeId::VdeviceAbort => OP_TEARDOWN,
        ProbeId::Connect | ProbeId::DriverProbe | ProbeId::DriverConnect => OP_CONNECT,
        ProbeId::Disconnect
        | ProbeId::PciTsmDisconnect
        | ProbeId::PciTsmDestroy
        | ProbeId::DriverDisconnect => OP_DISCONNECT,
        ProbeId::GuestReqIoctl
        | ProbeId::TsmGuestReq
        | ProbeId::PciTsmGuestReq
        | ProbeId::DriverGuestReq => OP_GUEST_REQUEST,
        // An IDE step with no probed caller (a driver tsm-trace does not know, or a stream
        // released on its own): building a stream up is a connect, tearing it down a
        // disconnect.
        ProbeId::IdeStreamAlloc
        | ProbeId::IdeStreamSetup
        | ProbeId::IdeStreamEnable
        | ProbeId::IdeStreamRegister => OP_CONNECT,
        ProbeId::IdeStreamDisable
        | ProbeId::IdeStreamTeardown
        | ProbeId::IdeStreamUnregister
        | ProbeId::IdeStreamRelease
        | ProbeId::IdeStreamFree => OP_DISCONNECT,
        _ => OP_UNDECIDED,
    }
}

/// The kind a bind or unbind frame infers for an undecided operation.
pub const fn inferred_kind(p: ProbeId) -> u32 {
    match p {
        ProbeId::TsmBind | ProbeId::PciTsmBind | ProbeId::DriverBind => OP_BIND,
        ProbeId::TsmUnbind
        | ProbeId::PciTsmUnbind
        | ProbeId::PciTsmUnbindAny
        | ProbeId::DriverUnbind => OP_UNBIND,
        _ => OP_UNDECIDED,
    }
}

/// The errno of a return value (`ret` as the programs report it), if it is one.
pub const fn errno(ret: i64, ret_flags: u32) -> Option<u32> {
    if ret_flags & super::flags::RET_VOID != 0 {
        None
    } else if ret >= -4095 && ret <= -1 {
        Some((-ret) as u32)
    } else {
        None
    }
}
