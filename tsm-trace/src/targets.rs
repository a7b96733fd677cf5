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

use crate::events::Probe;

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
    pub probe: Probe,
    /// Candidate function names, in order of preference (the first in kallsyms wins). Empty
    /// for driver ops: those come from [`KNOWN_DRIVERS`] or the command line.
    pub symbols: &'static [&'static str],
    /// Unique functions of the same source file, to tell apart same-named static functions.
    pub anchors: &'static [&'static str],
    /// Entry program (kprobe) and return program (kretprobe), by eBPF function name.
    pub entry: &'static str,
    pub ret: Option<&'static str>,
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

const fn row(
    probe: Probe,
    symbols: &'static [&'static str],
    anchors: &'static [&'static str],
    entry: &'static str,
    ret: Option<&'static str>,
    origin: &'static str,
) -> Target {
    Target {
        probe,
        symbols,
        anchors,
        entry,
        ret,
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

pub const TARGETS: &[Target] = &[
    // The same name in v2, v5 and the post-v5 proposal. (v5's `iommufd_vdevice_tsm_req_ioctl`
    // is the guest-request ioctl, IOMMU_VDEVICE_TSM_REQ: another command, never this probe.)
    row(
        Probe::TsmOpIoctl,
        &["iommufd_vdevice_tsm_op_ioctl"],
        &[],
        "tsm_op_entry",
        Some("tsm_op_return"),
        "the iommufd TSM bind patch (iommufd.ko, CONFIG_TSM=y)",
    ),
    row(
        Probe::TsmBind,
        &["tsm_bind"],
        &[],
        "tsm_bind_entry",
        Some("tsm_bind_return"),
        "the iommufd TSM bind patch (tsm-core, CONFIG_TSM=y)",
    ),
    row(
        Probe::TsmUnbind,
        &["tsm_unbind"],
        &[],
        "tsm_unbind_entry",
        Some("tsm_unbind_return"),
        "the iommufd TSM bind patch (tsm-core, CONFIG_TSM=y)",
    ),
    row(
        Probe::VdeviceAbort,
        &["iommufd_vdevice_abort"],
        &[],
        "vdev_abort_entry",
        Some("vdev_abort_return"),
        "iommufd.ko (CONFIG_IOMMUFD; unbinds on teardown only with the patch)",
    ),
    row(
        Probe::PciTsmBind,
        &["pci_tsm_bind"],
        &[],
        "pci_bind_entry",
        Some("pci_bind_return"),
        PCI_TSM_ORIGIN,
    ),
    row(
        Probe::PciTsmUnbind,
        &["pci_tsm_unbind"],
        &[],
        "pci_unbind_entry",
        Some("pci_unbind_return"),
        PCI_TSM_ORIGIN,
    ),
    builtin(row(
        Probe::Connect,
        &["connect_store"],
        PCI_TSM_C,
        "connect_entry",
        Some("connect_return"),
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static connect_store of drivers/pci/tsm.c; pci_tsm_connect is inlined)",
    )),
    builtin(row(
        Probe::Disconnect,
        &["disconnect_store"],
        PCI_TSM_C,
        "disconnect_entry",
        Some("disconnect_return"),
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static disconnect_store of drivers/pci/tsm.c)",
    )),
    builtin(row(
        Probe::PciTsmDisconnect,
        &["__pci_tsm_disconnect"],
        PCI_TSM_C,
        "pci_disconnect_entry",
        Some("pci_disconnect_return"),
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static; may be inlined)",
    )),
    builtin(row(
        Probe::PciTsmUnbindAny,
        &["__pci_tsm_unbind"],
        PCI_TSM_C,
        "pci_unbind_any_entry",
        Some("pci_unbind_any_return"),
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static; may be inlined)",
    )),
    builtin(row(
        Probe::PciTsmDestroy,
        &["__pci_tsm_destroy"],
        PCI_TSM_C,
        "pci_destroy_entry",
        Some("pci_destroy_return"),
        "Linux 6.19+ with CONFIG_PCI_TSM=y (static; may be inlined)",
    )),
    builtin(row(
        Probe::PciTsmGuestReq,
        &["pci_tsm_guest_req"],
        &[],
        "guest_req_entry_pci",
        Some("guest_req_return_pci"),
        PCI_TSM_ORIGIN,
    )),
    row(
        Probe::DriverProbe,
        &[],
        &[],
        "drv_probe_entry",
        Some("drv_probe_return"),
        "a TSM driver's link probe op (known drivers, or --driver-probe)",
    ),
    row(
        Probe::DriverConnect,
        &[],
        &[],
        "drv_connect_entry",
        Some("drv_connect_return"),
        "a TSM driver's link connect op (known drivers, or --driver-connect)",
    ),
    row(
        Probe::DriverDisconnect,
        &[],
        &[],
        "drv_disconnect_entry",
        Some("drv_disconnect_return"),
        "a TSM driver's link disconnect op (known drivers, or --driver-disconnect)",
    ),
    row(
        Probe::DriverBind,
        &[],
        &[],
        "drv_bind_entry",
        Some("drv_bind_return"),
        "a TSM driver's bind op (known drivers, or --driver-bind)",
    ),
    row(
        Probe::DriverUnbind,
        &[],
        &[],
        "drv_unbind_entry",
        Some("drv_unbind_return"),
        "a TSM driver's unbind op (known drivers, or --driver-unbind)",
    ),
    row(
        Probe::DriverGuestReq,
        &[],
        &[],
        "drv_guest_req_entry",
        Some("drv_guest_req_return"),
        "a TSM driver's guest_req op (known drivers, or --driver-guest-req)",
    ),
    row(
        Probe::KvmDestroyVm,
        &["kvm_destroy_vm"],
        &[],
        "kvm_destroy_entry",
        None,
        "kvm.ko (static; missing if the compiler inlined it or kvm is not loaded)",
    ),
    row(
        Probe::VmmExit,
        &["sched_process_exit"],
        &[],
        "vmm_exit",
        None,
        "the sched_process_exit raw tracepoint",
    ),
    row(
        Probe::ModuleLoad,
        &["module_load"],
        &[],
        "module_load",
        None,
        "the module_load raw tracepoint (re-attach after module loads)",
    ),
];

