//! `trace --deep MODULE:GLOB`: which functions the globs name, which of them can be probed
//! (and why not), and attaching the deep program pair (`tsm-trace-ebpf/src/probes/deep.rs`)
//! to them for the session.
//!
//! A function is attached only when a kprobe by name reaches it and its return can be read:
//! defined once in `/proc/kallsyms`, not a compiler clone, traceable (in
//! `available_filter_functions`: not `notrace`), not in the kprobe blacklist, and in BTF (its
//! return type tells an errno from a value). Every other match is reported with its reason;
//! a function named exactly (no glob) that kallsyms lacks is reported as absent or inlined.
//! Kernel addresses are read to name deep records; they never leave the process.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    io::BufRead,
    str::FromStr,
};

use aya::{Ebpf, programs::KProbe};

use super::{Kind, ProbeError, chain, load_program};
use crate::events::deep::{DeepFn, DeepSymbols};

/// The deep program pair.
pub const ENTRY_PROGRAM: &str = "deep_entry";
pub const RETURN_PROGRAM: &str = "deep_return";
pub const PROGRAMS: [(&str, Kind); 2] = [
    (ENTRY_PROGRAM, Kind::Kprobe),
    (RETURN_PROGRAM, Kind::Kretprobe),
];

/// At most this many functions by default (`--deep-max`).
pub const DEFAULT_MAX: usize = 64;

/// What each attached function costs, said where the cap is.
pub const COST: &str = "each attached function costs an entry and a return probe hit plus a map lookup on every call, inside TSM work or not";

/// `MODULE:GLOB`: functions of a module (`vmlinux` for the kernel image, `*` for any) whose
/// names match a glob (`*` any run, `?` one character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeepSpec {
    pub module: String,
    pub glob: String,
}

impl fmt::Display for DeepSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.module, self.glob)
    }
}

fn symbol_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'*' | b'?' | b'.' | b'-'))
}

impl FromStr for DeepSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((module, glob)) = s.split_once(':') else {
            return Err(format!(
                "`{s}` is not MODULE:GLOB (for example ccp:sev_tio_* or vmlinux:pci_ide_*)"
            ));
        };
        if module.is_empty() || glob.is_empty() {
            return Err(format!(
                "`{s}`: both MODULE and GLOB are needed (MODULE vmlinux for the kernel image, * for any)"
            ));
        }
        if !symbol_chars(module) || !symbol_chars(glob) {
            return Err(format!(
                "`{s}`: only letters, digits, `_`, `.`, `-` and the wildcards `*` `?` are allowed"
            ));
        }
        if glob.chars().all(|c| c == '*' || c == '?') {
            return Err(format!(
                "`{s}` matches every function of {module}: name a prefix (for example {module}:sev_tio_*)"
            ));
        }
        Ok(DeepSpec {
            // kallsyms names modules with underscores.
            module: module.replace('-', "_"),
            glob: glob.to_string(),
        })
    }
}

impl DeepSpec {
    fn has_wildcard(&self) -> bool {
        self.glob.contains(['*', '?'])
    }

    /// Whether the function `name` of `module` (`None`: vmlinux) is one this spec names.
    fn matches(&self, name: &str, module: Option<&str>) -> bool {
        self.module_matches(module) && glob_match(&self.glob, name)
    }

    fn module_matches(&self, module: Option<&str>) -> bool {
        match self.module.as_str() {
            "*" => true,
            "vmlinux" => module.is_none(),
            m => module == Some(m),
        }
    }
}

/// `*` and `?` glob matching.
pub fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n) = (pat.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The internal functions of the drivers in the compatibility table (`--deep-known`).
pub fn known() -> Vec<DeepSpec> {
    crate::targets::KNOWN_DRIVERS
        .iter()
        .flat_map(|d| {
            d.internals.iter().map(|g| DeepSpec {
                module: d.module.unwrap_or("*").to_string(),
                glob: g.to_string(),
            })
        })
        .collect()
}

/// One text symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sym {
    name: String,
    module: Option<String>,
    addr: u64,
}

/// What the kernel says about its functions.
#[derive(Debug, Default)]
pub struct KernelFunctions {
    symbols: Vec<Sym>,
    /// `available_filter_functions` (name, module); `None`: unreadable (see `notes`).
    traceable: Option<HashSet<(String, Option<String>)>>,
    blacklist: HashSet<String>,
    /// What could not be read, and what that means.
    pub notes: Vec<String>,
}

fn split_module(rest: Option<&str>) -> Option<String> {
    rest.map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string())
}

