//! The generations suite: one boot per kernel walks every generation of the iommufd TSM
//! series the stand-in is built as (v2, v5, post-v5 on kernels with PCI TSM; v2 alone
//! elsewhere), after a first look with no stand-in loaded ("upstream PCI TSM only" on 7.x,
//! "nothing" on 6.1). `tests/vm/scenarios/generations.sh` produces the records checked here.
//!
//! Ground truth comes from the fixture: which generation it was built as and whether the
//! kernel has PCI TSM (its own `info`), and what each command passed (its `last` record).
//! What is checked: `check` and `tsm_trace_kernel_info` name the generation (re-detected by
//! one daemon through every load and unload), and every decoded field of every call equals
//! what the fixture passed, with no flag naming a function.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::Value;

use crate::vm::checks::{Checks, json_lines, parse_exposition, s};
use crate::vm::fixtures;
use crate::vm::kernel::Kernel;
use crate::vm::kv::{parse_kv, pe_name};
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/generations.sh";

/// The stand-in as each generation, at its guest path: all of them on kernels with PCI TSM
/// (v5's guest request reaches the kernel's own `pci_tsm_guest_req`), v2 alone elsewhere.
pub fn files(k: &Kernel) -> Result<Vec<(PathBuf, String)>> {
    let gens = if k.has_pci_tsm() {
        fixtures::build_generations(k)?
    } else {
        vec![("v2", k.standin_ko.clone())]
    };
    Ok(gens
        .into_iter()
        .map(|(name, ko)| (ko, format!("/lib/modules/gen/tsm_standin-{name}.ko")))
        .collect())
}

fn t(kv: &BTreeMap<String, String>, k: &str) -> String {
    kv.get(k).cloned().unwrap_or_default()
}

/// The one `tsm_trace_kernel_info` series, as `(tsm_patch, pci_tsm)`, and how many there are.
fn kernel_info(metrics: &str) -> (Vec<(String, String)>, usize) {
    let m = parse_exposition(metrics);
    let series: Vec<(String, String)> = m
        .iter()
        .filter(|(k, v)| k.starts_with("tsm_trace_kernel_info{") && **v == 1.0)
        .map(|(k, _)| {
            let label = |name: &str| {
                k.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default()
                    .to_string()
            };
            (label("tsm_patch"), label("pci_tsm"))
        })
        .collect();
    let n = series.len();
    (series, n)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Runs every check; returns how many were made, or every failure.
pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let gens: Vec<&str> = ["v2", "v5", "post-v5"]
        .into_iter()
        .filter(|g| out.section(&format!("info_{g}")).is_ok())
        .collect();
    c.check(!gens.is_empty(), || "no generation was loaded".into());
    // Whether the kernel has PCI TSM: the fixture's own finding (CONFIG_PCI_TSM at build).
    let pci = gens
        .first()
        .and_then(|g| out.section(&format!("info_{g}")).ok())
        .map(|s| parse_kv(&s.text).get("pci_tsm").map(String::as_str) == Some("real"))
        .unwrap_or(false);

    // Nothing loaded.
    let check_none = &out.section("check_none")?.text;
    let want = format!("kernel tsm_patch=none pci_tsm={}", yes_no(pci));
    c.check(check_none.lines().any(|l| l == want), || {
        format!("check without a stand-in: no line {want:?} in:\n{check_none}")
    });
    for (section, what) in [
        ("metrics_none", "before any load"),
        ("metrics_after", "after the last unload"),
    ] {
        let (series, n) = kernel_info(&out.section(section)?.text);
        c.eq(
            (series, n),
            (vec![("none".to_string(), yes_no(pci).to_string())], 1),
            &format!("tsm_trace_kernel_info {what}"),
        );
    }

    for g in &gens {
        check_generation(&mut c, out, g, pci)?;
    }
    check_in_flight(&mut c, out)?;
    c.finish("generations", out)
}

