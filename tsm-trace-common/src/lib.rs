//! Types shared by the eBPF programs (`tsm-trace-ebpf`) and userspace (`tsm-trace`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes [`RawEvent`]s into the ring
//! buffer and userspace reads them back byte for byte; userspace writes [`Offsets`] into a
//! read-only global before the programs load.
#![no_std]

/// Sentinel for an offset that BTF could not resolve. Programs skip the read and set the
/// field's bit in [`RawEvent::missing`].
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Length of a device name (`dev->kobj.name`, a PCI BDF such as `0000:01:00.0`).
pub const DEV_NAME_LEN: usize = 32;
/// `KVM_STATS_NAME_SIZE` in the kernel.
pub const STATS_ID_LEN: usize = 48;
/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// Length of a TSM device name (`dev_name(&tsm_dev->dev)`, `tsmN`).
pub const TSM_NAME_LEN: usize = 16;

/// Declares [`ProbeId`]: each probe's discriminant, its name, and the shape of its programs,
/// from which the programs' names are derived (one table for both sides).
///
/// - `pair`: a kprobe `<name>_entry` and a kretprobe `<name>_return`;
/// - `point`: a kprobe `<name>_entry` only (a point event);
/// - `tracepoint`: a raw tracepoint program `<name>`.
macro_rules! probe_ids {
    (@entry pair $n:literal) => { concat!($n, "_entry") };
    (@entry point $n:literal) => { concat!($n, "_entry") };
    (@entry tracepoint $n:literal) => { $n };
    (@ret pair $n:literal) => { Some(concat!($n, "_return")) };
    (@ret point $n:literal) => { None };
    (@ret tracepoint $n:literal) => { None };
    ($( $(#[$doc:meta])* $variant:ident = $value:literal, $name:literal, $shape:ident; )*) => {
        /// Which kernel function an event comes from: the one probe enum of both sides. The
        /// discriminant is stable: it is part of the record file format (`tsm-trace trace
        /// --record`), as is the name (JSON lines, `--symbol PROBE=...`, metric labels).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "user", serde(rename_all = "snake_case"))]
        pub enum ProbeId {
            $( $(#[$doc])* $variant = $value, )*
        }

        impl ProbeId {
            pub const ALL: [ProbeId; [$($value),*].len()] = [$(ProbeId::$variant),*];

            /// The probe's name: on the command line, in record files and in metric labels.
            pub const fn as_str(self) -> &'static str {
                match self { $( ProbeId::$variant => $name, )* }
            }

            /// The entry program (a kprobe, or the raw tracepoint program), by its name in the
            /// eBPF object: derived from [`ProbeId::as_str`].
            pub const fn entry_program(self) -> &'static str {
                match self { $( ProbeId::$variant => probe_ids!(@entry $shape $name), )* }
            }

            /// The return program (a kretprobe), if the probe has one.
            pub const fn return_program(self) -> Option<&'static str> {
                match self { $( ProbeId::$variant => probe_ids!(@ret $shape $name), )* }
            }
        }
    };
}

probe_ids! {
    /// `int iommufd_vdevice_tsm_op_ioctl(struct iommufd_ucmd *ucmd)`
    TsmOpIoctl = 0, "tsm_op_ioctl", pair;
    /// `int tsm_bind(struct device *dev, struct kvm *kvm, u64 tdi_id)`
    TsmBind = 1, "tsm_bind", pair;
    /// `int tsm_unbind(struct device *dev)`
    TsmUnbind = 2, "tsm_unbind", pair;
    /// `void iommufd_vdevice_abort(struct iommufd_object *obj)`
    VdeviceAbort = 3, "vdevice_abort", pair;
    /// `int pci_tsm_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id)`
    PciTsmBind = 4, "pci_tsm_bind", pair;
    /// `void pci_tsm_unbind(struct pci_dev *pdev)`
    PciTsmUnbind = 5, "pci_tsm_unbind", pair;
    /// A TSM driver's bind op, named by the user: `(struct pci_dev *, struct kvm *, u32)`,
    /// returning an `ERR_PTR` or an int.
    DriverBind = 6, "driver_bind", pair;
    /// A TSM driver's unbind op, named by the user: `(struct pci_dev *)`.
    DriverUnbind = 7, "driver_unbind", pair;
    /// `void kvm_destroy_vm(struct kvm *kvm)` (entry only).
    KvmDestroyVm = 8, "kvm_destroy_vm", point;
    /// Exit of a process that holds a binding (raw tracepoint `sched_process_exit`).
    VmmExit = 9, "vmm_exit", tracepoint;
    /// A kernel module was loaded (raw tracepoint `module_load`): userspace looks again for
    /// probe targets that were missing (iommufd.ko and kvm.ko often load after boot). Not a
    /// TSM event: never reaches the correlator. Its program brings [`MODULE_FREE_PROGRAM`].
    ModuleLoad = 10, "module_load", tracepoint;
    /// `ssize_t connect_store(struct device *, struct device_attribute *, const char *buf,
    /// size_t)`: `echo tsmN > /sys/bus/pci/devices/<BDF>/tsm/connect` (static in
    /// drivers/pci/tsm.c; `pci_tsm_connect` itself is inlined).
    Connect = 11, "connect", pair;
    /// `disconnect_store`, same prototype: `echo tsmN > .../tsm/disconnect`.
    Disconnect = 12, "disconnect", pair;
    /// `void __pci_tsm_disconnect(struct pci_dev *)`: every disconnect, also from device
    /// removal and TSM unregistration (through `__pci_tsm_destroy`).
    PciTsmDisconnect = 13, "pci_tsm_disconnect", pair;
    /// `int __pci_tsm_unbind(struct pci_dev *, void *)`: every unbind, including those of
    /// disconnect and removal that never pass through `pci_tsm_unbind`.
    PciTsmUnbindAny = 14, "pci_tsm_unbind_any", pair;
    /// `void __pci_tsm_destroy(struct pci_dev *, struct tsm_dev *)`: device removal
    /// (`tsm_dev` NULL) or TSM unregistration. Reported only for devices with TSM context.
    PciTsmDestroy = 15, "pci_tsm_destroy", pair;
    /// `ssize_t pci_tsm_guest_req(struct pci_dev *, enum pci_tsm_req_scope, sockptr_t,
    /// size_t, sockptr_t, size_t, u64 *tsm_code)`.
    PciTsmGuestReq = 16, "pci_tsm_guest_req", pair;
    /// TSM driver link ops (`struct pci_tsm_ops::link_ops`): `probe(tsm_dev, pdev)`.
    DriverProbe = 17, "driver_probe", pair;
    /// `int connect(struct pci_dev *)`.
    DriverConnect = 18, "driver_connect", pair;
    /// `void disconnect(struct pci_dev *)`.
    DriverDisconnect = 19, "driver_disconnect", pair;
    /// `ssize_t guest_req(struct pci_tdi *, scope, sockptr_t, size_t, sockptr_t, size_t,
    /// u64 *)`.
    DriverGuestReq = 20, "driver_guest_req", pair;
}

/// The raw tracepoint program on `module_free` that [`ProbeId::ModuleLoad`] brings (control,
/// not a probe of its own).
pub const MODULE_FREE_PROGRAM: &str = "module_free";

impl ProbeId {
    pub const fn from_u32(v: u32) -> Option<ProbeId> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// The probe named `name` ([`ProbeId::as_str`]).
    pub fn parse(name: &str) -> Option<ProbeId> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Call depth, for nesting frames into operations: a frame contains only deeper frames
    /// ([`aggregates::depth`]). Inside PCI TSM, `connect_store` calls the driver's ops and
    /// `disconnect_store` → `__pci_tsm_disconnect` → `__pci_tsm_unbind` → the driver's unbind.
    pub const fn depth(self) -> u8 {
        aggregates::depth(self) as u8
    }

    /// Nothing tsm-trace probes ever calls this function: its operation is complete when it
    /// returns (sysfs writes, device removal, TSM unregistration, guest requests, and the
    /// iommufd entry points).
    pub const fn is_root(self) -> bool {
        matches!(
            self,
            ProbeId::TsmOpIoctl
                | ProbeId::VdeviceAbort
                | ProbeId::Connect
                | ProbeId::Disconnect
                | ProbeId::PciTsmDestroy
                | ProbeId::PciTsmGuestReq
        )
    }

    /// Calls that follow one another under one parent: the driver's probe then connect under
    /// `connect_store`; every function's `__pci_tsm_unbind` (with the driver's unbind) then
    /// the driver's disconnect under `__pci_tsm_disconnect`. A finished call of these is not
    /// closed just because the thread started another one of them.
    pub const fn has_siblings(self) -> bool {
        matches!(
            self,
            ProbeId::DriverProbe
                | ProbeId::DriverConnect
                | ProbeId::DriverDisconnect
                | ProbeId::DriverUnbind
                | ProbeId::PciTsmUnbindAny
        )
    }

    /// Point events have no duration and no return value.
    pub const fn is_point(self) -> bool {
        matches!(
            self,
            ProbeId::KvmDestroyVm | ProbeId::VmmExit | ProbeId::ModuleLoad
        )
    }
}

/// Bits of [`RawEvent::missing`]: a field the program could not read (offset unresolved or the
/// read faulted). Userspace reports them as "unknown", never as zero.
pub mod missing {
    pub const DEV_NAME: u32 = 1 << 0;
    pub const KVM_PID: u32 = 1 << 1;
    pub const KVM_STATS_ID: u32 = 1 << 2;
    pub const OP: u32 = 1 << 3;
    pub const FLAGS: u32 = 1 << 4;
    pub const VDEVICE_ID: u32 = 1 << 5;
    pub const OBJ_ID: u32 = 1 << 6;
    pub const VIRT_ID: u32 = 1 << 7;
    /// The return probe fired without a matching entry (entry evicted or attached late).
    pub const ENTRY: u32 = 1 << 8;
    /// `dev_name(&tsm_dev->dev)` (or the name written to a sysfs `tsm/` file).
    pub const TSM_NAME: u32 = 1 << 9;
    /// The binding a PCI TSM function found (`pdev->tsm->tdi`): kvm and tdi_id.
    pub const TDI: u32 = 1 << 10;
    /// Guest request arguments: scope, in/out lengths.
    pub const GUEST_REQ_ARGS: u32 = 1 << 11;
    /// `*tsm_code` after a guest request (NULL pointer or unreadable).
    pub const TSM_CODE: u32 = 1 << 12;
}

pub mod errno;

/// Flags in [`RawEvent::flags`].
pub mod flags {
    /// The return value is a pointer (`ERR_PTR` convention) rather than an int.
    pub const RET_IS_PTR: u32 = 1 << 0;
    /// The function returns void: `ret` carries nothing.
    pub const RET_VOID: u32 = 1 << 1;
    /// A point event (no return probe): `end_ns == start_ns`.
    pub const POINT: u32 = 1 << 2;
    /// The return value is an `ssize_t` (64 bits, positive sizes) rather than an `int`.
    pub const RET_IS_LONG: u32 = 1 << 3;
    /// A pointer return where NULL (not only an `ERR_PTR`) means failure (driver `probe`).
    pub const RET_NULL_IS_ERR: u32 = 1 << 4;
    /// The device had no binding (`pdev->tsm` or `pdev->tsm->tdi` NULL): nothing was unbound.
    pub const NOTHING_BOUND: u32 = 1 << 5;
    /// `__pci_tsm_destroy` was called for a TSM's unregistration (else: device removal).
    pub const TSM_UNREGISTER: u32 = 1 << 6;
}

/// One completed call of a probed function (or a point event), as the kernel reports it.
///
/// Field order keeps natural alignment with no implicit padding, so the layout is identical on
/// both sides and in record files.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// [`ProbeId`] discriminant.
    pub probe: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at function entry.
    pub start_ns: u64,
    /// `bpf_ktime_get_ns()` at function return (equal to `start_ns` for point events).
    pub end_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the high 32 bits, tid in the low.
    pub pid_tgid: u64,
    /// The function's return value, sign-extended (an errno is negative).
    pub ret: i64,
    /// `struct kvm *` as an opaque identity (0 if none).
    pub kvm: u64,
    /// `tdi_id` argument (tsm_bind: u64, pci_tsm_bind: u32).
    pub tdi_id: u64,
    /// `iommufd_vdevice::virt_id` (vdevice teardown).
    pub virt_id: u64,
    /// [`missing`] bits.
    pub missing: u32,
    /// `kvm->userspace_pid`, the VMM process that created the VM.
    pub kvm_pid: i32,
    /// UAPI `op` (1 bind, 2 unbind).
    pub op: u32,
    /// UAPI `flags`.
    pub cmd_flags: u32,
    /// UAPI `vdevice_id`.
    pub vdevice_id: u32,
    /// `iommufd_object::id` (vdevice teardown).
    pub obj_id: u32,
    /// `current->comm`.
    pub comm: [u8; COMM_LEN],
    /// `dev_name(dev)`.
    pub dev_name: [u8; DEV_NAME_LEN],
    /// `kvm->stats_id` ("kvm-<pid>").
    pub kvm_stats_id: [u8; STATS_ID_LEN],
    /// Guest requests: `in_len`, `out_len` and `*tsm_code` after the call.
    pub in_len: u64,
    pub out_len: u64,
    pub tsm_code: u64,
    /// Guest requests: `enum pci_tsm_req_scope`.
    pub scope: u32,
    pub _pad: u32,
    /// The TSM (`tsmN`): from `pdev->tsm->tsm_dev`, a `tsm_dev *` argument, or the name
    /// written to `tsm/connect` / `tsm/disconnect`.
    pub tsm_name: [u8; TSM_NAME_LEN],
}

