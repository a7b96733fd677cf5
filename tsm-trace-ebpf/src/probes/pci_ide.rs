//! PCIe IDE streams (drivers/pci/ide.c, Linux 6.19+ with CONFIG_PCI_IDE): the kernel's
//! `pci_ide_stream_*` API a TSM driver's connect and disconnect call (AMD SEV-TIO: alloc,
//! setup, enable, register; disable, unregister, teardown, free). Each call reports the
//! device it acts on (the endpoint, or the root port for the per-partner steps) and the
//! stream as `struct pci_ide` describes it: its endpoint, stream id, host bridge stream
//! index, the endpoint's and root port's register block indices and its sysfs name. Layer
//! `pci_tsm`, nested under the driver's connect/disconnect.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{ProbeId, ProgError, RawEvent, flags, missing};

use super::{arg, begin, exit_code, finish_ret, finish_ret_with, pci_dev_to_dev, read_dev_name, stash};
use crate::read::{self, offsets};

/// Fills the stream's fields from a `struct pci_ide *` (its own offsets from BTF); an
/// unreadable part sets its [`missing`] bit.
#[inline(always)]
fn read_ide(ev: &mut RawEvent, ide: u64) {
    let o = &offsets().ide;
    match (
        read::int_at("pci_ide.stream_id", ide, o.stream_id.off, o.stream_id.kind),
        read::int_at(
            "pci_ide.host_bridge_stream",
            ide,
            o.host_bridge_stream.off,
            o.host_bridge_stream.kind,
        ),
        read::int_at(
            "pci_ide.partner[EP].stream_index",
            ide,
            o.ep_index.off,
            o.ep_index.kind,
        ),
        read::int_at(
            "pci_ide.partner[RP].stream_index",
            ide,
            o.rp_index.off,
            o.rp_index.kind,
        ),
    ) {
        (Ok(id), Ok(hb), Ok(ep), Ok(rp)) => {
            ev.ide_stream_id = id as i32;
            ev.ide_hb_stream = hb as u32;
            ev.ide_ep_index = ep as u32;
            ev.ide_rp_index = rp as u32;
        }
        _ => ev.missing |= missing::IDE_STREAM,
    }
    // The endpoint: `dev_name(&ide->pdev->dev)`.
    match read::at::<u64>("pci_ide.pdev", ide, o.pdev) {
        Ok(pdev) => {
            let d = pci_dev_to_dev(pdev);
            let name_off = offsets().dev_name;
            if read::str_ptr_at("device.kobj.name", d, name_off, &mut ev.ide_endpoint).is_err() {
                ev.missing |= missing::IDE_ENDPOINT;
            }
        }
        Err(_) => ev.missing |= missing::IDE_ENDPOINT,
    }
    // The sysfs name: NULL until the stream is registered (not missing: not named yet).
    match read::at::<u64>("pci_ide.name", ide, o.name) {
        Ok(0) => ev.flags |= flags::IDE_UNNAMED,
        Ok(_) => {
            if read::str_ptr_at("pci_ide.name", ide, o.name, &mut ev.ide_name).is_err() {
                ev.missing |= missing::IDE_NAME;
            }
        }
        Err(_) => ev.missing |= missing::IDE_NAME,
    }
}

/// `(struct pci_dev *pdev, struct pci_ide *ide)`: setup, enable, disable, teardown. The
/// stream is read at entry (these calls do not change what is reported).
#[inline(always)]
fn partner_entry(ctx: &ProbeContext, probe: ProbeId) -> Result<(), ProgError> {
    let pdev: u64 = arg(ctx, 0)?;
    let ide: u64 = arg(ctx, 1)?;
    let mut ev = begin(probe)?;
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    read_ide(&mut ev, ide);
    stash(ev);
    Ok(())
}

/// `(struct pci_ide *ide)` read at entry: unregister (the name is freed by the call), free,
/// release. The device is the stream's endpoint.
#[inline(always)]
fn stream_entry(ctx: &ProbeContext, probe: ProbeId) -> Result<(), ProgError> {
    let ide: u64 = arg(ctx, 0)?;
    let mut ev = begin(probe)?;
    read_ide(&mut ev, ide);
    ev.dev_name = ev.ide_endpoint;
    if ev.missing & missing::IDE_ENDPOINT != 0 {
        ev.missing |= missing::DEV_NAME;
    }
    stash(ev);
    Ok(())
}