fn check_generation(c: &mut Checks, out: &VmOutput, g: &str, pci: bool) -> Result<()> {
    let info = parse_kv(&out.section(&format!("info_{g}"))?.text);
    c.eq(
        t(&info, "gen"),
        g.to_string(),
        &format!("{g}: the fixture's generation"),
    );
    let check = &out.section(&format!("check_{g}"))?.text;
    let want = format!("kernel tsm_patch={g} pci_tsm={}", yes_no(pci));
    c.check(check.lines().any(|l| l == want), || {
        format!("{g}: check has no line {want:?}:\n{check}")
    });
    // Where the op values came from: v2's #defines, v5's enum in the module's BTF.
    let values = check
        .lines()
        .find(|l| l.contains("iommu_vdevice_tsm_op values"))
        .unwrap_or_default();
    let source = if g == "v2" {
        "(#defines of v2, not in BTF)"
    } else {
        "(enum iommu_vdevice_tsm_op_type in tsm_standin)"
    };
    c.check(
        values.contains(&format!("bind=1 unbind=2 {source}")),
        || format!("{g}: op values line {values:?}, want the source {source}"),
    );
    // Return types from the prototypes.
    for (probe, func, kind) in [
        (
            "tsm_op_ioctl",
            "iommufd_vdevice_tsm_op_ioctl",
            "4-byte signed integer",
        ),
        ("tsm_bind", "tsm_bind", "4-byte signed integer"),
        ("vdevice_abort", "iommufd_vdevice_abort", "void"),
    ] {
        let want = format!("resolved return {probe} (tsm_standin) [{func} returns {kind}]");
        c.check(check.lines().any(|l| l.ends_with(&want)), || {
            format!("{g}: check has no line {want:?}")
        });
    }
    let (series, n) = kernel_info(&out.section(&format!("metrics_{g}"))?.text);
    c.eq(
        (series, n),
        (vec![(g.to_string(), yes_no(pci).to_string())], 1),
        &format!("{g}: tsm_trace_kernel_info while loaded (daemon re-detected)"),
    );
    let err = &out.section(&format!("trace_{g}.err"))?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("{g}: trace did not exit 0:\n{err}")
    });

    let truth: Vec<(String, BTreeMap<String, String>)> = out
        .section(&format!("truth_{g}"))?
        .text
        .lines()
        .map(parse_kv)
        .filter_map(|kv| kv.get("step").cloned().map(|s| (s, kv)))
        .collect();
    let step = |name: &str| {
        truth
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, kv)| kv.clone())
            .unwrap_or_default()
    };
    let evs = json_lines(out, &format!("record_{g}.jsonl"), true)?;
    let of =
        |probe: &str| -> Vec<&Value> { evs.iter().filter(|e| s(e, "probe") == probe).collect() };

    // The ioctl, call by call: every UAPI field as the fixture passed it.
    let ioctls = of("tsm_op_ioctl");
    let steps = ["bind", "unbind", "badop", "flags"];
    c.eq(
        ioctls.len(),
        steps.len(),
        &format!("{g}: tsm_op_ioctl calls"),
    );
    for (name, ev) in steps.iter().zip(&ioctls) {
        let kv = step(name);
        for (field, key) in [
            ("op", "op"),
            ("flags", "flags"),
            ("vdevice_id", "vdevice_id"),
        ] {
            c.eq(
                s(ev, field),
                t(&kv, key),
                &format!("{g} {name}: tsm_op_ioctl {field}"),
            );
        }
        c.eq(
            s(ev, "ret"),
            t(&kv, "rc"),
            &format!("{g} {name}: tsm_op_ioctl ret"),
        );
    }
    // tsm_bind: the device, the VM, the tdi id.
    let bind = step("bind");
    let binds = of("tsm_bind");
    c.eq(binds.len(), 1, &format!("{g}: tsm_bind calls"));
    if let Some(ev) = binds.first() {
        c.eq(
            s(ev, "device"),
            t(&bind, "dev"),
            &format!("{g}: tsm_bind device"),
        );
        c.eq(
            s(ev, "tdi_id"),
            t(&bind, "tdi_id"),
            &format!("{g}: tsm_bind tdi_id"),
        );
        c.eq(
            s(&ev["vm"], "pid"),
            t(&bind, "kvm_pid"),
            &format!("{g}: tsm_bind vm pid"),
        );
        c.eq(
            s(&ev["vm"], "stats_id"),
            t(&bind, "stats_id"),
            &format!("{g}: tsm_bind vm stats_id"),
        );
        c.eq(s(ev, "ret"), t(&bind, "rc"), &format!("{g}: tsm_bind ret"));
    }
    // The unbind of the ioctl and the one of the teardown.
    let unbinds = of("tsm_unbind");
    c.eq(unbinds.len(), 2, &format!("{g}: tsm_unbind calls"));
    for ev in &unbinds {
        c.eq(
            s(ev, "device"),
            t(&bind, "dev"),
            &format!("{g}: tsm_unbind device"),
        );
        c.eq(
            s(ev, "ret"),
            "0".to_string(),
            &format!("{g}: tsm_unbind ret"),
        );
    }
    // The teardown: its object id and virtual id.
    let destroy = step("destroy");
    let aborts = of("vdevice_abort");
    c.eq(aborts.len(), 1, &format!("{g}: vdevice_abort calls"));
    if let Some(ev) = aborts.first() {
        c.eq(
            s(ev, "obj_id"),
            t(&destroy, "vdevice_id"),
            &format!("{g}: abort obj_id"),
        );
        c.eq(
            s(ev, "virt_id"),
            t(&step("vdev"), "virt_id"),
            &format!("{g}: abort virt_id"),
        );
        c.eq(
            s(ev, "device"),
            t(&destroy, "dev"),
            &format!("{g}: abort device"),
        );
    }
    check_guest_request(c, out, g, pci, &step("guest_req"), &evs)
}

