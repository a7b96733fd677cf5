//! Return types from each probed function's own prototype ([`Offsets::ret`]): an `int` op is
//! never decoded as a pointer, nor a pointer as an `int`. A function whose return type BTF
//! does not give, or gives as something that cannot be decoded, is not attached (its
//! [`PrototypeCheck`] says why).

use tsm_trace_common::{Offsets, ProbeId, ret};

use super::{Functions, Objects, PrototypeCheck};

pub(super) fn resolve(
    objs: &Objects,
    fns: &Functions,
    o: &mut Offsets,
    checks: &mut Vec<PrototypeCheck>,
) {
    for (probe, func) in fns.probed {
        let id: ProbeId = probe.id();
        let result = match objs.ret_kind(func) {
            Ok(Some(k)) => {
                o.ret[id as usize] = k;
                Ok(())
            }
            Ok(None) => Err(format!(
                "{func} is not in BTF ({}), so its return type is unknown and nothing would be decoded right",
                objs.searched()
            )),
            Err(e) => Err(e),
        };
        if result.is_err() {
            o.ret[id as usize] = ret::UNKNOWN;
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