impl RawEvent {
    pub const SIZE: usize = core::mem::size_of::<RawEvent>();

    pub const fn zeroed() -> RawEvent {
        RawEvent {
            probe: 0,
            flags: 0,
            start_ns: 0,
            end_ns: 0,
            pid_tgid: 0,
            ret: 0,
            kvm: 0,
            tdi_id: 0,
            virt_id: 0,
            missing: 0,
            kvm_pid: 0,
            op: 0,
            cmd_flags: 0,
            vdevice_id: 0,
            obj_id: 0,
            comm: [0; COMM_LEN],
            dev_name: [0; DEV_NAME_LEN],
            kvm_stats_id: [0; STATS_ID_LEN],
            in_len: 0,
            out_len: 0,
            tsm_code: 0,
            scope: 0,
            _pad: 0,
            tsm_name: [0; TSM_NAME_LEN],
        }
    }
}

/// How a kernel integer (a struct member, or a return value) is read: its width in bytes
/// (1, 2, 4 or 8) in the low byte, [`IntKind::SIGNED`] when BTF says it is signed. Userspace
/// takes both from BTF; `0` ([`IntKind::UNKNOWN`]) means "not an integer that fits": the
/// programs do not read it.
pub struct IntKind;

impl IntKind {
    pub const UNKNOWN: u32 = 0;
    pub const SIGNED: u32 = 1 << 8;
    pub const SIZE_MASK: u32 = 0xff;