/// A name BTF gave (`set_tdi_state`) is the fixture's C enumerator (`TSM_REQ_SET_TDI_STATE`)
/// without its enum's common prefix: the enumerator ends with it, case aside, at a word.
fn names_enumerator(got: &str, enumerator: &str) -> bool {
    !got.is_empty() && enumerator.ends_with(&format!("_{}", got.to_ascii_uppercase()))
}

/// The guest request through the series' ioctl (every generation): each probe's fields
/// against what the fixture's ioctl, `tsm_guest_req` and (7.x) the kernel's
/// `pci_tsm_guest_req` were passed and returned, and one `guest_request` operation that
/// starts at iommufd with the three nested.
fn check_guest_request(
    c: &mut Checks,
    out: &VmOutput,
    g: &str,
    pci: bool,
    req: &BTreeMap<String, String>,
    evs: &[Value],
) -> Result<()> {
    let of =
        |probe: &str| -> Vec<&Value> { evs.iter().filter(|e| s(e, "probe") == probe).collect() };
    // Generations are walked in this order under one daemon.
    let index = ["v2", "v5", "post-v5"]
        .iter()
        .position(|x| *x == g)
        .unwrap_or_default();
    let post_v5 = g == "post-v5";
    // The ioctl: its function is the generation's own name.
    let want_ioctl = if g == "v2" {
        "iommufd_vdevice_tsm_guest_request_ioctl"
    } else {
        "iommufd_vdevice_tsm_req_ioctl"
    };
    c.eq(
        t(req, "ioctl"),
        want_ioctl.to_string(),
        &format!("{g}: the fixture's ioctl"),
    );
    let ioctls = of("guest_req_ioctl");
    c.eq(ioctls.len(), 1, &format!("{g}: guest_req_ioctl calls"));
    if let Some(ev) = ioctls.first() {
        let mut fields = vec![
            ("vdevice_id", "ioctl_vdevice_id"),
            ("in_len", "ioctl_req_len"),
            ("out_len", "ioctl_resp_len"),
            ("ret", "guest_rc"),
        ];
        if post_v5 {
            fields.extend([("req_op", "ioctl_op"), ("tvm_arch", "ioctl_tvm_arch")]);
        } else {
            fields.push(("scope", "ioctl_scope"));
        }
        for (field, key) in fields {
            c.eq(
                s(ev, field),
                t(req, key),
                &format!("{g}: guest_req_ioctl {field}"),
            );
        }
        // The other form of the request is absent, not zero.
        let absent = if post_v5 { "scope" } else { "req_op" };
        c.eq(
            ev.get(absent).cloned(),
            None,
            &format!("{g}: guest_req_ioctl has no {absent}"),
        );
    }
    // tsm-core: the device and the request info; post-v5 names from the enums of its BTF.
    let tsms = of("tsm_guest_req");
    c.eq(tsms.len(), 1, &format!("{g}: tsm_guest_req calls"));
    if let Some(ev) = tsms.first() {
        let mut fields = vec![
            ("device", "tsm_dev"),
            ("in_len", "info_req_len"),
            ("out_len", "info_resp_len"),
            ("ret", "tsm_rc"),
        ];
        if post_v5 {
            fields.extend([("req_op", "info_op"), ("tvm_arch", "info_tvm_arch")]);
        } else {
            fields.push(("scope", "info_scope"));
        }
        for (field, key) in fields {
            c.eq(
                s(ev, field),
                t(req, key),
                &format!("{g}: tsm_guest_req {field}"),
            );
        }
        if post_v5 {
            for (field, key) in [
                ("req_op_name", "ioctl_op_name"),
                ("tvm_arch_name", "ioctl_tvm_arch_name"),
            ] {
                let got = s(ev, field);
                c.check(names_enumerator(&got, &t(req, key)), || {
                    format!(
                        "{g}: tsm_guest_req {field} {got:?} does not name {}",
                        t(req, key)
                    )
                });
            }
        } else {
            // v2/v5's scope is a plain u32 member: a number, no invented name.
            c.eq(
                ev.get("scope_name").cloned(),
                None,
                &format!("{g}: tsm_guest_req scope (a u32) is not named"),
            );
        }
        // The value behind post-v5's tsm_code pointer after the call, where the call reached
        // the kernel; v2/v5 have no such argument: missing, not 0.
        let want = (post_v5 && t(req, "tsm_code_arg") == "1")
            .then(|| u64::from_str_radix(t(req, "tsm_code").trim_start_matches("0x"), 16).ok())
            .flatten();
        c.eq(
            ev["tsm_code"].as_u64(),
            want,
            &format!("{g}: tsm_guest_req tsm_code"),
        );
    }
    // The kernel's pci_tsm_guest_req (7.x): what tsm_guest_req() passed.
    let reqs = of("pci_tsm_guest_req");
    c.eq(
        reqs.len(),
        usize::from(pci),
        &format!("{g}: pci_tsm_guest_req calls"),
    );
    if let Some(ev) = reqs.first() {
        for (field, key) in [
            ("scope", "scope"),
            ("in_len", "in_len"),
            ("out_len", "out_len"),
        ] {
            c.eq(
                s(ev, field),
                t(req, key),
                &format!("{g}: pci_tsm_guest_req {field}"),
            );
        }
        let got = s(ev, "scope_name");
        c.check(names_enumerator(&got, &t(req, "scope_name")), || {
            format!(
                "{g}: pci_tsm_guest_req scope_name {got:?} does not name {}",
                t(req, "scope_name")
            )
        });
        c.eq(
            s(ev, "ret"),
            t(req, "guest_rc"),
            &format!("{g}: pci_tsm_guest_req ret"),
        );
        if t(req, "tsm_code_arg") == "1" {
            let want = u64::from_str_radix(t(req, "tsm_code").trim_start_matches("0x"), 16).ok();
            c.eq(
                ev["tsm_code"].as_u64(),
                want,
                &format!("{g}: *tsm_code after the call"),
            );
        } else {
            c.eq(
                ev.get("tsm_code").cloned(),
                None,
                &format!("{g}: NULL tsm_code is reported missing, not 0"),
            );
        }
    }
    // One operation, starting at iommufd, the three calls nested in it.
    let ops = json_lines(out, &format!("trace_{g}.jsonl"), false)?;
    let reqs: Vec<&Value> = ops
        .iter()
        .filter(|o| s(o, "kind") == "guest_request")
        .collect();
    c.eq(reqs.len(), 1, &format!("{g}: guest_request operations"));
    let Some(op) = reqs.first() else {
        return Ok(());
    };
    let frames: Vec<(String, String)> = op["frames"]
        .as_array()
        .map(|fs| fs.iter().map(|f| (s(f, "probe"), s(f, "layer"))).collect())
        .unwrap_or_default();
    let mut want = vec![
        ("guest_req_ioctl".to_string(), "iommufd".to_string()),
        ("tsm_guest_req".to_string(), "tsm_core".to_string()),
    ];
    if pci {
        want.push(("pci_tsm_guest_req".to_string(), "pci_tsm".to_string()));
    }
    c.eq(
        frames,
        want,
        &format!("{g}: guest_request frames, outermost first"),
    );
    c.eq(
        s(op, "vdevice_id"),
        t(req, "ioctl_vdevice_id"),
        &format!("{g}: guest_request vdevice_id"),
    );
    c.eq(
        s(op, "device"),
        t(req, "tsm_dev"),
        &format!("{g}: guest_request device"),
    );
    let rc: i64 = t(req, "guest_rc").parse().unwrap_or(0);
    if rc < 0 {
        c.eq(
            s(op, "result"),
            "error".to_string(),
            &format!("{g}: guest_request result"),
        );
        c.eq(
            s(op, "errno"),
            pe_name(&t(req, "err")),
            &format!("{g}: guest_request errno"),
        );
        // The deepest call that returned it: the kernel's pci_tsm_guest_req when it ran
        // (and failed the same way), else tsm_guest_req.
        let want = if pci && t(req, "tsm_rc") == t(req, "guest_rc") {
            "pci_tsm_guest_req"
        } else if t(req, "tsm_rc") == t(req, "guest_rc") {
            "tsm_guest_req"
        } else {
            "guest_req_ioctl"
        };
        c.eq(
            s(op, "function"),
            want.to_string(),
            &format!("{g}: guest_request error's function"),
        );
    } else {
        c.eq(
            s(op, "result"),
            "ok".to_string(),
            &format!("{g}: guest_request result"),
        );
    }
    // The daemon counted it once (in the kernel: one operation, not one per probe): one more
    // guest request per generation walked.
    let m = parse_exposition(&out.section(&format!("metrics_{g}"))?.text);
    let total: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tsm_trace_operations_total{") && k.contains("op=\"guest_request\"")
        })
        .map(|(_, v)| v)
        .sum();
    c.eq(
        total,
        (index + 1) as f64,
        &format!("{g}: guest_request operations counted by the daemon"),
    );
    Ok(())
}

