//! Which probe targets exist in the running kernel: `/proc/kallsyms`, filtered to the names we
//! might attach to (the full table is ~200k symbols; we keep a handful).
//!
//! Hand-written rather than a crate: the format is four columns, and what matters here is the
//! policy around it — a kprobe by name refuses ambiguous names, static functions such as
//! `connect_store` exist in several subsystems, and compiler clones (`.isra.0`) are refused.
//! Addresses are kept in memory only to pick among duplicates; they never leave the process.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
};

use crate::targets::Candidate;

/// Why a function is not in kallsyms, on a kernel that can load modules.
pub const MISSING_WHY: &str = "absent, inlined, or its module not loaded";
/// The same on a kernel that cannot (no CONFIG_MODULES): it will never come.
pub const MISSING_WHY_NO_MODULES: &str =
    "absent or inlined; this kernel cannot load modules, so it will not come later";

/// One definition of a function: its module (`None`: vmlinux) and address (0 when the kernel
/// hides addresses, `kptr_restrict`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Def {
    module: Option<String>,
    addr: u64,
}

/// The subset of kallsyms we care about.
#[derive(Debug, Default, Clone)]
pub struct Kallsyms {
    functions: BTreeMap<String, Vec<Def>>,
    source: String,
}

/// Where a kprobe goes: a unique symbol and an offset from it. The offset is non-zero only
/// for a function whose name is ambiguous, reached from a unique neighbour (the kernel
/// normalises `symbol+offset` to the containing function's entry, for kretprobes too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPoint {
    pub symbol: String,
    pub offset: u64,
}

/// The result of looking a probe's candidate names up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolMatch {
    Found {
        name: String,
        module: Option<String>,
        /// Set when an ambiguous name was resolved.
        note: Option<String>,
        attach: AttachPoint,
    },
    Missing {
        reason: String,
    },
}

/// Why a compiler clone is not attached.
pub const CLONE_REASON: &str = "a clone (.isra, .constprop, .part) may have dropped or reordered parameters and changed its return, so the function's BTF prototype cannot decode it; not attached";

/// How far (bytes) a static function may sit from a global of the same source file for the two
/// to be taken as one object file's code.
const NEIGHBOUR_RANGE: u64 = 64 * 1024;

fn obj_name(m: &Option<String>) -> &str {
    m.as_deref().unwrap_or("vmlinux")
}

impl Kallsyms {
    /// Reads `path` (normally `/proc/kallsyms`), keeping text symbols named in `wanted` and
    /// their compiler-renamed variants (`name.isra.0` etc.).
    pub fn load(path: &Path, wanted: &[&str]) -> std::io::Result<Kallsyms> {
        let f = std::fs::File::open(path)?;
        Self::parse(BufReader::new(f), wanted, &path.display().to_string())
    }

