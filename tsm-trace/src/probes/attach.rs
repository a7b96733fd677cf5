//! Attaching and detaching the programs of one loaded object, for the daemon's whole life.
//!
//! [`attach_all`] attaches what the kernel has at start; after a module load,
//! [`attach_missing`] attaches what it brought to the *same* object (its maps, in-flight
//! entries and VMM table included); when a module goes, [`detach_module`] (or, without its
//! name, [`detach_gone`]) marks its probes detached with the reason, until it loads again.

use std::collections::HashMap;

use aya::{
    Ebpf,
    programs::{
        KProbe, RawTracePoint,
        kprobe::KProbeLinkId,
        links::{FdLink, PinnedLink},
        raw_trace_point::RawTracePointLinkId,
    },
};

use super::{
    AttachConfig, AttachReport, Kallsyms, Kind, ProbeError, SymbolMatch, TARGETS, Target, chain,
    load_error, load_program, program_names,
};
use crate::btf::PrototypeCheck;

enum LinkId {
    Kprobe(KProbeLinkId),
    RawTracepoint(RawTracePointLinkId),
}

/// A link this process holds: owned (detached when dropped) or pinned in bpffs (the program
/// stays attached after the daemon exits).
enum Held {
    Owned(FdLink),
    Pinned(PinnedLink),
}

/// The links of the attached programs, by program name, with the kernel's id of each (to
/// read what the kernel counts for it: `misses.rs`). Dropping them detaches the owned ones;
/// pinned ones stay until [`Links::detach`] or `tsm-trace unpin`.
#[derive(Default)]
pub struct Links {
    by_program: HashMap<&'static str, (Held, Option<u32>)>,
    pins: Option<super::pin::LinkPins>,
}

impl Links {
    /// Links pinned under `pins` (the daemon), so the programs outlive the process.
    pub fn pinned(pins: super::pin::LinkPins) -> Links {
        Links {
            by_program: HashMap::new(),
            pins: Some(pins),
        }
    }

    /// The kernel's id of the link of `program`, if attached and known.
    pub fn link_id(&self, program: &str) -> Option<u32> {
        self.by_program.get(program).and_then(|(_, id)| *id)
    }

    fn detach(&mut self, program: &'static str) -> Result<(), String> {
        match self.by_program.remove(program) {
            None => Ok(()),
            // Closing the fd detaches it.
            Some((Held::Owned(link), _)) => {
                drop(link);
                Ok(())
            }
            // Removing the pin and closing the fd detaches it.
            Some((Held::Pinned(link), _)) => link.unpin().map(drop).map_err(|e| e.to_string()),
        }
    }

    /// Keeps the link of `program` as a file-descriptor link: pinned when this is the
    /// daemon's store, else owned. Returns why not, if the link was lost on the way (the
    /// program is then not attached).
    fn keep(&mut self, ebpf: &mut Ebpf, program: &'static str, id: LinkId) -> Option<String> {
        let fd: Result<FdLink, String> = match id {
            LinkId::Kprobe(id) => ebpf
                .program_mut(program)
                .and_then(|p| <&mut KProbe>::try_from(p).ok())
                .ok_or_else(|| format!("program {program} is missing"))
                .and_then(|p| p.take_link(id).map_err(|e| chain(&e)))
                .and_then(|l| FdLink::try_from(l).map_err(|e| chain(&e))),
            LinkId::RawTracepoint(id) => ebpf
                .program_mut(program)
                .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
                .ok_or_else(|| format!("program {program} is missing"))
                .and_then(|p| p.take_link(id).map_err(|e| chain(&e)))
                .map(FdLink::from),
        };
        let fd = match fd {
            Ok(fd) => fd,
            Err(e) => {
                return Some(format!(
                    "attached, but its link could not be kept: {e}; not attached"
                ));
            }
        };
        let link_id = fd.info().ok().map(|i| i.id());
        let Some(pins) = &self.pins else {
            self.by_program.insert(program, (Held::Owned(fd), link_id));
            return None;
        };
        let path = pins.path(program);
        match fd.pin(&path) {
            Ok(pinned) => {
                self.by_program
                    .insert(program, (Held::Pinned(pinned), link_id));
                None
            }
            // The link was consumed on the way: the program is no longer attached.
            Err(e) => Some(format!(
                "attached but could not be pinned at {}: {}; not attached (run with --no-persist to attach without pinning)",
                path.display(),
                chain(&e)
            )),
        }
    }
}

/// Every program of the compatibility table, in report order: `(target, program, kind)`.
fn programs() -> impl Iterator<Item = (&'static Target, &'static str, Kind)> {
    TARGETS
        .iter()
        .flat_map(|t| program_names(t).map(move |(program, kind)| (t, program, kind)))
}

