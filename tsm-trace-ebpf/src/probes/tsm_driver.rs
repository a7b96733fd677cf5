//! The TSM driver's link ops (`struct pci_tsm_ops::link_ops`): found from the compatibility
//! table for the drivers tsm-trace knows, or named with `--driver-*`. Layer `tsm_driver`.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{ARG_PCI_TDI, ProbeId, ProgError, flags};

use super::pci_tsm::{bind_entry, pdev_entry};
use super::pci_tsm_link::{guest_req_entry, read_tsm_code};
use super::{
    arg, begin, exit_code, finish_ret, finish_ret_with, pci_dev_to_dev, read_dev_name, read_tdi,
    read_tsm_name, stash,
};
use crate::read::{self, offsets};

/// `struct pci_tsm *(*probe)(struct tsm_dev *tsm_dev, struct pci_dev *pdev)`: NULL is failure.
#[kprobe]
pub fn driver_probe_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_driver_probe_entry(&ctx))
}

fn try_driver_probe_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let tsm_dev: u64 = arg(ctx, 0)?;
    let pdev: u64 = arg(ctx, 1)?;
    let mut ev = begin(ProbeId::DriverProbe)?;
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    read_tsm_name(&mut ev, tsm_dev);
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn driver_probe_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    // NULL is failure only for a pointer return (the op's prototype says which).
    let (_, f) = super::decode_ret(ProbeId::DriverProbe, ctx.ret());
    let null_is_err = if f & flags::RET_IS_PTR != 0 {
        flags::RET_NULL_IS_ERR
    } else {
        0
    };
    finish_ret_with(ProbeId::DriverProbe, ctx.ret(), null_is_err, t, |_| true);
    0
}

/// `int (*connect)(struct pci_dev *pdev)`
#[kprobe]
pub fn driver_connect_entry(ctx: ProbeContext) -> u32 {
    exit_code(pdev_entry(&ctx, ProbeId::DriverConnect))
}

#[kretprobe]
pub fn driver_connect_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::DriverConnect, ctx.ret(), t);
    0
}

/// `void (*disconnect)(struct pci_dev *pdev)`
#[kprobe]
pub fn driver_disconnect_entry(ctx: ProbeContext) -> u32 {
    exit_code(pdev_entry(&ctx, ProbeId::DriverDisconnect))
}

#[kretprobe]
pub fn driver_disconnect_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::DriverDisconnect, ctx.ret(), t);
    0
}

/// `struct pci_tdi *(*bind)(struct pci_dev *, struct kvm *, u32)` upstream (an `ERR_PTR` on
/// failure), or an `int` op: the return is decoded as the op's own BTF prototype says.
#[kprobe]
pub fn driver_bind_entry(ctx: ProbeContext) -> u32 {
    exit_code(bind_entry(
        &ctx,
        ProbeId::DriverBind,
        offsets().kvm_driver_bind,
    ))
}

#[kretprobe]
pub fn driver_bind_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::DriverBind, ctx.ret(), t);
    0
}

/// `void (*unbind)(struct pci_tdi *tdi)` upstream, or `(struct pci_dev *)`: which one the
/// op's BTF prototype says (`Offsets::drv_unbind_arg`).
#[kprobe]
pub fn driver_unbind_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_driver_unbind_entry(&ctx))
}

fn try_driver_unbind_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let o = offsets();
    if o.drv_unbind_arg != ARG_PCI_TDI {
        return pdev_entry(ctx, ProbeId::DriverUnbind);
    }
    let tdi: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::DriverUnbind)?;
    read_tdi(&mut ev, tdi);
    let pdev = read::at::<u64>("pci_tdi.pdev", tdi, o.tdi_pdev).unwrap_or(0);
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn driver_unbind_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::DriverUnbind, ctx.ret(), t);
    0
}

/// `ssize_t (*guest_req)(struct pci_tdi *, enum pci_tsm_req_scope, sockptr_t, size_t,
/// sockptr_t, size_t, u64 *tsm_code)`
#[kprobe]
pub fn driver_guest_req_entry(ctx: ProbeContext) -> u32 {
    exit_code(guest_req_entry(&ctx, ProbeId::DriverGuestReq, true))
}

#[kretprobe]
pub fn driver_guest_req_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret_with(ProbeId::DriverGuestReq, ctx.ret(), 0, t, read_tsm_code);
    0
}