impl KernelFunctions {
    /// Reads `/proc/kallsyms`, tracefs `available_filter_functions` and the kprobe blacklist.
    pub fn read() -> Result<KernelFunctions, String> {
        let open = |p: &str| std::fs::File::open(p).map(std::io::BufReader::new);
        let kallsyms = open("/proc/kallsyms").map_err(|e| format!("/proc/kallsyms: {e}"))?;
        let mut notes = Vec::new();
        let filter = [
            "/sys/kernel/tracing/available_filter_functions",
            "/sys/kernel/debug/tracing/available_filter_functions",
        ]
        .iter()
        .find_map(|p| open(p).ok());
        if filter.is_none() {
            notes.push("available_filter_functions is not readable (tracefs not mounted?): notrace functions cannot be told apart and may fail to attach".into());
        }
        let blacklist = open("/sys/kernel/debug/kprobes/blacklist").ok();
        let mut k =
            KernelFunctions::parse(kallsyms, filter, blacklist).map_err(|e| e.to_string())?;
        k.notes.splice(0..0, notes);
        if !k.symbols.is_empty() && k.symbols.iter().all(|s| s.addr == 0) {
            return Err("/proc/kallsyms shows no addresses (kernel.kptr_restrict, or not root): deep calls could not be named; run as root with kernel.kptr_restrict below 2".into());
        }
        Ok(k)
    }

    pub fn parse(
        kallsyms: impl BufRead,
        filter: Option<impl BufRead>,
        blacklist: Option<impl BufRead>,
    ) -> std::io::Result<KernelFunctions> {
        let mut symbols = Vec::new();
        for line in kallsyms.lines() {
            let line = line?;
            let mut it = line.split_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(ty, "t" | "T") {
                continue;
            }
            symbols.push(Sym {
                name: name.to_string(),
                module: split_module(it.next()),
                addr: u64::from_str_radix(addr, 16).unwrap_or(0),
            });
        }
        let traceable = match filter {
            Some(f) => {
                let mut set = HashSet::new();
                for line in f.lines() {
                    let line = line?;
                    let mut it = line.split_whitespace();
                    if let Some(name) = it.next() {
                        set.insert((name.to_string(), split_module(it.next())));
                    }
                }
                Some(set)
            }
            None => None,
        };
        let mut bl = HashSet::new();
        if let Some(b) = blacklist {
            for line in b.lines() {
                let line = line?;
                if let Some(name) = line.split_whitespace().nth(1) {
                    bl.insert(name.to_string());
                }
            }
        }
        Ok(KernelFunctions {
            symbols,
            traceable,
            blacklist: bl,
            notes: Vec::new(),
        })
    }

    /// Every text symbol by address (stacks are named from it).
    pub fn text(&self) -> BTreeMap<u64, (String, Option<String>)> {
        self.symbols
            .iter()
            .filter(|s| s.addr != 0)
            .map(|s| (s.addr, (s.name.clone(), s.module.clone())))
            .collect()
    }
}

/// A function to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub module: Option<String>,
    addr: u64,
    /// Its BTF return type.
    pub ret: u32,
}

/// A function that matched and is not attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub module: Option<String>,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}]: {}",
            self.name,
            self.module.as_deref().unwrap_or("vmlinux"),
            self.reason
        )
    }
}

/// What the globs name.
#[derive(Debug, Default)]
pub struct Plan {
    pub attach: Vec<Planned>,
    pub skipped: Vec<Skipped>,
    /// Specs that matched no function, with what that likely means.
    pub unmatched: Vec<(DeepSpec, String)>,
    /// Functions left out by the cap.
    pub over_cap: usize,
}

/// Why a clone is not attached.
const CLONE: &str = "a compiler clone (.isra, .constprop, .part, .cold): its parameters and return may differ from the function's BTF prototype";

