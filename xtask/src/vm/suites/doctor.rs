//! The doctor suite (`tests/vm/scenarios/doctor.sh`): `tsm-trace doctor` on a real kernel,
//! its facts against the kernel's own answers (uname, securityfs, kallsyms, /sys/class/tsm,
//! /proc/mounts) printed by the guest, and its exit status in four situations:
//! root with the stand-in (0), nobody (2: capabilities, with the probes' functions still
//! named), no bpffs (1: bpffs), lockdown=confidentiality (2: lockdown). Text and JSON agree.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::vm::checks::Checks;
use crate::vm::kv::parse_kv;
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/doctor.sh";

/// `(level, fact)` of the finding on `topic`.
fn finding<'a>(report: &'a Value, topic: &str) -> (&'a str, &'a str) {
    report["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["topic"] == topic))
        .map(|x| {
            (
                x["level"].as_str().unwrap_or("?"),
                x["fact"].as_str().unwrap_or(""),
            )
        })
        .unwrap_or(("missing", ""))
}

fn report(out: &VmOutput, case: &str) -> Result<Value> {
    let text = &out.section(&format!("dr_{case}.json"))?.text;
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "doctor --json ({case}) printed no JSON object: {text:?}; its stderr: {:?}",
            out.section(&format!("dr_{case}.err"))
                .map(|s| s.text.clone())
                .unwrap_or_default()
        )
    })
}

pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let truth: BTreeMap<String, String> = out
        .section("dr_truth")?
        .text
        .lines()
        .flat_map(|l| parse_kv(l).into_iter())
        .collect();
    let t = |k: &str| truth.get(k).cloned().unwrap_or_default();
    let n = |k: &str| t(k).parse::<u32>().unwrap_or(0);
    for (case, want) in [("root", 0), ("nobody", 2), ("nobpffs", 1), ("lockdown", 2)] {
        let r = report(out, case)?;
        c.eq(
            t(&format!("rc_{case}")),
            want.to_string(),
            &format!("{case}: exit status"),
        );
        c.eq(
            t(&format!("rc_{case}_text")),
            want.to_string(),
            &format!("{case}: exit status of the text report"),
        );
        c.eq(
            r["exit_code"].as_i64(),
            Some(want),
            &format!("{case}: exit_code in the JSON"),
        );
        // The text report says the same, line for line.
        let text = &out.section(&format!("dr_{case}.txt"))?.text;
        c.check(text.trim_end().ends_with(&format!("(exit {want})")), || {
            format!("{case}: text report does not end with its exit status: {text}")
        });
        for f in r["findings"].as_array().into_iter().flatten() {
            let fact = f["fact"].as_str().unwrap_or("");
            c.check(text.contains(fact), || {
                format!("{case}: fact {fact:?} is in the JSON but not the text")
            });
        }
        // Facts every case shares, against the kernel's own answers.
        let (lvl, fact) = finding(&r, "kernel");
        c.check(lvl == "ok" && fact.contains(&t("release")), || {
            format!("{case}: kernel {lvl} {fact:?}, uname -r {:?}", t("release"))
        });
        let (lvl, _) = finding(&r, "kprobes");
        c.eq(
            lvl,
            "ok",
            &format!("{case}: kprobes (Debian kernels have them)"),
        );
        let (_, fact) = finding(&r, "tsm");
        let yes = |b: bool| if b { "yes" } else { "no" };
        for (what, key) in [("PCI TSM", "pci_tsm_bind"), ("TSM core", "tsm_register")] {
            let want = format!("{what} {}", yes(n(key) > 0));
            c.check(fact.contains(&want), || {
                format!(
                    "{case}: tsm says {fact:?}, kallsyms has {key} {} times",
                    n(key)
                )
            });
        }
        let (_, fact) = finding(&r, "perf");
        c.check(
            fact.contains(&format!("perf_event_paranoid={}", t("paranoid"))),
            || format!("{case}: perf {fact:?}, kernel {:?}", t("paranoid")),
        );
        let (_, fact) = finding(&r, "tsm drivers");
        for name in t("tsm_class").split(',').filter(|s| !s.is_empty()) {
            c.check(fact.contains(name), || {
                format!("{case}: tsm drivers {fact:?} lacks {name}")
            });
        }
        let (lvl, fact) = finding(&r, "lockdown");
        let mode = if case == "lockdown" {
            t("lockdown_after")
        } else {
            t("lockdown")
        };
        c.check(fact.starts_with(&mode) && !mode.is_empty(), || {
            format!("{case}: lockdown {lvl} {fact:?}, securityfs says {mode:?}")
        });
    }
    // Root with the stand-in: every probe walk for real, the bind path attached.
    let r = report(out, "root")?;
    c.eq(r["verdict"].as_str(), Some("ok"), "root: verdict");
    let (lvl, fact) = finding(&r, "probes");
    c.check(
        lvl == "ok" && fact.contains("programs attached") && fact.contains("tsm_bind"),
        || format!("root: probes {lvl} {fact:?}"),
    );
    c.check(n("tsm_bind") > 0, || {
        "the stand-in's tsm_bind is not in kallsyms".into()
    });
    let (lvl, fact) = finding(&r, "generation");
    c.check(
        lvl == "info"
            && fact.starts_with("tsm_patch=")
            && fact.contains("iommufd_vdevice_tsm_op_ioctl"),
        || {
            format!(
                "root: generation {lvl} {fact:?} (check's tsm_patch= words; the stand-in has the v2 ioctl)"
            )
        },
    );
    c.eq(finding(&r, "capabilities").0, "ok", "root: capabilities");
    c.eq(
        finding(&r, "bpffs").0,
        "ok",
        "root: bpffs (mounted by init)",
    );
    c.eq(t("bpffs"), "1".to_string(), "bpffs mounted at the start");
    // nobody: cannot run, says why, and still names the functions that are here.
    let r = report(out, "nobody")?;
    let (lvl, fact) = finding(&r, "capabilities");
    c.check(lvl == "fatal" && fact.contains("missing: CAP_BPF"), || {
        format!("nobody: capabilities {lvl} {fact:?}")
    });
    let (lvl, fact) = finding(&r, "probes");
    c.check(
        lvl == "info" && fact.contains("lacks the capabilities") && fact.contains("tsm_bind"),
        || format!("nobody: probes {lvl} {fact:?}"),
    );
    // No bpffs: degraded, and only that.
    let r = report(out, "nobpffs")?;
    c.eq(finding(&r, "bpffs").0, "degraded", "nobpffs: bpffs");
    let worse: Vec<&str> = r["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            f["topic"] != "bpffs" && matches!(f["level"].as_str(), Some("degraded" | "fatal"))
        })
        .filter_map(|f| f["topic"].as_str())
        .collect();
    c.check(worse.is_empty(), || {
        format!("nobpffs: other findings degraded: {worse:?}")
    });
    // Lockdown: cannot run, and nothing was loaded.
    let r = report(out, "lockdown")?;
    c.eq(finding(&r, "lockdown").0, "fatal", "lockdown: lockdown");
    let (lvl, fact) = finding(&r, "probes");
    c.check(
        lvl == "info" && fact.contains("lockdown=confidentiality"),
        || format!("lockdown: probes {lvl} {fact:?}"),
    );
    c.finish("doctor", out)
}
