//! Return types from each probed function's own prototype ([`Offsets::ret`]): an `int` op is
//! never decoded as a pointer, nor a pointer as an `int`. A function whose return type BTF
//! does not give, or gives as something that cannot be decoded, is not attached (its
//! [`PrototypeCheck`] says why).

use tsm_trace_common::{IntKind, Offsets, ProbeId, ret};

use super::{FieldReport, Functions, Objects, Out, PrototypeCheck};
use crate::events::Probe;

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
fn field_name(probe: Probe) -> &'static str {
    match probe {
        Probe::TsmOpIoctl => "return tsm_op_ioctl",
        Probe::TsmBind => "return tsm_bind",
        Probe::TsmUnbind => "return tsm_unbind",
        Probe::VdeviceAbort => "return vdevice_abort",
        Probe::PciTsmBind => "return pci_tsm_bind",
        Probe::PciTsmUnbind => "return pci_tsm_unbind",
        Probe::DriverBind => "return driver_bind",
        Probe::DriverUnbind => "return driver_unbind",
        Probe::KvmDestroyVm => "return kvm_destroy_vm",
        Probe::VmmExit => "return vmm_exit",
        Probe::ModuleLoad => "return module_load",
        Probe::Connect => "return connect",
        Probe::Disconnect => "return disconnect",
        Probe::PciTsmDisconnect => "return pci_tsm_disconnect",
        Probe::PciTsmUnbindAny => "return pci_tsm_unbind_any",
        Probe::PciTsmDestroy => "return pci_tsm_destroy",
        Probe::PciTsmGuestReq => "return pci_tsm_guest_req",
        Probe::DriverProbe => "return driver_probe",
        Probe::DriverConnect => "return driver_connect",
        Probe::DriverDisconnect => "return driver_disconnect",
        Probe::DriverGuestReq => "return driver_guest_req",
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
        let id: ProbeId = probe.id();
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
