//! The probe suite: checks what `tsm-trace` reported inside the VM against the stand-in
//! module's ground truth (`tests/vm/scenarios/probes.sh` produces both).
//!
//! - decoded fields: every raw event in the record file vs. the module's `last` line;
//! - correlation: each operation's kind, result, errno name and attributed layer;
//! - leaks: detected with the right reason and device, cleared on unbind;
//! - latency: the driver frame vs. the duration the module measured itself;
//! - health: every probe attached, every BTF field resolved, zero lost events;
//! - the daemon: exact `/metrics` values and the `/bindings` view after a scenario.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::vm::checks::{Checks, json_lines, parse_exposition, s};
use crate::vm::kv::{parse_kv, pe_name};
use crate::vm::qemu::VmOutput;

pub mod diagnostics;

pub const SCRIPT: &str = "tests/vm/scenarios/probes.sh";

type Truth = Vec<(String, BTreeMap<String, String>)>;

fn truth(out: &VmOutput, name: &str) -> Result<Truth> {
    Ok(out
        .section(name)?
        .text
        .lines()
        .map(parse_kv)
        .filter_map(|kv| kv.get("step").cloned().map(|s| (s, kv)))
        .collect())
}

fn step<'a>(t: &'a Truth, name: &str) -> Result<&'a BTreeMap<String, String>> {
    t.iter()
        .find(|(n, _)| n == name)
        .map(|(_, kv)| kv)
        .with_context(|| format!("step {name} missing from the ground truth"))
}

/// Ground truth value, with pointers normalized (`0x%px` vs `{:#x}` agree already).
fn t(kv: &BTreeMap<String, String>, k: &str) -> String {
    kv.get(k).cloned().unwrap_or_default()
}

/// Finds the next event of `probe` at or after `*cursor` satisfying `pred`; advances the cursor.
fn next_event<'a>(
    evs: &'a [Value],
    cursor: &mut usize,
    probe: &str,
    pred: impl Fn(&Value) -> bool,
) -> Option<(usize, &'a Value)> {
    let i = (*cursor..evs.len()).find(|&i| s(&evs[i], "probe") == probe && pred(&evs[i]))?;
    *cursor = i + 1;
    Some((i, &evs[i]))
}

/// The inner events of an outer event at index `outer`: same tid, completed within it.
fn inner<'a>(evs: &'a [Value], from: usize, outer: usize, probe: &str) -> Option<&'a Value> {
    let o = &evs[outer];
    evs[from..outer].iter().rev().find(|e| {
        s(e, "probe") == probe
            && e["tid"] == o["tid"]
            && e["start_ns"].as_u64() >= o["start_ns"].as_u64()
            && e["end_ns"].as_u64() <= o["end_ns"].as_u64()
    })
}

/// The errno name of the ground truth's `rc` ("" for success): the kernel's own `%pe` the
/// fixture printed (`err=`), never a table shared with tsm-trace.
fn errno_of(kv: &BTreeMap<String, String>) -> String {
    if t(kv, "rc") == "0" {
        return String::new();
    }
    match kv.get("err") {
        Some(err) => pe_name(err),
        None => format!("<no err= in the fixture's record {kv:?}>"),
    }
}

/// The layer the fixture recorded its error was born in (`fail_layer=`, written by the first
/// function that failed), never a table of ours.
fn fail_layer(kv: &BTreeMap<String, String>) -> String {
    kv.get("fail_layer")
        .cloned()
        .unwrap_or_else(|| format!("<the fixture recorded no failing function in {kv:?}>"))
}

/// Checks a bind-type inner event's decoded device, VM and tdi against the truth.
fn check_bind_fields(c: &mut Checks, name: &str, ev: &Value, kv: &BTreeMap<String, String>) {
    let probe = s(ev, "probe");
    c.eq(
        s(ev, "device"),
        t(kv, "dev"),
        &format!("{name}: {probe} device"),
    );
    c.vm_id(
        &s(&ev["vm"], "id"),
        &t(kv, "kvm"),
        &format!("{name}: {probe} vm.id"),
    );
    c.eq(
        s(&ev["vm"], "pid"),
        t(kv, "kvm_pid"),
        &format!("{name}: {probe} vm.pid"),
    );
    c.eq(
        s(&ev["vm"], "stats_id"),
        t(kv, "stats_id"),
        &format!("{name}: {probe} vm.stats_id"),
    );
    c.eq(
        s(ev, "tdi_id"),
        t(kv, "tdi_id"),
        &format!("{name}: {probe} tdi_id"),
    );
}

