//! The rest of the PCI TSM lifecycle in drivers/pci/tsm.c: connect and disconnect through
//! sysfs, the internal disconnect and unbind that removal and TSM unregistration also reach,
//! device removal / TSM unregistration themselves, and guest requests.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{ProbeId, ProgError, RawEvent, flags, missing};

use super::{
    arg, args::arg_at, begin, exit_code, finish_ret, finish_ret_with, pci_dev_to_dev, pci_tsm_of,
    read_dev_name, read_tdi, read_tsm_name, stash,
};
use crate::read::{self, offsets};

/// `ssize_t {connect,disconnect}_store(struct device *dev, struct device_attribute *attr,
/// const char *buf, size_t len)`: the device, and the TSM name the user wrote.
#[inline(always)]
fn store_entry(ctx: &ProbeContext, probe: ProbeId) -> Result<(), ProgError> {
    let dev: u64 = arg(ctx, 0)?;
    let buf: u64 = arg(ctx, 2)?;
    let mut ev = begin(probe)?;
    read_dev_name(&mut ev, dev);
    if read::str_at("sysfs write buffer", buf, 0, &mut ev.tsm_name).is_err() {
        ev.missing |= missing::TSM_NAME;
    }
    stash(ev);
    Ok(())
}

#[kprobe]
pub fn connect_entry(ctx: ProbeContext) -> u32 {
    exit_code(store_entry(&ctx, ProbeId::Connect))
}

#[kretprobe]
pub fn connect_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::Connect, ctx.ret(), t);
    0
}

#[kprobe]
pub fn disconnect_entry(ctx: ProbeContext) -> u32 {
    exit_code(store_entry(&ctx, ProbeId::Disconnect))
}

#[kretprobe]
pub fn disconnect_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::Disconnect, ctx.ret(), t);
    0
}

/// Fills the TSM name from `pdev->tsm->tsm_dev`; returns `pdev->tsm` (0: no TSM context).
#[inline(always)]
fn read_context(ev: &mut RawEvent, pdev: u64) -> u64 {
    match pci_tsm_of(pdev) {
        Ok(0) => {
            ev.missing |= missing::TSM_NAME;
            0
        }
        Ok(tsm) => {
            match read::at::<u64>("pci_tsm.tsm_dev", tsm, offsets().pci_tsm_tsm_dev) {
                Ok(tsm_dev) => read_tsm_name(ev, tsm_dev),
                Err(_) => ev.missing |= missing::TSM_NAME,
            }
            tsm
        }
        Err(_) => {
            ev.missing |= missing::TSM_NAME;
            0
        }
    }
}

/// `void __pci_tsm_disconnect(struct pci_dev *pdev)`
#[kprobe]
pub fn pci_tsm_disconnect_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_pci_tsm_disconnect_entry(&ctx))
}

fn try_pci_tsm_disconnect_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let pdev: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::PciTsmDisconnect)?;
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    read_context(&mut ev, pdev);
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn pci_tsm_disconnect_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::PciTsmDisconnect, ctx.ret(), t);
    0
}

/// `int __pci_tsm_unbind(struct pci_dev *pdev, void *data)`: the binding it is about to end
/// (`pdev->tsm->tdi`), or [`flags::NOTHING_BOUND`].
#[kprobe]
pub fn pci_tsm_unbind_any_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_pci_tsm_unbind_any_entry(&ctx))
}

fn try_pci_tsm_unbind_any_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let pdev: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::PciTsmUnbindAny)?;
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    let tsm = read_context(&mut ev, pdev);
    if tsm == 0 {
        if pci_tsm_of(pdev).is_ok() {
            ev.flags |= flags::NOTHING_BOUND;
        } else {
            ev.missing |= missing::TDI;
        }
    } else {
        match read::at::<u64>("pci_tsm.tdi", tsm, offsets().pci_tsm_tdi) {
            Ok(0) => ev.flags |= flags::NOTHING_BOUND,
            Ok(tdi) => read_tdi(&mut ev, tdi),
            Err(_) => ev.missing |= missing::TDI,
        }
    }
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn pci_tsm_unbind_any_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::PciTsmUnbindAny, ctx.ret(), t);
    0
}

