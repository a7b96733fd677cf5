//! The crash suite (`tests/vm/scenarios/crash.sh`): the daemon killed (SIGKILL, or SIGTERM
//! every fourth cycle) at instants spread over a scripted lifecycle, cycle after cycle; at
//! each checkpoint the daemon (started again if it died) must show exactly what the fixture
//! made:
//!
//! - `/bindings`: the bound devices and the leaks (device, reason) the script made;
//! - `tsm_trace_bindings_active`, `tsm_trace_leaked_binding_info` (one series per leak);
//! - the VMM's leak named by its VM's name from the stand-in QEMU's argv (`crash-vmm`), in
//!   `/bindings` and in the leak series' `vm` label, whatever restarts came between;
//! - no false leak: `tsm_trace_leaks_detected_total{reason="sysfs_bound_without_owner"}` 0,
//!   no sysfs mismatch, nothing lost (`tsm_trace_events_lost_total` 0);
//! - on kernels with the PCI TSM core, sysfs `tsm/bound` of D1 and D2 as the fixture left
//!   them (D1 bound after its teardown without unbind, until the cleanup);
//! - `tsm_trace_operations_total` (the kernel's exact counts, pinned across restarts): every
//!   cycle does the same operations, so each series at a checkpoint of cycle n equals n times
//!   its value at the end of cycle 0 (never interrupted) plus its value at the same
//!   checkpoint of cycle 0: nothing counted twice or lost across a restart.
//!
//! It reports the cycles, the kills by step and signal, and how many landed during a state
//! save (the temporary file left behind). The faults phase that follows is checked in
//! [`super::crash_faults`].

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::vm::checks::{Checks, blocks, s};
use crate::vm::kv::parse_kv;
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/crash.sh";

/// The VM name in the stand-in QEMU's argv (`-name guest=crash-vmm,…`) of the script's
/// vmmexit step.
const VMM_VM: &str = "crash-vmm";

/// Cycles the script runs (its `CYCLES`): cycle 0 measures, then one kill per cycle, the
/// steps in turn.
pub const CYCLES: usize = 13;

/// The steps of a cycle (the script's `STEPS`).
pub const STEPS: usize = 11;

/// One checkpoint's snapshot.
struct Snap {
    cycle: usize,
    cp: String,
    restarted: bool,
    want_bound: BTreeSet<String>,
    want_leaks: BTreeSet<(String, String)>,
    /// Devices the fixture left bound in sysfs, and what sysfs said of each device looked at.
    sysfs_want: BTreeSet<String>,
    sysfs: Vec<(String, String)>,
    bindings: Option<Value>,
    metrics: BTreeMap<String, f64>,
}

