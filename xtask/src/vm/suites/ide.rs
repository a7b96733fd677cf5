//! The IDE suite (`tests/vm/scenarios/ide.sh`, kernels with the kernel's PCIe IDE API): the
//! `tsm_linktsm` fixture emulates the IDE extended capability of an endpoint and its root
//! port (q35, [`crate::vm::RunOptions::ide_pcie`]) and, as the link TSM of the real PCI TSM
//! core, calls the kernel's own `pci_ide_stream_*` from its connect and disconnect in
//! SEV-TIO's order. The script compares the fixture's own record of every call (and the
//! kernel's sysfs `stream<H>.<R>.<E>` links) with what each step injected; this checker
//! counts those comparisons and fails on any that did not hold. Where tsm-trace ran (not
//! `--smoke`), [`check_trace`] compares every IDE frame of its `trace --json` session with
//! the fixture's record of the same call: the step, the port it acted on, the errno (the
//! tolerated -ENXIO of `pci_ide_stream_enable` above all), the stream's id, host bridge
//! stream, both register block indices, endpoint and sysfs name.

use anyhow::{Result, bail};
use serde_json::Value;

use crate::vm::checks::{Checks, json_lines, s};
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
    let mut n = lines.len();
    if out.sections.contains_key("ide_trace.jsonl") {
        match check_trace(out) {
            Ok(k) => n += k,
            Err(e) => errs.push(format!("{e:#}")),
        }
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
    Ok(n)
}

/// The fixture's op name of a probe (`ide_stream_enable` → `ide_enable`).
fn fixture_op(probe: &str) -> Option<String> {
    probe
        .strip_prefix("ide_stream_")
        .map(|s| format!("ide_{s}"))
}

/// Every IDE frame tsm-trace reported, in call order, against every `op=ide_*` event the
/// fixture logged. `pci_ide_stream_release` calls unregister and free itself: those inner
/// frames have no fixture line of their own and are checked as part of the release.
pub fn check_trace(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let err = &out.section("ide_trace.err")?.text;
    c.check(err.contains("exit=0"), || {
        format!("tsm-trace trace did not exit 0:\n{err}")
    });
    let check = &out.section("ide_check")?.text;
    for p in [
        "ide_stream_alloc",
        "ide_stream_register",
        "ide_stream_setup",
        "ide_stream_enable",
        "ide_stream_disable",
        "ide_stream_teardown",
        "ide_stream_unregister",
        "ide_stream_release",
        "ide_stream_free",
    ] {
        c.check(
            check
                .lines()
                .any(|l| l.contains(p) && l.contains("attached") && !l.contains("not attached")),
            || format!("tsm-trace check: {p} not attached:\n{check}"),
        );
    }
    let truth: Vec<_> = out
        .section("ide_events")?
        .text
        .lines()
        .map(parse_kv)
        .filter(|e| e.get("op").is_some_and(|o| o.starts_with("ide_")))
        .collect();
    let trace = json_lines(out, "ide_trace.jsonl", false)?;
    // Each IDE frame with its device: its own, or (the operation's outer frame, whose
    // device became the operation's) the operation's.
    let mut frames: Vec<(&Value, String)> = trace
        .iter()
        .filter(|v| s(v, "type") == "operation")
        .flat_map(|v| {
            v["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(i, f)| {
                    let d = match s(f, "device") {
                        d if d.is_empty() && i == 0 => s(v, "device"),
                        d => d,
                    };
                    (f, d)
                })
        })
        .filter(|(f, _)| s(f, "probe").starts_with("ide_stream_"))
        .collect();
    frames.sort_by_key(|(f, _)| f["start_ns"].as_u64().unwrap_or(0));
    // Frames inside a release: not in the fixture's log.
    let releases: Vec<(u64, u64)> = frames
        .iter()
        .filter(|(f, _)| s(f, "probe") == "ide_stream_release")
        .map(|(f, _)| {
            (
                f["start_ns"].as_u64().unwrap_or(0),
                f["end_ns"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let inner = |f: &Value| {
        let t = f["start_ns"].as_u64().unwrap_or(0);
        s(f, "probe") != "ide_stream_release" && releases.iter().any(|(a, b)| *a < t && t < *b)
    };
    let frames: Vec<(&Value, String)> = frames.into_iter().filter(|(f, _)| !inner(f)).collect();
    c.eq(
        frames.len(),
        truth.len(),
        "IDE frames tsm-trace reported = pci_ide_* calls the fixture made",
    );
    for (i, ((f, dev), t)) in frames.iter().zip(&truth).enumerate() {
        let g = |k: &str| t.get(k).cloned().unwrap_or_default();
        let op = g("op");
        let what = |k: &str| format!("IDE call {i} ({op} on {}): {k}", g("dev"));
        c.eq(fixture_op(&s(f, "probe")), Some(op.clone()), &what("step"));
        c.eq(dev.clone(), g("dev"), &what("device"));
        // The errno as the kernel names it (%pe: -ENXIO) against tsm-trace's (ENXIO). An
        // alloc that returned NULL has none (the fixture logs the -EFAULT its connect
        // returns for it, as SEV-TIO does).
        let null_alloc = op == "ide_alloc" && g("stream_id") == "none";
        let want_errno = if null_alloc {
            "0".to_string()
        } else {
            g("err").trim_start_matches('-').to_string()
        };
        let got_errno = match s(f, "errno") {
            e if e.is_empty() => "0".to_string(),
            e => e,
        };
        c.eq(got_errno, want_errno, &what("errno"));
        let ide = &f["ide"];
        // free/release: the fixture's stream is gone after the call; tsm-trace reads it at
        // entry. unregister: the name is gone after the call (tsm-trace: at entry).
        if !matches!(op.as_str(), "ide_free" | "ide_release") && g("stream_id") != "none" {
            c.eq(s(ide, "stream_id"), g("stream_id"), &what("stream_id"));
            c.eq(
                s(ide, "host_bridge_stream"),
                g("hb"),
                &what("host_bridge_stream"),
            );
            c.eq(s(ide, "ep_index"), g("ep_idx"), &what("ep_index"));
            c.eq(s(ide, "rp_index"), g("rp_idx"), &what("rp_index"));
            c.eq(s(ide, "endpoint"), g("ep"), &what("endpoint"));
        }
        if null_alloc {
            // No stream: NULL, no fields.
            c.eq(f["null_return"].as_bool(), Some(true), &what("NULL return"));
        }
        if matches!(
            op.as_str(),
            "ide_register" | "ide_setup" | "ide_enable" | "ide_alloc"
        ) {
            let want = match g("stream").as_str() {
                "none" => String::new(),
                n => n.to_string(),
            };
            c.eq(s(ide, "name"), want, &what("name"));
        }
    }
    c.finish("ide (trace)", out)
}