    pub const fn of(size: u32, signed: bool) -> u32 {
        size | if signed { IntKind::SIGNED } else { 0 }
    }
}

/// How a probed function's return value is decoded, from the function's own BTF prototype
/// ([`Offsets::ret`], indexed by [`ProbeId`]): an [`IntKind`] (an `int`, an `ssize_t`), or one
/// of these.
pub mod ret {
    /// The prototype was not resolved: the probe is not attached (nothing is decoded).
    pub const UNKNOWN: u32 = super::IntKind::UNKNOWN;
    /// `void`.
    pub const VOID: u32 = 1 << 9;
    /// A pointer (`ERR_PTR` convention).
    pub const PTR: u32 = 1 << 10;
}

/// Where to find fields inside a `struct kvm` as seen by one probed function's prototype.
/// (A stand-in `struct kvm` in a module and the real one in vmlinux/kvm.ko differ.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmOffsets {
    pub userspace_pid: u32,
    pub stats_id: u32,
    /// [`IntKind`] of `userspace_pid` (`pid_t`).
    pub userspace_pid_kind: u32,
    /// Length of the `stats_id` char array (at most [`STATS_ID_LEN`] is read).
    pub stats_id_len: u32,
}

impl KvmOffsets {
    pub const UNKNOWN: KvmOffsets = KvmOffsets {
        userspace_pid: OFFSET_UNKNOWN,
        stats_id: OFFSET_UNKNOWN,
        userspace_pid_kind: IntKind::UNKNOWN,
        stats_id_len: 0,
    };
}

