//! [`RawEvent`]: one completed call as the kernel reports it, with its flag and missing-field bits.

use crate::{COMM_LEN, DEV_NAME_LEN, IDE_NAME_LEN, STATS_ID_LEN, TSM_NAME_LEN};

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
    /// The guest request's kind (scope, or op and tvm_arch) at the iommufd or tsm-core
    /// layer: its member resolved but unreadable, or unresolved.
    pub const REQ_KIND: u32 = 1 << 13;
    /// The VMM's argv ([`crate::VmmRecord`]): `task_struct.mm` or `mm_struct.arg_start`/
    /// `arg_end` unresolved, a task without mm, or a faulted read.
    pub const VMM_ARGV: u32 = 1 << 14;
    /// An IDE stream's numbers (`stream_id`, `host_bridge_stream`, both partners'
    /// `stream_index`): unresolved, unreadable, or no stream (an alloc that failed).
    pub const IDE_STREAM: u32 = 1 << 15;
    /// An IDE stream's sysfs name: resolved but unreadable, or unresolved.
    pub const IDE_NAME: u32 = 1 << 16;
    /// An IDE stream's endpoint (`dev_name(&ide->pdev->dev)`).
    pub const IDE_ENDPOINT: u32 = 1 << 17;
}

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
    /// A guest request's `scope` was read (`RawEvent::scope`).
    pub const REQ_SCOPE: u32 = 1 << 7;
    /// A guest request's `op` and `tvm_arch` were read (post-v5: `RawEvent::op`,
    /// `RawEvent::tvm_arch`).
    pub const REQ_OP: u32 = 1 << 8;
    /// An IDE stream without a sysfs name yet (not registered): `ide_name` is empty, and
    /// that is what the kernel has, not a failed read.
    pub const IDE_UNNAMED: u32 = 1 << 9;
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
    /// Guest requests: `enum pci_tsm_req_scope`, or the UAPI/tsm-core `scope` (v2, v5).
    pub scope: u32,
    /// Guest requests post-v5: the request's `tvm_arch` (its `op` is in `op`). Was padding
    /// (always 0) before: the record layout is unchanged.
    pub tvm_arch: u32,
    /// The TSM (`tsmN`): from `pdev->tsm->tsm_dev`, a `tsm_dev *` argument, or the name
    /// written to `tsm/connect` / `tsm/disconnect`.
    pub tsm_name: [u8; TSM_NAME_LEN],
    /// Kernel-side only: the `struct pci_ide *` an entry parks for its return to read
    /// (`pci_ide_stream_register`); always 0 in a record that leaves the kernel.
    pub ide_ptr: u64,
    /// PCIe IDE: `pci_ide::stream_id` (-1: not assigned yet).
    pub ide_stream_id: i32,
    /// `pci_ide::host_bridge_stream`: the host bridge's stream index (`<H>` in the name).
    pub ide_hb_stream: u32,
    /// `pci_ide::partner[PCI_IDE_EP].stream_index`, the endpoint's register block (`<E>`).
    pub ide_ep_index: u32,
    /// `pci_ide::partner[PCI_IDE_RP].stream_index`, the root port's register block (`<R>`).
    pub ide_rp_index: u32,
    /// `pci_ide::name`, the stream's sysfs name (`stream<H>.<R>.<E>`; empty before
    /// registration: [`flags::IDE_UNNAMED`]).
    pub ide_name: [u8; IDE_NAME_LEN],
    /// The stream's endpoint: `dev_name(&ide->pdev->dev)`.
    pub ide_endpoint: [u8; DEV_NAME_LEN],
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
            tvm_arch: 0,
            tsm_name: [0; TSM_NAME_LEN],
            ide_ptr: 0,
            ide_stream_id: 0,
            ide_hb_stream: 0,
            ide_ep_index: 0,
            ide_rp_index: 0,
            ide_name: [0; IDE_NAME_LEN],
            ide_endpoint: [0; DEV_NAME_LEN],
        }
    }
}
