//! [`ProbeId`]: every probe, its stable number and name, and its programs' names.

use crate::aggregates;

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
    /// The series' guest-request ioctl handler, `int (struct iommufd_ucmd *ucmd)`: v5's
    /// `iommufd_vdevice_tsm_req_ioctl` (IOMMU_VDEVICE_TSM_REQ, 0x96), other generations'
    /// names in the compatibility table. Decodes the UAPI request `ucmd->cmd` points at.
    GuestReqIoctl = 21, "guest_req_ioctl", pair;
    /// `ssize_t tsm_guest_req(struct device *, struct tsm_guest_req_info *[, u64 *tsm_code])`
    /// (tsm-core, from the series; the third argument post-v5).
    TsmGuestReq = 22, "tsm_guest_req", pair;
    /// PCIe IDE (drivers/pci/ide.c, 6.19+): `struct pci_ide *pci_ide_stream_alloc(struct
    /// pci_dev *)`, NULL on failure (no register block or host bridge stream left).
    IdeStreamAlloc = 23, "ide_stream_alloc", pair;
    /// `int pci_ide_stream_register(struct pci_ide *)`: the stream's sysfs link
    /// `stream<H>.<R>.<E>` under its host bridge; -EBUSY (stream id in use), -ENXIO.
    IdeStreamRegister = 24, "ide_stream_register", pair;
    /// `void pci_ide_stream_setup(struct pci_dev *, struct pci_ide *)`: one partner port.
    IdeStreamSetup = 25, "ide_stream_setup", pair;
    /// `int pci_ide_stream_enable(struct pci_dev *, struct pci_ide *)`: -ENXIO when the
    /// stream did not reach the Secure state (SEV-TIO's connect ignores it).
    IdeStreamEnable = 26, "ide_stream_enable", pair;
    /// `void pci_ide_stream_disable(struct pci_dev *, struct pci_ide *)`.
    IdeStreamDisable = 27, "ide_stream_disable", pair;
    /// `void pci_ide_stream_teardown(struct pci_dev *, struct pci_ide *)`.
    IdeStreamTeardown = 28, "ide_stream_teardown", pair;
    /// `void pci_ide_stream_unregister(struct pci_ide *)`.
    IdeStreamUnregister = 29, "ide_stream_unregister", pair;
    /// `void pci_ide_stream_release(struct pci_ide *)`: undoes whatever was set up.
    IdeStreamRelease = 30, "ide_stream_release", pair;
    /// `void pci_ide_stream_free(struct pci_ide *)`.
    IdeStreamFree = 31, "ide_stream_free", pair;
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
    /// returns (sysfs writes, device removal, TSM unregistration, and the iommufd entry
    /// points). `pci_tsm_guest_req` is not one: the guest-request ioctl calls it through
    /// `tsm_guest_req`.
    pub const fn is_root(self) -> bool {
        matches!(
            self,
            ProbeId::TsmOpIoctl
                | ProbeId::VdeviceAbort
                | ProbeId::Connect
                | ProbeId::Disconnect
                | ProbeId::PciTsmDestroy
                | ProbeId::GuestReqIoctl
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
        ) || self.is_ide()
    }

    /// A step of a PCIe IDE stream's life (`pci_ide_stream_*`): the steps follow one
    /// another under the TSM driver's connect or disconnect (setup of the endpoint, then of
    /// the root port, ...).
    pub const fn is_ide(self) -> bool {
        matches!(
            self,
            ProbeId::IdeStreamAlloc
                | ProbeId::IdeStreamRegister
                | ProbeId::IdeStreamSetup
                | ProbeId::IdeStreamEnable
                | ProbeId::IdeStreamDisable
                | ProbeId::IdeStreamTeardown
                | ProbeId::IdeStreamUnregister
                | ProbeId::IdeStreamRelease
                | ProbeId::IdeStreamFree
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