/// [`IntKind`]s of the integer members the programs read (the same BTF members as the
/// offsets of the same names in [`Offsets`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldKinds {
    pub tsm_op_op: u32,
    pub tsm_op_flags: u32,
    pub tsm_op_vdevice_id: u32,
    pub obj_id: u32,
    pub vdev_virt_id: u32,
    pub tdi_tdi_id: u32,
}

impl FieldKinds {
    pub const UNKNOWN: FieldKinds = FieldKinds {
        tsm_op_op: IntKind::UNKNOWN,
        tsm_op_flags: IntKind::UNKNOWN,
        tsm_op_vdevice_id: IntKind::UNKNOWN,
        obj_id: IntKind::UNKNOWN,
        vdev_virt_id: IntKind::UNKNOWN,
        tdi_tdi_id: IntKind::UNKNOWN,
    };
}

/// Number of [`ProbeId`]s (the length of [`Offsets::ret`]).
pub const PROBES: usize = ProbeId::ALL.len();

/// The first parameter of a driver unbind op is a `struct pci_dev *` (the stand-in and
/// older drivers)...
pub const ARG_PCI_DEV: u32 = 0;
/// ...or a `struct pci_tdi *` (upstream `pci_tsm_link_ops::unbind`).
pub const ARG_PCI_TDI: u32 = 1;