    /// Parses a symbol table; at most [`cap::KALLSYMS`] bytes, lines of at most
    /// [`cap::KALLSYMS_LINE`] (a `--kallsyms` path that is not a symbol table, such as
    /// `/dev/zero`, fails with an error naming it instead of exhausting memory).
    pub fn parse(mut r: impl BufRead, wanted: &[&str], source: &str) -> std::io::Result<Kallsyms> {
        use crate::files::cap;
        use std::io::{Error, ErrorKind, Read};
        let mut functions: BTreeMap<String, Vec<Def>> = BTreeMap::new();
        let mut total: u64 = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = (&mut r)
                .take(cap::KALLSYMS_LINE + 1)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if n as u64 > cap::KALLSYMS_LINE {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "{source}: a line longer than {} bytes: not a symbol table (give /proc/kallsyms)",
                        cap::KALLSYMS_LINE
                    ),
                ));
            }
            if total > cap::KALLSYMS {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "{source}: larger than {} MiB: not a symbol table (give /proc/kallsyms)",
                        cap::KALLSYMS >> 20
                    ),
                ));
            }
            let line = String::from_utf8_lossy(&buf);
            let mut it = line.split_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
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
            let addr = u64::from_str_radix(addr, 16).unwrap_or(0);
            functions
                .entry(name.to_string())
                .or_default()
                .push(Def { module, addr });
        }
        Ok(Kallsyms {
            functions,
            source: source.to_string(),
        })
    }

    /// Where `name` (exactly, no compiler suffix) is defined: one entry per definition, the
    /// module or `None` for vmlinux.
    pub fn modules_of(&self, name: &str) -> Vec<Option<String>> {
        self.functions
            .get(name)
            .map(|defs| defs.iter().map(|d| d.module.clone()).collect())
            .unwrap_or_default()
    }

    /// [`Kallsyms::find_in`] for names that may come from anywhere, with no neighbours.
    pub fn find(&self, candidates: &[&str]) -> SymbolMatch {
        let c: Vec<Candidate> = candidates.iter().map(|n| Candidate::any(n)).collect();
        self.find_in(&c, &[])
    }

    /// Finds the first candidate that exists exactly once (kprobes by name refuse ambiguous
    /// symbols) — in its expected module if it names one; compiler clones (`name.isra.0`)
    /// are reported, never used (see [`CLONE_REASON`]). A name defined several times is resolved through `anchors`:
    /// unique global functions of the same source file; the copy right after one of them, in
    /// the same object, is the one.
    pub fn find_in(&self, candidates: &[Candidate], anchors: &[&str]) -> SymbolMatch {
        if candidates.is_empty() {
            return SymbolMatch::Missing {
                reason: "no function named".into(),
            };
        }
        let mut reasons = Vec::new();
        for cand in candidates {
            if let Some(all) = self.functions.get(cand.name) {
                let defs: Vec<&Def> = all
                    .iter()
                    .filter(|d| cand.module.is_none_or(|m| d.module.as_deref() == Some(m)))
                    .collect();
                match defs.as_slice() {
                    [] => {
                        reasons.push(format!(
                            "{} is not in module {} (defined in {})",
                            cand.name,
                            cand.module.unwrap_or("?"),
                            all.iter()
                                .map(|d| obj_name(&d.module))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        continue;
                    }
                    [d] => {
                        // Qualify with the module when the name exists elsewhere too.
                        let symbol = match (&d.module, all.len()) {
                            (Some(m), n) if n > 1 => format!("{m}:{}", cand.name),
                            _ => cand.name.to_string(),
                        };
                        return SymbolMatch::Found {
                            name: cand.name.to_string(),
                            module: d.module.clone(),
                            note: (all.len() > 1).then(|| {
                                format!(
                                    "{} is defined {} times; using the one in {}",
                                    cand.name,
                                    all.len(),
                                    obj_name(&d.module)
                                )
                            }),
                            attach: AttachPoint { symbol, offset: 0 },
                        };
                    }
                    several => match self.by_neighbour(cand.name, several, anchors) {
                        Ok(found) => return found,
                        Err(why) => {
                            reasons.push(why);
                            continue;
                        }
                    },
                }
            }
            let variants: Vec<_> = self
                .functions
                .iter()
                .filter(|(n, _)| {
                    n.strip_prefix(cand.name)
                        .is_some_and(|rest| rest.starts_with('.') && !rest.contains("cold"))
                })
                .collect();
            if !variants.is_empty() {
                // A clone's parameters are not its prototype's: never decode one with it.
                reasons.push(format!(
                    "{} exists only as compiler clone{} ({}): {}",
                    cand.name,
                    if variants.len() == 1 { "" } else { "s" },
                    variants
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    CLONE_REASON
                ));
            } else {
                reasons.push(format!("{} is not in {}", cand.name, self.source));
            }
        }
        SymbolMatch::Missing {
            reason: format!("{} ({MISSING_WHY})", reasons.join("; ")),
        }
    }

    /// Picks the one of several same-named definitions that lies within [`NEIGHBOUR_RANGE`]
    /// of a unique anchor function of the expected source file, in the same object. It is
    /// attached as `base+offset`, with the nearest unique function below it as the base (an
    /// anchor, or `_text` for vmlinux).
    fn by_neighbour(
        &self,
        name: &str,
        defs: &[&Def],
        anchors: &[&str],
    ) -> Result<SymbolMatch, String> {
        let places = defs
            .iter()
            .map(|d| obj_name(&d.module))
            .collect::<Vec<_>>()
            .join(", ");
        let ambiguous = format!(
            "{name} is defined {} times ({places}), so a kprobe by name is ambiguous",
            defs.len()
        );
        if anchors.is_empty() {
            return Err(ambiguous);
        }
        if defs.iter().all(|d| d.addr == 0) {
            return Err(format!(
                "{ambiguous}, and the kernel hides addresses (kptr_restrict), so the right copy cannot be told: run as root"
            ));
        }
        let unique = |n: &str| match self.functions.get(n).map(Vec::as_slice) {
            Some([d]) if d.addr != 0 => Some(d.clone()),
            _ => None,
        };
        let near: Vec<(&Def, &str)> = defs
            .iter()
            .filter_map(|d| {
                anchors
                    .iter()
                    .filter_map(|a| unique(a).map(|ad| (ad, *a)))
                    .filter(|(ad, _)| ad.module == d.module)
                    .map(|(ad, a)| (ad.addr.abs_diff(d.addr), a))
                    .filter(|(dist, _)| *dist <= NEIGHBOUR_RANGE)
                    .min()
                    .map(|(_, a)| (*d, a))
            })
            .collect();
        let [(d, anchor)] = near.as_slice() else {
            return Err(if near.is_empty() {
                format!(
                    "{ambiguous}, and no copy lies within {NEIGHBOUR_RANGE:#x} bytes of {} in the same object",
                    anchors.join("/")
                )
            } else {
                format!(
                    "{ambiguous}, and {} copies lie near {}",
                    near.len(),
                    anchors.join("/")
                )
            });
        };
        // The base: the closest unique function at or below it in the same object.
        let base = anchors
            .iter()
            .copied()
            .chain(d.module.is_none().then_some(TEXT_START))
            .filter_map(|a| unique(a).map(|ad| (ad, a)))
            .filter(|(ad, _)| ad.module == d.module && ad.addr <= d.addr)
            .min_by_key(|(ad, _)| d.addr - ad.addr);
        let Some((base_def, base)) = base else {
            return Err(format!(
                "{ambiguous}; the copy next to {anchor} has no unique function below it to attach from"
            ));
        };
        let offset = d.addr - base_def.addr;
        Ok(SymbolMatch::Found {
            name: name.to_string(),
            module: d.module.clone(),
            note: Some(format!(
                "{name} is defined {} times ({places}); using the copy in {} next to {anchor}, attached as {base}+{offset:#x}",
                defs.len(),
                obj_name(&d.module)
            )),
            attach: AttachPoint {
                symbol: match &d.module {
                    Some(m) => format!("{m}:{base}"),
                    None => base.to_string(),
                },
                offset,
            },
        })
    }
}

/// The start of vmlinux's text: a base for attaching by offset when no anchor lies below.
pub const TEXT_START: &str = "_text";

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
                note: None,
                attach: AttachPoint {
                    symbol: "pci_tsm_bind".into(),
                    offset: 0
                },
            }
        );
        assert_eq!(
            s.find(&["nope", "tsm_bind"]),
            SymbolMatch::Found {
                name: "tsm_bind".into(),
                module: Some("tsm_standin".into()),
                note: None,
                attach: AttachPoint {
                    symbol: "tsm_bind".into(),
                    offset: 0
                },
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
            reason.contains("exists only as compiler clones (iommufd_vdevice_abort.constprop.0, iommufd_vdevice_abort.isra.0)"),
            "{reason}"
        );
    }

    /// A clone may have lost or reordered parameters: it is never decoded with the original
    /// prototype, and the reason says so.
    #[test]
    fn refuses_a_single_compiler_clone() {
        let SymbolMatch::Missing { reason } = syms().find(&["kvm_destroy_vm"]) else {
            panic!("a clone must not be attached")
        };
        assert!(
            reason.contains("kvm_destroy_vm exists only as compiler clone (kvm_destroy_vm.isra.0)"),
            "{reason}"
        );
        assert!(
            reason.contains("dropped or reordered parameters"),
            "{reason}"
        );
    }

    /// Three `connect_store`s (as in a kernel with several subsystems using the name): the one
    /// right after drivers/pci/tsm.c's `pci_tsm_bind` is chosen, through that anchor.
    const DUPS: &str = "\
ffffffff81100000 t connect_store
ffffffff81500000 T pci_tsm_bind
ffffffff81500400 t connect_store
ffffffff81503000 T pci_tsm_guest_req
ffffffff81900000 t connect_store
ffffffffc0100000 t dsm_probe\t[ccp]
ffffffffc0200000 t dsm_probe\t[other]
";

    #[test]
    fn ambiguous_static_resolved_by_neighbour() {
        let wanted = [
            "connect_store",
            "pci_tsm_bind",
            "pci_tsm_guest_req",
            "dsm_probe",
        ];
        let s = Kallsyms::parse(DUPS.as_bytes(), &wanted, "k").unwrap();
        let SymbolMatch::Found { attach, note, .. } = s.find_in(
            &[Candidate::any("connect_store")],
            &["pci_tsm_bind", "pci_tsm_guest_req"],
        ) else {
            panic!("must resolve")
        };
        assert_eq!(
            attach,
            AttachPoint {
                symbol: "pci_tsm_bind".into(),
                offset: 0x400
            }
        );
        assert!(note.unwrap().contains("defined 3 times"));
        // Without anchors it stays ambiguous, with the reason.
        let SymbolMatch::Missing { reason } = s.find(&["connect_store"]) else {
            panic!("must be ambiguous")
        };
        assert!(reason.contains("defined 3 times"), "{reason}");
        // Hidden addresses: said so.
        let hidden: String = DUPS
            .lines()
            .map(|l| format!("0000000000000000{}\n", &l[16..]))
            .collect();
        let s2 = Kallsyms::parse(hidden.as_bytes(), &wanted, "k").unwrap();
        let SymbolMatch::Missing { reason } =
            s2.find_in(&[Candidate::any("connect_store")], &["pci_tsm_bind"])
        else {
            panic!("must not guess")
        };
        assert!(reason.contains("kptr_restrict"), "{reason}");
    }

    #[test]
    fn module_qualified_candidate() {
        let wanted = ["dsm_probe"];
        let s = Kallsyms::parse(DUPS.as_bytes(), &wanted, "k").unwrap();
        let cand = Candidate {
            name: "dsm_probe",
            module: Some("ccp"),
        };
        let SymbolMatch::Found { attach, module, .. } = s.find_in(&[cand], &[]) else {
            panic!("must resolve in ccp")
        };
        assert_eq!(module.as_deref(), Some("ccp"));
        assert_eq!(attach.symbol, "ccp:dsm_probe");
        let SymbolMatch::Missing { reason } = s.find_in(
            &[Candidate {
                name: "dsm_probe",
                module: Some("kvm"),
            }],
            &[],
        ) else {
            panic!("not in kvm")
        };
        assert!(reason.contains("not in module kvm"), "{reason}");
    }
}

#[cfg(test)]
mod cap_tests {
    use super::Kallsyms;

    #[test]
    fn a_file_that_is_not_a_symbol_table_is_refused() {
        // /dev/zero-like input: one endless line.
        let zeros = std::io::BufReader::new(std::io::repeat(0).take_bounded());
        let e = Kallsyms::parse(zeros, &["tsm_bind"], "/dev/zero").unwrap_err();
        assert!(
            e.to_string().contains("/dev/zero: a line longer than"),
            "{e}"
        );
        let ok = "ffffffff81000000 T tsm_bind\n";
        let k = Kallsyms::parse(ok.as_bytes(), &["tsm_bind"], "t").unwrap();
        assert!(matches!(
            k.find(&["tsm_bind"]),
            super::SymbolMatch::Found { .. }
        ));
    }

    trait TakeBounded {
        fn take_bounded(self) -> std::io::Take<std::io::Repeat>;
    }
    impl TakeBounded for std::io::Repeat {
        fn take_bounded(self) -> std::io::Take<std::io::Repeat> {
            std::io::Read::take(self, 1 << 20)
        }
    }
}
