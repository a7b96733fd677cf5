//! What `tsm-trace doctor` reads from the host: plain data, judged in `assess.rs`.
//!
//! Every path is under [`Paths`], so tests point it at a fake tree; the process's own
//! capabilities and limits are read from the process. Nothing here needs a privilege, and
//! nothing is loaded unless the host can load it (then the same load and attach as `check`).

use std::path::{Path, PathBuf};

use caps::Capability;
use serde::Serialize;

use crate::{
    generation::KernelGeneration,
    privileges,
    probes::{AttachReport, Kallsyms, SymbolMatch},
    session::{Plan, Session, SessionOptions},
};

/// Where the host's facts are read.
#[derive(Clone, Debug)]
pub struct Paths {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            proc: "/proc".into(),
            sys: "/sys".into(),
        }
    }
}

/// A registered TSM (`/sys/class/tsm/tsmN`) and the driver behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TsmDevice {
    pub name: String,
    pub driver: Option<String>,
}

/// Which programs attach: tried for real, or planned without loading (and why not tried).
#[derive(Debug)]
pub enum ProbeFacts {
    Attached {
        reports: Vec<AttachReport>,
        unresolved: Vec<String>,
    },
    Planned {
        /// Each program and whether its function was found.
        reports: Vec<(AttachReport, bool)>,
        unresolved: Vec<String>,
        why: String,
    },
    /// kallsyms or BTF could not be read, or loading failed: the error chain.
    Failed { error: String },
    /// Not looked at: the host's facts only ([`host`], the preflight of `run`, `trace` and
    /// `check`, which then attach the probes themselves).
    NotGathered,
}

#[derive(Debug)]
pub struct Facts {
    pub kernel_release: Option<String>,
    /// Size of vmlinux BTF; `None`: absent.
    pub vmlinux_btf_bytes: Option<u64>,
    /// Modules with split BTF; `None`: the directory is unreadable.
    pub module_btf: Option<Vec<String>>,
    /// The kprobe PMU (`/sys/bus/event_source/devices/kprobe`) that aya attaches through.
    pub kprobe_pmu: bool,
    /// The kernel can load modules (`/proc/modules` exists: CONFIG_MODULES).
    pub modules: bool,
    /// `pci_tsm_bind` (PCI TSM) and `tsm_register` (the TSM core) in vmlinux's kallsyms;
    /// `None`: kallsyms unreadable.
    pub pci_tsm: Option<bool>,
    pub tsm_core: Option<bool>,
    /// `/sys/class/tsm`; `None`: the class does not exist.
    pub tsm_class: Option<Vec<TsmDevice>>,
    /// The bracketed mode of `/sys/kernel/security/lockdown`; `None`: unreadable.
    pub lockdown: Option<String>,
    pub perf_event_paranoid: Option<i32>,
    pub unprivileged_bpf_disabled: Option<i32>,
    /// The effective set, or why it is unreadable.
    pub effective_caps: Result<Vec<Capability>, String>,
    /// The bpffs mount that holds the pin directory, if any.
    pub bpffs: Option<PathBuf>,
    pub pin_dir: PathBuf,
    /// RLIMIT_MEMLOCK (soft); `None`: unlimited.
    pub memlock: Option<u64>,
    pub ringbuf_bytes: u32,
    pub probes: ProbeFacts,
    /// Which generation of the patch series (the detection `check` prints), where the
    /// probes were attached or planned; `None`: not gathered, or kallsyms/BTF unreadable.
    pub generation: Option<KernelGeneration>,
}

fn read_trim(p: &Path) -> Option<String> {
    crate::files::read_to_string_capped(p, crate::files::cap::SYSFS_ATTR)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The mode in brackets: `none [integrity] confidentiality` → `integrity`.
pub fn lockdown_mode(s: &str) -> Option<String> {
    let a = s.find('[')?;
    let b = s[a..].find(']')? + a;
    Some(s[a + 1..b].to_string())
}

/// The bpffs mount point in `mounts` (the format of `/proc/self/mounts`) under which `dir`
/// lies; the longest match wins.
pub fn bpffs_for(mounts: &str, dir: &Path) -> Option<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "bpf").then(|| PathBuf::from(at))
        })
        .filter(|at| dir.starts_with(at))
        .max_by_key(|at| at.as_os_str().len())
}

fn tsm_class(sys: &Path) -> Option<Vec<TsmDevice>> {
    let rd = std::fs::read_dir(sys.join("class/tsm")).ok()?;
    let mut out: Vec<TsmDevice> = rd
        .flatten()
        .map(|e| {
            let driver = std::fs::read_link(e.path().join("device/driver"))
                .ok()
                .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
            TsmDevice {
                name: e.file_name().to_string_lossy().into_owned(),
                driver,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Some(out)
}

fn module_btf(dir: &Path) -> Option<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "vmlinux")
        .collect();
    out.sort();
    Some(out)
}

fn memlock() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(r.rlim_cur)
}

fn unresolved(btf: &crate::btf::Resolution) -> Vec<String> {
    btf.unresolved().map(|f| f.field.to_string()).collect()
}

/// Reads every fact; the probes are attached for real only where nothing already known
/// forbids it (no privileges, no kprobes, lockdown), else planned without loading.
pub fn gather(paths: &Paths, opts: &SessionOptions, pin_dir: &Path) -> Facts {
    let mut f = host(paths, opts, pin_dir);
    (f.probes, f.generation) = probe_facts(&f, opts);
    f
}