/// Where a function argument is at entry, computed in userspace from the BTF prototype and the
/// x86-64 SysV calling convention: `0..=5` is an argument register (rdi, rsi, rdx, rcx, r8,
/// r9); [`ArgLoc::STACK`] + n is n bytes above the stack pointer at entry (the return address
/// is at 0); [`OFFSET_UNKNOWN`] is unknown.
pub struct ArgLoc;

impl ArgLoc {
    pub const STACK: u32 = 0x1000;
}

/// Argument locations of a guest request function (`pci_tsm_guest_req` or a driver op of
/// the same shape), as [`ArgLoc`] values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestReqArgs {
    pub scope: u32,
    pub in_len: u32,
    pub out_len: u32,
    pub tsm_code: u32,
}

impl GuestReqArgs {
    pub const UNKNOWN: GuestReqArgs = GuestReqArgs {
        scope: OFFSET_UNKNOWN,
        in_len: OFFSET_UNKNOWN,
        out_len: OFFSET_UNKNOWN,
        tsm_code: OFFSET_UNKNOWN,
    };
}

/// Struct offsets resolved from BTF at run time, handed to the programs as a read-only global.
/// Every field is a byte offset or [`OFFSET_UNKNOWN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `struct iommufd_ucmd::cmd`.
    pub ucmd_cmd: u32,
    /// UAPI `struct iommu_vdevice_tsm_op::{op, flags, vdevice_id}` (v5: `type` for op).
    pub tsm_op_op: u32,
    pub tsm_op_flags: u32,
    pub tsm_op_vdevice_id: u32,
    /// `struct iommufd_object::id`.
    pub obj_id: u32,
    /// `struct iommufd_vdevice::obj` (container_of from the object pointer).
    pub vdev_obj: u32,
    /// `struct iommufd_vdevice::virt_id`.
    pub vdev_virt_id: u32,
    /// `struct iommufd_vdevice::idev`.
    pub vdev_idev: u32,
    /// `struct iommufd_device::dev`.
    pub idev_dev: u32,
    /// `struct device::kobj` + `struct kobject::name`: where `dev_name()` reads from.
    pub dev_name: u32,
    /// `struct pci_dev::dev`.
    pub pci_dev_dev: u32,
    /// `struct pci_dev::tsm` (`struct pci_tsm *`).
    pub pci_dev_tsm: u32,
    /// `struct pci_tsm::{tsm_dev, tdi}`.
    pub pci_tsm_tsm_dev: u32,
    pub pci_tsm_tdi: u32,
    /// `struct tsm_dev::dev` + `device.kobj.name`: where the TSM's name is read from.
    pub tsm_dev_name: u32,
    /// `struct pci_tdi::{pdev, kvm, tdi_id}`.
    pub tdi_pdev: u32,
    pub tdi_kvm: u32,
    pub tdi_tdi_id: u32,
    /// The driver unbind op's first parameter: [`ARG_PCI_DEV`] or [`ARG_PCI_TDI`].
    pub drv_unbind_arg: u32,
    /// Where `pci_tsm_guest_req`'s arguments are at entry, as [`ArgLoc`]s.
    pub guest_req: GuestReqArgs,
    /// The same for the driver's `guest_req` op.
    pub drv_guest_req: GuestReqArgs,
    /// `struct kvm` fields per function that takes one.
    pub kvm_tsm_bind: KvmOffsets,
    pub kvm_pci_tsm_bind: KvmOffsets,
    pub kvm_driver_bind: KvmOffsets,
    pub kvm_destroy_vm: KvmOffsets,
    /// `struct module::name` (the module tracepoints name the module loaded or freed).
    pub module_name: u32,
    /// Widths and signedness of the integer members read.
    pub kinds: FieldKinds,
    /// The UAPI op values of bind and unbind (`enum iommu_vdevice_tsm_op_type` where BTF has
    /// it, else the generation's `#define`s), or [`OFFSET_UNKNOWN`]: the programs report
    /// [`aggregates::UAPI_OP_BIND`]/[`aggregates::UAPI_OP_UNBIND`] for them whatever the kernel's values.
    pub uapi_op_bind: u32,
    pub uapi_op_unbind: u32,
    /// How each probe's return value is decoded ([`ret`]), indexed by [`ProbeId`].
    pub ret: [u32; PROBES],
}

