//! Which generation of the iommufd TSM series a kernel carries, and whether it has upstream
//! PCI TSM: from kallsyms (names) and BTF (prototypes, members), matched against the
//! compatibility table ([`crate::targets::GENERATIONS`]), never from version strings.
//! Shown by `check` and exported as `tsm_trace_kernel_info`.

use serde::Serialize;

use crate::{
    btf::PatchFacts,
    probes::Kallsyms,
    targets::{GENERATIONS, Generation, PATCH_FUNCTIONS, PCI_TSM_FUNCTION},
};

/// The verdict, with the evidence it rests on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelGeneration {
    /// `v2`, `v5`, `post-v5` (a row of the table), `none` (no patch function anywhere), or
    /// `unknown` (patch functions, but no row fits: see `evidence`).
    pub tsm_patch: String,
    /// Upstream PCI TSM: `pci_tsm_bind` in vmlinux.
    pub pci_tsm: bool,
    /// What was seen, for `check`.
    pub evidence: Vec<String>,
}

impl KernelGeneration {
    /// `tsm_patch=v5 pci_tsm=yes`.
    pub fn summary(&self) -> String {
        format!(
            "tsm_patch={} pci_tsm={}",
            self.tsm_patch,
            if self.pci_tsm { "yes" } else { "no" }
        )
    }

    /// The generation's row, if one matched.
    pub fn row(&self) -> Option<&'static Generation> {
        GENERATIONS.iter().find(|g| g.name == self.tsm_patch)
    }
}

/// Why `g` does not fit `facts` (`None`: it fits).
fn mismatch(g: &Generation, f: &PatchFacts) -> Option<String> {
    if let Some((members, obj)) = &f.uapi_members
        && !members.iter().any(|m| m == g.uapi_op_member)
    {
        return Some(format!(
            "its UAPI command has no member {} ({obj})",
            g.uapi_op_member
        ));
    }
    if let Some((members, obj)) = &f.viommu_members
        && !members.iter().any(|m| m == g.viommu_kvm_member)
    {
        return Some(format!(
            "its vIOMMU has no member {} ({obj})",
            g.viommu_kvm_member
        ));
    }
    match (g.guest_req_params, f.guest_req_params) {
        (Some(want), Some(got)) if want != got => {
            Some(format!("tsm_guest_req takes {got} parameters, not {want}"))
        }
        (Some(want), None) => Some(format!(
            "no tsm_guest_req in BTF (it takes {want} parameters there)"
        )),
        _ => None,
    }
}

