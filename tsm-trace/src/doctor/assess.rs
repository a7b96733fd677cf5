//! Judging each fact: its level and what to do about it.

use caps::Capability;

use super::{
    Finding, Level,
    facts::{Facts, ProbeFacts},
};
use crate::{events::ProbeId, privileges::PrivilegeError, probes::AttachReport};

/// `7.3.4+deb13-amd64` → (7, 3).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// `(major, minor)` of the running kernel, if its release is known.
pub fn kernel_version(f: &Facts) -> Option<(u32, u32)> {
    f.kernel_release.as_deref().and_then(version)
}

/// The findings that need no probe, any of which can say "cannot run": what `run`, `trace`
/// and `check` consult before loading anything.
pub fn assess_host(f: &Facts) -> Vec<Finding> {
    let v = kernel_version(f);
    vec![
        kernel(f, v),
        btf(f),
        kprobes(f),
        lockdown(f),
        capabilities(f),
    ]
}

/// Every finding, in the order of the screen.
pub fn assess(f: &Facts) -> Vec<Finding> {
    let v = kernel_version(f);
    vec![
        kernel(f, v),
        btf(f),
        kprobes(f),
        modules(f),
        tsm(f),
        patch_generation(f),
        tsm_drivers(f),
        lockdown(f),
        paranoid(f),
        capabilities(f),
        bpffs(f),
        memlock(f, v),
        probes(f),
        fields(f),
    ]
}

fn kernel(f: &Facts, v: Option<(u32, u32)>) -> Finding {
    let Some(rel) = &f.kernel_release else {
        return Finding::new(
            "kernel",
            Level::Info,
            "release unknown (/proc/sys/kernel/osrelease unreadable)",
        );
    };
    match v {
        Some(v) if v < (5, 8) => Finding::new(
            "kernel",
            Level::Fatal,
            format!("Linux {rel}: older than 5.8 (no CAP_BPF, no BPF ring buffer)"),
        )
        .todo("run a 5.8+ kernel; PCI TSM needs 6.19+ (Debian: trixie-backports)"),
        _ => Finding::new("kernel", Level::Ok, format!("Linux {rel}")),
    }
}

fn btf(f: &Facts) -> Finding {
    let Some(size) = f.vmlinux_btf_bytes else {
        return Finding::new("btf", Level::Fatal, "no vmlinux BTF (/sys/kernel/btf/vmlinux): struct offsets cannot be resolved")
            .todo("run a kernel built with CONFIG_DEBUG_INFO_BTF=y (every Debian kernel since 5.10), or pass --btf");
    };
    let modules = match &f.module_btf {
        None => "module BTF directory unreadable".to_string(),
        Some(m) => {
            let mark = |name: &str| {
                if m.iter().any(|x| x == name) {
                    format!("{name} yes")
                } else {
                    format!("{name} no")
                }
            };
            format!(
                "split BTF for {} modules ({}, {})",
                m.len(),
                mark("iommufd"),
                mark("kvm")
            )
        }
    };
    Finding::new(
        "btf",
        Level::Ok,
        format!("vmlinux BTF {}; {modules}", mib(size)),
    )
}

fn kprobes(f: &Facts) -> Finding {
    if f.kprobe_pmu {
        Finding::new(
            "kprobes",
            Level::Ok,
            "kprobe PMU present (perf_event_open attach)",
        )
    } else {
        Finding::new(
            "kprobes",
            Level::Fatal,
            "no kprobe PMU (/sys/bus/event_source/devices/kprobe): kernel without CONFIG_KPROBES, so no probe can attach",
        )
        .todo("boot a kernel with CONFIG_KPROBES=y (every Debian kernel has it)")
    }
}

fn modules(f: &Facts) -> Finding {
    if f.modules {
        Finding::new(
            "modules",
            Level::Ok,
            "loadable modules supported: probes of iommufd.ko, kvm.ko or a TSM driver attach when it loads",
        )
    } else {
        Finding::new(
            "modules",
            Level::Info,
            "no loadable modules (no /proc/modules: CONFIG_MODULES=n): what vmlinux lacks now never comes, so no probe waits for a module",
        )
    }
}