impl Offsets {
    pub const UNKNOWN: Offsets = Offsets {
        ucmd_cmd: OFFSET_UNKNOWN,
        tsm_op_op: OFFSET_UNKNOWN,
        tsm_op_flags: OFFSET_UNKNOWN,
        tsm_op_vdevice_id: OFFSET_UNKNOWN,
        obj_id: OFFSET_UNKNOWN,
        vdev_obj: OFFSET_UNKNOWN,
        vdev_virt_id: OFFSET_UNKNOWN,
        vdev_idev: OFFSET_UNKNOWN,
        idev_dev: OFFSET_UNKNOWN,
        dev_name: OFFSET_UNKNOWN,
        pci_dev_dev: OFFSET_UNKNOWN,
        pci_dev_tsm: OFFSET_UNKNOWN,
        pci_tsm_tsm_dev: OFFSET_UNKNOWN,
        pci_tsm_tdi: OFFSET_UNKNOWN,
        tsm_dev_name: OFFSET_UNKNOWN,
        tdi_pdev: OFFSET_UNKNOWN,
        tdi_kvm: OFFSET_UNKNOWN,
        tdi_tdi_id: OFFSET_UNKNOWN,
        drv_unbind_arg: OFFSET_UNKNOWN,
        guest_req: GuestReqArgs::UNKNOWN,
        drv_guest_req: GuestReqArgs::UNKNOWN,
        kvm_tsm_bind: KvmOffsets::UNKNOWN,
        kvm_pci_tsm_bind: KvmOffsets::UNKNOWN,
        kvm_driver_bind: KvmOffsets::UNKNOWN,
        kvm_destroy_vm: KvmOffsets::UNKNOWN,
        module_name: OFFSET_UNKNOWN,
        kinds: FieldKinds::UNKNOWN,
        uapi_op_bind: OFFSET_UNKNOWN,
        uapi_op_unbind: OFFSET_UNKNOWN,
        ret: [ret::UNKNOWN; PROBES],
    };
}

/// Key of an in-flight call in `INFLIGHT`: one entry per (task, probed function). Userspace
/// reads the table to know which binds and unbinds are still running.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InflightKey {
    pub pid_tgid: u64,
    pub probe: u32,
    pub _pad: u32,
}

/// Longest module name a [`ControlEvent`] carries (the kernel's `MODULE_NAME_LEN`).
pub const MODULE_NAME_LEN: usize = 56;

/// What a [`ControlEvent`] reports.
pub mod control {
    /// A module finished loading (`module_load`): probe targets may have appeared.
    pub const MODULE_LOAD: u32 = 1;
    /// A module is being freed (`module_free`): probes in it stop firing.
    pub const MODULE_FREE: u32 = 2;
}

