//! The compatibility table: every kernel function tsm-trace may attach to, the names other
//! kernel versions and the patch series give it, and where it comes from (for "why is this
//! missing" messages). Known names of other kernels live here and nowhere else.
//!
//! - The iommufd TSM patch (not merged): absent from released kernels.
//! - PCI TSM (drivers/pci/tsm.c, Linux 6.19+, CONFIG_PCI_TSM=y): `pci_tsm_*` globals, and the
//!   static functions the sysfs files and teardown run through (`connect_store`, ...). Static
//!   names exist in other subsystems too: `anchors` are unique globals of the same source file,
//!   so the copy of drivers/pci/tsm.c is the one attached ([`super::Kallsyms::find_in`]).
//! - TSM drivers' link ops: [`KNOWN_DRIVERS`], names from each driver's source, or
//!   `--driver-*` for any other driver.
//! - KVM and process lifetime.

use super::kallsyms::Candidate;
use crate::events::Probe;

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
    // v2/v4 name; v5 renames the ioctl IOMMU_VDEVICE_TSM_REQ.
    row(
        Probe::TsmOpIoctl,
        &[
            "iommufd_vdevice_tsm_op_ioctl",
            "iommufd_vdevice_tsm_req_ioctl",
        ],
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
