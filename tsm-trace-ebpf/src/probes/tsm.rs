//! tsm-core (from the patch): `tsm_bind` / `tsm_unbind`, the device-generic layer.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{ProbeId, ProgError};

use super::{
    arg, begin, decode_ret, exit_code, finish, finish_ret, note_vmm, read_dev_name, read_kvm, stash,
};
use crate::read::offsets;

/// `int tsm_bind(struct device *dev, struct kvm *kvm, u64 tdi_id)`
#[kprobe]
pub fn tsm_bind_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_tsm_bind_entry(&ctx))
}

fn try_tsm_bind_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let dev: u64 = arg(ctx, 0)?;
    let kvm: u64 = arg(ctx, 1)?;
    let tdi_id: u64 = arg(ctx, 2)?;
    let mut ev = begin(ProbeId::TsmBind)?;
    super::emit_vmm_argv(ProbeId::TsmBind);
    read_dev_name(&mut ev, dev);
    read_kvm(&mut ev, kvm, offsets().kvm_tsm_bind);
    ev.tdi_id = tdi_id;
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn tsm_bind_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    let (rc, f) = decode_ret(ProbeId::TsmBind, ctx.ret());
    if rc == 0 && f & tsm_trace_common::flags::RET_VOID == 0 {
        note_vmm();
    }
    finish(ProbeId::TsmBind, rc, f, t);
    0
}

/// `int tsm_unbind(struct device *dev)`
#[kprobe]
pub fn tsm_unbind_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_tsm_unbind_entry(&ctx))
}

fn try_tsm_unbind_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let dev: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::TsmUnbind)?;
    read_dev_name(&mut ev, dev);
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn tsm_unbind_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::TsmUnbind, ctx.ret(), t);
    0
}
