//! The TSM driver's link ops (`struct pci_tsm_ops::link_ops`): found from the compatibility
//! table for the drivers tsm-trace knows, or named with `--driver-*`. Layer `tsm_driver`.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{ARG_PCI_TDI, ProbeId, flags};

use super::{
    VOID, begin, finish, finish_with, int_ret, pci_dev_to_dev, read_dev_name, read_tdi,
    read_tsm_name, stash,
};
use super::pci_tsm::{bind_entry, pdev_entry};
use super::pci_tsm_link::{guest_req_entry, read_tsm_code};
use crate::read::{self, offsets};

/// `struct pci_tsm *(*probe)(struct tsm_dev *tsm_dev, struct pci_dev *pdev)`: NULL is failure.
#[kprobe]
pub fn drv_probe_entry(ctx: ProbeContext) -> u32 {
    try_drv_probe_entry(&ctx).unwrap_or(1)
}

fn try_drv_probe_entry(ctx: &ProbeContext) -> Option<u32> {
    let tsm_dev: u64 = ctx.arg(0)?;
    let pdev: u64 = ctx.arg(1)?;
    let ev = begin(ProbeId::DriverProbe)?;
    read_dev_name(ev, pci_dev_to_dev(pdev));
    read_tsm_name(ev, tsm_dev);
    stash(ev);
    Some(0)
}

#[kretprobe]
pub fn drv_probe_return(ctx: RetProbeContext) -> u32 {
    let raw: u64 = ctx.ret();
    finish(
        ProbeId::DriverProbe,
        raw as i64,
        flags::RET_IS_PTR | flags::RET_NULL_IS_ERR,
    );
    0
}

/// `int (*connect)(struct pci_dev *pdev)`
#[kprobe]
pub fn drv_connect_entry(ctx: ProbeContext) -> u32 {
    pdev_entry(&ctx, ProbeId::DriverConnect).unwrap_or(1)
}

#[kretprobe]
pub fn drv_connect_return(ctx: RetProbeContext) -> u32 {
    finish(ProbeId::DriverConnect, int_ret(ctx.ret()), 0);
    0
}

/// `void (*disconnect)(struct pci_dev *pdev)`
#[kprobe]
pub fn drv_disconnect_entry(ctx: ProbeContext) -> u32 {
    pdev_entry(&ctx, ProbeId::DriverDisconnect).unwrap_or(1)
}

#[kretprobe]
pub fn drv_disconnect_return(_ctx: RetProbeContext) -> u32 {
    finish(ProbeId::DriverDisconnect, 0, VOID);
    0
}

/// `struct pci_tdi *(*bind)(struct pci_dev *, struct kvm *, u32)`: an `ERR_PTR` on failure.
#[kprobe]
pub fn drv_bind_entry(ctx: ProbeContext) -> u32 {
    bind_entry(&ctx, ProbeId::DriverBind, offsets().kvm_driver_bind).unwrap_or(1)
}

#[kretprobe]
pub fn drv_bind_return(ctx: RetProbeContext) -> u32 {
    let raw: u64 = ctx.ret();
    finish(ProbeId::DriverBind, raw as i64, flags::RET_IS_PTR);
    0
}

/// `void (*unbind)(struct pci_tdi *tdi)` upstream, or `(struct pci_dev *)`: which one the
/// op's BTF prototype says (`Offsets::drv_unbind_arg`).
#[kprobe]
pub fn drv_unbind_entry(ctx: ProbeContext) -> u32 {
    try_drv_unbind_entry(&ctx).unwrap_or(1)
}

fn try_drv_unbind_entry(ctx: &ProbeContext) -> Option<u32> {
    let o = offsets();
    if o.drv_unbind_arg != ARG_PCI_TDI {
        return pdev_entry(ctx, ProbeId::DriverUnbind);
    }
    let tdi: u64 = ctx.arg(0)?;
    let ev = begin(ProbeId::DriverUnbind)?;
    read_tdi(ev, tdi);
    let pdev = read::at::<u64>(tdi, o.tdi_pdev).unwrap_or(0);
    read_dev_name(ev, pci_dev_to_dev(pdev));
    stash(ev);
    Some(0)
}

#[kretprobe]
pub fn drv_unbind_return(_ctx: RetProbeContext) -> u32 {
    finish(ProbeId::DriverUnbind, 0, VOID);
    0
}

/// `ssize_t (*guest_req)(struct pci_tdi *, enum pci_tsm_req_scope, sockptr_t, size_t,
/// sockptr_t, size_t, u64 *tsm_code)`
#[kprobe]
pub fn drv_guest_req_entry(ctx: ProbeContext) -> u32 {
    guest_req_entry(&ctx, ProbeId::DriverGuestReq, true).unwrap_or(1)
}

#[kretprobe]
pub fn drv_guest_req_return(ctx: RetProbeContext) -> u32 {
    let raw: u64 = ctx.ret();
    finish_with(
        ProbeId::DriverGuestReq,
        raw as i64,
        flags::RET_IS_LONG,
        read_tsm_code,
    );
    0
}
