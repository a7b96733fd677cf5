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
//! stream, both register block indices, endpoint and sysfs name. Its deep phase (a
//! `trace --deep` session over the fixture's own SPDM helpers inside connect) is checked in
//! [`super::ide_deep`].

use anyhow::{Result, bail};
use serde_json::Value;

use std::collections::{BTreeMap, BTreeSet};

use crate::vm::checks::{Checks, json_lines, parse_exposition, s};
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
    let mut traced = Vec::new();
    if out.sections.contains_key("ide_trace.jsonl") {
        traced.extend([check_trace(out), check_streams(out)]);
    }
    // The deep phase (ide_deep.rs): its own `trace --deep` session.
    if out.sections.contains_key("deep_trace.jsonl") {
        traced.push(super::ide_deep::check(out));
    }
    for r in traced {
        match r {
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

/// The root port the scenario's endpoint sits behind (`RunOptions::ide_pcie`).
const RP: &str = "0000:00:06.0";

/// What the truth lines (`ide_truth`: after each connect, disconnect and release of the
/// endpoint, the streams sysfs lists) say leaked: a stream sysfs still lists after a
/// disconnect of its endpoint returned, once; and which of those a later release removed.
#[derive(Debug, Default, PartialEq)]
struct Leaks {
    detected: Vec<String>,
    cleared: Vec<String>,
    /// Detected after the daemon started (the ones it learned from sysfs first).
    by_daemon: usize,
}

fn leaks_in_truth(truth: &str) -> Leaks {
    let mut l = Leaks::default();
    let mut leaked: BTreeSet<String> = BTreeSet::new();
    let mut daemon = false;
    for line in truth.lines() {
        let kv = parse_kv(line);
        let listed: BTreeSet<String> = kv
            .get("streams")
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        match line.split(' ').next() {
            Some("disconnect") if kv.get("rc").map(String::as_str) == Some("ok") => {
                for st in &listed {
                    if leaked.insert(st.clone()) {
                        l.detected.push(st.clone());
                        l.by_daemon += usize::from(daemon);
                    }
                }
            }
            Some("daemon_started") => {
                daemon = true;
                // The daemon learns these from sysfs, its endpoint disconnected: leaks.
                l.by_daemon += listed.len();
            }
            Some("release") => {
                for st in leaked.clone() {
                    if !listed.contains(&st) {
                        leaked.remove(&st);
                        l.cleared.push(st);
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// The stream table and its metrics against the kernel (sysfs, via the truth lines) and the
/// fixture's record: the leak lines of the `trace --json` session, the `replay --metrics` of
/// its capture (steps by port/result/errno, enable latency counts, insecure connects, leaks),
/// and a `run` daemon started after a leak: it learns the stream from the kernel's sysfs,
/// reports it leaked (series and /bindings), and drops both once the stream is released.
pub fn check_streams(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let truth_text = &out.section("ide_truth")?.text;
    let want = leaks_in_truth(truth_text);
    let ep = truth_text
        .lines()
        .find_map(|l| parse_kv(l).get("dev").cloned())
        .unwrap_or_default();
    c.check(!want.detected.is_empty(), || {
        format!("the scenario made no leak (truth: {truth_text})")
    });

    // The live session's leak lines.
    let trace = json_lines(out, "ide_trace.jsonl", false)?;
    let leak_lines = |event: &str| -> Vec<String> {
        trace
            .iter()
            .filter(|v| s(v, "type") == "ide_stream_leak" && s(v, "event") == event)
            .map(|v| {
                format!(
                    "{} {}",
                    s(&v["stream"], "endpoint"),
                    s(&v["stream"], "name")
                )
            })
            .collect()
    };
    let named = |v: &[String]| -> Vec<String> { v.iter().map(|st| format!("{ep} {st}")).collect() };
    c.eq(
        leak_lines("detected"),
        named(&want.detected),
        "trace: IDE leaks detected",
    );
    c.eq(
        leak_lines("cleared"),
        named(&want.cleared),
        "trace: IDE leaks cleared",
    );
    for v in trace.iter().filter(|v| s(v, "type") == "ide_stream_leak") {
        if s(v, "event") == "detected" {
            c.eq(
                s(v, "reason"),
                "device_disconnected".into(),
                "trace: leak reason",
            );
        } else {
            c.eq(
                s(v, "cleared_by"),
                "released".into(),
                "trace: leak cleared by",
            );
        }
    }

    // The capture replayed: step counts and the rest from the fixture's own record.
    let err = &out.section("ide_replay.err")?.text;
    c.check(err.contains("exit=0"), || {
        format!("replay --metrics failed:\n{err}")
    });
    let m = parse_exposition(&out.section("ide_replay_metrics")?.text);
    let events: Vec<BTreeMap<String, String>> = out
        .section("ide_events")?
        .text
        .lines()
        .map(parse_kv)
        .collect();
    let mut steps: BTreeMap<(String, &str, &str, String), f64> = BTreeMap::new();
    let mut enables: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    let (mut insecure, mut enable_failed) = (0.0, false);
    for e in &events {
        let g = |k: &str| e.get(k).cloned().unwrap_or_default();
        let op = g("op");
        if op == "connect" {
            if enable_failed && g("rc") == "0" {
                insecure += 1.0;
            }
            enable_failed = false;
            continue;
        }
        let Some(step) = op.strip_prefix("ide_").map(str::to_string) else {
            continue;
        };
        // pci_ide_stream_release's own inner calls have no fixture line: counted only for the
        // steps a release never makes.
        if !matches!(step.as_str(), "alloc" | "setup" | "enable" | "register") {
            continue;
        }
        let port = match (step.as_str(), g("dev")) {
            ("setup" | "enable", d) if d == RP => "root_port",
            ("setup" | "enable", _) => "endpoint",
            _ => "stream",
        };
        let (result, errno) = if step == "alloc" && g("stream_id") == "none" {
            ("error", "NULL".to_string())
        } else {
            match g("err").trim_start_matches('-') {
                "" | "0" => ("ok", String::new()),
                e => ("error", e.to_string()),
            }
        };
        if step == "enable" {
            enable_failed |= result == "error";
            *enables.entry((port, result)).or_default() += 1.0;
        }
        *steps.entry((step, port, result, errno)).or_default() += 1.0;
    }
    c.check(steps.len() >= 8, || {
        format!("too few kinds of IDE calls in the record: {steps:?}")
    });
    for ((step, port, result, errno), n) in &steps {
        let key = format!(
            "tsm_trace_ide_stream_operations_total{{errno=\"{errno}\",port=\"{port}\",result=\"{result}\",step=\"{step}\"}}"
        );
        c.eq(m.get(&key).copied(), Some(*n), &format!("replay: {key}"));
    }
    for ((port, result), n) in &enables {
        let key = format!(
            "tsm_trace_ide_stream_enable_duration_seconds_count{{port=\"{port}\",result=\"{result}\"}}"
        );
        c.eq(m.get(&key).copied(), Some(*n), &format!("replay: {key}"));
    }
    c.check(insecure >= 2.0, || {
        format!("the record shows {insecure} insecure connects, want 2")
    });
    c.eq(
        m.get("tsm_trace_ide_insecure_connects_total").copied(),
        Some(insecure),
        "replay: connects that went on without a Secure stream",
    );
    c.eq(
        m.get("tsm_trace_ide_stream_leaks_detected_total{reason=\"device_disconnected\"}")
            .copied(),
        Some(want.detected.len() as f64),
        "replay: IDE leaks detected",
    );
    c.eq(
        m.get("tsm_trace_ide_streams_leaked{reason=\"device_disconnected\"}")
            .copied(),
        Some((want.detected.len() - want.cleared.len()) as f64),
        "replay: IDE streams still leaked at the end",
    );

    // The daemon started after the leak: it learns the stream from sysfs.
    let derr = &out.section("ide_d.err")?.text;
    c.check(
        derr.contains("exit=0") && !derr.contains("not ready"),
        || format!("tsm-trace run did not start or stop cleanly:\n{derr}"),
    );
    let listed_at_start: Vec<String> = truth_text
        .lines()
        .filter(|l| l.starts_with("daemon_started"))
        .flat_map(|l| {
            parse_kv(l)
                .get("streams")
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect::<Vec<String>>()
                })
                .unwrap_or_default()
        })
        .collect();
    c.check(!listed_at_start.is_empty(), || {
        "no stream listed when the daemon started".into()
    });
    let m1 = parse_exposition(&out.section("ide_d_metrics1")?.text);
    for st in &listed_at_start {
        let key = format!(
            "tsm_trace_leaked_ide_stream_info{{device=\"{ep}\",host_bridge=\"pci0000:00\",reason=\"device_disconnected\",stream=\"{st}\"}}"
        );
        c.eq(
            m1.get(&key).copied(),
            Some(1.0),
            &format!("daemon at start: {key}"),
        );
    }
    let n0 = listed_at_start.len() as f64;
    c.eq(
        m1.get("tsm_trace_ide_streams_registered").copied(),
        Some(n0),
        "daemon at start: registered streams",
    );
    c.eq(
        m1.get("tsm_trace_ide_streams{state=\"unknown\"}").copied(),
        Some(n0),
        "daemon at start: streams learned from sysfs (steps not seen)",
    );
    let b1: Value = serde_json::from_str(&out.section("ide_d_bindings1")?.text)?;
    let streams1 = b1["ide_streams"].as_array().cloned().unwrap_or_default();
    c.eq(
        streams1.len(),
        listed_at_start.len(),
        "daemon at start: /bindings ide_streams",
    );
    for v in &streams1 {
        c.eq(s(v, "endpoint"), ep.clone(), "/bindings: stream endpoint");
        c.eq(
            s(v, "host_bridge"),
            "pci0000:00".into(),
            "/bindings: host bridge",
        );
        c.eq(
            v["registered"].as_bool(),
            Some(true),
            "/bindings: registered",
        );
        c.eq(
            s(&v["leak"], "reason"),
            "device_disconnected".into(),
            "/bindings: leak reason",
        );
        c.check(listed_at_start.contains(&s(v, "name")), || {
            format!("/bindings: {v}")
        });
    }
    let m2 = parse_exposition(&out.section("ide_d_metrics2")?.text);
    c.check(
        !m2.keys()
            .any(|k| k.starts_with("tsm_trace_leaked_ide_stream_info")),
        || "daemon after the release: a leaked-stream series remains".into(),
    );
    c.eq(
        m2.get("tsm_trace_ide_streams_registered").copied(),
        Some(0.0),
        "daemon after the release: registered",
    );
    c.eq(
        m2.get("tsm_trace_ide_streams_leaked{reason=\"device_disconnected\"}")
            .copied(),
        Some(0.0),
        "daemon after the release: leaked",
    );
    c.eq(
        m2.get("tsm_trace_ide_stream_leaks_detected_total{reason=\"device_disconnected\"}")
            .copied(),
        Some(want.by_daemon as f64),
        "daemon: leaks detected (learned at start, then seen)",
    );
    let b2: Value = serde_json::from_str(&out.section("ide_d_bindings2")?.text)?;
    c.eq(
        b2["ide_streams"].as_array().map(Vec::len),
        Some(0),
        "daemon after the release: /bindings ide_streams",
    );
    c.finish("ide (streams)", out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_listed_after_a_disconnect_is_one_leak_until_a_release_drops_it() {
        let truth = "connect dev=E rc=ok streams=stream0.0.0\n\
                     disconnect dev=E rc=ok streams=\n\
                     connect dev=E rc=ok streams=stream0.0.0\n\
                     disconnect dev=E rc=ok streams=stream0.0.0\n\
                     daemon_started dev=E streams=stream0.0.0\n\
                     connect dev=E rc=ok streams=stream0.0.0,stream1.1.1\n\
                     disconnect dev=E rc=ok streams=stream0.0.0\n\
                     disconnect dev=E rc=Bad_address streams=stream0.0.0,stream2.2.2\n\
                     release dev=E rc=ok streams=\n";
        let l = leaks_in_truth(truth);
        assert_eq!(l.detected, vec!["stream0.0.0".to_string()]);
        assert_eq!(l.cleared, vec!["stream0.0.0".to_string()]);
        assert_eq!(l.by_daemon, 1);
    }
}