/// Matches the facts against the table.
pub fn detect(f: &PatchFacts, syms: &Kallsyms) -> KernelGeneration {
    let mut evidence = Vec::new();
    let in_kallsyms: Vec<String> = PATCH_FUNCTIONS
        .iter()
        .filter_map(|n| {
            let defs = syms.modules_of(n);
            (!defs.is_empty()).then(|| {
                let places: Vec<&str> = defs
                    .iter()
                    .map(|m| m.as_deref().unwrap_or("vmlinux"))
                    .collect();
                format!("{n} [{}]", places.join(", "))
            })
        })
        .collect();
    let pci_kallsyms = syms
        .modules_of(PCI_TSM_FUNCTION)
        .iter()
        .any(Option::is_none);
    let pci_tsm = f.pci_tsm_in_vmlinux || pci_kallsyms;
    evidence.push(format!(
        "pci_tsm: {PCI_TSM_FUNCTION} {} in vmlinux (BTF {}, kallsyms {})",
        if pci_tsm { "is" } else { "is not" },
        if f.pci_tsm_in_vmlinux { "yes" } else { "no" },
        if pci_kallsyms { "yes" } else { "no" },
    ));
    if in_kallsyms.is_empty() && f.patch_functions.is_empty() {
        evidence.push(format!(
            "tsm_patch: none of {} in kallsyms or BTF",
            PATCH_FUNCTIONS.join(", ")
        ));
        return KernelGeneration {
            tsm_patch: "none".into(),
            pci_tsm,
            evidence,
        };
    }
    evidence.push(format!(
        "patch functions: kallsyms {}; BTF {}",
        if in_kallsyms.is_empty() {
            "none".to_string()
        } else {
            in_kallsyms.join(", ")
        },
        if f.patch_functions.is_empty() {
            "none".to_string()
        } else {
            f.patch_functions.join(", ")
        }
    ));
    let show = |m: &Option<(Vec<String>, String)>| match m {
        Some((v, obj)) => format!("{{{}}} ({obj})", v.join(", ")),
        None => "not in BTF".into(),
    };
    evidence.push(format!(
        "UAPI {} {}; vIOMMU {} {}; tsm_guest_req {}; guest-request ioctl {}",
        crate::targets::UAPI_OP_STRUCT,
        show(&f.uapi_members),
        crate::targets::VIOMMU_STRUCT,
        show(&f.viommu_members),
        f.guest_req_params
            .map_or("not in BTF".to_string(), |n| format!("{n} parameters")),
        if f.guest_req_ioctl {
            "in BTF"
        } else {
            "not in BTF"
        },
    ));
    if f.uapi_members.is_none() && f.viommu_members.is_none() && f.guest_req_params.is_none() {
        evidence.push(
            "tsm_patch: patch functions but no BTF of the series' types: cannot tell the version"
                .into(),
        );
        return KernelGeneration {
            tsm_patch: "unknown".into(),
            pci_tsm,
            evidence,
        };
    }
    let mut why_not = Vec::new();
    for g in GENERATIONS {
        match mismatch(g, f) {
            None => {
                evidence.push(format!("tsm_patch: {} ({})", g.name, g.origin));
                return KernelGeneration {
                    tsm_patch: g.name.into(),
                    pci_tsm,
                    evidence,
                };
            }
            Some(why) => why_not.push(format!("not {}: {why}", g.name)),
        }
    }
    evidence.push(format!(
        "tsm_patch: unknown ({}); --symbol names functions no table knows",
        why_not.join("; ")
    ));
    KernelGeneration {
        tsm_patch: "unknown".into(),
        pci_tsm,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(text: &str) -> Kallsyms {
        let wanted: Vec<&str> = PATCH_FUNCTIONS
            .iter()
            .copied()
            .chain([PCI_TSM_FUNCTION])
            .collect();
        Kallsyms::parse(text.as_bytes(), &wanted, "test").unwrap()
    }

    fn members(v: &[&str]) -> Option<(Vec<String>, String)> {
        Some((
            v.iter().map(|s| s.to_string()).collect(),
            "tsm_standin".into(),
        ))
    }

    fn facts(op: &str, kvm: &str, guest: Option<usize>) -> PatchFacts {
        PatchFacts {
            patch_functions: vec!["tsm_bind (tsm_standin)".into()],
            pci_tsm_in_vmlinux: true,
            uapi_members: members(&["size", op, "flags", "vdevice_id"]),
            viommu_members: members(&["obj", kvm]),
            guest_req_params: guest,
            guest_req_ioctl: guest.is_some(),
        }
    }

    const PATCHED: &str =
        "ffffffffc0000000 T tsm_bind\t[tsm_standin]\nffffffff81000000 T pci_tsm_bind\n";

    #[test]
    fn each_generation_is_told_from_its_traits() {
        let s = syms(PATCHED);
        for (f, want) in [
            (facts("op", "kvm_filp", None), "v2"),
            (facts("type", "kvm_file", Some(2)), "v5"),
            (facts("type", "kvm_file", Some(3)), "post-v5"),
        ] {
            let g = detect(&f, &s);
            assert_eq!(g.tsm_patch, want, "{:?}", g.evidence);
            assert!(g.pci_tsm);
        }
    }

    #[test]
    fn traits_of_no_row_are_unknown_with_reasons() {
        let g = detect(&facts("op", "kvm_file", None), &syms(PATCHED));
        assert_eq!(g.tsm_patch, "unknown");
        let last = g.evidence.last().unwrap();
        assert!(
            last.contains("not v2: its vIOMMU has no member kvm_filp"),
            "{last}"
        );
        assert!(
            last.contains("not v5: its UAPI command has no member type"),
            "{last}"
        );
    }

    #[test]
    fn nothing_and_upstream_only() {
        let none = PatchFacts::default();
        let g = detect(&none, &syms(""));
        assert_eq!(g.summary(), "tsm_patch=none pci_tsm=no");
        let g = detect(&none, &syms("ffffffff81000000 T pci_tsm_bind\n"));
        assert_eq!(g.summary(), "tsm_patch=none pci_tsm=yes");
        // A module's own pci_tsm_bind (the 6.1 stand-in) is not upstream PCI TSM.
        let g = detect(
            &none,
            &syms("ffffffffc0000000 T pci_tsm_bind\t[tsm_standin]\n"),
        );
        assert!(!g.pci_tsm);
    }
}
