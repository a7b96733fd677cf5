//! The series' guest-request path above PCI TSM, from BTF: the ioctl's UAPI command (found
//! through the compatibility table's struct names, preferring the ioctl's own object) and
//! `tsm_guest_req`'s request info (through its prototype). Each carries a `scope` (v2, v5)
//! or an `op` with a `tvm_arch` (post-v5): whichever member BTF shows is read. Names of
//! those values come from the enum BTF gives the member (or `pci_tsm_guest_req`'s scope
//! parameter), never from a table: a plain integer member is reported as a number.

use btf_rs::Type;
use tsm_trace_common::{IntField, OFFSET_UNKNOWN, Offsets, ProbeId, ReqFields};

use super::*;
use crate::targets::{GUEST_REQ_INFO_STRUCT, GUEST_REQ_UAPI_STRUCTS, PCI_TSM_SCOPE_ENUM};

/// An enum's values and their short names (`PCI_TSM_REQ_STATE_CHANGE` → `state_change`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnumNames {
    /// `enum <name>` as BTF has it, and the BTF object it is in.
    pub enum_name: String,
    pub object: String,
    pub values: Vec<(u32, String)>,
}

impl EnumNames {
    pub fn name(&self, v: u32) -> Option<&str> {
        self.values
            .iter()
            .find(|(x, _)| *x == v)
            .map(|(_, n)| n.as_str())
    }
}

/// Names for one guest-request function's values (`None`: BTF has no enum there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindNames {
    pub scope: Option<EnumNames>,
    pub op: Option<EnumNames>,
    pub tvm_arch: Option<EnumNames>,
}

/// Every name table of the guest-request path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReqNames {
    pub ioctl: KindNames,
    pub tsm: KindNames,
    /// The scope parameter of `pci_tsm_guest_req` and of the driver's op.
    pub pci_scope: Option<EnumNames>,
    pub driver_scope: Option<EnumNames>,
}

impl ReqNames {
    /// Names what `ev` carries by its function's tables; a value without an enumerator stays
    /// a number.
    pub fn fill(&self, ev: &mut crate::events::Event) {
        let (scope, op, arch) = match ev.probe {
            ProbeId::GuestReqIoctl => (
                self.ioctl.scope.as_ref(),
                self.ioctl.op.as_ref(),
                self.ioctl.tvm_arch.as_ref(),
            ),
            ProbeId::TsmGuestReq => (
                self.tsm.scope.as_ref(),
                self.tsm.op.as_ref(),
                self.tsm.tvm_arch.as_ref(),
            ),
            ProbeId::PciTsmGuestReq => (self.pci_scope.as_ref(), None, None),
            ProbeId::DriverGuestReq => (self.driver_scope.as_ref(), None, None),
            _ => return,
        };
        let name = |t: Option<&EnumNames>, v: Option<u32>| {
            t.zip(v)
                .and_then(|(t, v)| t.name(v))
                .map(crate::events::Name::from)
        };
        ev.scope_name = name(scope, ev.scope);
        ev.req_op_name = name(op, ev.req_op);
        ev.tvm_arch_name = name(arch, ev.tvm_arch);
    }
}

/// The enumerators' common `_`-ended prefix, removed, lowercase.
fn short_names(values: Vec<(u32, String)>) -> Vec<(u32, String)> {
    let mut prefix = values.first().map(|(_, n)| n.clone()).unwrap_or_default();
    for (_, n) in &values {
        while !n.starts_with(&prefix) {
            prefix.pop();
        }
    }
    // Only whole words, and never the whole of a name.
    let cut = prefix.rfind('_').map_or(0, |i| i + 1);
    values
        .into_iter()
        .map(|(v, n)| {
            let short = if n.len() > cut { &n[cut..] } else { &n[..] };
            (v, short.to_ascii_lowercase())
        })
        .collect()
}

