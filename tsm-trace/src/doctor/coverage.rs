//! What the attached probes cover of what this kernel carries: the one judgement behind the
//! daemon's `/readyz` and the "blind" line of `run`, `trace` and `check`.
//!
//! A *path* is a group of probes that see one kind of operation (any one of them suffices to
//! see it). The kernel *carries* a path when a requested probe of it has its function here
//! (kallsyms, or the tracepoint); the path is *covered* when one of its probes is attached.
//!
//! - ready: every path the kernel carries is covered, and the bind path is among them.
//! - degraded: some path the kernel carries is not covered, or the kernel carries no bind
//!   path at all (tsm-trace runs but sees nothing of binds). The reason names each gap.

use crate::{events::ProbeId, probes::AttachReport};

/// The paths, each with the probes that see it.
pub const PATHS: [(&str, &[ProbeId]); 4] = [
    (
        "bind",
        &[ProbeId::TsmOpIoctl, ProbeId::TsmBind, ProbeId::PciTsmBind],
    ),
    (
        "unbind",
        &[
            ProbeId::TsmOpIoctl,
            ProbeId::TsmUnbind,
            ProbeId::PciTsmUnbind,
            ProbeId::PciTsmUnbindAny,
            ProbeId::VdeviceAbort,
        ],
    ),
    (
        "connect",
        &[
            ProbeId::Connect,
            ProbeId::Disconnect,
            ProbeId::PciTsmDisconnect,
        ],
    ),
    ("vm lifetime", &[ProbeId::KvmDestroyVm, ProbeId::VmmExit]),
];

/// How far the attached probes cover what the kernel carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every path the kernel carries has an attached probe, the bind path included.
    Full,
    /// What is missing, one clause per path, `; `-separated.
    Degraded(String),
}

fn names(reports: &[&AttachReport]) -> String {
    let mut v: Vec<&str> = reports.iter().map(|r| r.probe.as_str()).collect();
    v.dedup();
    v.join(", ")
}

/// Judges `reports` (one per program, as a session or `check` has them).
pub fn coverage(reports: &[AttachReport]) -> Coverage {
    let mut gaps = Vec::new();
    for (path, probes) in PATHS {
        let on: Vec<&AttachReport> = reports
            .iter()
            .filter(|r| probes.contains(&r.probe) && r.requested)
            .collect();
        if on.iter().any(|r| r.attached) {
            continue;
        }
        let carried: Vec<&AttachReport> = on.iter().copied().filter(|r| r.found).collect();
        if !carried.is_empty() {
            gaps.push(format!(
                "{path} path not seen: {} in this kernel but not attached (see its probe lines)",
                names(&carried)
            ));
        } else if path == "bind" {
            gaps.push(format!(
                "bind path not seen: this kernel has none of {} (neither PCI TSM nor the iommufd TSM bind patch), so no bind can be seen",
                names(&on)
            ));
        }
    }
    if gaps.is_empty() {
        Coverage::Full
    } else {
        Coverage::Degraded(gaps.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::Kind;

    fn r(probe: ProbeId, found: bool, attached: bool) -> AttachReport {
        AttachReport {
            probe,
            kind: Kind::Kprobe,
            program: "p",
            function: probe.as_str().into(),
            attached,
            reason: None,
            requested: true,
            may_load_later: false,
            module: None,
            found,
        }
    }

    #[test]
    fn ready_when_every_carried_path_is_covered() {
        let all = [
            r(ProbeId::PciTsmBind, true, true),
            r(ProbeId::PciTsmUnbind, true, true),
            r(ProbeId::Connect, true, true),
            r(ProbeId::VmmExit, true, true),
            // Absent from the kernel: not expected.
            r(ProbeId::TsmOpIoctl, false, false),
            r(ProbeId::KvmDestroyVm, false, false),
        ];
        assert_eq!(coverage(&all), Coverage::Full);
    }

    /// 1 program of many attached and no bind-path probe: degraded, naming each gap.
    #[test]
    fn degraded_names_what_is_missing() {
        let one = [
            r(ProbeId::VmmExit, true, true),
            r(ProbeId::PciTsmBind, true, false),
            r(ProbeId::TsmOpIoctl, false, false),
            r(ProbeId::Connect, true, false),
            r(ProbeId::KvmDestroyVm, true, false),
        ];
        let Coverage::Degraded(why) = coverage(&one) else {
            panic!("ready with no bind-path probe attached");
        };
        assert!(why.contains("bind path not seen: pci_tsm_bind"), "{why}");
        assert!(why.contains("connect path not seen: connect"), "{why}");
        assert!(!why.contains("vm lifetime"), "{why}");

        // A kernel without any bind path: degraded, and says the kernel lacks it.
        let none = [
            r(ProbeId::VmmExit, true, true),
            r(ProbeId::PciTsmBind, false, false),
        ];
        let Coverage::Degraded(why) = coverage(&none) else {
            panic!("ready on a kernel with no bind path");
        };
        assert!(why.contains("neither PCI TSM nor"), "{why}");
    }
}
