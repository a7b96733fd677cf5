//! VMs by the names users know: stand-in VMMs (`tests/vm/tools/vmm_bind.c`, a process whose
//! argv is exactly a VMM's) bind through the stand-in, and tsm-trace must name each VM as
//! the argv the script launched names it (`lc_vmm_truth`: the case, the name the script
//! meant, the binder's pid; each case its own VM), or by the VM's KVM stats id where that
//! argv names nothing (as the stand-in recorded `kvm->stats_id`). Runs on every kernel (6.1 included): the argv is
//! read in the bind probes, whatever PCI TSM layer is under them.
//!
//! Expectations come from the script's cases (what each VMM's documentation says names a
//! VM: QEMU's `-name [guest=]NAME`, Firecracker's `--id`, ...), never from tsm-trace's
//! table (`tsm-trace/src/events/vmm.rs`).

use anyhow::{Context, Result};
use serde_json::Value;

use crate::vm::checks::{Checks, json_lines, s};
use crate::vm::qemu::VmOutput;

/// The cases of `lifecycle.sh` and the VMM each one runs as (`None`: named by stats id).
const CASES: &[(&str, Option<&str>)] = &[
    ("qemu", Some("qemu")),
    ("libvirt", Some("qemu")),
    ("kata", Some("kata")),
    ("cloud-hypervisor", Some("cloud-hypervisor")),
    ("firecracker", Some("firecracker")),
    ("crosvm", Some("crosvm")),
    ("qemu_no_name", None),
    ("qemu_name_last", None),
    ("qemu_name_past_bound", None),
    ("not_a_vmm", None),
];

fn kv<'a>(line: &'a str, k: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
}

pub(super) fn check(c: &mut Checks, out: &VmOutput) -> Result<()> {
    let err = &out.section("lc_vmm.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("the VMM-name trace session failed:\n{err}")
    });
    let truth = &out.section("lc_vmm_truth")?.text;
    let ops = json_lines(out, "lc_vmm.jsonl", false)?;
    let binds: Vec<&Value> = ops
        .iter()
        .filter(|v| s(v, "type") == "operation" && s(v, "kind") == "bind")
        .collect();
    let mut seen = Vec::new();
    for line in truth.lines().filter(|l| l.starts_with("case=")) {
        let case = kv(line, "case").unwrap_or_default();
        let expect = kv(line, "expect").unwrap_or_default();
        seen.push(case.to_string());
        c.eq(
            kv(line, "write"),
            Some("ok"),
            &format!("{case}: the bind write"),
        );
        let Some(pid) = kv(line, "pid") else {
            c.check(false, || format!("{case}: no pid in {line}"));
            continue;
        };
        let mine: Vec<&&Value> = binds.iter().filter(|v| s(v, "tgid") == pid).collect();
        c.eq(
            mine.len(),
            1,
            &format!("{case}: bind operations of pid {pid}"),
        );
        let Some(op) = mine.first() else { continue };
        let stats_id = kv(line, "stats_id")
            .with_context(|| format!("{case}: no stats_id recorded by the stand-in: {line}"))?
            .to_string();
        c.eq(
            s(op, "result"),
            "ok".to_string(),
            &format!("{case}: bind result"),
        );
        let vm = &op["vm"];
        c.eq(
            s(vm, "stats_id"),
            stats_id.clone(),
            &format!("{case}: stats_id"),
        );
        let vmm = CASES.iter().find(|(n, _)| *n == case).map(|(_, v)| *v);
        c.check(vmm.is_some(), || {
            format!("{case}: not a case this checker knows")
        });
        match vmm.flatten() {
            Some(kind) => {
                c.eq(
                    s(&vm["vmm"], "name"),
                    expect.to_string(),
                    &format!("{case}: VM name"),
                );
                c.eq(
                    s(&vm["vmm"], "vmm"),
                    kind.to_string(),
                    &format!("{case}: VMM"),
                );
            }
            None => {
                c.eq(
                    expect,
                    "stats_id",
                    &format!("{case}: the script's expectation"),
                );
                c.check(vm.get("vmm").is_none(), || {
                    format!("{case}: no name in its argv, yet tsm-trace named it: {vm}")
                });
            }
        }
    }
    let want: Vec<String> = CASES.iter().map(|(n, _)| n.to_string()).collect();
    c.eq(seen, want, "VMM cases run");
    Ok(())
}
