//! What BTF shows of the iommufd TSM series and of upstream PCI TSM: the facts
//! the `generation` module matches against the compatibility table
//! ([`crate::targets::GENERATIONS`]). Names come from that table only.

use btf_rs::Type;

use tsm_trace_common::OFFSET_UNKNOWN;

use super::{FieldReport, Functions, Objects, Out};
use crate::targets::{
    GENERATIONS, GUEST_REQ_IOCTLS, PATCH_FUNCTIONS, PCI_TSM_FUNCTION, TSM_GUEST_REQ,
    UAPI_OP_STRUCT, VIOMMU_STRUCT,
};

/// Facts from BTF, each with the BTF object it was seen in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchFacts {
    /// Patch functions ([`PATCH_FUNCTIONS`]) BTF defines, as `name (object)`.
    pub patch_functions: Vec<String>,
    /// [`PCI_TSM_FUNCTION`] is a vmlinux function.
    pub pci_tsm_in_vmlinux: bool,
    /// Members of the UAPI command struct (`None`: the struct is not in BTF), and its object.
    pub uapi_members: Option<(Vec<String>, String)>,
    /// Members of the vIOMMU struct of the ioctl's object (`None`: not in BTF).
    pub viommu_members: Option<(Vec<String>, String)>,
    /// Parameters of [`TSM_GUEST_REQ`] (`None`: not in BTF).
    pub guest_req_params: Option<usize>,
    /// One of [`GUEST_REQ_IOCTLS`] is in BTF.
    pub guest_req_ioctl: bool,
}

fn member_names(objs: &Objects, name: &str, order: &[usize]) -> Option<(Vec<String>, String)> {
    let r = *objs.find_structs(name, order).first()?;
    let agg = objs.as_struct(r).ok()?;
    let btf = objs.btf(agg.at);
    let names = agg
        .st
        .members
        .iter()
        .filter_map(|m| btf.resolve_name(m).ok())
        .filter(|n| !n.is_empty())
        .collect();
    Some((names, objs.owner(agg.at).to_string()))
}

pub(super) fn facts(objs: &Objects, fns: &Functions) -> PatchFacts {
    let patch_functions = PATCH_FUNCTIONS
        .iter()
        .filter_map(|f| {
            let r = objs.find_func(f)?;
            Some(format!("{f} ({})", objs.owner(r)))
        })
        .collect();
    let pci_tsm_in_vmlinux = objs
        .own_ids(0, PCI_TSM_FUNCTION)
        .into_iter()
        .any(|id| matches!(objs.list[0].btf.resolve_type_by_id(id), Ok(Type::Func(_))));
    // The ioctl's own object first: a stand-in's types coexist with vmlinux's.
    let ioctl_obj = objs.find_func(fns.tsm_op_ioctl).map(|r| r.obj);
    let order = objs.order(ioctl_obj.as_slice());
    PatchFacts {
        patch_functions,
        pci_tsm_in_vmlinux,
        uapi_members: member_names(objs, UAPI_OP_STRUCT, &order),
        viommu_members: member_names(objs, VIOMMU_STRUCT, &order),
        guest_req_params: objs.param_count(TSM_GUEST_REQ),
        guest_req_ioctl: GUEST_REQ_IOCTLS.iter().any(|f| objs.find_func(f).is_some()),
    }
}

/// The UAPI op member names of every generation (for the offset of `op`/`type`).
pub(super) fn op_member_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = GENERATIONS.iter().map(|g| g.uapi_op_member).collect();
    v.dedup();
    let mut out = Vec::new();
    for n in v {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The UAPI op values of bind and unbind, and where they came from: the enumerators of the
/// generation's enum where BTF has it, else the compatibility table's values for the
/// generations whose UAPI member (`op`, `type`) the struct has.
pub(super) fn op_values(
    objs: &Objects,
    order: &[usize],
    member: Option<&str>,
) -> Result<(u32, u32, String), String> {
    use crate::targets::{GENERATIONS, OP_BIND, OP_UNBIND};
    let member = member.ok_or("the UAPI command's op member is unresolved")?;
    let rows: Vec<_> = GENERATIONS
        .iter()
        .filter(|g| g.uapi_op_member == member)
        .collect();
    for e in rows.iter().filter_map(|g| g.op_enum) {
        match (
            objs.enum_value(e, OP_BIND, order),
            objs.enum_value(e, OP_UNBIND, order),
        ) {
            (Some(Ok((b, obj))), Some(Ok((u, _)))) => {
                return Ok((b, u, format!("enum {e} in {obj}")));
            }
            (Some(Err(err)), _) | (_, Some(Err(err))) => return Err(err),
            _ => {}
        }
    }
    let names: Vec<&str> = rows.iter().map(|g| g.name).collect();
    let g = rows
        .first()
        .ok_or_else(|| format!("no generation has the UAPI member {member}"))?;
    let why = match g.op_enum {
        None => format!("#defines of {}, not in BTF", names.join("/")),
        Some(e) => format!(
            "enum {e} not in BTF: the compatibility table's values for {}",
            names.join("/")
        ),
    };
    Ok((g.op_values.0, g.op_values.1, why))
}

pub(super) fn put_op_values(out: &mut Out, r: Result<(u32, u32, String), String>) -> (u32, u32) {
    match r {
        Ok((b, u, why)) => {
            out.fields.push(FieldReport {
                field: "iommu_vdevice_tsm_op values",
                offset: Some(b),
                btf_object: None,
                reason: None,
                note: Some(format!("bind={b} unbind={u} ({why})")),
            });
            (b, u)
        }
        Err(e) => {
            out.put("iommu_vdevice_tsm_op values", Err(e));
            (OFFSET_UNKNOWN, OFFSET_UNKNOWN)
        }
    }
}
