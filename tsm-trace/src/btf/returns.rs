//! Return types from each probed function's own prototype ([`Offsets::ret`]): an `int` op is
//! never decoded as a pointer, nor a pointer as an `int`. A function whose return type BTF
//! does not give, or gives as something that cannot be decoded, is not attached (its
//! [`PrototypeCheck`] says why).

use tsm_trace_common::{IntKind, Offsets, ProbeId, ret};

use super::{FieldReport, Functions, Objects, Out, PrototypeCheck};

/// `int (4 bytes, signed)`, `pointer`, `void`.
pub fn describe_ret(kind: u32) -> String {
    match kind {
        ret::VOID => "void".into(),
        ret::PTR => "pointer".into(),
        ret::UNKNOWN => "unknown".into(),
        k => format!(
            "{}-byte {} integer",
            k & IntKind::SIZE_MASK,
            if k & IntKind::SIGNED != 0 {
                "signed"
            } else {
                "unsigned"
            }
        ),
    }
}

/// The report name of `probe`'s return type (`return tsm_bind`).
fn field_name(probe: ProbeId) -> &'static str {
    match probe {
        ProbeId::TsmOpIoctl => "return tsm_op_ioctl",
        ProbeId::TsmBind => "return tsm_bind",
        ProbeId::TsmUnbind => "return tsm_unbind",
        ProbeId::VdeviceAbort => "return vdevice_abort",
        ProbeId::PciTsmBind => "return pci_tsm_bind",
        ProbeId::PciTsmUnbind => "return pci_tsm_unbind",
        ProbeId::DriverBind => "return driver_bind",
        ProbeId::DriverUnbind => "return driver_unbind",
        ProbeId::KvmDestroyVm => "return kvm_destroy_vm",
        ProbeId::VmmExit => "return vmm_exit",
        ProbeId::ModuleLoad => "return module_load",
        ProbeId::Connect => "return connect",
        ProbeId::Disconnect => "return disconnect",
        ProbeId::PciTsmDisconnect => "return pci_tsm_disconnect",
        ProbeId::PciTsmUnbindAny => "return pci_tsm_unbind_any",
        ProbeId::PciTsmDestroy => "return pci_tsm_destroy",
        ProbeId::PciTsmGuestReq => "return pci_tsm_guest_req",
        ProbeId::DriverProbe => "return driver_probe",
        ProbeId::DriverConnect => "return driver_connect",
        ProbeId::DriverDisconnect => "return driver_disconnect",
        ProbeId::DriverGuestReq => "return driver_guest_req",
        ProbeId::GuestReqIoctl => "return guest_req_ioctl",
        ProbeId::TsmGuestReq => "return tsm_guest_req",
        ProbeId::IdeStreamAlloc => "return ide_stream_alloc",
        ProbeId::IdeStreamRegister => "return ide_stream_register",
        ProbeId::IdeStreamSetup => "return ide_stream_setup",
        ProbeId::IdeStreamEnable => "return ide_stream_enable",
        ProbeId::IdeStreamDisable => "return ide_stream_disable",
        ProbeId::IdeStreamTeardown => "return ide_stream_teardown",
        ProbeId::IdeStreamUnregister => "return ide_stream_unregister",
        ProbeId::IdeStreamRelease => "return ide_stream_release",
        ProbeId::IdeStreamFree => "return ide_stream_free",
    }
}

pub(super) fn resolve(
    objs: &Objects,
    fns: &Functions,
    o: &mut Offsets,
    out: &mut Out,
    checks: &mut Vec<PrototypeCheck>,
) {
    for (probe, func) in fns.probed {
        let id: ProbeId = *probe;
        let result = match objs.ret_kind(func) {
            Ok(Some(k)) => {
                o.ret[id as usize] = k;
                out.fields.push(FieldReport {
                    field: field_name(*probe),
                    offset: Some(k),
                    btf_object: objs.find_func(func).map(|r| objs.owner(r).to_string()),
                    reason: None,
                    note: Some(format!("{func} returns {}", describe_ret(k))),
                });
                Ok(())
            }
            Ok(None) => Err(format!(
                "{func} is not in BTF ({}), so its return type is unknown and nothing would be decoded right",
                objs.searched()
            )),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            o.ret[id as usize] = ret::UNKNOWN;
            out.put(field_name(*probe), Err(e.clone()));
        }
        match checks.iter_mut().find(|c| c.probe == *probe) {
            // A shape mismatch already keeps it detached.
            Some(c) if c.result.is_err() => {}
            Some(c) => c.result = result,
            None => checks.push(PrototypeCheck {
                probe: *probe,
                function: func.to_string(),
                result,
            }),
        }
    }
}