impl Objects {
    /// The enum `r` is (after typedefs), with its values; `None` if it is no enum.
    fn enum_names(&self, r: TypeRef) -> Option<EnumNames> {
        let (r, t) = self.strip(r).ok()?;
        let Type::Enum(e) = t else { return None };
        let btf = self.btf(r);
        let values = e
            .members
            .iter()
            .filter_map(|m| Some((m.val(), btf.resolve_name(m).ok()?)))
            .collect();
        Some(EnumNames {
            enum_name: self.name_of(r, &e),
            object: self.owner(r).to_string(),
            values: short_names(values),
        })
    }

    /// `enum name`, searching `order`.
    fn enum_by_name(&self, name: &str, order: &[usize]) -> Option<EnumNames> {
        order.iter().find_map(|&obj| {
            self.own_ids(obj, name)
                .into_iter()
                .find_map(|id| self.enum_names(TypeRef { obj, id }))
        })
    }

    /// The enum of parameter `idx` of `func`, if it is one.
    fn param_enum(&self, func: &str, idx: usize) -> Option<EnumNames> {
        let (obj, params) = self.prototype(func).ok().flatten()?;
        self.enum_names(TypeRef {
            obj,
            id: *params.get(idx)?,
        })
    }
}

/// Reads the request members of `agg` into `f` (field reports named `<what> <member>`);
/// returns the names of the kind members that are enums.
fn request_fields(
    objs: &Objects,
    agg: &Result<(Agg, Option<String>), String>,
    what: Which,
    f: &mut ReqFields,
    out: &mut Out,
) -> KindNames {
    let mut names = KindNames::default();
    let int = |m: &str| -> Result<(Found, u32, TypeRef), String> {
        let (a, note) = agg.as_ref().map_err(Clone::clone)?;
        let (off, kind, t) = objs.member_typed(a, m, Want::Int(8))?;
        Ok((found(objs, a, off, note), kind, t))
    };
    let mut put = |field: &'static str, r: Result<(Found, u32, TypeRef), String>| match r {
        Ok((fd, kind, t)) => {
            let off = out.put(field, Ok(fd));
            (IntField { off, kind }, objs.enum_names(t))
        }
        Err(e) => {
            out.put(field, Err(e));
            (IntField::UNKNOWN, None)
        }
    };
    let has = |m: &str| agg.as_ref().is_ok_and(|(a, _)| objs.member(a, m).is_ok());
    if what == Which::Uapi {
        f.vdevice_id = put(what.field("vdevice_id"), int("vdevice_id")).0;
    }
    // The request's kind: post-v5's op and tvm_arch where the struct has `op`, else scope.
    if has("op") {
        (f.op, names.op) = put(what.field("op"), int("op"));
        (f.tvm_arch, names.tvm_arch) = put(what.field("tvm_arch"), int("tvm_arch"));
    } else {
        (f.scope, names.scope) = put(what.field("scope"), int("scope"));
    }
    f.req_len = put(what.field("req_len"), int("req_len")).0;
    f.resp_len = put(what.field("resp_len"), int("resp_len")).0;
    names
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Uapi,
    Info,
}

impl Which {
    fn field(self, m: &str) -> &'static str {
        match (self, m) {
            (Which::Uapi, "vdevice_id") => "guest request UAPI vdevice_id",
            (Which::Uapi, "op") => "guest request UAPI op",
            (Which::Uapi, "tvm_arch") => "guest request UAPI tvm_arch",
            (Which::Uapi, "scope") => "guest request UAPI scope",
            (Which::Uapi, "req_len") => "guest request UAPI req_len",
            (Which::Uapi, _) => "guest request UAPI resp_len",
            (Which::Info, "op") => "tsm_guest_req_info.op",
            (Which::Info, "tvm_arch") => "tsm_guest_req_info.tvm_arch",
            (Which::Info, "scope") => "tsm_guest_req_info.scope",
            (Which::Info, "req_len") => "tsm_guest_req_info.req_len",
            (Which::Info, _) => "tsm_guest_req_info.resp_len",
        }
    }
}

