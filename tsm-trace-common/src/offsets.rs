//! What BTF resolved at run time, handed to the programs: struct offsets, integer kinds,
//! argument locations.

use crate::{OFFSET_UNKNOWN, ProbeId};

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

/// One integer member a program reads: its byte offset ([`OFFSET_UNKNOWN`] when unresolved)
/// and its [`IntKind`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntField {
    pub off: u32,
    pub kind: u32,
}

impl IntField {
    pub const UNKNOWN: IntField = IntField {
        off: OFFSET_UNKNOWN,
        kind: IntKind::UNKNOWN,
    };
}

/// What a guest request carries at the iommufd layer (the UAPI command `ucmd->cmd` points
/// at) or at tsm-core (`struct tsm_guest_req_info`): its kind is a `scope` (v2, v5) or an
/// `op` with a `tvm_arch` (post-v5), whichever member BTF shows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqFields {
    /// UAPI only: `vdevice_id`.
    pub vdevice_id: IntField,
    pub scope: IntField,
    pub op: IntField,
    pub tvm_arch: IntField,
    pub req_len: IntField,
    pub resp_len: IntField,
}

impl ReqFields {
    pub const UNKNOWN: ReqFields = ReqFields {
        vdevice_id: IntField::UNKNOWN,
        scope: IntField::UNKNOWN,
        op: IntField::UNKNOWN,
        tvm_arch: IntField::UNKNOWN,
        req_len: IntField::UNKNOWN,
        resp_len: IntField::UNKNOWN,
    };
}

/// `struct pci_ide` (PCIe IDE streams), from `pci_ide_stream_register`'s prototype.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdeOffsets {
    /// `pci_ide::pdev` (the endpoint).
    pub pdev: u32,
    /// `pci_ide::name` (`const char *`, NULL until registered).
    pub name: u32,
    pub stream_id: IntField,
    pub host_bridge_stream: IntField,
    /// `partner[PCI_IDE_EP].stream_index` and `partner[PCI_IDE_RP].stream_index`: the
    /// array's element size and the enumerators' values from BTF.
    pub ep_index: IntField,
    pub rp_index: IntField,
}

impl IdeOffsets {
    pub const UNKNOWN: IdeOffsets = IdeOffsets {
        pdev: OFFSET_UNKNOWN,
        name: OFFSET_UNKNOWN,
        stream_id: IntField::UNKNOWN,
        host_bridge_stream: IntField::UNKNOWN,
        ep_index: IntField::UNKNOWN,
        rp_index: IntField::UNKNOWN,
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
    /// The guest-request ioctl's UAPI command.
    pub req_cmd: ReqFields,
    /// `tsm_guest_req`'s `struct tsm_guest_req_info`.
    pub req_info: ReqFields,
    /// Where `tsm_guest_req`'s `u64 *tsm_code` is at entry ([`ArgLoc`]; post-v5 only).
    pub tsm_guest_req_code: u32,
    /// `struct kvm` fields per function that takes one.
    pub kvm_tsm_bind: KvmOffsets,
    pub kvm_pci_tsm_bind: KvmOffsets,
    pub kvm_driver_bind: KvmOffsets,
    pub kvm_destroy_vm: KvmOffsets,
    /// `struct module::name` (the module tracepoints name the module loaded or freed).
    pub module_name: u32,
    /// `struct task_struct::mm` and `struct mm_struct::{arg_start, arg_end}`: the VMM's argv
    /// ([`crate::VmmRecord`]).
    pub task_mm: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    /// Widths and signedness of the integer members read.
    pub kinds: FieldKinds,
    /// The UAPI op values of bind and unbind (`enum iommu_vdevice_tsm_op_type` where BTF has
    /// it, else the generation's `#define`s), or [`OFFSET_UNKNOWN`]: the programs report
    /// [`aggregates::UAPI_OP_BIND`]/[`aggregates::UAPI_OP_UNBIND`] for them whatever the kernel's values.
    pub uapi_op_bind: u32,
    pub uapi_op_unbind: u32,
    /// PCIe IDE streams.
    pub ide: IdeOffsets,
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
        req_cmd: ReqFields::UNKNOWN,
        req_info: ReqFields::UNKNOWN,
        tsm_guest_req_code: OFFSET_UNKNOWN,
        kvm_tsm_bind: KvmOffsets::UNKNOWN,
        kvm_pci_tsm_bind: KvmOffsets::UNKNOWN,
        kvm_driver_bind: KvmOffsets::UNKNOWN,
        kvm_destroy_vm: KvmOffsets::UNKNOWN,
        module_name: OFFSET_UNKNOWN,
        task_mm: OFFSET_UNKNOWN,
        mm_arg_start: OFFSET_UNKNOWN,
        mm_arg_end: OFFSET_UNKNOWN,
        kinds: FieldKinds::UNKNOWN,
        uapi_op_bind: OFFSET_UNKNOWN,
        uapi_op_unbind: OFFSET_UNKNOWN,
        ide: IdeOffsets::UNKNOWN,
        ret: [ret::UNKNOWN; PROBES],
    };
}
