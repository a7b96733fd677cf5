//! The series' guest-request path above PCI TSM: the iommufd ioctl handler (v5's
//! `iommufd_vdevice_tsm_req_ioctl`; other generations' names in the compatibility table)
//! and tsm-core's `tsm_guest_req`. What a request carries is read by member, from BTF: a
//! `scope` (v2, v5) or an `op` with a `tvm_arch` (post-v5), and the two lengths.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{OFFSET_UNKNOWN, ProbeId, ProgError, RawEvent, ReqFields, flags, missing};

use super::{
    arg, args::arg_at, begin, exit_code, finish_ret, finish_ret_with, pci_tsm_link::read_tsm_code,
    read_dev_name, stash,
};
use crate::read::{self, offsets};

/// The request's kind and lengths at `base` (the UAPI command or `tsm_guest_req_info`).
/// A kind BTF showed neither as `scope` nor as `op` is marked [`missing::REQ_KIND`].
#[inline(always)]
fn read_req(ev: &mut RawEvent, base: u64, f: &ReqFields) {
    if f.op.off != OFFSET_UNKNOWN {
        match (
            read::int_at("guest request op", base, f.op.off, f.op.kind),
            read::int_at("guest request tvm_arch", base, f.tvm_arch.off, f.tvm_arch.kind),
        ) {
            (Ok(op), Ok(arch)) => {
                ev.op = op as u32;
                ev.tvm_arch = arch as u32;
                ev.flags |= flags::REQ_OP;
            }
            _ => ev.missing |= missing::REQ_KIND,
        }
    } else {
        match read::int_at("guest request scope", base, f.scope.off, f.scope.kind) {
            Ok(v) => {
                ev.scope = v as u32;
                ev.flags |= flags::REQ_SCOPE;
            }
            Err(_) => ev.missing |= missing::REQ_KIND,
        }
    }
    match (
        read::int_at("guest request req_len", base, f.req_len.off, f.req_len.kind),
        read::int_at("guest request resp_len", base, f.resp_len.off, f.resp_len.kind),
    ) {
        (Ok(i), Ok(o)) => {
            ev.in_len = i as u64;
            ev.out_len = o as u64;
        }
        _ => ev.missing |= missing::GUEST_REQ_ARGS,
    }
}

/// `int <guest-request ioctl>(struct iommufd_ucmd *ucmd)`: the UAPI request `ucmd->cmd`
/// points at (vdevice_id, scope or op/tvm_arch, req_len, resp_len).
#[kprobe]
pub fn guest_req_ioctl_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_guest_req_ioctl_entry(&ctx))
}

fn try_guest_req_ioctl_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let ucmd: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::GuestReqIoctl)?;
    let o = offsets();
    let f = &o.req_cmd;
    match read::at::<u64>("iommufd_ucmd.cmd", ucmd, o.ucmd_cmd) {
        Ok(cmd) => {
            match read::int_at(
                "guest request vdevice_id",
                cmd,
                f.vdevice_id.off,
                f.vdevice_id.kind,
            ) {
                Ok(v) => ev.vdevice_id = v as u32,
                Err(_) => ev.missing |= missing::VDEVICE_ID,
            }
            read_req(&mut ev, cmd, f);
        }
        Err(_) => {
            ev.missing |= missing::VDEVICE_ID | missing::REQ_KIND | missing::GUEST_REQ_ARGS
        }
    }
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn guest_req_ioctl_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::GuestReqIoctl, ctx.ret(), t);
    0
}

/// `ssize_t tsm_guest_req(struct device *dev, struct tsm_guest_req_info *info
/// [, u64 *tsm_code])`: the device, the request info, and (post-v5) the `*tsm_code` the call
/// leaves behind.
#[kprobe]
pub fn tsm_guest_req_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_tsm_guest_req_entry(&ctx))
}

fn try_tsm_guest_req_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let dev: u64 = arg(ctx, 0)?;
    let info: u64 = arg(ctx, 1)?;
    let mut ev = begin(ProbeId::TsmGuestReq)?;
    let o = offsets();
    read_dev_name(&mut ev, dev);
    read_req(&mut ev, info, &o.req_info);
    // Parked until the return reads the value behind it; 0 (NULL, or no such argument in
    // this generation) is reported missing there.
    ev.tsm_code = arg_at(ctx, o.tsm_guest_req_code).unwrap_or(0);
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn tsm_guest_req_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret_with(ProbeId::TsmGuestReq, ctx.ret(), 0, t, read_tsm_code);
    0
}
