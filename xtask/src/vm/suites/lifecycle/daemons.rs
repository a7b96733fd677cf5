//! The lifecycle suite's daemons, each phase against exact `/metrics` values, `/bindings`
//! and its `--print json` lines up to that phase: daemon 1 (a) a device bound before it
//! started, its unbind seen, (c) binds then a disconnect while bound; daemon 2 (b) an unbind
//! it cannot see; daemon 3 (d) sysfs showing a bind whose call has not returned.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::output::{TRACE_PROBES, health, json_lines};
use super::truth::{A, B, Kv, Truth, t};
use crate::vm::checks::{Checks, parse_exposition, s};
use crate::vm::qemu::VmOutput;

/// The daemons of the lifecycle suite, one after the other.
pub(super) fn check(c: &mut Checks, out: &VmOutput) -> Result<()> {
    let truth = Truth::parse(&out.section("lc_truth")?.text);
    let tsm = t(truth.ctl("d1_prebind", "linktsm", "register")?, "tsm");
    let vm = truth.ctl("vms", "standin", "vm_create")?.clone();
    daemon_1(c, out, &truth, &tsm, &vm)?;
    daemon_2(c, out, &truth, &tsm)?;
    daemon_3(c, out, &truth, &tsm)
}

/// A daemon's `--print json` lines and, for each phase, how many it had printed by then.
struct Printed {
    lines: Vec<Value>,
    marks: BTreeMap<String, usize>,
}

impl Printed {
    /// The number of lines printed up to `phase`.
    fn upto(&self, phase: &str) -> usize {
        self.marks
            .get(phase)
            .copied()
            .unwrap_or(0)
            .min(self.lines.len())
    }
}

/// The daemons' phases: `(name, phase)` → lines of `--print json` output up to that phase.
fn daemon_lines(out: &VmOutput, truth: &Truth, n: &str) -> Result<Printed> {
    let lines = json_lines(out, &format!("lc_d{n}.out"))?;
    let marks = truth
        .0
        .iter()
        .filter(|r| r.src == "mark" && t(&r.kv, "daemon") == n)
        .map(|r| {
            (
                t(&r.kv, "phase"),
                t(&r.kv, "lines").trim().parse().unwrap_or(0),
            )
        })
        .collect();
    Ok(Printed { lines, marks })
}

/// A phase's `/metrics`, parsed (never empty).
fn metrics(out: &VmOutput, name: &str) -> Result<BTreeMap<String, f64>> {
    let m = parse_exposition(&out.section(name)?.text);
    if m.is_empty() {
        bail!("{name} is empty");
    }
    Ok(m)
}

/// A phase's `/bindings`.
fn bindings(out: &VmOutput, name: &str) -> Result<Value> {
    serde_json::from_str(&out.section(name)?.text).with_context(|| format!("{name} is not JSON"))
}

/// The devices of the daemon's bindings in a `/bindings` section.
fn ours(out: &VmOutput, name: &str) -> Result<Vec<String>> {
    Ok(bindings(out, name)?["bindings"]
        .as_array()
        .map(|a| a.iter().map(|b| s(b, "device")).collect())
        .unwrap_or_default())
}

fn mism(kind: &str) -> String {
    format!("tsm_trace_sysfs_mismatches_total{{kind=\"{kind}\"}}")
}

fn leaked(reason: &str) -> String {
    format!("tsm_trace_bindings_leaked{{reason=\"{reason}\"}}")
}

fn devices(state: &str) -> String {
    format!("tsm_trace_devices{{state=\"{state}\"}}")
}

fn closed(cause: &str) -> String {
    format!("tsm_trace_bindings_closed_total{{cause=\"{cause}\"}}")
}

fn ops(op: &str, layer: &str) -> String {
    format!("tsm_trace_operations_total{{errno=\"\",layer=\"{layer}\",op=\"{op}\",result=\"ok\"}}")
}

/// Every value of a phase, exactly: (series, value); no event lost, no sysfs error, at least
/// one reconciliation.
fn exact(c: &mut Checks, m: &BTreeMap<String, f64>, phase: &str, want: &[(String, f64)]) {
    for (k, v) in want {
        c.eq(
            m.get(k).copied(),
            Some(*v),
            &format!("daemon phase {phase}: {k}"),
        );
    }
    for reason in [
        "ringbuf_full",
        "inflight_full",
        "orphan_return",
        "decode_error",
    ] {
        c.eq(
            m.get(&format!(
                "tsm_trace_events_lost_total{{reason=\"{reason}\"}}"
            ))
            .copied(),
            Some(0.0),
            &format!("daemon phase {phase}: events lost ({reason})"),
        );
    }
    c.eq(
        m.get("tsm_trace_sysfs_errors_total").copied(),
        Some(0.0),
        &format!("daemon phase {phase}: sysfs errors"),
    );
    c.check(
        m.get("tsm_trace_sysfs_reconcile_runs_total")
            .is_some_and(|v| *v >= 1.0),
        || format!("daemon phase {phase}: no reconcile run"),
    );
}