/// A bind held 12 s in the stand-in's driver: while it runs, the daemon's /bindings lists it
/// (device, VM, op, the deepest probed function, its start as the kernel stamped it within
/// the fixture's own call, its age) and /metrics counts it with the oldest age; a trace
/// stopped meanwhile says so in its summary; the daemon logs it (--stuck-after 1s); once
/// it returned, all of it is gone.
fn check_in_flight(c: &mut Checks, out: &VmOutput) -> Result<()> {
    let info = parse_kv(&out.section("info_hold")?.text);
    let truth = parse_kv(&out.section("truth_hold")?.text);
    c.eq(
        t(&truth, "rc"),
        "0".to_string(),
        "hold: the held bind succeeded",
    );
    // The delay is in the stand-in's driver, below its PCI layer: the deepest probed call is
    // its pci_tsm_bind where the stand-in defines that (no PCI TSM), else tsm_bind.
    let function = if t(&info, "pci_bind") == "pci_tsm_bind" {
        "pci_tsm_bind"
    } else {
        "tsm_bind"
    };
    let start: u64 = t(&truth, "start_ns").parse().unwrap_or(0);
    let duration: u64 = t(&truth, "duration_ns").parse().unwrap_or(0);
    c.check(duration >= 12_000_000_000, || {
        format!("hold: the fixture's bind lasted {duration} ns, not the 12 s held")
    });

    let b: Value = serde_json::from_str(&out.section("bindings_hold")?.text)?;
    c.eq(
        b["operations_in_flight"].as_u64(),
        Some(1),
        "hold: /bindings operations_in_flight",
    );
    let ops = b["in_flight"].as_array().cloned().unwrap_or_default();
    c.eq(ops.len(), 1, "hold: /bindings in_flight entries");
    if let Some(o) = ops.first() {
        for (field, want) in [
            ("op", "bind".to_string()),
            ("device", t(&truth, "dev")),
            ("vm", t(&truth, "stats_id")),
            ("outer", "tsm_op_ioctl".to_string()),
            ("function", function.to_string()),
        ] {
            c.eq(s(o, field), want, &format!("hold: in_flight {field}"));
        }
        // The kernel's entry stamp of the ioctl lies inside the fixture's own call
        // (both CLOCK_MONOTONIC).
        let got = o["start_ns"].as_u64().unwrap_or(0);
        c.check(got >= start && got <= start + duration, || {
            format!(
                "hold: in_flight start_ns {got} outside the fixture's call [{start}, {}]",
                start + duration
            )
        });
        // Looked at 1.5 s or more after it showed, before it returned.
        let age = o["age_seconds"].as_f64().unwrap_or(-1.0);
        c.check(age >= 1.5 && age * 1e9 <= duration as f64, || {
            format!("hold: in_flight age {age} s, not within [1.5, {duration} ns]")
        });
    }
    let m = parse_exposition(&out.section("metrics_hold")?.text);
    c.eq(
        m.get("tsm_trace_operations_in_flight").copied(),
        Some(1.0),
        "hold: tsm_trace_operations_in_flight",
    );
    let oldest = m
        .get("tsm_trace_operation_in_flight_oldest_seconds")
        .copied()
        .unwrap_or(-1.0);
    c.check(oldest >= 1.5 && oldest * 1e9 <= duration as f64, || {
        format!("hold: oldest in flight {oldest} s, not within [1.5, {duration} ns]")
    });
    // trace stopped while it ran.
    let err = &out.section("trace_hold.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("hold: trace did not exit 0:\n{err}")
    });
    c.check(
        err.lines().any(|l| {
            l.starts_with("=== tsm-trace summary:") && l.ends_with(", 1 still in flight ===")
        }),
        || format!("hold: trace's summary does not say 1 still in flight:\n{err}"),
    );
    let want = format!(
        "still in flight: bind {} vm={} in {function} for ",
        t(&truth, "dev"),
        t(&truth, "stats_id")
    );
    c.check(err.lines().any(|l| l.starts_with(&want)), || {
        format!("hold: no line starting {want:?} in trace's summary:\n{err}")
    });
    // The daemon's periodic line.
    let daemon = &out.section("daemon_err")?.text;
    let want = format!(
        "operation(s) in flight longer than 1s: bind {} vm={} in {function}",
        t(&truth, "dev"),
        t(&truth, "stats_id")
    );
    c.check(daemon.lines().any(|l| l.contains(&want)), || {
        format!("hold: the daemon never logged {want:?}")
    });
    // Gone once it returned.
    let b: Value = serde_json::from_str(&out.section("bindings_after_hold")?.text)?;
    c.eq(
        (
            b["operations_in_flight"].as_u64(),
            b["in_flight"].as_array().map(Vec::len),
        ),
        (Some(0), Some(0)),
        "hold: /bindings in flight after the return",
    );
    let m = parse_exposition(&out.section("metrics_after_hold")?.text);
    c.eq(
        (
            m.get("tsm_trace_operations_in_flight").copied(),
            m.get("tsm_trace_operation_in_flight_oldest_seconds")
                .copied(),
        ),
        (Some(0.0), Some(0.0)),
        "hold: in-flight gauges after the return",
    );
    Ok(())
}
