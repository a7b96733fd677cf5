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
use crate::vm::kv::parse_kv;
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
    // The guest request (v5 onwards): what tsm_guest_req() passed to pci_tsm_guest_req().
    let req = step("guest_req");
    let reqs = of("pci_tsm_guest_req");
    if g == "v2" {
        c.eq(
            t(&req, "rc"),
            "-95".to_string(),
            "v2: tsm_req is EOPNOTSUPP",
        );
        c.eq(reqs.len(), 0, "v2: pci_tsm_guest_req calls");
        return Ok(());
    }
    c.eq(reqs.len(), 1, &format!("{g}: pci_tsm_guest_req calls"));
    let Some(ev) = reqs.first() else {
        return Ok(());
    };
    for (field, key) in [
        ("scope", "scope"),
        ("in_len", "in_len"),
        ("out_len", "out_len"),
    ] {
        c.eq(
            s(ev, field),
            t(&req, key),
            &format!("{g}: pci_tsm_guest_req {field}"),
        );
    }
    c.eq(
        s(ev, "ret"),
        t(&req, "guest_rc"),
        &format!("{g}: pci_tsm_guest_req ret"),
    );
    if t(&req, "tsm_code_arg") == "1" {
        let want = u64::from_str_radix(t(&req, "tsm_code").trim_start_matches("0x"), 16).ok();
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
    Ok(())
}
