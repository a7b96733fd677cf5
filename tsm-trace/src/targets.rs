//! The compatibility table: every kernel function tsm-trace may attach to, the names other
//! kernel versions and the patch series give it, and where it comes from (for "why is this
//! missing" messages). Known names of other kernels live here and nowhere else.
//!
//! - The iommufd TSM patch (not merged): absent from released kernels.
//! - PCI TSM (drivers/pci/tsm.c, Linux 6.19+, CONFIG_PCI_TSM=y): `pci_tsm_*` globals, and the
//!   static functions the sysfs files and teardown run through (`connect_store`, ...). Static
//!   names exist in other subsystems too: `anchors` are unique globals of the same source file,
//!   so the copy of drivers/pci/tsm.c is the one attached (`Kallsyms::find_in` in probes).
//! - TSM drivers' link ops: [`KNOWN_DRIVERS`], names from each driver's source, or
//!   `--driver-*` for any other driver.
//! - KVM and process lifetime.
//! - [`GENERATIONS`]: how each posted version of the iommufd TSM series shows in BTF (UAPI
//!   members, struct members, prototypes), for telling which one a kernel carries.

use crate::events::ProbeId;

/// A function name to look for, optionally only in one module (`Some("ccp")`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub module: Option<&'a str>,
}

impl<'a> Candidate<'a> {
    pub const fn any(name: &'a str) -> Candidate<'a> {
        Candidate { name, module: None }
    }
}

/// One row of the compatibility table.
pub struct Target {
    pub probe: ProbeId,
    /// Candidate function names, in order of preference (the first in kallsyms wins). Empty
    /// for driver ops: those come from [`KNOWN_DRIVERS`] or the command line.
    pub symbols: &'static [&'static str],
    /// Unique functions of the same source file, to tell apart same-named static functions.
    pub anchors: &'static [&'static str],
    /// Where the function comes from, for "why is this missing" messages.
    pub origin: &'static str,
    /// The function can only be in vmlinux (drivers/pci/tsm.c is built in: CONFIG_PCI_TSM is
    /// a bool): a module load never brings it, so nothing waits for it.
    pub vmlinux_only: bool,
}

/// Exported functions of drivers/pci/tsm.c (global in every kernel that has the file).
const PCI_TSM_C: &[&str] = &[
    "pci_tsm_bind",
    "pci_tsm_unbind",
    "pci_tsm_guest_req",
    "pci_tsm_tdi_constructor",
    "pci_tsm_link_constructor",
    "pci_tsm_pf0_constructor",
    "pci_tsm_pf0_destructor",
    "pci_tsm_doe_transfer",
];

const PCI_TSM_ORIGIN: &str = "Linux 6.19+ with CONFIG_PCI_TSM=y (drivers/pci/tsm.c)";

/// The kernel's PCIe IDE API (drivers/pci/ide.c; CONFIG_PCI_IDE is a bool, selected with
/// PCI_TSM): absent before 6.19.
const PCI_IDE_ORIGIN: &str = "Linux 6.19+ with CONFIG_PCI_IDE=y (drivers/pci/ide.c, the PCIe IDE stream API a TSM driver's connect calls)";

/// A row; its programs are named after the probe (`ProbeId::entry_program`,
/// `ProbeId::return_program`).
const fn row(
    probe: ProbeId,
    symbols: &'static [&'static str],
    anchors: &'static [&'static str],
    origin: &'static str,
) -> Target {
    Target {
        probe,
        symbols,
        anchors,
        origin,
        vmlinux_only: false,
    }
}

/// A row for a function only vmlinux can have (see [`Target::vmlinux_only`]).
const fn builtin(t: Target) -> Target {
    Target {
        vmlinux_only: true,
        ..t
    }
}

/// The guest-request ioctl handler (0x96) by generation: v5 and the post-v5 proposal name it
/// `iommufd_vdevice_tsm_req_ioctl` (IOMMU_VDEVICE_TSM_REQ); v2 3/3 and v4 name the command
/// IOMMU_VDEVICE_TSM_GUEST_REQUEST (`struct iommu_vdevice_tsm_guest_request`), whose handler
/// follows iommufd's `<command>_ioctl` naming. Newest first.
pub const GUEST_REQ_IOCTLS: &[&str] = &[
    "iommufd_vdevice_tsm_req_ioctl",
    "iommufd_vdevice_tsm_guest_request_ioctl",
];

/// The guest request's UAPI command, by generation (newest first): v5/post-v5, v2 3/3/v4.
pub const GUEST_REQ_UAPI_STRUCTS: &[&str] =
    &["iommu_vdevice_tsm_req", "iommu_vdevice_tsm_guest_request"];

/// tsm-core's request info (`tsm_guest_req`'s second parameter; found through its prototype,
/// this name only when BTF lacks the function).
pub const GUEST_REQ_INFO_STRUCT: &str = "tsm_guest_req_info";