/// `struct pci_ide *pci_ide_stream_alloc(struct pci_dev *pdev)`: NULL is failure (no
/// register block or host bridge stream left, or the device cannot have IDE).
#[kprobe]
pub fn ide_stream_alloc_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_alloc_entry(&ctx))
}

fn try_alloc_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let pdev: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::IdeStreamAlloc)?;
    read_dev_name(&mut ev, pci_dev_to_dev(pdev));
    ev.flags |= flags::IDE_UNNAMED;
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn ide_stream_alloc_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    let ide: u64 = ctx.ret();
    finish_ret_with(
        ProbeId::IdeStreamAlloc,
        ide,
        flags::RET_NULL_IS_ERR,
        t,
        |ev| {
            if ide != 0 {
                read_ide(ev, ide);
            } else {
                ev.missing |= missing::IDE_STREAM | missing::IDE_ENDPOINT;
            }
            true
        },
    );
    0
}

/// `int pci_ide_stream_register(struct pci_ide *ide)`: read at return, when the stream has
/// its sysfs name. The pointer is parked in `ide_ptr` meanwhile, and cleared before the
/// record leaves the kernel.
#[kprobe]
pub fn ide_stream_register_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_register_entry(&ctx))
}

fn try_register_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let ide: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::IdeStreamRegister)?;
    ev.ide_ptr = ide;
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn ide_stream_register_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret_with(ProbeId::IdeStreamRegister, ctx.ret(), 0, t, |ev| {
        let ide = ev.ide_ptr;
        ev.ide_ptr = 0;
        if ide == 0 {
            ev.missing |= missing::IDE_STREAM | missing::IDE_ENDPOINT | missing::DEV_NAME;
            return true;
        }
        read_ide(ev, ide);
        ev.dev_name = ev.ide_endpoint;
        if ev.missing & missing::IDE_ENDPOINT != 0 {
            ev.missing |= missing::DEV_NAME;
        }
        true
    });
    0
}

macro_rules! partner_probe {
    ($entry:ident, $ret:ident, $probe:expr) => {
        #[kprobe]
        pub fn $entry(ctx: ProbeContext) -> u32 {
            exit_code(partner_entry(&ctx, $probe))
        }

        #[kretprobe]
        pub fn $ret(ctx: RetProbeContext) -> u32 {
            let t = super::now();
            finish_ret($probe, ctx.ret(), t);
            0
        }
    };
}

macro_rules! stream_probe {
    ($entry:ident, $ret:ident, $probe:expr) => {
        #[kprobe]
        pub fn $entry(ctx: ProbeContext) -> u32 {
            exit_code(stream_entry(&ctx, $probe))
        }

        #[kretprobe]
        pub fn $ret(ctx: RetProbeContext) -> u32 {
            let t = super::now();
            finish_ret($probe, ctx.ret(), t);
            0
        }
    };
}

// `void pci_ide_stream_setup(struct pci_dev *, struct pci_ide *)`
partner_probe!(
    ide_stream_setup_entry,
    ide_stream_setup_return,
    ProbeId::IdeStreamSetup
);
// `int pci_ide_stream_enable(struct pci_dev *, struct pci_ide *)`: -ENXIO when the stream
// did not reach the Secure state.
partner_probe!(
    ide_stream_enable_entry,
    ide_stream_enable_return,
    ProbeId::IdeStreamEnable
);
// `void pci_ide_stream_disable(struct pci_dev *, struct pci_ide *)`
partner_probe!(
    ide_stream_disable_entry,
    ide_stream_disable_return,
    ProbeId::IdeStreamDisable
);
// `void pci_ide_stream_teardown(struct pci_dev *, struct pci_ide *)`
partner_probe!(
    ide_stream_teardown_entry,
    ide_stream_teardown_return,
    ProbeId::IdeStreamTeardown
);
// `void pci_ide_stream_unregister(struct pci_ide *)`
stream_probe!(
    ide_stream_unregister_entry,
    ide_stream_unregister_return,
    ProbeId::IdeStreamUnregister
);
// `void pci_ide_stream_release(struct pci_ide *)`: disable, teardown, unregister and free
// as far as set up (its inner calls are reported too).
stream_probe!(
    ide_stream_release_entry,
    ide_stream_release_return,
    ProbeId::IdeStreamRelease
);
// `void pci_ide_stream_free(struct pci_ide *)`
stream_probe!(
    ide_stream_free_entry,
    ide_stream_free_return,
    ProbeId::IdeStreamFree
);
