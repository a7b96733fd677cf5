//! The IDE suite (`tests/vm/scenarios/ide.sh`, kernels with the kernel's PCIe IDE API): the
//! `tsm_linktsm` fixture emulates the IDE extended capability of an endpoint and its root
//! port (q35, [`crate::vm::RunOptions::ide_pcie`]) and, as the link TSM of the real PCI TSM
//! core, calls the kernel's own `pci_ide_stream_*` from its connect and disconnect in
//! SEV-TIO's order. The script compares the fixture's own record of every call (and the
//! kernel's sysfs `stream<H>.<R>.<E>` links) with what each step injected; this checker
//! counts those comparisons and fails on any that did not hold.

use anyhow::{Result, bail};

use crate::vm::kv::parse_kv;
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/ide.sh";

/// The script makes at least this many comparisons when every step ran.
const MIN_CHECKS: usize = 60;

pub fn check(out: &VmOutput) -> Result<usize> {
    let text = &out.section("checks")?.text;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("check=")).collect();
    let mut errs: Vec<String> = lines
        .iter()
        .filter(|l| parse_kv(l).get("result").map(String::as_str) != Some("ok"))
        .map(|l| l.to_string())
        .collect();
    if out.run_rc != Some(0) {
        errs.push(format!("run.sh exited {:?}", out.run_rc));
    }
    if lines.len() < MIN_CHECKS {
        errs.push(format!(
            "only {} checks ran, expected at least {MIN_CHECKS}",
            lines.len()
        ));
    }
    if !errs.is_empty() {
        bail!(
            "{} of {} IDE checks failed (logs in {}):\n  {}",
            errs.len(),
            lines.len(),
            out.run_dir.display(),
            errs.join("\n  ")
        );
    }
    Ok(lines.len())
}
