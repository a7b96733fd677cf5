//! Which probe targets exist in the running kernel: `/proc/kallsyms`, filtered to the names we
//! might attach to (the full table is ~200k symbols; we keep a handful).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
};

/// Where a function is defined: `None` for vmlinux, `Some(module)` otherwise.
type Definitions = Vec<Option<String>>;

/// The subset of kallsyms we care about.
#[derive(Debug, Default, Clone)]
pub struct Kallsyms {
    functions: BTreeMap<String, Definitions>,
    source: String,
}

/// The result of looking a probe's candidate names up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolMatch {
    Found {
        name: String,
        module: Option<String>,
        /// Set when a compiler-renamed variant (`.isra.0`, `.constprop.0`) is used.
        note: Option<String>,
    },
    Missing {
        reason: String,
    },
}

impl Kallsyms {
    /// Reads `path` (normally `/proc/kallsyms`), keeping text symbols named in `wanted` and
    /// their compiler-renamed variants (`name.isra.0` etc.).
    pub fn load(path: &Path, wanted: &[&str]) -> std::io::Result<Kallsyms> {
        let f = std::fs::File::open(path)?;
        Self::parse(BufReader::new(f), wanted, &path.display().to_string())
    }

    pub fn parse(r: impl BufRead, wanted: &[&str], source: &str) -> std::io::Result<Kallsyms> {
        let mut functions: BTreeMap<String, Definitions> = BTreeMap::new();
        for line in r.lines() {
            let line = line?;
            let mut it = line.split_whitespace();
            let (Some(_addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(ty, "t" | "T") {
                continue;
            }
            let base = name.split('.').next().unwrap_or(name);
            if !wanted.contains(&base) {
                continue;
            }
            let module = it
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            functions.entry(name.to_string()).or_default().push(module);
        }
        Ok(Kallsyms {
            functions,
            source: source.to_string(),
        })
    }

    /// Finds the first candidate that exists exactly once (kprobes by name refuse ambiguous
    /// symbols), falling back to a single compiler-renamed variant.
    pub fn find(&self, candidates: &[&str]) -> SymbolMatch {
        if candidates.is_empty() {
            return SymbolMatch::Missing {
                reason: "no function named".into(),
            };
        }
        let mut reasons = Vec::new();
        for cand in candidates {
            if let Some(defs) = self.functions.get(*cand) {
                if defs.len() == 1 {
                    return SymbolMatch::Found {
                        name: cand.to_string(),
                        module: defs[0].clone(),
                        note: None,
                    };
                }
                reasons.push(format!(
                    "{cand} is defined {} times ({}), so a kprobe by name is ambiguous",
                    defs.len(),
                    defs.iter()
                        .map(|d| d.as_deref().unwrap_or("vmlinux"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                continue;
            }
            let variants: Vec<_> = self
                .functions
                .iter()
                .filter(|(n, _)| {
                    n.strip_prefix(*cand)
                        .is_some_and(|rest| rest.starts_with('.') && !rest.contains("cold"))
                })
                .collect();
            if let [(name, defs)] = variants.as_slice()
                && defs.len() == 1
            {
                return SymbolMatch::Found {
                    name: name.to_string(),
                    module: defs[0].clone(),
                    note: Some(format!("{cand} was renamed by the compiler; using {name}")),
                };
            }
            if !variants.is_empty() {
                reasons.push(format!(
                    "{cand} exists only as several compiler-renamed copies ({})",
                    variants
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            } else {
                reasons.push(format!("{cand} is not in {}", self.source));
            }
        }
        SymbolMatch::Missing {
            reason: format!(
                "{} (absent, inlined, or its module not loaded)",
                reasons.join("; ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _text
ffffffff81234560 T pci_tsm_bind
ffffffff81234570 t pci_tsm_unbind
ffffffff81234580 D tsm_bind_data
ffffffffc0001000 t tsm_bind\t[tsm_standin]
ffffffffc0001100 T tsm_unbind\t[tsm_standin]
ffffffffc0001200 t kvm_destroy_vm.isra.0\t[kvm]
ffffffffc0001300 t dup_fn\t[a]
ffffffff81111111 t dup_fn
ffffffff82222222 t iommufd_vdevice_abort.constprop.0
ffffffff82222223 t iommufd_vdevice_abort.isra.0
";

    fn syms() -> Kallsyms {
        let wanted = [
            "pci_tsm_bind",
            "pci_tsm_unbind",
            "tsm_bind",
            "tsm_unbind",
            "kvm_destroy_vm",
            "dup_fn",
            "iommufd_vdevice_abort",
            "tsm_bind_data",
        ];
        Kallsyms::parse(SAMPLE.as_bytes(), &wanted, "/proc/kallsyms").unwrap()
    }

    #[test]
    fn finds_vmlinux_and_module_functions() {
        let s = syms();
        assert_eq!(
            s.find(&["pci_tsm_bind"]),
            SymbolMatch::Found {
                name: "pci_tsm_bind".into(),
                module: None,
                note: None
            }
        );
        assert_eq!(
            s.find(&["nope", "tsm_bind"]),
            SymbolMatch::Found {
                name: "tsm_bind".into(),
                module: Some("tsm_standin".into()),
                note: None
            }
        );
    }

    #[test]
    fn explains_what_is_missing() {
        let s = syms();
        let SymbolMatch::Missing { reason } = s.find(&["iommufd_vdevice_tsm_op_ioctl"]) else {
            panic!("must be missing")
        };
        assert!(
            reason.contains("iommufd_vdevice_tsm_op_ioctl is not in /proc/kallsyms"),
            "{reason}"
        );
        // Data symbols are not functions.
        assert!(matches!(
            s.find(&["tsm_bind_data"]),
            SymbolMatch::Missing { .. }
        ));
        let SymbolMatch::Missing { reason } = s.find(&["dup_fn"]) else {
            panic!("ambiguous must not match")
        };
        assert!(reason.contains("defined 2 times (a, vmlinux)"), "{reason}");
        let SymbolMatch::Missing { reason } = s.find(&["iommufd_vdevice_abort"]) else {
            panic!("two renamed copies must not match")
        };
        assert!(
            reason.contains("several compiler-renamed copies"),
            "{reason}"
        );
    }

    #[test]
    fn uses_a_single_renamed_copy() {
        let SymbolMatch::Found { name, module, note } = syms().find(&["kvm_destroy_vm"]) else {
            panic!("renamed copy must match")
        };
        assert_eq!(name, "kvm_destroy_vm.isra.0");
        assert_eq!(module.as_deref(), Some("kvm"));
        assert!(note.unwrap().contains("renamed by the compiler"));
    }
}
