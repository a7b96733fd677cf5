//! Reading what tsm-trace printed in the lifecycle suite: `--print json` lines, the record
//! file's raw events behind an operation's frames, and the startup report's probes.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::vm::checks::{Checks, s};
use crate::vm::qemu::VmOutput;

/// Every probe the trace session must attach on 7.x.
pub(super) const TRACE_PROBES: &[&str] = &[
    "tsm_op_ioctl",
    "tsm_bind",
    "tsm_unbind",
    "vdevice_abort",
    "pci_tsm_bind",
    "pci_tsm_unbind",
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
    "kvm_destroy_vm",
    "vmm_exit",
];

/// The JSON lines of section `name` (other lines skipped).
pub(super) fn json_lines(out: &VmOutput, name: &str) -> Result<Vec<Value>> {
    out.section(name)?
        .text
        .lines()
        .filter(|l| l.starts_with('{'))
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{name} line {}: {l}", i + 1))
        })
        .collect()
}

/// The record file: every raw event, by (probe, start, end) for frames.
pub(super) struct Record {
    pub(super) evs: Vec<Value>,
}

impl Record {
    fn frame(&self, f: &Value) -> Option<&Value> {
        self.evs.iter().find(|e| {
            e["probe"] == f["probe"] && e["start_ns"] == f["start_ns"] && e["end_ns"] == f["end_ns"]
        })
    }
}

/// The raw events of an operation's frames of `probe`, in frame order.
pub(super) fn raw<'a>(rec: &'a Record, op: &Value, probe: &str) -> Vec<&'a Value> {
    op["frames"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| s(f, "probe") == probe)
                .filter_map(|f| rec.frame(f))
                .collect()
        })
        .unwrap_or_default()
}

/// An operation's frames of `probe`.
pub(super) fn frames<'a>(op: &'a Value, probe: &str) -> Vec<&'a Value> {
    op["frames"]
        .as_array()
        .map(|fs| fs.iter().filter(|f| s(f, "probe") == probe).collect())
        .unwrap_or_default()
}

/// Startup report and exit of the trace session.
pub(super) fn health(c: &mut Checks, err: &str, what: &str, probes: &[&str]) {
    for p in probes {
        c.check(
            err.lines()
                .any(|l| l.contains("probe attached") && l.split_whitespace().any(|w| w == *p)),
            || format!("{what}: probe {p} not attached"),
        );
    }
    c.check(!err.contains("UNRESOLVED"), || {
        format!("{what}: BTF fields unresolved")
    });
}