/// Picks the functions `specs` name. `returns` gives a function's BTF return type
/// (`Ok(None)`: not in BTF).
pub fn plan(
    specs: &[DeepSpec],
    k: &KernelFunctions,
    returns: &dyn Fn(&str) -> Result<Option<u32>, String>,
    probed: &[(String, String)],
    max: usize,
) -> Plan {
    let mut p = Plan::default();
    let mut defs: HashMap<&str, usize> = HashMap::new();
    for s in &k.symbols {
        *defs.entry(s.name.as_str()).or_default() += 1;
    }
    let mut seen: HashSet<(&str, Option<&str>)> = HashSet::new();
    for spec in specs {
        let mut matched = false;
        for s in &k.symbols {
            if !spec.matches(&s.name, s.module.as_deref()) {
                continue;
            }
            matched = true;
            if !seen.insert((s.name.as_str(), s.module.as_deref())) {
                continue;
            }
            let skip = |reason: String| Skipped {
                name: s.name.clone(),
                module: s.module.clone(),
                reason,
            };
            let n = defs.get(s.name.as_str()).copied().unwrap_or(0);
            let why = if let Some((_, probe)) = probed.iter().find(|(f, _)| *f == s.name) {
                Some(format!(
                    "probed by tsm-trace already ({probe}): its calls are the operation's frames"
                ))
            } else if s.name.contains('.') {
                Some(CLONE.to_string())
            } else if n > 1 {
                Some(format!(
                    "defined {n} times in /proc/kallsyms: a kprobe by name cannot choose"
                ))
            } else if k
                .traceable
                .as_ref()
                .is_some_and(|t| !t.contains(&(s.name.clone(), s.module.clone())))
            {
                Some("notrace (not in available_filter_functions): the kernel keeps it out of function tracing".into())
            } else if k.blacklist.contains(&s.name) {
                Some("in the kprobe blacklist (/sys/kernel/debug/kprobes/blacklist)".into())
            } else {
                match returns(&s.name) {
                    Ok(Some(ret)) => {
                        if p.attach.len() >= max {
                            p.over_cap += 1;
                            Some(format!("over --deep-max {max}"))
                        } else {
                            p.attach.push(Planned {
                                name: s.name.clone(),
                                module: s.module.clone(),
                                addr: s.addr,
                                ret,
                            });
                            None
                        }
                    }
                    Ok(None) => Some("not in BTF: its return type is unknown, so an errno could not be told from a value".into()),
                    Err(e) => Some(e),
                }
            };
            if let Some(why) = why {
                p.skipped.push(skip(why));
            }
        }
        if !matched {
            let why = if !spec.has_wildcard() {
                "not in /proc/kallsyms: absent, inlined, or its module not loaded".to_string()
            } else if spec.module != "*"
                && spec.module != "vmlinux"
                && !k
                    .symbols
                    .iter()
                    .any(|s| s.module.as_deref() == Some(&spec.module))
            {
                format!("module {} is not loaded", spec.module)
            } else if spec.module == "*" {
                "no function of vmlinux or a loaded module has such a name".to_string()
            } else {
                "no function of that module has such a name".to_string()
            };
            p.unmatched.push((spec.clone(), why));
        }
    }
    p
}

/// Loads the deep programs and attaches them to every planned function. Returns what did
/// not attach, with the kernel's reason.
pub fn attach(ebpf: &mut Ebpf, plan: &Plan) -> Result<Vec<Skipped>, ProbeError> {
    for (name, kind) in PROGRAMS {
        load_program(ebpf, name, kind)?;
    }
    Ok(plan
        .attach
        .iter()
        .filter_map(|f| {
            attach_one(ebpf, &f.name).err().map(|reason| Skipped {
                name: f.name.clone(),
                module: f.module.clone(),
                reason,
            })
        })
        .collect())
}

fn kprobe<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut KProbe, String> {
    ebpf.program_mut(program)
        .and_then(|p| <&mut KProbe>::try_from(p).ok())
        .ok_or_else(|| format!("program {program} is missing"))
}

fn attach_one(ebpf: &mut Ebpf, name: &str) -> Result<(), String> {
    let entry = kprobe(ebpf, ENTRY_PROGRAM)?
        .attach(name, 0)
        .map_err(|e| format!("entry probe: {}", chain(&e)))?;
    match kprobe(ebpf, RETURN_PROGRAM)?.attach(name, 0) {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = kprobe(ebpf, ENTRY_PROGRAM).map(|p| p.detach(entry));
            Err(format!("return probe: {}", chain(&e)))
        }
    }
}

/// The symbols to name deep records with: the planned functions by entry address, and
/// every text symbol for stacks.
pub fn symbols(k: &KernelFunctions, plan: &Plan) -> DeepSymbols {
    let functions: HashMap<u64, DeepFn> = plan
        .attach
        .iter()
        .map(|f| {
            (
                f.addr,
                DeepFn {
                    name: f.name.clone(),
                    module: f.module.clone(),
                    ret: f.ret,
                },
            )
        })
        .collect();
    DeepSymbols::new(functions, k.text())
}