/// Every leaked-bindings gauge 0, but `except`'s 1.
fn all_leaks_zero(except: Option<&str>) -> Vec<(String, f64)> {
    [
        "ioctl_failed_after_bind",
        "sysfs_bound_without_owner",
        "vdevice_teardown_without_unbind",
        "vm_destroyed",
        "vmm_exited",
    ]
    .iter()
    .map(|r| (leaked(r), if Some(*r) == except { 1.0 } else { 0.0 }))
    .collect()
}

/// Daemon 1: (a) bound before it started, (c) disconnect while bound.
fn daemon_1(c: &mut Checks, out: &VmOutput, truth: &Truth, tsm: &str, vm: &Kv) -> Result<()> {
    let err = &out.section("lc_d1.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("daemon 1 did not exit 0:\n{err}")
    });
    c.check(!err.contains(": warn: "), || {
        format!("daemon 1 logged warnings:\n{err}")
    });
    health(c, err, "daemon 1", TRACE_PROBES);
    let printed = daemon_lines(out, truth, "1")?;
    d1_bound_before_start(c, out, truth, tsm, &printed)?;
    d1_unbind_seen(c, out, truth, &printed)?;
    d1_bound_while_watched(c, out, truth, tsm, vm)?;
    d1_disconnect_while_bound(c, out, truth, &printed)?;
    c.eq(
        printed.lines.len(),
        printed.upto("c2"),
        "d1: output after the last phase",
    );
    Ok(())
}

/// (a) A bound in sysfs before the daemon started: a mismatch and a leak naming the TSM.
fn d1_bound_before_start(
    c: &mut Checks,
    out: &VmOutput,
    truth: &Truth,
    tsm: &str,
    printed: &Printed,
) -> Result<()> {
    c.eq(
        t(truth.state("d1_prebind", A)?, "bound"),
        tsm.to_string(),
        "d1 (a): A bound in sysfs before the daemon started",
    );
    let a = &printed.lines[..printed.upto("a")];
    c.eq(
        a.iter()
            .filter(|l| s(l, "type") == "sysfs_mismatch")
            .map(|l| (s(l, "kind"), s(l, "device")))
            .collect::<Vec<_>>(),
        vec![("bound_without_owner".to_string(), A.to_string())],
        "d1 (a): mismatch lines",
    );
    c.check(
        a.iter().any(|l| {
            s(l, "type") == "leak"
                && s(l, "event") == "detected"
                && s(l, "reason") == "sysfs_bound_without_owner"
                && s(l, "device") == A
                && s(l, "tsm") == tsm
        }),
        || format!("d1 (a): no sysfs_bound_without_owner leak of {A} naming {tsm}: {a:?}"),
    );
    let m = metrics(out, "lc_d1_metrics_a")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (
            "tsm_trace_leaks_detected_total{reason=\"sysfs_bound_without_owner\"}".to_string(),
            1.0,
        ),
        (
            format!(
                "tsm_trace_leaked_binding_info{{device=\"{A}\",reason=\"sysfs_bound_without_owner\",vm=\"\"}}"
            ),
            1.0,
        ),
        ("tsm_trace_bindings_active".to_string(), 0.0),
        (devices("bound"), 0.0),
        (
            devices("connected"),
            truth.connected_at("a", &ours(out, "lc_d1_bindings_a")?) as f64,
        ),
        (devices("disconnected"), 0.0),
    ];
    want.extend(all_leaks_zero(Some("sysfs_bound_without_owner")));
    exact(c, &m, "a", &want);
    let v = bindings(out, "lc_d1_bindings_a")?;
    c.eq(
        v["bindings"].as_array().map(Vec::len),
        Some(0),
        "d1 (a): /bindings bindings",
    );
    let lk = v["leaks"].as_array().cloned().unwrap_or_default();
    c.eq(
        lk.iter()
            .map(|l| (s(l, "device"), s(l, "reason"), s(l, "tsm")))
            .collect::<Vec<_>>(),
        vec![(
            A.to_string(),
            "sysfs_bound_without_owner".to_string(),
            tsm.to_string(),
        )],
        "d1 (a): /bindings leaks",
    );
    Ok(())
}

