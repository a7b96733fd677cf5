//! iommufd (from the patch): the vdevice TSM ioctl and vdevice teardown.

use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tsm_trace_common::{OFFSET_UNKNOWN, Offsets, ProbeId, ProgError, aggregates, missing};

use super::{arg, begin, exit_code, finish_ret, read_dev_name, stash};
use crate::read::{self, offsets};

/// `int iommufd_vdevice_tsm_op_ioctl(struct iommufd_ucmd *ucmd)`: decodes the UAPI command
/// (`op`, `flags`, `vdevice_id`) that `ucmd->cmd` points at.
#[kprobe]
pub fn tsm_op_ioctl_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_tsm_op_ioctl_entry(&ctx))
}

fn try_tsm_op_ioctl_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let ucmd: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::TsmOpIoctl)?;
    let o = offsets();
    match read::at::<u64>("iommufd_ucmd.cmd", ucmd, o.ucmd_cmd) {
        Ok(cmd) => {
            match read::int_at(
                "iommu_vdevice_tsm_op.op",
                cmd,
                o.tsm_op_op,
                o.kinds.tsm_op_op,
            ) {
                Ok(v) => match canonical_op(v as u32, o) {
                    Some(op) => ev.op = op,
                    None => ev.missing |= missing::OP,
                },
                Err(_) => ev.missing |= missing::OP,
            }
            match read::int_at(
                "iommu_vdevice_tsm_op.flags",
                cmd,
                o.tsm_op_flags,
                o.kinds.tsm_op_flags,
            ) {
                Ok(v) => ev.cmd_flags = v as u32,
                Err(_) => ev.missing |= missing::FLAGS,
            }
            match read::int_at(
                "iommu_vdevice_tsm_op.vdevice_id",
                cmd,
                o.tsm_op_vdevice_id,
                o.kinds.tsm_op_vdevice_id,
            ) {
                Ok(v) => ev.vdevice_id = v as u32,
                Err(_) => ev.missing |= missing::VDEVICE_ID,
            }
        }
        Err(_) => ev.missing |= missing::OP | missing::FLAGS | missing::VDEVICE_ID,
    }
    stash(ev);
    Ok(())
}

/// The kernel's UAPI op value as the programs report it: bind and unbind as
/// [`aggregates::UAPI_OP_BIND`]/[`aggregates::UAPI_OP_UNBIND`] whatever the kernel's values (from its enum in
/// BTF, or its generation's `#define`s); `None` when those values are unknown.
#[inline(always)]
fn canonical_op(raw: u32, o: &Offsets) -> Option<u32> {
    if o.uapi_op_bind == OFFSET_UNKNOWN || o.uapi_op_unbind == OFFSET_UNKNOWN {
        return None;
    }
    Some(if raw == o.uapi_op_bind {
        aggregates::UAPI_OP_BIND
    } else if raw == o.uapi_op_unbind {
        aggregates::UAPI_OP_UNBIND
    } else if raw == aggregates::UAPI_OP_BIND || raw == aggregates::UAPI_OP_UNBIND {
        aggregates::UAPI_OP_OTHER
    } else {
        raw
    })
}

#[kretprobe]
pub fn tsm_op_ioctl_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::TsmOpIoctl, ctx.ret(), t);
    0
}

/// `void iommufd_vdevice_abort(struct iommufd_object *obj)`: the vdevice being torn down, its
/// virtual id and its device.
#[kprobe]
pub fn vdevice_abort_entry(ctx: ProbeContext) -> u32 {
    exit_code(try_vdevice_abort_entry(&ctx))
}

fn try_vdevice_abort_entry(ctx: &ProbeContext) -> Result<(), ProgError> {
    let obj: u64 = arg(ctx, 0)?;
    let mut ev = begin(ProbeId::VdeviceAbort)?;
    let o = offsets();
    match read::int_at("iommufd_object.id", obj, o.obj_id, o.kinds.obj_id) {
        Ok(v) => ev.obj_id = v as u32,
        Err(_) => ev.missing |= missing::OBJ_ID,
    }
    // container_of(obj, struct iommufd_vdevice, obj)
    let vdev = if o.vdev_obj == OFFSET_UNKNOWN {
        0
    } else {
        obj.wrapping_sub(o.vdev_obj as u64)
    };
    match read::int_at(
        "iommufd_vdevice.virt_id",
        vdev,
        o.vdev_virt_id,
        o.kinds.vdev_virt_id,
    ) {
        Ok(v) => ev.virt_id = v as u64,
        Err(_) => ev.missing |= missing::VIRT_ID,
    }
    let dev = read::at::<u64>("iommufd_vdevice.idev", vdev, o.vdev_idev)
        .and_then(|idev| read::at::<u64>("iommufd_device.dev", idev, o.idev_dev))
        .unwrap_or(0);
    read_dev_name(&mut ev, dev);
    stash(ev);
    Ok(())
}

#[kretprobe]
pub fn vdevice_abort_return(ctx: RetProbeContext) -> u32 {
    let t = super::now();
    finish_ret(ProbeId::VdeviceAbort, ctx.ret(), t);
    0
}