/// Why the probes cannot be loaded here (what doctor then reports as FAIL), if anything.
fn blocked(f: &Facts) -> Option<String> {
    let privileged = match &f.effective_caps {
        Ok(c) => privileges::check(
            &c.iter().copied().collect(),
            f.perf_event_paranoid.is_some_and(|p| p >= 3),
        )
        .is_ok(),
        Err(_) => false,
    };
    if !privileged {
        Some("not loaded: this process lacks the capabilities to load them".to_string())
    } else if !f.kprobe_pmu {
        Some("not loaded: this kernel has no kprobes".to_string())
    } else if f.lockdown.as_deref() == Some("confidentiality") {
        Some("not loaded: lockdown=confidentiality refuses kprobes".to_string())
    } else {
        None
    }
}

fn probe_facts(f: &Facts, opts: &SessionOptions) -> (ProbeFacts, Option<KernelGeneration>) {
    let failed = |e: crate::session::SessionError| {
        let error = crate::probes::chain(&e);
        (ProbeFacts::Failed { error }, None)
    };
    match blocked(f) {
        None => match Session::start(opts) {
            Ok(s) => (
                ProbeFacts::Attached {
                    unresolved: unresolved(&s.btf),
                    reports: s.attach.clone(),
                },
                Some(s.generation.clone()),
            ),
            Err(e) => failed(e),
        },
        Some(why) => match Plan::make(opts) {
            Ok(p) => (
                ProbeFacts::Planned {
                    unresolved: unresolved(&p.btf),
                    reports: p.probes,
                    why,
                },
                Some(p.generation),
            ),
            Err(e) => failed(e),
        },
    }
}

/// Every fact but the probes ([`ProbeFacts::NotGathered`]): cheap, loads nothing.
pub fn host(paths: &Paths, opts: &SessionOptions, pin_dir: &Path) -> Facts {
    let caps = privileges::effective()
        .map(|s| {
            let mut v: Vec<Capability> = s.into_iter().collect();
            v.sort_by_key(|c| c.index());
            v
        })
        .map_err(|e| crate::probes::chain(&e));
    let sysctl = |name: &str| -> Option<i32> {
        read_trim(&paths.proc.join("sys/kernel").join(name)).and_then(|s| s.parse().ok())
    };
    let paranoid = sysctl("perf_event_paranoid");
    let kprobe_pmu = paths.sys.join("bus/event_source/devices/kprobe").exists();
    let lockdown = read_trim(&paths.sys.join("kernel/security/lockdown"))
        .as_deref()
        .and_then(lockdown_mode);
    let syms = Kallsyms::load(&opts.kallsyms, &["pci_tsm_bind", "tsm_register"]).ok();
    // CONFIG_PCI_TSM and CONFIG_TSM are bool: a same-named function in a module (a test
    // fixture's stand-in) is not the kernel's.
    let has = |name: &str| {
        syms.as_ref()
            .map(|s| matches!(s.find(&[name]), SymbolMatch::Found { module: None, .. }))
    };
    let mounts = crate::files::read_to_string_capped(
        &paths.proc.join("self/mounts"),
        crate::files::cap::CONFIG,
    )
    .unwrap_or_default();
    Facts {
        kernel_release: read_trim(&paths.proc.join("sys/kernel/osrelease")),
        vmlinux_btf_bytes: std::fs::metadata(&opts.btf.vmlinux).ok().map(|m| m.len()),
        module_btf: module_btf(&opts.btf.modules_dir),
        kprobe_pmu,
        modules: crate::probes::modules_supported(&paths.proc),
        pci_tsm: has("pci_tsm_bind"),
        tsm_core: has("tsm_register"),
        tsm_class: tsm_class(&paths.sys),
        lockdown,
        perf_event_paranoid: paranoid,
        unprivileged_bpf_disabled: sysctl("unprivileged_bpf_disabled"),
        effective_caps: caps,
        bpffs: bpffs_for(&mounts, pin_dir),
        pin_dir: pin_dir.to_path_buf(),
        memlock: memlock(),
        ringbuf_bytes: opts.ringbuf_bytes.unwrap_or(256 * 1024),
        probes: ProbeFacts::NotGathered,
        generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_modes() {
        assert_eq!(
            lockdown_mode("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(lockdown_mode("[none] integrity").as_deref(), Some("none"));
        assert_eq!(lockdown_mode("none integrity"), None);
        assert_eq!(lockdown_mode("]["), None);
    }

    #[test]
    fn bpffs_mounts() {
        let m = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n";
        let dir = Path::new("/sys/fs/bpf/tsm-trace");
        assert_eq!(bpffs_for(m, dir), Some(PathBuf::from("/sys/fs/bpf")));
        assert_eq!(bpffs_for(m, Path::new("/run/x")), None);
        assert_eq!(bpffs_for("sysfs /sys sysfs rw 0 0\n", dir), None);
        assert_eq!(bpffs_for("garbage\n\n", dir), None);
    }

    #[test]
    fn tsm_class_lists_devices_and_drivers() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        assert_eq!(tsm_class(sys), None);
        std::fs::create_dir_all(sys.join("class/tsm/tsm1")).unwrap();
        std::fs::create_dir_all(sys.join("class/tsm/tsm0/device")).unwrap();
        std::fs::create_dir_all(sys.join("bus/platform/drivers/ccp")).unwrap();
        std::os::unix::fs::symlink(
            sys.join("bus/platform/drivers/ccp"),
            sys.join("class/tsm/tsm0/device/driver"),
        )
        .unwrap();
        assert_eq!(
            tsm_class(sys).unwrap(),
            vec![
                TsmDevice {
                    name: "tsm0".into(),
                    driver: Some("ccp".into())
                },
                TsmDevice {
                    name: "tsm1".into(),
                    driver: None
                }
            ]
        );
    }
}