/// Resolves the ioctl's command, `tsm_guest_req`'s info and its `tsm_code` argument (each
/// only where its function is probed), and the name tables.
pub(super) fn resolve(objs: &Objects, fns: &Functions, o: &mut Offsets, out: &mut Out) -> ReqNames {
    let mut names = ReqNames::default();
    if let Some(ioctl) = fns.guest_req_ioctl {
        let ioctl_obj = objs.find_func(ioctl).map(|r| r.obj);
        let order = objs.order(ioctl_obj.as_slice());
        let agg = GUEST_REQ_UAPI_STRUCTS
            .iter()
            .find_map(|n| objs.find_structs(n, &order).first().copied())
            .ok_or_else(|| {
                format!(
                    "no struct {} in {}",
                    GUEST_REQ_UAPI_STRUCTS.join(" or "),
                    objs.searched()
                )
            })
            .and_then(|r| objs.as_struct(r))
            .map(|a| (a, None));
        names.ioctl = request_fields(objs, &agg, Which::Uapi, &mut o.req_cmd, out);
    }
    if let Some(f) = fns.tsm_guest_req {
        let agg = from_param_or_name(objs, f, 1, GUEST_REQ_INFO_STRUCT, &objs.order(&[]));
        names.tsm = request_fields(objs, &agg, Which::Info, &mut o.req_info, out);
        // post-v5's third parameter, `u64 *tsm_code`; v2/v5 have two parameters.
        match objs.arg_locations(f) {
            Ok(Some(locs)) if locs.len() >= 3 => {
                o.tsm_guest_req_code = locs[2];
                out.fields.push(FieldReport {
                    field: "tsm_guest_req tsm_code argument",
                    offset: Some(locs[2]),
                    btf_object: None,
                    reason: None,
                    note: Some(format!("u64 *tsm_code at {}", describe_loc(locs[2]))),
                });
            }
            Ok(Some(_)) => o.tsm_guest_req_code = OFFSET_UNKNOWN,
            Ok(None) => {
                out.put("tsm_guest_req tsm_code argument", Err(missing_fn(objs, f)));
            }
            Err(e) => {
                out.put("tsm_guest_req tsm_code argument", Err(e));
            }
        }
    }
    if let Some(f) = fns.pci_tsm_guest_req {
        names.pci_scope = objs
            .param_enum(f, 1)
            .or_else(|| objs.enum_by_name(PCI_TSM_SCOPE_ENUM, &[0]));
    }
    if let Some(f) = fns.driver_op(ProbeId::DriverGuestReq) {
        names.driver_scope = objs.param_enum(f, 1);
    }
    for (what, t) in [
        (
            "guest request scope names (pci_tsm_guest_req)",
            &names.pci_scope,
        ),
        ("guest request op names (tsm_guest_req)", &names.tsm.op),
        (
            "guest request tvm_arch names (tsm_guest_req)",
            &names.tsm.tvm_arch,
        ),
    ] {
        if let Some(t) = t {
            out.fields.push(FieldReport {
                field: what,
                offset: Some(0),
                btf_object: Some(t.object.clone()),
                reason: None,
                note: Some(format!(
                    "enum {}: {}",
                    t.enum_name,
                    t.values
                        .iter()
                        .map(|(v, n)| format!("{n}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
            });
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::short_names;

    #[test]
    fn short_names_drop_the_common_prefix_only() {
        let v = |xs: &[&str]| {
            xs.iter()
                .enumerate()
                .map(|(i, n)| (i as u32, n.to_string()))
                .collect::<Vec<_>>()
        };
        let got = short_names(v(&["PCI_TSM_REQ_INFO", "PCI_TSM_REQ_STATE_CHANGE"]));
        assert_eq!(got[0].1, "info");
        assert_eq!(got[1].1, "state_change");
        // A common partial word is kept: TSM_REQ_SET/TSM_REQ_SEV share "TSM_REQ_SE".
        let got = short_names(v(&["TSM_REQ_SET_TDI_STATE", "TSM_REQ_SEV_ENABLE_DMA"]));
        assert_eq!(got[0].1, "set_tdi_state");
        assert_eq!(got[1].1, "sev_enable_dma");
        // One enumerator: the whole name without its last word's prefix.
        let got = short_names(v(&["IOMMU_VDEVICE_TSM_TVM_ARCH_CCA"]));
        assert_eq!(got[0].1, "cca");
    }
}