/// A control record, on its own ring buffer (`CONTROL`), never mixed with the event data:
/// module loads and unloads, which make userspace attach or detach probes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlEvent {
    /// [`control::MODULE_LOAD`] or [`control::MODULE_FREE`].
    pub kind: u32,
    /// 1 when `name` could be read (`module.name` resolved and the read did not fault).
    pub has_name: u32,
    pub ktime_ns: u64,
    /// NUL-terminated module name.
    pub name: [u8; MODULE_NAME_LEN],
}

/// The kernel-side self-counters (per-CPU array [`maps::STATS`], indexed by the
/// discriminant). One enum, one label each: userspace exports each counter under its
/// [`KernelCounter::label`] (labels are part of `/metrics`: add, never rename).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelCounter {
    /// The event ring buffer was full (`bpf_ringbuf_output`/`reserve` failed): an event was
    /// lost.
    RingbufFull = 0,
    /// The in-flight map refused an entry (a return will then lack its entry).
    InflightFull = 1,
    /// A kernel read (`bpf_probe_read_kernel*`) faulted: the field is reported missing.
    ReadFault = 2,
    /// A return probe fired with no matching entry.
    OrphanReturn = 3,
    /// The control ring buffer was full: a module load or unload was not reported.
    ControlFull = 4,
    /// An in-kernel aggregates table was full (a thread's operation state, a counter key, or
    /// the errno slots of one operation): an operation may be missing from the exact counts.
    AggregationFull = 5,
    /// An entry record was replaced by a new call of the same function on the same thread:
    /// the earlier call's return was never seen (its kretprobe missed, e.g. `maxactive`
    /// exhausted). That frame's detail is lost.
    ReturnMissed = 6,
    /// An operation whose outer return was never seen was left out of the exact counts when
    /// its thread began the next one (without this, that thread's later operations would be
    /// taken for calls nested in it and never counted).
    OperationUnfinished = 7,
    /// The table of processes holding a binding was full: that VMM's exit will not be seen.
    VmmTableFull = 8,
    /// An entry program found no per-CPU scratch record (cannot happen with a loaded object;
    /// counted so that no exit path of a live program is silent).
    ScratchMissing = 9,
}

impl KernelCounter {
    /// Number of counters (the length of the `STATS` array).
    pub const COUNT: u32 = 10;

    pub const ALL: [KernelCounter; KernelCounter::COUNT as usize] = [
        KernelCounter::RingbufFull,
        KernelCounter::InflightFull,
        KernelCounter::ReadFault,
        KernelCounter::OrphanReturn,
        KernelCounter::ControlFull,
        KernelCounter::AggregationFull,
        KernelCounter::ReturnMissed,
        KernelCounter::OperationUnfinished,
        KernelCounter::VmmTableFull,
        KernelCounter::ScratchMissing,
    ];

    /// The counter's label: the `reason` of `tsm_trace_events_lost_total` for the losses
    /// ([`KernelCounter::is_loss`]), of `tsm_trace_operations_uncounted_total` for
    /// [`KernelCounter::OperationUnfinished`]; [`KernelCounter::ReadFault`] is exported alone
    /// (`tsm_trace_kernel_read_faults_total`).
    pub const fn label(self) -> &'static str {
        match self {
            KernelCounter::RingbufFull => "ringbuf_full",
            KernelCounter::InflightFull => "inflight_full",
            KernelCounter::ReadFault => "read_fault",
            KernelCounter::OrphanReturn => "orphan_return",
            KernelCounter::ControlFull => "control_full",
            KernelCounter::AggregationFull => "aggregation_full",
            KernelCounter::ReturnMissed => "return_missed",
            KernelCounter::OperationUnfinished => "return_missed",
            KernelCounter::VmmTableFull => "vmm_table_full",
            KernelCounter::ScratchMissing => "scratch_missing",
        }
    }

    /// It counts records or events lost (`tsm_trace_events_lost_total{reason}`).
    pub const fn is_loss(self) -> bool {
        !matches!(
            self,
            KernelCounter::ReadFault | KernelCounter::OperationUnfinished
        )
    }
}