/// (a2) Its unbind, seen: the leak is cleared.
fn d1_unbind_seen(c: &mut Checks, out: &VmOutput, truth: &Truth, printed: &Printed) -> Result<()> {
    c.eq(
        t(truth.state("d1_unbind", A)?, "bound"),
        String::new(),
        "d1 (a2): A unbound in sysfs",
    );
    let a2 = &printed.lines[printed.upto("a")..printed.upto("a2")];
    c.check(
        a2.iter().any(|l| {
            s(l, "type") == "leak"
                && s(l, "event") == "cleared"
                && s(l, "reason") == "sysfs_bound_without_owner"
                && s(l, "device") == A
        }),
        || format!("d1 (a2): the sysfs_bound_without_owner leak of {A} was not cleared: {a2:?}"),
    );
    let m = metrics(out, "lc_d1_metrics_a2")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (ops("unbind", "iommufd"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 0.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "a2", &want);
    Ok(())
}

/// (c1) A and B bound while watched.
fn d1_bound_while_watched(
    c: &mut Checks,
    out: &VmOutput,
    truth: &Truth,
    tsm: &str,
    vm: &Kv,
) -> Result<()> {
    for d in [A, B] {
        c.eq(
            t(truth.state("d1_bind", d)?, "bound"),
            tsm.to_string(),
            &format!("d1 (c1): {d} bound in sysfs"),
        );
    }
    let m = metrics(out, "lc_d1_metrics_c1")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (ops("bind", "iommufd"), 2.0),
        ("tsm_trace_bindings_active".to_string(), 2.0),
        (devices("bound"), 2.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "c1", &want);
    let v = bindings(out, "lc_d1_bindings_c1")?;
    let mut bs: Vec<(String, String, String)> = v["bindings"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| (s(b, "device"), s(b, "tdi_id"), s(&b["vm"], "stats_id")))
                .collect()
        })
        .unwrap_or_default();
    bs.sort();
    c.eq(
        bs,
        vec![
            (A.to_string(), "77".to_string(), t(vm, "stats_id")),
            (B.to_string(), "78".to_string(), t(vm, "stats_id")),
        ],
        "d1 (c1): /bindings",
    );
    Ok(())
}

/// (c2) Then disconnected: bindings closed, no mismatch.
fn d1_disconnect_while_bound(
    c: &mut Checks,
    out: &VmOutput,
    truth: &Truth,
    printed: &Printed,
) -> Result<()> {
    for d in [A, B] {
        c.eq(
            t(truth.state("d1_disconnect", d)?, "bound"),
            if d == A {
                String::new()
            } else {
                "absent".into()
            },
            &format!("d1 (c2): {d} after the disconnect"),
        );
    }
    let c2 = &printed.lines[printed.upto("a2")..printed.upto("c2")];
    let closed_devs: Vec<String> = {
        let mut v: Vec<String> = c2
            .iter()
            .filter(|l| s(l, "type") == "binding_closed" && s(l, "cause") == "disconnect")
            .map(|l| s(&l["binding"], "device"))
            .collect();
        v.sort();
        v
    };
    c.eq(
        closed_devs,
        vec![A.to_string(), B.to_string()],
        "d1 (c2): binding_closed (cause disconnect)",
    );
    c.eq(
        c2.iter()
            .filter(|l| s(l, "type") == "sysfs_mismatch")
            .count(),
        0,
        "d1 (c): sysfs mismatches after a disconnect while bound",
    );
    let m = metrics(out, "lc_d1_metrics_c2")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (closed("disconnect"), 2.0),
        (closed("unbind"), 0.0),
        (closed("device_removal"), 0.0),
        (closed("tsm_unregister"), 0.0),
        (ops("disconnect", "pci_tsm"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 0.0),
        (devices("bound"), 0.0),
        (
            devices("connected"),
            truth.connected_at("c2", &ours(out, "lc_d1_bindings_c2")?) as f64,
        ),
        (devices("disconnected"), 1.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "c2", &want);
    Ok(())
}

/// Daemon 2: (b) a missed unbind (the unbind probes disabled).
fn daemon_2(c: &mut Checks, out: &VmOutput, truth: &Truth, tsm: &str) -> Result<()> {
    let err = &out.section("lc_d2.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("daemon 2 did not exit 0:\n{err}")
    });
    for p in ["pci_tsm_unbind", "pci_tsm_unbind_any", "driver_unbind"] {
        c.check(
            !err.lines()
                .any(|l| l.contains("probe attached") && l.split_whitespace().any(|w| w == p)),
            || format!("daemon 2: {p} attached although disabled"),
        );
    }
    let printed = daemon_lines(out, truth, "2")?;
    d2_bound(c, out, truth, tsm, &printed)?;
    d2_unbind_unseen(c, out, truth, tsm, &printed)?;
    c.eq(
        printed.lines.len(),
        printed.upto("b2"),
        "d2: output after the last phase",
    );
    Ok(())
}