/// Reads what [`plan`] needs from the running kernel and BTF, plans, and returns the plan.
pub fn plan_here(
    specs: &[DeepSpec],
    btf: &crate::btf::BtfSources,
    probed: &[(String, String)],
    max: usize,
) -> Result<(KernelFunctions, Plan), String> {
    let k = KernelFunctions::read()?;
    // Only the names that matched are looked up in BTF.
    let mut names: Vec<&str> = k
        .symbols
        .iter()
        .filter(|s| {
            specs
                .iter()
                .any(|sp| sp.matches(&s.name, s.module.as_deref()))
        })
        .map(|s| s.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let kinds = crate::btf::return_kinds(btf, &names).map_err(|e| chain(&e))?;
    let p = plan(
        specs,
        &k,
        &|n: &str| kinds.get(n).cloned().unwrap_or(Ok(None)),
        probed,
        max,
    );
    Ok((k, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsm_trace_common::IntKind;

    #[test]
    fn globs() {
        assert!(glob_match("sev_tio_*", "sev_tio_spdm_cmd"));
        assert!(glob_match("lt_spdm_?ecv", "lt_spdm_recv"));
        assert!(glob_match("*_recv", "lt_spdm_recv"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("sev_tio_*", "sev_tiox"));
        assert!(!glob_match("lt_spdm", "lt_spdm_recv"));
    }

    #[test]
    fn specs_parse_with_errors_that_say_what_to_write() {
        let s: DeepSpec = "tsm-linktsm:lt_*".parse().unwrap();
        assert_eq!(s.module, "tsm_linktsm");
        for (bad, says) in [
            ("lt_*", "MODULE:GLOB"),
            (":lt_*", "both MODULE and GLOB"),
            ("ccp:*", "every function"),
            ("ccp:a;b", "only letters"),
        ] {
            let e = bad.parse::<DeepSpec>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    const KALLSYMS: &str = "\
ffffffffc0001000 t lt_spdm_session\t[tsm_linktsm]
ffffffffc0001100 t lt_spdm_recv\t[tsm_linktsm]
ffffffffc0001200 t lt_spdm_notrace\t[tsm_linktsm]
ffffffffc0001300 t lt_spdm_verify.isra.0\t[tsm_linktsm]
ffffffffc0001400 t lt_spdm_nobtf\t[tsm_linktsm]
ffffffffc0001500 t lt_spdm_twice\t[tsm_linktsm]
ffffffff81001500 t lt_spdm_twice
ffffffff81002000 T pci_ide_stream_enable
ffffffffc0001600 d lt_spdm_data\t[tsm_linktsm]
";
    const FILTER: &str = "lt_spdm_session [tsm_linktsm]\nlt_spdm_recv [tsm_linktsm]\nlt_spdm_verify.isra.0 [tsm_linktsm]\nlt_spdm_nobtf [tsm_linktsm]\nlt_spdm_twice [tsm_linktsm]\nlt_spdm_twice\npci_ide_stream_enable\n";

    fn kernel() -> KernelFunctions {
        KernelFunctions::parse(KALLSYMS.as_bytes(), Some(FILTER.as_bytes()), None::<&[u8]>).unwrap()
    }

    fn returns(n: &str) -> Result<Option<u32>, String> {
        Ok((n != "lt_spdm_nobtf").then_some(IntKind::of(4, true)))
    }

    #[test]
    fn every_match_is_attached_or_said_why_not() {
        let specs: Vec<DeepSpec> = [
            "tsm_linktsm:lt_spdm_*",
            "ccp:sev_tio_*",
            "vmlinux:nope_*",
            "vmlinux:inlined_fn",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let probed = vec![(
            "pci_ide_stream_enable".to_string(),
            "ide_stream_enable".to_string(),
        )];
        let p = plan(&specs, &kernel(), &returns, &probed, 64);
        let names: Vec<&str> = p.attach.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["lt_spdm_session", "lt_spdm_recv"]);
        let why = |n: &str| {
            p.skipped
                .iter()
                .find(|s| s.name == n)
                .map(|s| s.reason.clone())
                .unwrap_or_default()
        };
        assert!(why("lt_spdm_notrace").contains("notrace"));
        assert!(why("lt_spdm_verify.isra.0").contains("clone"));
        assert!(why("lt_spdm_nobtf").contains("not in BTF"));
        assert!(why("lt_spdm_twice").contains("defined 2 times"));
        assert!(
            why("lt_spdm_data").is_empty(),
            "data symbols are not functions"
        );
        let unmatched: Vec<String> = p
            .unmatched
            .iter()
            .map(|(s, w)| format!("{s}: {w}"))
            .collect();
        assert_eq!(
            unmatched,
            [
                "ccp:sev_tio_*: module ccp is not loaded",
                "vmlinux:nope_*: no function of that module has such a name",
                "vmlinux:inlined_fn: not in /proc/kallsyms: absent, inlined, or its module not loaded",
            ]
        );
    }

    #[test]
    fn the_cap_names_what_it_left_out() {
        let specs = vec!["tsm_linktsm:lt_spdm_*".parse().unwrap()];
        let p = plan(&specs, &kernel(), &returns, &[], 1);
        assert_eq!(p.attach.len(), 1);
        assert_eq!(p.over_cap, 1);
        assert!(p.skipped.iter().any(|s| s.reason == "over --deep-max 1"));
    }

    #[test]
    fn known_drivers_internals_are_specs() {
        let k = known();
        assert!(k.iter().any(|s| s.to_string() == "ccp:sev_tio_*"), "{k:?}");
    }
}