fn set(list: &str) -> BTreeSet<String> {
    list.split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse(text: &str) -> Result<Vec<Snap>> {
    let mut snaps: Vec<Snap> = Vec::new();
    for (head, bindings, metrics) in blocks(text) {
        let kv = parse_kv(head);
        let get = |k: &str| kv.get(k).cloned().unwrap_or_default();
        snaps.push(Snap {
            cycle: get("cycle").parse().context("cycle= in cr_snap")?,
            cp: get("cp"),
            restarted: get("restarted") == "1",
            want_bound: set(&get("bound")),
            want_leaks: set(&get("leaks"))
                .iter()
                .filter_map(|l| {
                    let (d, r) = l.split_once('=')?;
                    Some((d.to_string(), r.to_string()))
                })
                .collect(),
            sysfs_want: set(&get("sysfs_want")),
            sysfs: get("sysfs")
                .split(',')
                .filter_map(|p| {
                    let (d, b) = p.split_once('=')?;
                    Some((d.to_string(), b.to_string()))
                })
                .collect(),
            bindings,
            metrics,
        });
    }
    Ok(snaps)
}

/// The `tsm_trace_operations_total` series of a snapshot.
fn operations(m: &BTreeMap<String, f64>) -> BTreeMap<&str, f64> {
    m.iter()
        .filter(|(k, _)| k.starts_with("tsm_trace_operations_total{"))
        .map(|(k, v)| (k.as_str(), *v))
        .collect()
}

fn total(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let snaps = parse(&out.section("cr_snap")?.text)?;
    let log = &out.section("cr_log")?.text;
    let err = &out.section("cr_d.err")?.text;
    c.eq(snaps.len(), CYCLES * 3, "checkpoints taken (3 per cycle)");
    c.check(
        !err.contains(" ERROR ") && !err.to_lowercase().contains("panicked"),
        || format!("a daemon logged an error:\n{err}"),
    );
    c.check(err.contains("final exit=0"), || {
        format!("the last daemon did not exit 0 on SIGTERM:\n{err}")
    });

    // Cycle 0's values: the operations one cycle makes, up to each checkpoint.
    let base: BTreeMap<&str, BTreeMap<&str, f64>> = snaps
        .iter()
        .filter(|s| s.cycle == 0)
        .map(|s| (s.cp.as_str(), operations(&s.metrics)))
        .collect();
    let per_cycle = base.get("z").cloned().unwrap_or_default();
    c.check(!per_cycle.is_empty(), || {
        "cycle 0 counted no operation at its end".to_string()
    });

    for snap in &snaps {
        let at = format!("cycle {} checkpoint {}", snap.cycle, snap.cp);
        let Some(b) = &snap.bindings else {
            c.check(false, || format!("{at}: /bindings is not JSON"));
            continue;
        };
        let bound: BTreeSet<String> = b["bindings"]
            .as_array()
            .map(|a| a.iter().map(|x| s(x, "device")).collect())
            .unwrap_or_default();
        c.eq(
            &bound,
            &snap.want_bound,
            &format!("{at}: /bindings devices"),
        );
        let leaks: BTreeSet<(String, String)> = b["leaks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|l| l["cleared_ns"].is_null())
                    .map(|l| (s(l, "device"), s(l, "reason")))
                    .collect()
            })
            .unwrap_or_default();
        c.eq(&leaks, &snap.want_leaks, &format!("{at}: /bindings leaks"));
        // The VMM's leak carries the name its stand-in QEMU's argv gave the VM, across
        // every restart (the state file keeps it).
        let vmm_vm: Vec<String> = b["leaks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["cleared_ns"].is_null() && s(l, "reason") == "vmm_exited")
            .map(|l| s(&l["vm"]["vmm"], "name"))
            .collect();
        let want_vmm_vm: Vec<String> = snap
            .want_leaks
            .iter()
            .filter(|(_, r)| r == "vmm_exited")
            .map(|_| VMM_VM.to_string())
            .collect();
        c.eq(
            &vmm_vm,
            &want_vmm_vm,
            &format!("{at}: /bindings: the VMM's leak names its VM by the VMM's argv"),
        );
        let m = &snap.metrics;
        c.eq(
            total(m, "tsm_trace_bindings_active") as usize,
            snap.want_bound.len(),
            &format!("{at}: tsm_trace_bindings_active"),
        );
        let mut vmm_series: Vec<String> = Vec::new();
        let info: BTreeSet<(String, String)> = m
            .iter()
            .filter(|(k, v)| k.starts_with("tsm_trace_leaked_binding_info{") && **v == 1.0)
            .filter_map(|(k, _)| {
                let lab = |n: &str| {
                    let i = k.find(&format!("{n}=\""))? + n.len() + 2;
                    Some(k[i..].split('"').next()?.to_string())
                };
                if lab("reason")? == "vmm_exited" {
                    vmm_series.push(lab("vm")?);
                }
                Some((lab("device")?, lab("reason")?))
            })
            .collect();
        c.eq(
            &vmm_series,
            &want_vmm_vm,
            &format!("{at}: tsm_trace_leaked_binding_info{{reason=\"vmm_exited\"}}'s vm label"),
        );
        c.eq(
            &info,
            &snap.want_leaks,
            &format!("{at}: tsm_trace_leaked_binding_info series"),
        );
        c.eq(
            total(
                m,
                "tsm_trace_leaks_detected_total{reason=\"sysfs_bound_without_owner\"}",
            ),
            0.0,
            &format!("{at}: false sysfs_bound_without_owner leaks"),
        );
        c.eq(
            total(m, "tsm_trace_sysfs_mismatches_total"),
            0.0,
            &format!("{at}: sysfs mismatches"),
        );
        c.eq(
            total(m, "tsm_trace_events_lost_total"),
            0.0,
            &format!("{at}: events lost"),
        );
        for (dev, b) in &snap.sysfs {
            c.eq(
                !b.is_empty(),
                snap.sysfs_want.contains(dev),
                &format!("{at}: sysfs tsm/bound of {dev} ({b:?}) against the fixture"),
            );
        }
        if let Some(first) = base.get(snap.cp.as_str()) {
            let n = snap.cycle as f64;
            let want: BTreeMap<&str, f64> = per_cycle
                .keys()
                .chain(first.keys())
                .map(|k| {
                    (
                        *k,
                        n * per_cycle.get(k).copied().unwrap_or(0.0)
                            + first.get(k).copied().unwrap_or(0.0),
                    )
                })
                .filter(|(_, v)| *v != 0.0)
                .collect();
            let got: BTreeMap<&str, f64> = operations(m)
                .into_iter()
                .filter(|(_, v)| *v != 0.0)
                .collect();
            c.eq(
                &got,
                &want,
                &format!(
                    "{at}: tsm_trace_operations_total (cycle {} times cycle 0)",
                    snap.cycle
                ),
            );
        }
    }

    // Coverage: a kill in every step, both signals, restarts seen.
    let kills: Vec<BTreeMap<String, String>> = log
        .lines()
        .filter(|l| l.starts_with("cycle="))
        .map(parse_kv)
        .collect();
    c.eq(
        kills.len(),
        CYCLES - 1,
        "kills made (one per cycle after the first)",
    );
    let steps: BTreeSet<&str> = kills
        .iter()
        .filter_map(|k| k.get("step").map(String::as_str))
        .collect();
    c.eq(steps.len(), STEPS, "steps a kill was aimed at");
    let restarts = snaps.iter().filter(|s| s.restarted).count();
    c.check(restarts >= kills.len(), || {
        format!("{restarts} restarts for {} kills", kills.len())
    });
    let mid_save = kills
        .iter()
        .filter(|k| k.get("tmp").is_some_and(|t| t == "yes"))
        .count();
    let by_sig = |sig: &str| {
        kills
            .iter()
            .filter(|k| k.get("sig").is_some_and(|s| s == sig))
            .count()
    };
    eprintln!(
        "crash: {} cycles, {} kills ({} SIGKILL, {} SIGTERM) over steps {}; {} during a state save; {} restarts; {} checkpoints exact",
        CYCLES,
        kills.len(),
        by_sig("KILL"),
        by_sig("TERM"),
        steps.iter().copied().collect::<Vec<_>>().join(","),
        mid_save,
        restarts,
        snaps.len()
    );
    super::crash_faults::check(out, &mut c)?;
    c.finish("crash", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_header_bindings_and_metrics() {
        let text = "noise\n== cycle=0 cp=x bound=a\n{\"bindings\":[]}\ntsm_trace_bindings_active 2\n\
                    tsm_trace_pins_missing 0\n== full serving\nnot json\ntsm_trace_bindings_active 1\n";
        let b = blocks(text);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, "cycle=0 cp=x bound=a");
        assert!(b[0].1.as_ref().is_some_and(|v| v["bindings"].is_array()));
        assert_eq!(b[0].2.get("tsm_trace_bindings_active"), Some(&2.0));
        assert_eq!(b[0].2.len(), 2);
        assert_eq!(b[1].0, "full serving");
        assert!(b[1].1.is_none(), "a body that is not JSON is no bindings");
        assert_eq!(b[1].2.get("tsm_trace_bindings_active"), Some(&1.0));
        // The second header is no checkpoint: parse names what it lacks.
        let err = parse(text).err().expect("no cycle= in the second header");
        assert!(err.to_string().contains("cycle="), "{err}");
    }
}