/// The enum of `pci_tsm_guest_req`'s scope (upstream, vmlinux): scope names come from it.
pub const PCI_TSM_SCOPE_ENUM: &str = "pci_tsm_req_scope";

pub const TARGETS: &[Target] = &[
    // The same name in v2, v5 and the post-v5 proposal. (The guest-request ioctl, 0x96, is
    // another command: [`ProbeId::GuestReqIoctl`].)
    row(
        ProbeId::TsmOpIoctl,
        &["iommufd_vdevice_tsm_op_ioctl"],
        &[],
        "the iommufd TSM bind patch (iommufd.ko, CONFIG_TSM=y)",
    ),
    row(
        ProbeId::TsmBind,
        &["tsm_bind"],
        &[],
        "the iommufd TSM bind patch (tsm-core, CONFIG_TSM=y)",
    ),
    row(
        ProbeId::TsmUnbind,
        &["tsm_unbind"],
        &[],
        "the iommufd TSM bind patch (tsm-core, CONFIG_TSM=y)",
    ),
    row(
        ProbeId::VdeviceAbort,
        &["iommufd_vdevice_abort"],
        &[],
        "iommufd.ko (CONFIG_IOMMUFD; unbinds on teardown only with the patch)",
    ),
    row(ProbeId::PciTsmBind, &["pci_tsm_bind"], &[], PCI_TSM_ORIGIN),
    row(
        ProbeId::PciTsmUnbind,
        &["pci_tsm_unbind"],
        &[],
        PCI_TSM_ORIGIN,
    ),
    builtin(row(
        ProbeId::Connect,
        &["connect_store"],
        PCI_TSM_C,
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static connect_store of drivers/pci/tsm.c; pci_tsm_connect is inlined)",
    )),
    builtin(row(
        ProbeId::Disconnect,
        &["disconnect_store"],
        PCI_TSM_C,
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static disconnect_store of drivers/pci/tsm.c)",
    )),
    builtin(row(
        ProbeId::PciTsmDisconnect,
        &["__pci_tsm_disconnect"],
        PCI_TSM_C,
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static; may be inlined)",
    )),
    builtin(row(
        ProbeId::PciTsmUnbindAny,
        &["__pci_tsm_unbind"],
        PCI_TSM_C,
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static; may be inlined)",
    )),
    builtin(row(
        ProbeId::PciTsmDestroy,
        &["__pci_tsm_destroy"],
        PCI_TSM_C,
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static; may be inlined)",
    )),
    row(
        ProbeId::GuestReqIoctl,
        GUEST_REQ_IOCTLS,
        &[],
        "the iommufd TSM series' guest-request ioctl (v2 3/3, v5, post-v5; iommufd.ko)",
    ),
    row(
        ProbeId::TsmGuestReq,
        &["tsm_guest_req"],
        &[],
        "the iommufd TSM series' guest request (tsm-core, CONFIG_TSM=y)",
    ),
    builtin(row(
        ProbeId::PciTsmGuestReq,
        &["pci_tsm_guest_req"],
        &[],
        PCI_TSM_ORIGIN,
    )),
    row(
        ProbeId::DriverProbe,
        &[],
        &[],
        "a TSM driver's link probe op (known drivers, or --driver-probe)",
    ),
    row(
        ProbeId::DriverConnect,
        &[],
        &[],
        "a TSM driver's link connect op (known drivers, or --driver-connect)",
    ),
    row(
        ProbeId::DriverDisconnect,
        &[],
        &[],
        "a TSM driver's link disconnect op (known drivers, or --driver-disconnect)",
    ),
    row(
        ProbeId::DriverBind,
        &[],
        &[],
        "a TSM driver's bind op (known drivers, or --driver-bind)",
    ),
    row(
        ProbeId::DriverUnbind,
        &[],
        &[],
        "a TSM driver's unbind op (known drivers, or --driver-unbind)",
    ),
    row(
        ProbeId::DriverGuestReq,
        &[],
        &[],
        "a TSM driver's guest_req op (known drivers, or --driver-guest-req)",
    ),
    row(
        ProbeId::KvmDestroyVm,
        &["kvm_destroy_vm"],
        &[],
        "kvm.ko (static; missing if the compiler inlined it or kvm is not loaded)",
    ),
    row(
        ProbeId::VmmExit,
        &["sched_process_exit"],
        &[],
        "the sched_process_exit raw tracepoint",
    ),
    row(
        ProbeId::ModuleLoad,
        &["module_load"],
        &[],
        "the module_load raw tracepoint (re-attach after module loads)",
    ),
    builtin(row(
        ProbeId::IdeStreamAlloc,
        &["pci_ide_stream_alloc"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamRegister,
        &["pci_ide_stream_register"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamSetup,
        &["pci_ide_stream_setup"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamEnable,
        &["pci_ide_stream_enable"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamDisable,
        &["pci_ide_stream_disable"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamTeardown,
        &["pci_ide_stream_teardown"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamUnregister,
        &["pci_ide_stream_unregister"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamRelease,
        &["pci_ide_stream_release"],
        &[],
        PCI_IDE_ORIGIN,
    )),
    builtin(row(
        ProbeId::IdeStreamFree,
        &["pci_ide_stream_free"],
        &[],
        PCI_IDE_ORIGIN,
    )),
];

/// Program names of earlier versions, from before each program was named after its probe
/// (`pci_bind_entry` is now `pci_tsm_bind_entry`): links they pinned are still ours, to hand
/// over from, to tell apart from other tools' programs, and for `tsm-trace unpin` to remove.
/// Add a name here whenever a program is renamed; never remove one.
pub const LEGACY_PROGRAMS: &[&str] = &[
    "tsm_op_entry",
    "tsm_op_return",
    "vdev_abort_entry",
    "vdev_abort_return",
    "pci_bind_entry",
    "pci_bind_return",
    "pci_unbind_entry",
    "pci_unbind_return",
    "pci_disconnect_entry",
    "pci_disconnect_return",
    "pci_unbind_any_entry",
    "pci_unbind_any_return",
    "pci_destroy_entry",
    "pci_destroy_return",
    "guest_req_entry_pci",
    "guest_req_return_pci",
    "drv_probe_entry",
    "drv_probe_return",
    "drv_connect_entry",
    "drv_connect_return",
    "drv_disconnect_entry",
    "drv_disconnect_return",
    "drv_bind_entry",
    "drv_bind_return",
    "drv_unbind_entry",
    "drv_unbind_return",
    "drv_guest_req_entry",
    "drv_guest_req_return",
    "kvm_destroy_entry",
];

pub fn target(probe: ProbeId) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.probe == probe)
        .expect("every probe has a row in TARGETS")
}

/// One posted generation of the iommufd TSM series (none is merged; v3 was never posted, v4
/// is not told apart), as its BTF shows it. A kernel carries the first row whose every known
/// trait it shows; a trait BTF cannot show (a struct absent) is not held against a row.
pub struct Generation {
    /// `tsm_trace_kernel_info{tsm_patch}`.
    pub name: &'static str,
    /// The member of [`UAPI_OP_STRUCT`] that carries bind/unbind.
    pub uapi_op_member: &'static str,
    /// The member of [`VIOMMU_STRUCT`] holding the VM's KVM file.
    pub viommu_kvm_member: &'static str,
    /// Parameters of [`TSM_GUEST_REQ`] (`None`: the generation has no such function).
    pub guest_req_params: Option<usize>,
    /// The enum whose [`OP_BIND`]/[`OP_UNBIND`] enumerators give the op values (`None`: the
    /// values are `#define`s, not in BTF).
    pub op_enum: Option<&'static str>,
    /// The `#define` values, used where the enum is not in BTF.
    pub op_values: (u32, u32),
    /// Where the generation comes from, for `check`.
    pub origin: &'static str,
}

/// The UAPI command of the bind/unbind ioctl (IOMMU_VDEVICE_TSM_OP, 0x95) in every generation.
pub const UAPI_OP_STRUCT: &str = "iommu_vdevice_tsm_op";
/// The vIOMMU object (patch 1/3 adds its KVM file).
pub const VIOMMU_STRUCT: &str = "iommufd_viommu";
/// The TSM core's guest-request helper (v5 onwards).
pub const TSM_GUEST_REQ: &str = "tsm_guest_req";
/// Enumerators of the op enum (v5 onwards) and names of the v2 `#define`s.
pub const OP_BIND: &str = "IOMMU_VDEVICE_TSM_BIND";
pub const OP_UNBIND: &str = "IOMMU_VDEVICE_TSM_UNBIND";
/// Functions only the patch series defines: any of them means a kernel carries some version.
pub const PATCH_FUNCTIONS: &[&str] = &["iommufd_vdevice_tsm_op_ioctl", "tsm_bind", "tsm_unbind"];
/// Upstream PCI TSM (Linux 6.19+): this function in vmlinux.
pub const PCI_TSM_FUNCTION: &str = "pci_tsm_bind";

/// Most specific first.
pub const GENERATIONS: &[Generation] = &[
    // June 2026 uAPI proposal on top of v5: `op`/`tvm_arch` in the request, and
    // `tsm_guest_req(dev, info, u64 *tsm_code)`.
    Generation {
        name: "post-v5",
        uapi_op_member: "type",
        viommu_kvm_member: "kvm_file",
        guest_req_params: Some(3),
        op_enum: Some("iommu_vdevice_tsm_op_type"),
        op_values: (1, 2),
        origin: "the June 2026 uAPI proposal on top of v5",
    },
    // v5 (May 2026): `type` from `enum iommu_vdevice_tsm_op_type`, `viommu->kvm_file`,
    // IOMMU_VDEVICE_TSM_REQ with `tsm_guest_req(struct device *, struct tsm_guest_req_info *)`.
    Generation {
        name: "v5",
        uapi_op_member: "type",
        viommu_kvm_member: "kvm_file",
        guest_req_params: Some(2),
        op_enum: Some("iommu_vdevice_tsm_op_type"),
        op_values: (1, 2),
        origin: "[PATCH v5] iommufd/tsm (May 2026)",
    },
    // v2 (March 2026, the seed): `op` with `#define IOMMU_VDEVICE_TSM_BIND 0x1`/`UNBIND 0x2`,
    // `viommu->kvm_filp`.
    Generation {
        name: "v2",
        uapi_op_member: "op",
        viommu_kvm_member: "kvm_filp",
        guest_req_params: None,
        op_enum: None,
        op_values: (1, 2),
        origin: "[PATCH v2 2/3] iommufd/tsm: add vdevice TSM bind/unbind ioctl (March 2026)",
    },
];

/// A TSM driver tsm-trace knows: its `struct pci_tsm_ops` link ops by name, from its source.
/// `module`: the object that must define them (`None`: wherever the kernel has them, e.g. in
/// out-of-tree forks whose module name varies). Each op's BTF prototype is checked against
/// the `struct pci_tsm_ops` member before it is decoded.
pub struct KnownDriver {
    pub name: &'static str,
    pub module: Option<&'static str>,
    pub ops: &'static [(ProbeId, &'static str)],
    /// Globs of its internal functions (`trace --deep-known`): the steps inside its ops.
    pub internals: &'static [&'static str],
}

pub const KNOWN_DRIVERS: &[KnownDriver] = &[
    // drivers/crypto/ccp/sev-dev-tsm.c (mainline): no bind/unbind/guest_req upstream yet.
    KnownDriver {
        name: "AMD SEV-TIO",
        module: Some("ccp"),
        ops: &[
            (ProbeId::DriverProbe, "dsm_probe"),
            (ProbeId::DriverConnect, "dsm_connect"),
            (ProbeId::DriverDisconnect, "dsm_disconnect"),
        ],
        // sev_tio_dev_connect, sev_tio_spdm_cmd, sev_tio_dev_disconnect, sev_tio_dev_reclaim...
        internals: &["sev_tio_*"],
    },
    // drivers/virt/coco/arm-cca-host/ in public forks (not mainline).
    KnownDriver {
        name: "Arm CCA",
        module: None,
        ops: &[
            (ProbeId::DriverProbe, "cca_tsm_pci_probe"),
            (ProbeId::DriverConnect, "cca_tsm_connect"),
            (ProbeId::DriverDisconnect, "cca_tsm_disconnect"),
            (ProbeId::DriverBind, "cca_tsm_bind"),
            (ProbeId::DriverUnbind, "cca_tsm_unbind"),
            (ProbeId::DriverGuestReq, "cca_tsm_guest_req"),
        ],
        internals: &[],
    },
    // Intel TDX Connect (not mainline).
    KnownDriver {
        name: "Intel TDX Connect",
        module: None,
        ops: &[
            (ProbeId::DriverProbe, "tdx_tsm_link_probe"),
            (ProbeId::DriverConnect, "tdx_tsm_link_connect"),
            (ProbeId::DriverDisconnect, "tdx_tsm_link_disconnect"),
        ],
        internals: &["tdx_spdm_*"],
    },
];

/// The known drivers' functions for one driver op, in table order.
pub fn driver_candidates(probe: ProbeId) -> Vec<Candidate<'static>> {
    KNOWN_DRIVERS
        .iter()
        .flat_map(|d| {
            d.ops
                .iter()
                .filter(move |(p, _)| *p == probe)
                .map(move |(_, name)| Candidate {
                    name,
                    module: d.module,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_has_one_row() {
        for p in ProbeId::ALL {
            assert_eq!(TARGETS.iter().filter(|t| t.probe == p).count(), 1, "{p:?}");
        }
    }

    #[test]
    fn known_driver_ops_are_driver_probes() {
        for d in KNOWN_DRIVERS {
            for (p, _) in d.ops {
                assert_eq!(
                    crate::events::Layer::of(*p),
                    crate::events::Layer::TsmDriver,
                    "{}",
                    d.name
                );
            }
        }
        let c = driver_candidates(ProbeId::DriverConnect);
        assert_eq!(c[0].name, "dsm_connect");
        assert_eq!(c[0].module, Some("ccp"));
    }
}