fn found(f: &Facts, probe: ProbeId) -> Option<&AttachReport> {
    match &f.probes {
        ProbeFacts::Attached { reports, .. } => {
            reports.iter().find(|r| r.probe == probe && r.attached)
        }
        ProbeFacts::Planned { reports, .. } => reports
            .iter()
            .find(|(r, ok)| r.probe == probe && *ok)
            .map(|(r, _)| r),
        ProbeFacts::Failed { .. } | ProbeFacts::NotGathered => None,
    }
}

fn yes(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

pub(super) fn tsm(f: &Facts) -> Finding {
    let patch = found(f, ProbeId::TsmBind).is_some() || found(f, ProbeId::TsmOpIoctl).is_some();
    let fact = format!(
        "PCI TSM {} (pci_tsm_bind), TSM core {} (tsm_register), iommufd TSM bind patch {}",
        yes(f.pci_tsm),
        yes(f.tsm_core),
        if patch { "yes" } else { "no" }
    );
    if f.pci_tsm == Some(true) || patch {
        Finding::new("tsm", Level::Ok, fact)
    } else {
        Finding::new("tsm", Level::Degraded, format!("{fact}: no bind to see"))
            .todo("PCI TSM is in Linux 6.19+ with CONFIG_PCI_TSM=y (Debian trixie-backports 7.x); the bind ioctl needs the iommufd TSM patch")
    }
}

/// Which generation of the iommufd TSM patch series this kernel carries: the detection
/// `check` prints (`tsm_patch=v2 pci_tsm=yes`, from the compatibility table), in the same
/// words, with the ioctl function it found.
fn patch_generation(f: &Facts) -> Finding {
    let ioctl = found(f, ProbeId::TsmOpIoctl).map(|r| r.function.as_str());
    let core = found(f, ProbeId::TsmBind).is_some();
    Finding::new(
        "generation",
        Level::Info,
        generation_fact(f.generation.as_ref(), ioctl, core),
    )
}

pub(super) fn generation_fact(
    g: Option<&crate::generation::KernelGeneration>,
    ioctl: Option<&str>,
    core: bool,
) -> String {
    let Some(g) = g else {
        return "not detected: kallsyms or BTF could not be read".into();
    };
    let seen = match (ioctl, core) {
        (Some(func), _) => format!("TSM ioctl {func}"),
        (None, true) => {
            "tsm_bind/tsm_unbind without the ioctl (partial patch or a stand-in)".into()
        }
        (None, false) => "no TSM ioctl".into(),
    };
    format!("{} ({seen})", g.summary())
}

fn tsm_drivers(f: &Facts) -> Finding {
    match &f.tsm_class {
        None => Finding::new(
            "tsm drivers",
            Level::Info,
            "no /sys/class/tsm: no TSM registered",
        ),
        Some(d) if d.is_empty() => Finding::new(
            "tsm drivers",
            Level::Info,
            "/sys/class/tsm is empty: no TSM driver registered, connects will fail",
        )
        .todo("load the platform's TSM driver (AMD SEV-TIO: ccp)"),
        Some(d) => Finding::new(
            "tsm drivers",
            Level::Ok,
            d.iter()
                .map(|t| match &t.driver {
                    Some(drv) => format!("{} (driver {drv})", t.name),
                    None => t.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

fn lockdown(f: &Facts) -> Finding {
    match f.lockdown.as_deref() {
        None => Finding::new(
            "lockdown",
            Level::Info,
            "unknown (/sys/kernel/security/lockdown unreadable: securityfs not mounted or no lockdown LSM)",
        ),
        Some("confidentiality") => Finding::new(
            "lockdown",
            Level::Fatal,
            "confidentiality: the kernel refuses kprobes and BPF reads of kernel memory",
        )
        .todo("boot with lockdown=integrity (or none): kernel command line `lockdown=integrity`"),
        Some(m) => Finding::new("lockdown", Level::Ok, format!("{m} (kprobes allowed)")),
    }
}

fn has(f: &Facts, c: Capability) -> bool {
    f.effective_caps.as_ref().is_ok_and(|v| v.contains(&c))
}

fn paranoid(f: &Facts) -> Finding {
    match f.perf_event_paranoid {
        None => Finding::new("perf", Level::Info, "kernel.perf_event_paranoid unreadable"),
        Some(p) if p >= 3 => {
            let fact = format!(
                "kernel.perf_event_paranoid={p}: kprobes need CAP_SYS_ADMIN (Debian's default)"
            );
            if has(f, Capability::CAP_SYS_ADMIN) {
                Finding::new("perf", Level::Ok, format!("{fact}, held"))
            } else {
                Finding::new("perf", Level::Info, fact).todo(
                    "the systemd unit grants CAP_SYS_ADMIN; or sysctl kernel.perf_event_paranoid=2",
                )
            }
        }
        Some(p) => Finding::new(
            "perf",
            Level::Ok,
            format!("kernel.perf_event_paranoid={p}: CAP_PERFMON suffices"),
        ),
    }
}

fn capabilities(f: &Facts) -> Finding {
    let held = match &f.effective_caps {
        Err(e) => {
            return Finding::new("capabilities", Level::Fatal, format!("unreadable: {e}"));
        }
        Ok(v) => v,
    };
    let wanted = [
        Capability::CAP_BPF,
        Capability::CAP_PERFMON,
        Capability::CAP_SYSLOG,
        Capability::CAP_SYS_ADMIN,
    ];
    let list = |want: bool| -> Vec<String> {
        wanted
            .iter()
            .filter(|c| held.contains(c) == want)
            .map(|c| c.to_string())
            .collect()
    };
    let (h, m) = (list(true), list(false));
    let fact = format!(
        "held: {}{}",
        if h.is_empty() {
            "none".into()
        } else {
            h.join(", ")
        },
        if m.is_empty() {
            String::new()
        } else {
            format!("; missing: {}", m.join(", "))
        }
    );
    let set = held.iter().copied().collect();
    match crate::privileges::check(&set, f.perf_event_paranoid.is_some_and(|p| p >= 3)) {
        Err(e @ (PrivilegeError::Missing { .. } | PrivilegeError::ParanoidNeedsSysAdmin)) => {
            Finding::new("capabilities", Level::Fatal, format!("{fact}: cannot load or attach")).todo(e.to_string())
        }
        Err(e) => Finding::new("capabilities", Level::Fatal, crate::probes::chain(&e)),
        Ok(()) if !held.contains(&Capability::CAP_SYSLOG) => Finding::new(
            "capabilities",
            Level::Degraded,
            format!("{fact}: without CAP_SYSLOG /proc/kallsyms hides addresses, so same-named static functions (connect_store) cannot be told apart"),
        )
        .todo("add CAP_SYSLOG (the systemd unit grants it)"),
        Ok(()) => Finding::new("capabilities", Level::Ok, fact),
    }
}

fn bpffs(f: &Facts) -> Finding {
    match &f.bpffs {
        Some(at) => Finding::new(
            "bpffs",
            Level::Ok,
            format!("mounted at {}: `run` pins its probes and maps in {} across restarts", at.display(), f.pin_dir.display()),
        ),
        None => Finding::new(
            "bpffs",
            Level::Degraded,
            format!("no bpffs holds {}: `run` cannot pin, so a restart loses what happens while it is down", f.pin_dir.display()),
        )
        .todo("mount -t bpf bpf /sys/fs/bpf (systemd does at boot), or run with --no-persist"),
    }
}

fn memlock(f: &Facts, v: Option<(u32, u32)>) -> Finding {
    let ring = mib(u64::from(f.ringbuf_bytes));
    let limit = f.memlock.map_or("unlimited".to_string(), mib);
    if v.is_some_and(|v| v >= (5, 11)) {
        return Finding::new(
            "memory",
            Level::Ok,
            format!(
                "ring buffer {ring}; RLIMIT_MEMLOCK {limit} does not apply (5.11+ charges BPF memory to the memory cgroup)"
            ),
        );
    }
    // Maps besides the ring buffer: a few MiB at most.
    let need = u64::from(f.ringbuf_bytes) + (4 << 20);
    match f.memlock {
        Some(l) if l < need && !has(f, Capability::CAP_SYS_RESOURCE) => Finding::new(
            "memory",
            Level::Degraded,
            format!("ring buffer {ring}; RLIMIT_MEMLOCK {limit} is below the ~{} this kernel charges to it", mib(need)),
        )
        .todo("raise it: ulimit -l unlimited, or LimitMEMLOCK=infinity in the unit"),
        _ => Finding::new("memory", Level::Ok, format!("ring buffer {ring}; RLIMIT_MEMLOCK {limit}")),
    }
}

fn names<'a>(it: impl Iterator<Item = &'a AttachReport>) -> Vec<String> {
    let mut v: Vec<String> = it.map(|r| r.probe.as_str().to_string()).collect();
    v.dedup();
    v
}

pub(super) fn bind_path(p: ProbeId) -> bool {
    matches!(
        p,
        ProbeId::TsmBind | ProbeId::PciTsmBind | ProbeId::TsmOpIoctl
    )
}

fn probes(f: &Facts) -> Finding {
    match &f.probes {
        ProbeFacts::Failed { error } => Finding::new(
            "probes",
            Level::Fatal,
            format!("cannot resolve or load: {error}"),
        )
        .todo("tsm-trace check --log-level debug shows the full error"),
        ProbeFacts::NotGathered => Finding::new("probes", Level::Info, "not looked at"),
        ProbeFacts::Attached { reports, .. } => {
            let on = names(reports.iter().filter(|r| r.attached));
            let off = names(reports.iter().filter(|r| r.requested && !r.attached));
            let n = reports.iter().filter(|r| r.attached).count();
            let fact = format!(
                "{n} programs attached ({}){}",
                on.join(", "),
                if off.is_empty() {
                    String::new()
                } else {
                    format!("; not attached: {}", off.join(", "))
                }
            );
            if reports.iter().any(|r| r.attached && bind_path(r.probe)) {
                Finding::new("probes", Level::Ok, fact)
            } else {
                Finding::new(
                    "probes",
                    Level::Degraded,
                    format!("{fact}; none on the bind path: no bind will be seen"),
                )
                .todo("tsm-trace check gives each probe's reason")
            }
        }
        ProbeFacts::Planned { reports, why, .. } => {
            let on = names(reports.iter().filter(|(_, ok)| *ok).map(|(r, _)| r));
            let off = names(
                reports
                    .iter()
                    .filter(|(r, ok)| r.requested && !*ok)
                    .map(|(r, _)| r),
            );
            Finding::new(
                "probes",
                Level::Info,
                format!(
                    "{why}; their functions are here for {}{}",
                    if on.is_empty() {
                        "none".into()
                    } else {
                        on.join(", ")
                    },
                    if off.is_empty() {
                        String::new()
                    } else {
                        format!("; absent: {}", off.join(", "))
                    }
                ),
            )
            .todo("fix the FAIL lines above, then tsm-trace check attaches for real")
        }
    }
}

fn fields(f: &Facts) -> Finding {
    let unresolved = match &f.probes {
        ProbeFacts::Attached { unresolved, .. } | ProbeFacts::Planned { unresolved, .. } => {
            unresolved
        }
        ProbeFacts::Failed { .. } | ProbeFacts::NotGathered => {
            return Finding::new("fields", Level::Info, "not resolved (see probes)");
        }
    };
    if unresolved.is_empty() {
        Finding::new(
            "fields",
            Level::Ok,
            "every BTF field the probes read resolved",
        )
    } else {
        Finding::new(
            "fields",
            Level::Info,
            format!(
                "{} BTF fields unresolved (their values show as unknown): {}",
                unresolved.len(),
                unresolved.join(", ")
            ),
        )
        .todo("tsm-trace check prints each reason")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::KernelGeneration;

    fn generation(name: &str) -> KernelGeneration {
        KernelGeneration {
            tsm_patch: name.into(),
            pci_tsm: true,
            evidence: Vec::new(),
        }
    }

    #[test]
    fn generation_in_checks_words() {
        // The v2 stand-in: `check` says tsm_patch=v2; doctor says the same, not a range.
        let v2 = generation("v2");
        let fact = generation_fact(Some(&v2), Some("iommufd_vdevice_tsm_op_ioctl"), true);
        assert_eq!(
            fact,
            "tsm_patch=v2 pci_tsm=yes (TSM ioctl iommufd_vdevice_tsm_op_ioctl)"
        );
        assert!(fact.starts_with(&v2.summary()));
        let v5 = generation("v5");
        let fact = generation_fact(Some(&v5), Some("iommufd_vdevice_tsm_req_ioctl"), true);
        assert!(fact.starts_with("tsm_patch=v5 pci_tsm=yes"), "{fact}");
        assert!(!fact.contains("or later"), "{fact}");
        assert_eq!(
            generation_fact(None, None, false),
            "not detected: kallsyms or BTF could not be read"
        );
    }
}