/// (b1) A bound while watched: sysfs agrees.
fn d2_bound(
    c: &mut Checks,
    out: &VmOutput,
    truth: &Truth,
    tsm: &str,
    printed: &Printed,
) -> Result<()> {
    c.eq(
        t(truth.state("d2_bind", A)?, "bound"),
        tsm.to_string(),
        "d2 (b1): A bound in sysfs",
    );
    let m = metrics(out, "lc_d2_metrics_b1")?;
    let mut want = vec![
        (mism("bound_without_owner"), 0.0),
        (mism("denies_binding"), 0.0),
        (ops("connect", "pci_tsm"), 1.0),
        (ops("bind", "iommufd"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 1.0),
        (devices("bound"), 1.0),
        (
            devices("connected"),
            truth.connected_at("b1", &ours(out, "lc_d2_bindings_b1")?) as f64,
        ),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "b1", &want);
    c.eq(
        printed.lines[..printed.upto("b1")]
            .iter()
            .filter(|l| s(l, "type") == "sysfs_mismatch")
            .count(),
        0,
        "d2 (b1): no mismatch while sysfs agrees",
    );
    Ok(())
}

/// (b2) The fixture unbinds A where the daemon cannot see it: the binding is dropped as
/// one `denies_binding` mismatch.
fn d2_unbind_unseen(
    c: &mut Checks,
    out: &VmOutput,
    truth: &Truth,
    tsm: &str,
    printed: &Printed,
) -> Result<()> {
    let ub = truth.ctl("d2_unbind_unseen", "linktsm", "unbind")?;
    c.eq(t(ub, "rc"), "0".into(), "d2 (b2): the fixture's unbind");
    c.eq(
        t(truth.state("d2_unbind_unseen", A)?, "bound"),
        String::new(),
        "d2 (b2): A unbound in sysfs",
    );
    let b2 = &printed.lines[printed.upto("b1")..printed.upto("b2")];
    let denies: Vec<&Value> = b2
        .iter()
        .filter(|l| s(l, "type") == "sysfs_mismatch")
        .collect();
    c.eq(denies.len(), 1, "d2 (b2): one mismatch");
    if let Some(d) = denies.first() {
        c.eq(
            (s(d, "kind"), s(d, "device")),
            ("denies_binding".to_string(), A.to_string()),
            "d2 (b2): mismatch kind, device",
        );
        let bkv = truth.find("d2_bind", "standin", |kv| t(kv, "cmd") == "ioctl")?;
        c.eq(
            s(&d["binding"], "tdi_id"),
            t(bkv, "tdi_id"),
            "d2 (b2): dropped binding tdi_id",
        );
        c.vm_id(
            &s(&d["binding"]["vm"], "id"),
            &t(bkv, "kvm"),
            "d2 (b2): dropped binding vm.id",
        );
        c.eq(
            s(&d["binding"], "tsm"),
            tsm.to_string(),
            "d2 (b2): dropped binding tsm",
        );
    }
    let m = metrics(out, "lc_d2_metrics_b2")?;
    let mut want = vec![
        (mism("bound_without_owner"), 0.0),
        (mism("denies_binding"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 0.0),
        (devices("bound"), 0.0),
        (devices("connected"), 1.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "b2", &want);
    let v = bindings(out, "lc_d2_bindings_b2")?;
    c.eq(
        v["bindings"].as_array().map(Vec::len),
        Some(0),
        "d2 (b2): /bindings after the drop",
    );
    Ok(())
}

/// Daemon 3: (d) sysfs shows a bind whose call has not returned (a 3 s bind).
fn daemon_3(c: &mut Checks, out: &VmOutput, truth: &Truth, tsm: &str) -> Result<()> {
    let err = &out.section("lc_d3.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!(
            "daemon 3 did not exit 0:
{err}"
        )
    });
    let slow = truth.find("d3_slow_bind", "standin", |kv| t(kv, "cmd") == "ioctl")?;
    c.eq(t(slow, "rc"), "0".into(), "d3: the slow bind's rc");
    let ns: u64 = t(slow, "duration_ns").parse().unwrap_or(0);
    c.check(ns >= 2_700_000_000, || {
        format!("d3: the fixture's ioctl took {ns} ns, not the 3 s asked for")
    });
    c.eq(
        t(truth.state("d3_slow_bind", A)?, "bound"),
        tsm.to_string(),
        "d3: A bound in sysfs",
    );
    let m = metrics(out, "lc_d3_metrics_d")?;
    let runs = m
        .get("tsm_trace_sysfs_reconcile_runs_total")
        .copied()
        .unwrap_or(0.0);
    c.check(runs >= 25.0, || {
        format!("d3: only {runs} reconciliations ran during the 3 s bind (every 100 ms)")
    });
    let mut want = vec![
        (mism("bound_without_owner"), 0.0),
        (mism("denies_binding"), 0.0),
        ("tsm_trace_bindings_active".to_string(), 1.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "d", &want);
    Ok(())
}