/// `void __pci_tsm_destroy(struct pci_dev *pdev, struct tsm_dev *tsm_dev)`: removal of a
/// device (`tsm_dev` NULL) or unregistration of `tsm_dev`. Runs for every PCI device removed
/// and, on unregistration, for every PCI device: only devices with TSM context are reported.
#[kprobe]
pub fn pci_tsm_destroy_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_pci_tsm_destroy_entry(&ctx))
}

fn try_pci_tsm_destroy_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let pdev: u64 = arg(ctx, 0)?;
    let tsm_dev: u64 = arg(ctx, 1)?;
    let mut ev = begin(ProbeId::PciTsmDestroy)?;
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    if tsm_dev != 0 {
        ev.flags |= flags::TSM_UNREGISTER;
        read_tsm_name(&mut ev, tsm_dev);
        // Still report this device's own context (it may belong to another TSM).
        if matches!(pci_tsm_of(pdev), Ok(0)) {
            ev.flags |= flags::NOTHING_BOUND;
        }
    } else if read_context(&mut ev, pdev) == 0 && pci_tsm_of(pdev).is_ok() {
        ev.flags |= flags::NOTHING_BOUND;
    }
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn pci_tsm_destroy_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    // NOTHING_BOUND here: the device had no TSM context, so the call did nothing TSM-related.
    finish_ret_with(ProbeId::PciTsmDestroy, ctx.ret(), 0, t, |ev| {
        ev.flags & flags::NOTHING_BOUND == 0
    });
    0
}

/// Guest request entry, shared by `pci_tsm_guest_req` (first argument a `struct pci_dev *`)
/// and the driver's op (a `struct pci_tdi *`). The `*tsm_code` pointer is parked in
/// `tsm_code` until the return reads the value behind it.
#[inline(always)]
pub fn guest_req_entry(ctx: &ProbeContext, probe: ProbeId, is_tdi: bool) -> Result<(), ProgError> {
    let first: u64 = arg(ctx, 0)?;
    let o = offsets();
    let locs = if is_tdi { o.drv_guest_req } else { o.guest_req };
    let mut ev = begin(probe)?;
    let pdev = if is_tdi {
        read_tdi(&mut ev, first);
        read::at::<u64>("pci_tdi.pdev", first, o.tdi_pdev).unwrap_or(0)
    } else {
        first
    };
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    read_context(&mut ev, pdev);
    // Each argument is stored as soon as it is read, 0 when it cannot be: an `Option` whose
    // payload is undefined on its `None` path, kept across the fault path's helper calls, is
    // spilled from a register the verifier knows is uninitialised (`R4 !read_ok`).
    let mut complete = true;
    let mut arg = |loc: u32| {
        arg_at(ctx, loc).unwrap_or_else(|| {
            complete = false;
            0
        })
    };
    ev.scope = arg(locs.scope) as u32;
    ev.in_len = arg(locs.in_len);
    ev.out_len = arg(locs.out_len);
    if !complete {
        ev.scope = 0;
        ev.in_len = 0;
        ev.out_len = 0;
        ev.missing |= missing::GUEST_REQ_ARGS;
    }
    ev.tsm_code = arg_at(ctx, locs.tsm_code).unwrap_or(0);
    stash(ev);
    Ok(())
}

/// Replaces the parked `u64 *tsm_code` with the value the call left there.
#[inline(always)]
pub fn read_tsm_code(ev: &mut RawEvent) -> bool {
    match read::at::<u64>("*tsm_code", ev.tsm_code, 0) {
        Ok(code) => ev.tsm_code = code,
        Err(_) => {
            ev.tsm_code = 0;
            ev.missing |= missing::TSM_CODE;
        }
    }
    true
}

/// `ssize_t pci_tsm_guest_req(struct pci_dev *, enum pci_tsm_req_scope, sockptr_t req_in,
/// size_t in_len, sockptr_t req_out, size_t out_len, u64 *tsm_code)`
#[kprobe]
pub fn pci_tsm_guest_req_entry(ctx: ProbeContext) -> u32 {
    exit_code(guest_req_entry(&ctx, ProbeId::PciTsmGuestReq, false))
}

#[kretprobe]
pub fn pci_tsm_guest_req_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret_with(ProbeId::PciTsmGuestReq, ctx.ret(), 0, t, read_tsm_code);
    0
}
