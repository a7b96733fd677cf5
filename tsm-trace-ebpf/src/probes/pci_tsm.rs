//! PCI TSM (upstream since 6.19): `pci_tsm_bind` / `pci_tsm_unbind`.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{KvmOffsets, ProbeId, ProgError};

use super::{
    arg, begin, decode_ret, exit_code, finish, finish_ret, note_vmm, pci_dev_to_dev, read_dev_name,
    read_kvm, stash,
};
use crate::read::offsets;

/// Shared by `pci_tsm_bind` and driver bind ops: `(struct pci_dev *, struct kvm *, u32 tdi_id)`.
#[inline(always)]
pub fn bind_entry(
    ctx: &ProbeContext,
    probe: ProbeId,
    kvm_off: KvmOffsets,
) -> Result<(), ProgError> {
    let pdev: u64 = arg(ctx, 0)?;
    let kvm: u64 = arg(ctx, 1)?;
    let tdi_id: u64 = arg(ctx, 2)?;
    let mut ev = begin(probe)?;
    super::emit_vmm_argv(probe);
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    read_kvm(&mut ev, kvm, kvm_off);
    ev.tdi_id = tdi_id as u32 as u64;
    stash(ev);
    Ok(())
}

/// Any `(struct pci_dev *, ...)` function: the device name only.
#[inline(always)]
pub fn pdev_entry(ctx: &ProbeContext, probe: ProbeId) -> Result<(), ProgError> {
    let pdev: u64 = arg(ctx, 0)?;
    let mut ev = begin(probe)?;
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    stash(ev);
    Ok(())
}

/// `int pci_tsm_bind(struct pci_dev *pdev, struct kvm *kvm, u32 tdi_id)`
#[kprobe]
pub fn pci_tsm_bind_entry(ctx: ProbeContext) -> u32 {
    exit_code(bind_entry(
        &ctx,
        ProbeId::PciTsmBind,
        offsets().kvm_pci_tsm_bind,
    ))
}

#[kretprobe]
pub fn pci_tsm_bind_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    let (rc, f) = decode_ret(ProbeId::PciTsmBind, ctx.ret());
    if rc == 0 && f & tsm_trace_common::flags::RET_VOID == 0 {
        note_vmm();
    }
    finish(ProbeId::PciTsmBind, rc, f, t);
    0
}

/// `void pci_tsm_unbind(struct pci_dev *pdev)`
#[kprobe]
pub fn pci_tsm_unbind_entry(ctx: ProbeContext) -> u32 {
    exit_code(pdev_entry(&ctx, ProbeId::PciTsmUnbind))
}

#[kretprobe]
pub fn pci_tsm_unbind_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::PciTsmUnbind, ctx.ret(), t);
    0
}
