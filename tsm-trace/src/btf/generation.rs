//! What BTF shows of the iommufd TSM series and of upstream PCI TSM: the facts
//! [`crate::generation`] matches against the compatibility table
//! ([`crate::probes::compat::GENERATIONS`]). Names come from that table only.

use btf_rs::Type;

use super::{Functions, Objects};
use crate::probes::compat::{
    GENERATIONS, GUEST_REQ_IOCTL, PATCH_FUNCTIONS, PCI_TSM_FUNCTION, TSM_GUEST_REQ, UAPI_OP_STRUCT,
    VIOMMU_STRUCT,
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
    /// [`GUEST_REQ_IOCTL`] is in BTF.
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
        guest_req_ioctl: objs.find_func(GUEST_REQ_IOCTL).is_some(),
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