pub fn target(probe: Probe) -> &'static Target {
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
/// v5's guest-request ioctl handler (IOMMU_VDEVICE_TSM_REQ, 0x96).
pub const GUEST_REQ_IOCTL: &str = "iommufd_vdevice_tsm_req_ioctl";
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
    pub ops: &'static [(Probe, &'static str)],
}

pub const KNOWN_DRIVERS: &[KnownDriver] = &[
    // drivers/crypto/ccp/sev-dev-tsm.c (mainline): no bind/unbind/guest_req upstream yet.
    KnownDriver {
        name: "AMD SEV-TIO",
        module: Some("ccp"),
        ops: &[
            (Probe::DriverProbe, "dsm_probe"),
            (Probe::DriverConnect, "dsm_connect"),
            (Probe::DriverDisconnect, "dsm_disconnect"),
        ],
    },
    // drivers/virt/coco/arm-cca-host/ in public forks (not mainline).
    KnownDriver {
        name: "Arm CCA",
        module: None,
        ops: &[
            (Probe::DriverProbe, "cca_tsm_pci_probe"),
            (Probe::DriverConnect, "cca_tsm_connect"),
            (Probe::DriverDisconnect, "cca_tsm_disconnect"),
            (Probe::DriverBind, "cca_tsm_bind"),
            (Probe::DriverUnbind, "cca_tsm_unbind"),
            (Probe::DriverGuestReq, "cca_tsm_guest_req"),
        ],
    },
    // Intel TDX Connect (not mainline).
    KnownDriver {
        name: "Intel TDX Connect",
        module: None,
        ops: &[
            (Probe::DriverProbe, "tdx_tsm_link_probe"),
            (Probe::DriverConnect, "tdx_tsm_link_connect"),
            (Probe::DriverDisconnect, "tdx_tsm_link_disconnect"),
        ],
    },
];

/// The known drivers' functions for one driver op, in table order.
pub fn driver_candidates(probe: Probe) -> Vec<Candidate<'static>> {
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
        for p in Probe::ALL {
            assert_eq!(TARGETS.iter().filter(|t| t.probe == p).count(), 1, "{p:?}");
        }
    }

    #[test]
    fn known_driver_ops_are_driver_probes() {
        for d in KNOWN_DRIVERS {
            for (p, _) in d.ops {
                assert_eq!(p.layer(), crate::events::Layer::TsmDriver, "{}", d.name);
            }
        }
        let c = driver_candidates(Probe::DriverConnect);
        assert_eq!(c[0].name, "dsm_connect");
        assert_eq!(c[0].module, Some("ccp"));
    }
}