/// Why a program ended early: the `Err` of the programs' `try_*` functions and of their
/// kernel reads. Each kind that has a [`KernelCounter`] is counted there where it happens
/// ([`ProgError::counter`]); a program returns the discriminant (never 0, the success return).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgError {
    /// Not a failure: these programs are not the live epoch (a pinned handover) and stand
    /// aside. Not counted.
    StandAside = 1,
    /// The probe context has no such argument (cannot happen for the register arguments the
    /// programs take). Not counted.
    NoArgument = 2,
    /// An entry program found no per-CPU scratch record.
    ScratchMissing = 3,
    /// A kernel read faulted.
    ReadFault = 4,
    /// BTF gave no offset (or the base pointer is NULL): the field is not read, and is
    /// reported missing. Not counted (not a failure of the program).
    Unresolved = 5,
}

impl ProgError {
    /// The counter this kind is counted in, if any.
    pub const fn counter(self) -> Option<KernelCounter> {
        match self {
            ProgError::ScratchMissing => Some(KernelCounter::ScratchMissing),
            ProgError::ReadFault => Some(KernelCounter::ReadFault),
            ProgError::StandAside | ProgError::NoArgument | ProgError::Unresolved => None,
        }
    }
}

/// The maps' names in the eBPF object (the `#[map]` statics of `tsm-trace-ebpf/src/maps.rs`
/// are named so). Pinned maps keep these names in bpffs (`maps/<NAME>`), and the pin layout
/// hashes them: never rename one.
pub mod maps {
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
    /// The self-counters, indexed by [`super::KernelCounter`].
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
}

/// The global the programs compare with the [`maps::GATE`]: their epoch, set by userspace at
/// load time.
pub const EPOCH_GLOBAL: &str = "EPOCH";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data with no padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::KvmOffsets {}
    unsafe impl aya::Pod for super::FieldKinds {}
    unsafe impl aya::Pod for super::GuestReqArgs {}
    unsafe impl aya::Pod for super::ControlEvent {}
    unsafe impl aya::Pod for super::InflightKey {}
    unsafe impl aya::Pod for super::aggregates::AggConfig {}
    unsafe impl aya::Pod for super::aggregates::ThreadOp {}
}

/// In-kernel aggregation of operations, exact at any event rate: what `/metrics` counts does
/// not depend on the ring buffer keeping up. The programs classify each call as userspace's
/// correlator does: the tables here are the correlator's too (`Layer::of`, `ProbeId::depth`,
/// `correlate/build.rs`). An operation is the outermost probed call on a thread; its
/// kind comes from that call (the ioctl's `op`), else from its first bind or unbind frame;
/// an error is attributed to the deepest frame that returned the same errno, else to a deeper
/// frame that failed without one (a driver `probe` returning NULL), else to the outer frame.
pub mod aggregates {
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
            ProbeId::TsmOpIoctl | ProbeId::VdeviceAbort => LAYER_IOMMUFD,
            ProbeId::TsmBind | ProbeId::TsmUnbind => LAYER_TSM_CORE,
            ProbeId::PciTsmBind
            | ProbeId::PciTsmUnbind
            | ProbeId::Connect
            | ProbeId::Disconnect
            | ProbeId::PciTsmDisconnect
            | ProbeId::PciTsmUnbindAny
            | ProbeId::PciTsmDestroy
            | ProbeId::PciTsmGuestReq => LAYER_PCI_TSM,
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
            ProbeId::TsmOpIoctl | ProbeId::VdeviceAbort => 1,
            ProbeId::TsmBind | ProbeId::TsmUnbind => 2,
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
            ProbeId::PciTsmGuestReq | ProbeId::DriverGuestReq => OP_GUEST_REQUEST,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_indexed_by_their_discriminants() {
        for (i, p) in ProbeId::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
            assert_eq!(ProbeId::parse(p.as_str()), Some(*p));
        }
        for (i, c) in KernelCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn loss_labels_are_distinct_and_errors_count_where_they_map() {
        for a in KernelCounter::ALL.iter().filter(|c| c.is_loss()) {
            for b in KernelCounter::ALL.iter().filter(|c| c.is_loss()) {
                assert!(a == b || a.label() != b.label(), "{a:?} {b:?}");
            }
        }
        assert_eq!(
            ProgError::ReadFault.counter(),
            Some(KernelCounter::ReadFault)
        );
        assert_eq!(
            ProgError::ScratchMissing.counter(),
            Some(KernelCounter::ScratchMissing)
        );
        assert_eq!(ProgError::StandAside.counter(), None);
    }
}