/// Resolves, loads and attaches every probe; returns one report per program.
pub fn attach_all(
    ebpf: &mut Ebpf,
    links: &mut Links,
    syms: &Kallsyms,
    config: &AttachConfig,
    prototypes: &[PrototypeCheck],
) -> Result<Vec<AttachReport>, ProbeError> {
    let reports = programs()
        .map(|(t, program, kind)| {
            attach_one(ebpf, links, syms, config, prototypes, t, program, kind)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if config.strict {
        strict_check(&reports)?;
    }
    Ok(reports)
}

/// After a module load: attaches every program not attached yet whose function is there now,
/// to the object already loaded. Returns the programs newly attached, as report lines.
pub fn attach_missing(
    ebpf: &mut Ebpf,
    links: &mut Links,
    syms: &Kallsyms,
    config: &AttachConfig,
    prototypes: &[PrototypeCheck],
    reports: &mut [AttachReport],
) -> Result<Vec<String>, ProbeError> {
    let mut gained = Vec::new();
    for ((t, program, kind), r) in programs().zip(reports.iter_mut()) {
        if r.attached || !r.may_load_later {
            continue;
        }
        *r = attach_one(ebpf, links, syms, config, prototypes, t, program, kind)?;
        if r.attached {
            gained.push(r.line());
        }
    }
    Ok(gained)
}

/// A module is going: its probes stop firing. Detaches them and says why; returns them.
pub fn detach_module(links: &mut Links, reports: &mut [AttachReport], module: &str) -> Vec<String> {
    let mut gone = Vec::new();
    for ((_, program, _), r) in programs().zip(reports.iter_mut()) {
        if r.attached && r.module.as_deref() == Some(module) {
            mark_detached(links, r, program, module);
            gone.push(r.line());
        }
    }
    gone
}

/// Detaches the attached probes whose module function is no longer in `syms` (a module
/// unload whose name could not be read). Returns them.
pub fn detach_gone(
    links: &mut Links,
    reports: &mut [AttachReport],
    syms: &Kallsyms,
    config: &AttachConfig,
) -> Vec<String> {
    let mut gone = Vec::new();
    for ((t, program, _), r) in programs().zip(reports.iter_mut()) {
        let Some(module) = r.module.clone().filter(|_| r.attached) else {
            continue;
        };
        let present = matches!(
            syms.find_in(&config.candidates(t), t.anchors),
            SymbolMatch::Found { module: Some(ref m), .. } if *m == module
        );
        if !present {
            mark_detached(links, r, program, &module);
            gone.push(r.line());
        }
    }
    gone
}

fn mark_detached(links: &mut Links, r: &mut AttachReport, program: &'static str, module: &str) {
    if let Err(e) = links.detach(program) {
        log::debug!("detaching {} after {module} was unloaded: {e}", r.line());
    }
    r.attached = false;
    r.reason = Some(format!(
        "module {module} was unloaded; attached again when it loads"
    ));
}

fn strict_check(reports: &[AttachReport]) -> Result<(), ProbeError> {
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| r.requested && !r.attached)
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(ProbeError::Strict {
        count: failed.len(),
        details: failed
            .iter()
            .map(|r| {
                format!(
                    "  {} {} ({}): {}",
                    r.kind.as_str(),
                    r.probe.as_str(),
                    r.function,
                    r.reason.as_deref().unwrap_or("unknown")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// How far [`resolve_one`] got: a final report, or a program ready to load and attach.
enum Resolved {
    Done(AttachReport),
    /// The report names the tracepoint (`function`).
    Tracepoint(AttachReport),
    Kprobe(AttachReport, super::AttachPoint),
}

/// Everything but loading and attaching: is the function (or tracepoint) there, in which
/// module, does its prototype match? Needs no privilege.
fn resolve_one(
    syms: &Kallsyms,
    config: &AttachConfig,
    prototypes: &[PrototypeCheck],
    t: &Target,
    program: &'static str,
    kind: Kind,
) -> Resolved {
    let symbols = config.candidates(t);
    let enabled = !config.disabled.contains(&t.probe);
    // Driver ops found through the known-driver table are optional: a host without that
    // driver is not missing anything, so they are neither "requested" nor fatal.
    let requested = enabled && config.requested(t);
    let mut report = AttachReport {
        probe: t.probe,
        kind,
        program,
        function: symbols
            .first()
            .map(|s| s.name.to_string())
            .unwrap_or_default(),
        attached: false,
        reason: None,
        requested,
        // A kernel without modules never gets a function it lacks now.
        may_load_later: !t.vmlinux_only && !config.no_modules,
        module: None,
        found: false,
    };
    if !enabled || symbols.is_empty() {
        report.reason = Some(if enabled {
            format!("not requested: {}", t.origin)
        } else {
            "disabled on the command line".to_string()
        });
        report.may_load_later = false;
        return Resolved::Done(report);
    }
    if kind == Kind::RawTracepoint {
        // Raw tracepoints are named like their program, but for sched_process_exit.
        report.may_load_later = false;
        let tracepoint = if program == t.probe.entry_program() {
            symbols[0].name
        } else {
            program
        };
        report.function = tracepoint.to_string();
        report.found = true;
        return Resolved::Tracepoint(report);
    }
    let point = match syms.find_in(&symbols, t.anchors) {
        SymbolMatch::Found {
            name,
            module,
            note,
            attach,
        } => {
            report.function = match &module {
                Some(m) => format!("{name} [{m}]"),
                None => name,
            };
            // Built in (kallsyms shows no `[module]`): no module load changes whether it
            // attaches, so nothing waits for it.
            if module.is_none() {
                report.may_load_later = false;
            }
            report.module = module;
            report.reason = note;
            report.found = true;
            attach
        }
        SymbolMatch::Missing { reason } => {
            let reason = if config.no_modules {
                reason.replace(
                    super::kallsyms::MISSING_WHY,
                    super::kallsyms::MISSING_WHY_NO_MODULES,
                )
            } else {
                reason
            };
            report.reason = Some(format!("{reason}; comes from {}", t.origin));
            return Resolved::Done(report);
        }
    };
    if let Some(Err(why)) = prototypes
        .iter()
        .find(|c| c.probe == t.probe)
        .map(|c| &c.result)
    {
        report.reason = Some(format!("not attached: {why}"));
        return Resolved::Done(report);
    }
    Resolved::Kprobe(report, point)
}

/// One program as [`attach_all`] would see it, without loading anything (no privilege
/// needed): its report (never `attached`) and whether it would be loaded and attached.
pub fn plan_all(
    syms: &Kallsyms,
    config: &AttachConfig,
    prototypes: &[PrototypeCheck],
) -> Vec<(AttachReport, bool)> {
    programs()
        .map(
            |(t, program, kind)| match resolve_one(syms, config, prototypes, t, program, kind) {
                Resolved::Done(r) => (r, false),
                Resolved::Tracepoint(r) | Resolved::Kprobe(r, _) => (r, true),
            },
        )
        .collect()
}

/// Resolves and attaches one program of `t`; the report says what happened.
#[allow(clippy::too_many_arguments)]
fn attach_one(
    ebpf: &mut Ebpf,
    links: &mut Links,
    syms: &Kallsyms,
    config: &AttachConfig,
    prototypes: &[PrototypeCheck],
    t: &Target,
    program: &'static str,
    kind: Kind,
) -> Result<AttachReport, ProbeError> {
    match resolve_one(syms, config, prototypes, t, program, kind) {
        Resolved::Done(report) => Ok(report),
        Resolved::Tracepoint(mut report) => {
            let tracepoint = report.function.clone();
            load_program(ebpf, program, kind)?;
            let p: &mut RawTracePoint = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })?
                .try_into()
                .map_err(|e| load_error(program, e))?;
            match p.attach(&tracepoint) {
                Ok(id) => match links.keep(ebpf, program, LinkId::RawTracepoint(id)) {
                    None => report.attached = true,
                    Some(why) => report.reason = Some(why),
                },
                Err(e) => report.reason = Some(format!("attach failed: {}", chain(&e))),
            }
            Ok(report)
        }
        Resolved::Kprobe(mut report, point) => {
            load_program(ebpf, program, kind)?;
            let p: &mut KProbe = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram { program })?
                .try_into()
                .map_err(|e| load_error(program, e))?;
            match p.attach(&point.symbol, point.offset) {
                Ok(id) => match links.keep(ebpf, program, LinkId::Kprobe(id)) {
                    None => report.attached = true,
                    Some(why) => report.reason = Some(why),
                },
                Err(e) => report.reason = Some(format!("attach failed: {}", chain(&e))),
            }
            Ok(report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(no_modules: bool) -> Vec<AttachReport> {
        let config = AttachConfig {
            no_modules,
            ..AttachConfig::default()
        };
        let text = "\
ffffffff81000000 T _text
ffffffff81285e60 t kvm_destroy_vm
ffffffffc0001000 t tsm_bind\t[tsm_standin]
";
        let syms = Kallsyms::parse(text.as_bytes(), &config.wanted(), "test").unwrap();
        plan_all(&syms, &config, &[])
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    fn report(reports: &[AttachReport], probe: crate::events::ProbeId) -> &AttachReport {
        reports.iter().find(|r| r.probe == probe).unwrap()
    }

    /// A built-in function (no `[module]` in kallsyms) never waits for a module load, and
    /// on a kernel without modules nothing does.
    #[test]
    fn only_module_functions_wait_for_a_module() {
        use crate::events::ProbeId;
        let with = plan(false);
        assert!(!report(&with, ProbeId::KvmDestroyVm).waiting(), "built in");
        assert!(report(&with, ProbeId::TsmBind).waiting(), "in a module");
        let ioctl = report(&with, ProbeId::TsmOpIoctl);
        assert!(ioctl.waiting(), "absent, its module may load");
        assert!(
            ioctl
                .reason
                .as_deref()
                .unwrap()
                .contains("its module not loaded"),
            "{:?}",
            ioctl.reason
        );

        let without = plan(true);
        assert!(
            without.iter().all(|r| !r.waiting()),
            "no modules: none waits"
        );
        let ioctl = report(&without, ProbeId::TsmOpIoctl);
        let reason = ioctl.reason.as_deref().unwrap();
        assert!(!reason.contains("module not loaded"), "{reason}");
        assert!(reason.contains("cannot load modules"), "{reason}");
    }
}
