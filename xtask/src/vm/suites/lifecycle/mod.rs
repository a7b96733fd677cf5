//! The lifecycle suite: what `tsm-trace` reported about the REAL PCI TSM core (connect,
//! disconnect, removal, TSM unregistration, bind, unbind, guest requests) against the
//! fixtures' ground truth (`tests/vm/scenarios/lifecycle.sh` produces both).
//!
//! Expectations come only from the fixtures and from what the script did, never from a
//! table shared with tsm-trace:
//! - errno names: always the kernel's own `%pe` (`err=-EIO`): where a fixture op or ctl
//!   recorded the failure, its record; for a failed sysfs write, the errno the write returned
//!   (`tests/vm/tools/sysfs_write.c`) named by the kernel (`tsm_linktsm`'s `errname`);
//! - the layer (and function) an error is attributed to: the fixture link op that recorded
//!   the failure (`tsm_driver`, `driver_<op>`), else the function the script entered;
//! - decoded fields: sysfs writes, the link ops' `events` log, the fixtures' `last` records;
//! - latency: every driver frame against the duration the link op measured itself;
//! - the daemons: exact `/metrics` values, `/bindings` and `--print json` lines per phase.
//!
//! - [`truth`]: the fixtures' ground truth; [`output`]: reading tsm-trace's output;
//! - [`trace`]: the trace session, every operation in order ([`ops`]: an operation and its
//!   frames; [`binds`]: binds and guest requests; [`teardown`]: unbind, disconnect, removal,
//!   unregistration);
//! - [`daemons`]: three daemons, phase by phase;
//! - [`vmm`]: VMs named from their VMMs' argv (every kernel, the stand-in's bind path).

mod binds;
mod daemons;
mod ops;
mod output;
mod teardown;
mod trace;
mod truth;
mod vmm;

use anyhow::{Result, bail};

use crate::vm::checks::Checks;
use crate::vm::qemu::VmOutput;
use output::{TRACE_PROBES, health};

pub const SCRIPT: &str = "tests/vm/scenarios/lifecycle.sh";

/// The probes of the PCI TSM lifecycle (absent, with a reason, on kernels without PCI TSM).
const LIFECYCLE_PROBES: &[&str] = &[
    "connect",
    "disconnect",
    "pci_tsm_disconnect",
    "pci_tsm_unbind_any",
    "pci_tsm_destroy",
    "pci_tsm_guest_req",
    "driver_probe",
    "driver_connect",
    "driver_disconnect",
    "driver_bind",
    "driver_unbind",
    "driver_guest_req",
    // The kernel's PCIe IDE API (drivers/pci/ide.c) came with PCI TSM in 6.19 (issue 28
    // item 6: absent, each with its reason, where it is not).
    "ide_stream_alloc",
    "ide_stream_register",
    "ide_stream_setup",
    "ide_stream_enable",
    "ide_stream_disable",
    "ide_stream_teardown",
    "ide_stream_unregister",
    "ide_stream_release",
    "ide_stream_free",
];

/// The lifecycle suite on a kernel with PCI TSM (7.x).
pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let kernel = &out.section("lc_kernel")?.text;
    if !kernel.contains("pci_tsm=1") {
        bail!(
            "lifecycle: the kernel has CONFIG_PCI_TSM but the guest could not load tsm_linktsm ({}; logs in {})",
            kernel.trim(),
            out.run_dir.display()
        );
    }
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let check_out = &out.section("lc_check")?.text;
    health(&mut c, check_out, "tsm-trace check", TRACE_PROBES);
    c.check(check_out.lines().any(|l| l == "exit=0"), || {
        format!("tsm-trace check failed:\n{check_out}")
    });
    vmm::check(&mut c, out)?;
    trace::session(&mut c, out)?;
    daemons::check(&mut c, out)?;
    c.finish("lifecycle", out)
}

/// Kernels without PCI TSM (6.1): `tsm-trace check` reports every lifecycle probe absent,
/// each with a reason, and still succeeds (the stand-in's bind path attaches).
pub fn check_absent(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let kernel = &out.section("lc_kernel")?.text;
    c.eq(
        kernel.trim().to_string(),
        "pci_tsm=0".to_string(),
        "lc_kernel on a kernel without PCI TSM",
    );
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let text = &out.section("lc_check")?.text;
    c.check(text.lines().any(|l| l == "exit=0"), || {
        format!("tsm-trace check failed:\n{text}")
    });
    for p in LIFECYCLE_PROBES {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&"probe")
                    && w.contains(p)
                    && (w.get(1) == Some(&"attached") && w.get(2) == Some(p)
                        || w.get(1) == Some(&"NOT") && w.get(3) == Some(p)
                        || w.get(1) == Some(&"skipped") && w.get(2) == Some(p))
            })
            .collect();
        c.check(!lines.is_empty(), || {
            format!("check: no line for probe {p}:\n{text}")
        });
        for l in lines {
            c.check(
                (l.contains("NOT ATTACHED") || l.contains(" skipped "))
                    && l.contains('(')
                    && l.ends_with(')'),
                || format!("check: probe {p} must be absent with a reason: {l}"),
            );
        }
    }
    vmm::check(&mut c, out)?;
    for absent in ["lc_trace.err", "lc_truth"] {
        c.check(!out.sections.contains_key(absent), || {
            format!("{absent} printed on a kernel without PCI TSM")
        });
    }
    c.finish("lifecycle", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Re-checks a saved run: `TSM_LC_DATA=.vm-cache/runs/<run>/data.log cargo test -p xtask
    /// lifecycle::tests::replay -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn replay() {
        let path = std::env::var("TSM_LC_DATA").expect("TSM_LC_DATA");
        let data = std::fs::read_to_string(&path).expect("data.log");
        let (sections, run_rc, _) = crate::vm::qemu::parse_data(&data);
        let out = VmOutput {
            kernel_version: String::new(),
            console: String::new(),
            sections,
            run_rc,
            warnings: Vec::new(),
            run_dir: path.into(),
            elapsed: std::time::Duration::ZERO,
        };
        let r = if out.sections["lc_kernel"].text.contains("pci_tsm=1") {
            check(&out)
        } else {
            check_absent(&out)
        };
        match r {
            Ok(n) => println!("{n} checks ok"),
            Err(e) => panic!("{e:#}"),
        }
    }
}

/// Re-checks a saved run: `TSM_VM_RECHECK=<run dir> cargo test -p xtask recheck_saved_run --
/// --ignored --nocapture` (for a failure whose message scrolled away).
#[cfg(test)]
mod recheck {
    #[test]
    #[ignore]
    fn recheck_saved_run() {
        let dir =
            std::path::PathBuf::from(std::env::var("TSM_VM_RECHECK").expect("TSM_VM_RECHECK"));
        let data = std::fs::read_to_string(dir.join("data.log")).unwrap();
        let (sections, run_rc, _) = crate::vm::qemu::parse_data(&data);
        let out = super::VmOutput {
            kernel_version: String::new(),
            console: String::new(),
            sections,
            run_rc,
            warnings: Vec::new(),
            run_dir: dir,
            elapsed: Default::default(),
        };
        match super::check(&out) {
            Ok(n) => println!("{n} checks passed"),
            Err(e) => println!("{e:#}"),
        }
    }
}