/// Startup report and exit of one `tsm-trace trace` session.
fn check_session_health(
    c: &mut Checks,
    out: &VmOutput,
    err_section: &str,
    probes: &[&str],
) -> Result<()> {
    let err = &out.section(err_section)?.text;
    c.check(err.contains("tracing with"), || {
        format!("{err_section}: tsm-trace did not start:\n{err}")
    });
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("{err_section}: tsm-trace did not exit 0:\n{err}")
    });
    for p in probes {
        c.check(
            err.lines()
                .any(|l| l.contains("probe attached") && l.split_whitespace().any(|w| w == *p)),
            || format!("{err_section}: probe {p} not attached:\n{err}"),
        );
    }
    // After a re-attach (module loaded late), only the latest report counts.
    let latest = err
        .rfind("a module load made more probes available")
        .map_or(err.as_str(), |i| &err[i..]);
    c.check(!latest.contains("UNRESOLVED"), || {
        format!(
            "{err_section}: BTF fields unresolved:\n{}",
            err.lines()
                .filter(|l| l.contains("UNRESOLVED"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    c.check(
        err.contains("lost events: 0 (ring buffer full), 0 (in-flight table full), 0 returns without entry, 0 returns never seen; 0 kernel read faults; 0 VMM names not recorded")
            && err.lines().any(|l| l.starts_with("kernel misses: 0 (kprobe") && l.ends_with(", 0 (BPF recursion)")),
        || format!("{err_section}: events lost or reads faulted:\n{err}"),
    );
    Ok(())
}

/// One expected ioctl outcome.
struct Ioctl {
    step: &'static str,
    kind: &'static str,
    /// Inner probes whose decoded fields must match the truth.
    inner: &'static [&'static str],
}

const IOCTLS: &[Ioctl] = &[
    Ioctl {
        step: "flags",
        kind: "bind",
        inner: &[],
    },
    Ioctl {
        step: "novdev",
        kind: "bind",
        inner: &[],
    },
    Ioctl {
        step: "nokvm",
        kind: "bind",
        inner: &[],
    },
    Ioctl {
        step: "badop",
        kind: "invalid",
        inner: &[],
    },
    Ioctl {
        step: "nonpci",
        kind: "bind",
        inner: &[],
    },
    Ioctl {
        step: "bind_eio",
        kind: "bind",
        inner: &["tsm_bind", "pci_tsm_bind", "driver_bind"],
    },
    Ioctl {
        step: "bind_efault",
        kind: "bind",
        inner: &["tsm_bind", "pci_tsm_bind", "driver_bind"],
    },
    Ioctl {
        step: "bind_same",
        kind: "bind",
        inner: &["tsm_bind", "pci_tsm_bind"],
    },
    Ioctl {
        step: "bind_other_vm",
        kind: "bind",
        inner: &["tsm_bind", "pci_tsm_bind"],
    },
    Ioctl {
        step: "unbind",
        kind: "unbind",
        inner: &[],
    },
    Ioctl {
        step: "rebind",
        kind: "bind",
        inner: &["tsm_bind", "pci_tsm_bind", "driver_bind"],
    },
    Ioctl {
        step: "bind6",
        kind: "bind",
        inner: &["tsm_bind", "pci_tsm_bind", "driver_bind"],
    },
    Ioctl {
        step: "bind7",
        kind: "bind",
        inner: &["tsm_bind", "pci_tsm_bind", "driver_bind"],
    },
];

/// Session A: every scenario with every layer visible.
pub fn check_session_a(out: &VmOutput) -> Result<Checks> {
    let mut c = Checks::default();
    check_session_health(
        &mut c,
        out,
        "trace_a.err",
        &[
            "tsm_op_ioctl",
            "tsm_bind",
            "tsm_unbind",
            "vdevice_abort",
            "pci_tsm_bind",
            "pci_tsm_unbind",
            "driver_bind",
            "driver_unbind",
            "kvm_destroy_vm",
            "vmm_exit",
        ],
    )?;
    let truth = truth(out, "truth_a")?;
    let evs = json_lines(out, "record_a.jsonl", true)?;
    let trace = json_lines(out, "trace_a.jsonl", false)?;
    let ops: Vec<&Value> = trace
        .iter()
        .filter(|v| s(v, "type") == "operation")
        .collect();
    let leaks: Vec<&Value> = trace.iter().filter(|v| s(v, "type") == "leak").collect();

    // Decoded fields, ioctl by ioctl, in order.
    let mut cursor = 0;
    let mut op_cursor = 0;
    for x in IOCTLS {
        let kv = step(&truth, x.step)?;
        let (op, flags, vdev) = (t(kv, "op"), t(kv, "flags"), t(kv, "vdevice_id"));
        let rc = t(kv, "rc");
        let from = cursor;
        let Some((idx, ev)) = next_event(&evs, &mut cursor, "tsm_op_ioctl", |e| {
            s(e, "vdevice_id") == vdev
                && s(e, "op") == op
                && s(e, "flags") == flags
                && s(e, "ret") == rc
        }) else {
            c.check(false, || format!("{}: no tsm_op_ioctl event with vdevice_id={vdev} op={op} flags={flags} ret={rc}", x.step));
            continue;
        };
        c.count += 1;
        c.eq(
            s(ev, "tgid"),
            t(kv, "pid"),
            &format!("{}: ioctl tgid", x.step),
        );
        c.eq(
            s(ev, "comm"),
            t(kv, "comm"),
            &format!("{}: ioctl comm", x.step),
        );
        for p in x.inner {
            match inner(&evs, from, idx, p) {
                Some(e) => check_bind_fields(&mut c, x.step, e, kv),
                None => c.check(false, || {
                    format!("{}: no {p} event inside the ioctl", x.step)
                }),
            }
        }
        // The operation the correlator built from these frames.
        let want_errno = errno_of(kv);
        let found = ops[op_cursor..].iter().position(|o| {
            s(o, "kind") == x.kind && s(o, "vdevice_id") == vdev && s(o, "errno") == want_errno
        });
        match found {
            Some(i) => {
                let o = ops[op_cursor + i];
                op_cursor += i + 1;
                let want_result = if want_errno.is_empty() { "ok" } else { "error" };
                c.eq(s(o, "result"), want_result.to_string(), &format!("{}: operation result", x.step));
                if !want_errno.is_empty() {
                    c.eq(s(o, "layer"), fail_layer(kv), &format!("{}: {want_errno} attributed layer", x.step));
                }
                if !x.inner.is_empty() {
                    c.eq(s(o, "device"), t(kv, "dev"), &format!("{}: operation device", x.step));
                    c.eq(s(&o["vm"], "stats_id"), t(kv, "stats_id"), &format!("{}: operation vm", x.step));
                }
            }
            None => c.check(false, || {
                format!("{}: no {} operation for vdevice {vdev} with errno {want_errno:?} after position {op_cursor}", x.step, x.kind)
            }),
        }
    }

    // Latency: the driver frame vs. the module's own measurement of the 20 ms sleep.
    let kv = step(&truth, "bind_efault")?;
    let driver_ns: f64 = t(kv, "driver_ns").parse().unwrap_or(0.0);
    // This step's driver call: it returned what the module says it returned (0: a valid
    // tdi, reported as 1), and it slept. A slow earlier bind (bind_eio's, which fails with
    // -EIO, can take over 15 ms under load) is not it.
    let driver_rc: i64 = t(kv, "driver_rc").parse().unwrap_or(i64::MIN);
    let drv = evs.iter().find(|e| {
        let ret = e["ret"].as_i64();
        s(e, "probe") == "driver_bind"
            && (if driver_rc == 0 {
                ret.is_some_and(|r| r >= 0)
            } else {
                ret == Some(driver_rc)
            })
            && e["end_ns"].as_u64().unwrap_or(0) - e["start_ns"].as_u64().unwrap_or(0) > 15_000_000
    });
    match drv {
        Some(e) => {
            let measured =
                (e["end_ns"].as_u64().unwrap_or(0) - e["start_ns"].as_u64().unwrap_or(0)) as f64;
            let tolerance = driver_ns * 0.01 + 2_000_000.0; // 1% + 2 ms: TCG probe overhead
            c.check(driver_ns >= 15_000_000.0 && (measured - driver_ns).abs() <= tolerance, || {
                format!("bind_efault: driver_bind took {measured} ns, module measured {driver_ns} ns (tolerance {tolerance})")
            });
        }
        None => c.check(false, || "bind_efault: no ~20 ms driver_bind event".into()),
    }

    // Teardown with unbind: decoded vdevice fields, tsm_unbind nested, no leak.
    // The module's object id is the vdevice id; virt_id is what vdev_create set.
    let kv = step(&truth, "destroy1")?;
    let virt_id = t(step(&truth, "vdev1")?, "virt_id");
    let abort = evs
        .iter()
        .position(|e| s(e, "probe") == "vdevice_abort" && s(e, "obj_id") == t(kv, "vdevice_id"));
    match abort {
        Some(i) => {
            let e = &evs[i];
            c.eq(s(e, "virt_id"), virt_id, "destroy1: abort virt_id");
            c.eq(s(e, "device"), t(kv, "dev"), "destroy1: abort device");
            c.check(inner(&evs, 0, i, "tsm_unbind").is_some(), || {
                "destroy1: no tsm_unbind inside vdevice_abort".into()
            });
            c.check(inner(&evs, 0, i, "pci_tsm_unbind").is_some(), || {
                "destroy1: no pci_tsm_unbind inside vdevice_abort".into()
            });
        }
        None => c.check(false, || "destroy1: no vdevice_abort event".into()),
    }
    let kv6 = step(&truth, "destroy6")?;
    match evs
        .iter()
        .position(|e| s(e, "probe") == "vdevice_abort" && s(e, "obj_id") == t(kv6, "vdevice_id"))
    {
        Some(i) => c.check(inner(&evs, 0, i, "tsm_unbind").is_none(), || {
            "destroy6 (nounbind): a tsm_unbind was seen inside".into()
        }),
        None => c.check(false, || "destroy6: no vdevice_abort event".into()),
    }
    let teardowns: Vec<_> = ops.iter().filter(|o| s(o, "kind") == "teardown").collect();
    c.eq(teardowns.len(), 2, "teardown operations");

    // VM destroyed: decoded identity.
    let kv = step(&truth, "vm4_destroy")?;
    match evs.iter().find(|e| s(e, "probe") == "kvm_destroy_vm") {
        Some(e) => {
            c.vm_id(
                &s(&e["vm"], "id"),
                &t(kv, "destroyed_kvm"),
                "vm4_destroy: vm.id",
            );
            c.eq(
                s(&e["vm"], "pid"),
                t(kv, "destroyed_kvm_pid"),
                "vm4_destroy: kvm pid",
            );
        }
        None => c.check(false, || "vm4_destroy: no kvm_destroy_vm event".into()),
    }
    // VMM exit: the child that bound device 7 exited.
    let kv7 = step(&truth, "bind7")?;
    c.check(
        evs.iter()
            .any(|e| s(e, "probe") == "vmm_exit" && s(e, "tgid") == t(kv7, "pid")),
        || format!("bind7: no vmm_exit event for tgid {}", t(kv7, "pid")),
    );
    // Direct unbind of a non-PCI device: the errno and layer the fixture recorded.
    let kv = step(&truth, "unbind_nonpci")?;
    let (errno, layer) = (errno_of(kv), fail_layer(kv));
    c.check(
        ops.iter()
            .any(|o| s(o, "kind") == "unbind" && s(o, "errno") == errno && s(o, "layer") == layer),
        || format!("unbind_nonpci: no unbind {errno} attributed to {layer}"),
    );

    // Leaks, with reasons and devices; cleared when unbound.
    let detected = |reason: &str, dev: &str| {
        leaks.iter().any(|l| {
            s(l, "event") == "detected" && s(l, "reason") == reason && s(l, "device") == dev
        })
    };
    let cleared = |reason: &str, dev: &str| {
        leaks.iter().any(|l| {
            s(l, "event") == "cleared" && s(l, "reason") == reason && s(l, "device") == dev
        })
    };
    let d1 = t(step(&truth, "vdev1")?, "dev");
    let d3 = t(step(&truth, "vdev6")?, "dev");
    for (reason, dev, clears) in [
        ("ioctl_failed_after_bind", &d1, true),
        ("vdevice_teardown_without_unbind", &d3, true),
        ("vmm_exited", &d1, false),
        ("vm_destroyed", &d3, false),
    ] {
        c.check(detected(reason, dev), || {
            format!("leak {reason} on {dev} not detected; leaks: {leaks:?}")
        });
        c.check(cleared(reason, dev) == clears, || {
            format!("leak {reason} on {dev}: cleared should be {clears}")
        });
    }
    c.eq(
        leaks.iter().filter(|l| s(l, "event") == "detected").count(),
        4,
        "leaks detected in session A",
    );
    Ok(c)
}

/// Session B (kernels with upstream PCI TSM): the real `pci_tsm_bind` fires and its EINVAL
/// (no TSM context for a qemu device) is attributed to pci_tsm.
pub fn check_session_b(out: &VmOutput) -> Result<Checks> {
    let mut c = Checks::default();
    check_session_health(
        &mut c,
        out,
        "trace_b.err",
        &["tsm_op_ioctl", "tsm_bind", "pci_tsm_bind", "pci_tsm_unbind"],
    )?;
    let truth = truth(out, "truth_b")?;
    let evs = json_lines(out, "record_b.jsonl", true)?;
    let trace = json_lines(out, "trace_b.jsonl", false)?;
    let kv = step(&truth, "real_bind")?;
    c.eq(
        t(kv, "layer"),
        "pci_tsm_bind".into(),
        "real_bind: the module called the real pci_tsm_bind",
    );
    match evs.iter().find(|e| s(e, "probe") == "pci_tsm_bind") {
        Some(e) => {
            c.eq(
                s(e, "device"),
                t(kv, "dev"),
                "real pci_tsm_bind: device (struct pci_dev from vmlinux BTF)",
            );
            c.eq(s(e, "tdi_id"), t(kv, "tdi_id"), "real pci_tsm_bind: tdi_id");
            c.vm_id(
                &s(&e["vm"], "id"),
                &t(kv, "kvm"),
                "real pci_tsm_bind: vm.id",
            );
            c.eq(s(e, "ret"), t(kv, "rc"), "real pci_tsm_bind: return value");
        }
        None => c.check(false, || "no event from the real pci_tsm_bind".into()),
    }
    // The errno the real pci_tsm_bind returned, named by the kernel, and the layer of the
    // function the fixture saw fail.
    let (errno, layer) = (errno_of(kv), fail_layer(kv));
    c.check(
        trace.iter().any(|o| {
            s(o, "type") == "operation" && s(o, "errno") == errno && s(o, "layer") == layer
        }),
        || format!("real_bind: {errno} not attributed to {layer}: {trace:?}"),
    );
    c.check(
        evs.iter()
            .any(|e| s(e, "probe") == "pci_tsm_unbind" && s(e, "device") == t(kv, "dev")),
        || "real_unbind: no event from the real pci_tsm_unbind".into(),
    );
    Ok(c)
}

/// Session L: the module loaded after tsm-trace started; the probes attach on the module
/// load and decode with offsets from the new module's BTF.
pub fn check_session_late(out: &VmOutput) -> Result<Checks> {
    let mut c = Checks::default();
    let err = &out.section("trace_l.err")?.text;
    c.check(
        err.lines()
            .any(|l| l.contains("probe NOT ATTACHED") && l.contains("tsm_bind")),
        || format!("trace_l: tsm_bind should be missing before the module loads:\n{err}"),
    );
    c.check(
        err.contains("a module load made more probes available"),
        || format!("trace_l: no re-attach after the module load:\n{err}"),
    );
    check_session_health(
        &mut c,
        out,
        "trace_l.err",
        &[
            "tsm_op_ioctl",
            "tsm_bind",
            "vdevice_abort",
            "driver_bind",
            "kvm_destroy_vm",
        ],
    )?;
    let truth = truth(out, "truth_l")?;
    let evs = json_lines(out, "record_l.jsonl", true)?;
    let trace = json_lines(out, "trace_l.jsonl", false)?;
    let kv = step(&truth, "l_bind")?;
    c.eq(t(kv, "rc"), "0".to_string(), "l_bind: rc");
    match evs.iter().find(|e| s(e, "probe") == "tsm_bind") {
        Some(e) => check_bind_fields(&mut c, "l_bind", e, kv),
        None => c.check(false, || {
            "l_bind: no tsm_bind event after the late module load".into()
        }),
    }
    c.check(
        trace.iter().any(|o| {
            s(o, "type") == "operation"
                && s(o, "kind") == "bind"
                && s(o, "result") == "ok"
                && s(o, "device") == t(kv, "dev")
        }),
        || format!("l_bind: no successful bind operation: {trace:?}"),
    );
    c.check(
        trace
            .iter()
            .any(|o| s(o, "type") == "operation" && s(o, "kind") == "teardown"),
        || "l_destroy: no teardown operation".into(),
    );
    c.check(
        evs.iter().any(|e| s(e, "probe") == "kvm_destroy_vm"),
        || "l_vm_destroy: no kvm_destroy_vm event".into(),
    );
    // The daemon, capabilities already dropped, attached on the module load too.
    let derr = &out.section("daemon_l_err")?.text;
    c.check(
        derr.contains("dropped all capabilities but CAP_BPF, CAP_PERFMON")
            && derr.contains("a module load made more probes available")
            && derr.lines().any(|l| l == "exit=0"),
        || format!("daemon_l: no re-attach after dropping capabilities:\n{derr}"),
    );
    let m = parse_exposition(&out.section("daemon_l_metrics")?.text);
    c.eq(
        m.get("tsm_trace_operations_total{errno=\"\",layer=\"iommufd\",op=\"bind\",result=\"ok\"}")
            .copied(),
        Some(1.0),
        "daemon_l: binds counted after the late attach",
    );
    c.eq(
        m.get("tsm_trace_operations_total{errno=\"\",layer=\"iommufd\",op=\"teardown\",result=\"ok\"}")
            .copied(),
        Some(1.0),
        "daemon_l: teardowns counted after the late attach",
    );
    c.check(
        m.iter().any(|(k, v)| {
            k.starts_with("tsm_trace_probe_attached{")
                && k.contains("probe=\"tsm_bind\"")
                && *v == 1.0
        }),
        || "daemon_l: tsm_trace_probe_attached for tsm_bind is not 1".into(),
    );
    Ok(c)
}

/// The daemon: exact metric values and the bindings view after its scenario.
pub fn check_daemon(out: &VmOutput) -> Result<Checks> {
    let mut c = Checks::default();
    let truth = truth(out, "truth_d")?;
    let readyz = &out.section("daemon_readyz")?.text;
    c.check(readyz.contains("ready"), || format!("/readyz: {readyz:?}"));
    let err = &out.section("daemon_err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("daemon did not exit 0 on SIGTERM:\n{err}")
    });
    c.check(
        err.contains("dropped all capabilities but CAP_BPF (all requested probes attached"),
        || format!("daemon did not drop its capabilities after attaching:\n{err}"),
    );
    // Warnings would mean e.g. kernel counters unreadable after the capability drop.
    c.check(!err.contains(": warn: "), || {
        format!("daemon logged warnings:\n{err}")
    });
    let m = parse_exposition(&out.section("daemon_metrics")?.text);
    if m.is_empty() {
        bail!("/metrics was empty; daemon stderr:\n{err}");
    }
    let get = |k: &str| m.get(k).copied();
    let ops = |op: &str, layer: &str, result: &str, errno: &str| {
        format!(
            "tsm_trace_operations_total{{errno=\"{errno}\",layer=\"{layer}\",op=\"{op}\",result=\"{result}\"}}"
        )
    };
    c.eq(
        get(&ops("bind", "iommufd", "ok", "")),
        Some(3.0),
        "binds ok",
    );
    c.eq(
        get(&ops("unbind", "iommufd", "ok", "")),
        Some(1.0),
        "unbinds ok",
    );
    c.eq(
        get(&ops("teardown", "iommufd", "ok", "")),
        Some(1.0),
        "teardowns",
    );
    let busy = step(&truth, "d_bind_busy")?;
    let (busy_errno, busy_layer) = (errno_of(busy), fail_layer(busy));
    c.eq(
        get(&ops("bind", &busy_layer, "error", &busy_errno)),
        Some(1.0),
        &format!("bind {busy_errno} from {busy_layer} (d_bind_busy)"),
    );
    c.eq(
        get("tsm_trace_bindings_active"),
        Some(2.0),
        "active bindings",
    );
    c.eq(
        get("tsm_trace_bindings_leaked{reason=\"vdevice_teardown_without_unbind\"}"),
        Some(1.0),
        "leaked gauge",
    );
    c.eq(
        get("tsm_trace_leaks_detected_total{reason=\"vdevice_teardown_without_unbind\"}"),
        Some(1.0),
        "leaks detected",
    );
    let kv = step(&truth, "d_vm")?;
    let dev2 = t(step(&truth, "d_vdev2")?, "dev");
    let info = format!(
        "tsm_trace_leaked_binding_info{{device=\"{dev2}\",reason=\"vdevice_teardown_without_unbind\",vm=\"{}\"}}",
        t(kv, "stats_id")
    );
    c.eq(get(&info), Some(1.0), "leaked binding info series");
    for reason in [
        "ringbuf_full",
        "inflight_full",
        "orphan_return",
        "decode_error",
    ] {
        c.eq(
            get(&format!(
                "tsm_trace_events_lost_total{{reason=\"{reason}\"}}"
            )),
            Some(0.0),
            &format!("events lost ({reason})"),
        );
    }
    let attached = |probe: &str| {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with("tsm_trace_probe_attached{")
                    && k.contains(&format!("probe=\"{probe}\""))
            })
            .all(|(_, v)| *v == 1.0)
            && m.keys().any(|k| {
                k.starts_with("tsm_trace_probe_attached{")
                    && k.contains(&format!("probe=\"{probe}\""))
            })
    };
    for p in [
        "tsm_op_ioctl",
        "tsm_bind",
        "tsm_unbind",
        "vdevice_abort",
        "driver_bind",
    ] {
        c.check(attached(p), || {
            format!("tsm_trace_probe_attached for {p} is not 1")
        });
    }
    c.eq(
        get("tsm_trace_btf_fields_unresolved"),
        Some(0.0),
        "unresolved BTF fields",
    );
    // Histogram: the EBUSY bind was observed per frame.
    c.check(
        m.keys().any(|k| {
            k.starts_with("tsm_trace_operation_duration_seconds_count{")
                && k.contains(&format!("layer=\"{busy_layer}\""))
        }),
        || format!("no {busy_layer} duration histogram"),
    );
    // /bindings: two bindings, one leak naming the device.
    let view: Value = serde_json::from_str(&out.section("daemon_bindings")?.text)
        .context("/bindings is not JSON")?;
    c.eq(
        view["bindings"].as_array().map(Vec::len),
        Some(2),
        "/bindings: bindings",
    );
    let leaks = view["leaks"].as_array().cloned().unwrap_or_default();
    c.eq(leaks.len(), 1, "/bindings: leaks");
    c.check(
        leaks.first().is_some_and(|l| {
            s(l, "device") == dev2 && s(l, "reason") == "vdevice_teardown_without_unbind"
        }),
        || format!("/bindings: leak {leaks:?}"),
    );
    Ok(c)
}
