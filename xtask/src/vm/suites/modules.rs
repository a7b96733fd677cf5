//! The module suite: a daemon and a `trace` session through three insmod/rmmod cycles of
//! `tsm_latemod` while a VMM holds a binding and a bind is in flight
//! (`tests/vm/scenarios/modules.sh` produces the records checked here).
//!
//! Ground truth comes from the fixtures: each cycle's call count and return code from
//! `tsm_latemod`'s own `last` record, each bind's result from `tsm_standin`'s. What is checked:
//! every call counted exactly once in `/metrics`, `--print json` and the trace (no duplicate,
//! none lost), the probe reported detached after each unload and attached after each load,
//! the in-flight bind seen whole, and the VMM's exit still detected after the cycles (the
//! VMM table lives in the one object the daemon loaded at start).

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::Value;

use crate::vm::checks::{Checks, json_lines, parse_exposition, s};
use crate::vm::kv::parse_kv;
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/modules.sh";

const CYCLES: usize = 3;
const VMM_DEV: &str = "0000:00:02.0";
const SLOW_DEV: &str = "0000:00:03.0";
/// The stand-in's driver op sleeps 3 s in the slow bind (`delay_us 3000000`); msleep under
/// TCG can end a little early against ktime, so 90% of it.
const SLOW_NS: u64 = 2_700_000_000;

/// Runs every check; returns how many were made, or every failure.
pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let truth = &out.section("mod_truth")?.text;
    let line = |prefix: &str| -> BTreeMap<String, String> {
        truth
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(parse_kv)
            .unwrap_or_default()
    };
    for step in ["vmm_bind", "slow_bind"] {
        c.eq(
            line(&format!("{step} ")).get("rc").cloned(),
            Some("0".to_string()),
            &format!("{step}: the stand-in's rc"),
        );
    }
    // Each cycle's calls, from tsm_latemod itself (its counter restarts with every load).
    let mut calls_ok = 0u64;
    let mut calls_err = 0u64;
    let mut call_dev = None;
    for i in 1..=CYCLES {
        let kv = line(&format!("cycle={i} "));
        let n: u64 = kv.get("calls").and_then(|v| v.parse().ok()).unwrap_or(0);
        c.eq(
            n,
            (i + 3) as u64,
            &format!("cycle {i}: tsm_latemod's call count"),
        );
        match kv.get("rc").map(String::as_str) {
            Some("0") => calls_ok += n,
            Some(_) => calls_err += n,
            None => c.check(false, || format!("cycle {i}: no record in {truth}")),
        }
        call_dev = kv.get("dev").cloned();
    }
    let call_dev = call_dev.unwrap_or_default();

    check_logs(&mut c, out, "mod_d.err")?;
    check_logs(&mut c, out, "mod_t.err")?;

    // The daemon after the last unload.
    let m = parse_exposition(&out.section("mod_metrics_cycles")?.text);
    let sum = |m: &BTreeMap<String, f64>, name: &str, want: &[&str]| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("{name}{{")) && want.iter().all(|w| k.contains(w))
            })
            .map(|(_, v)| v)
            .sum()
    };
    let ops = "tsm_trace_operations_total";
    c.eq(
        sum(&m, ops, &["op=\"connect\"", "result=\"ok\""]),
        calls_ok as f64,
        "daemon: connect operations ok = tsm_latemod's calls",
    );
    c.eq(
        sum(&m, ops, &["op=\"connect\"", "result=\"error\""]),
        calls_err as f64,
        "daemon: connect operations failed = tsm_latemod's failed calls",
    );
    c.eq(
        sum(&m, ops, &["op=\"bind\"", "result=\"ok\""]),
        2.0,
        "daemon: the two binds, once each",
    );
    c.eq(
        sum(&m, ops, &["op=\"bind\"", "result=\"error\""]),
        0.0,
        "daemon: no failed bind",
    );
    for reason in [
        "ringbuf_full",
        "inflight_full",
        "orphan_return",
        "decode_error",
        "control_full",
    ] {
        c.eq(
            sum(
                &m,
                "tsm_trace_events_lost_total",
                &[&format!("reason=\"{reason}\"")],
            ),
            0.0,
            &format!("daemon: events lost ({reason})"),
        );
    }
    let attached: Vec<(&String, &f64)> = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tsm_trace_probe_attached{") && k.contains("probe=\"driver_connect\"")
        })
        .collect();
    // One series per program (kprobe, kretprobe), under the function found in the module.
    c.check(
        attached.len() == 2
            && attached
                .iter()
                .all(|(k, v)| k.contains("latemod_connect [tsm_latemod]") && **v == 0.0),
        || {
            format!(
                "daemon: driver_connect should be two series at 0 after the unload: {attached:?}"
            )
        },
    );
    c.eq(
        m.get("tsm_trace_bindings_active").copied(),
        Some(2.0),
        "daemon: bindings after the cycles",
    );

    // After the VMM was killed holding its binding.
    let m = parse_exposition(&out.section("mod_metrics_exited")?.text);
    c.eq(
        sum(
            &m,
            "tsm_trace_leaks_detected_total",
            &["reason=\"vmm_exited\""],
        ),
        1.0,
        "daemon: the VMM's exit after the cycles is a leak",
    );
    c.check(
        m.keys().any(|k| {
            k.starts_with("tsm_trace_leaked_binding_info{")
                && k.contains(&format!("device=\"{VMM_DEV}\""))
                && k.contains("reason=\"vmm_exited\"")
        }),
        || "daemon: no leaked_binding_info for the VMM's device".into(),
    );

    // rmmod of the stand-in, which made both bindings and unbinds nothing on exit: they end
    // (cause module_unloaded) in /metrics, /bindings and --print json, reconciliation off.
    c.eq(
        line("rmmod_standin ").get("rc").cloned(),
        Some("0".to_string()),
        "rmmod tsm_standin",
    );
    let m = parse_exposition(&out.section("mod_metrics_unloaded")?.text);
    c.eq(
        sum(
            &m,
            "tsm_trace_bindings_closed_total",
            &["cause=\"module_unloaded\""],
        ),
        2.0,
        "daemon: bindings ended by the stand-in's unload",
    );
    c.eq(
        m.get("tsm_trace_bindings_active").copied(),
        Some(0.0),
        "daemon: bindings after the stand-in's unload",
    );
    let b: Value =
        serde_json::from_str(&out.section("mod_bindings_unloaded")?.text).unwrap_or(Value::Null);
    c.check(
        b["bindings"].as_array().is_some_and(|a| a.is_empty()),
        || format!("daemon: /bindings after the stand-in's unload still lists bindings: {b}"),
    );
    let d_out = json_lines(out, "mod_d.out", false)?;
    for dev in [VMM_DEV, SLOW_DEV] {
        c.check(
            d_out.iter().any(|o| {
                s(o, "type") == "binding_closed"
                    && s(o, "cause") == "module_unloaded"
                    && o["binding"]["device"].as_str() == Some(dev)
            }),
            || format!("mod_d.out: no binding_closed of {dev} with cause module_unloaded"),
        );
    }

    // Every operation once in --print json and in the trace.
    for (name, skip_header) in [("mod_d.out", false), ("mod_t.jsonl", false)] {
        let lines = json_lines(out, name, skip_header)?;
        let op = |kind: &str| -> Vec<&Value> {
            lines
                .iter()
                .filter(|o| s(o, "type") == "operation" && s(o, "kind") == kind)
                .collect()
        };
        let connects = op("connect");
        c.eq(
            connects.len() as u64,
            calls_ok + calls_err,
            &format!("{name}: connect operations = tsm_latemod's calls"),
        );
        c.check(connects.iter().all(|o| s(o, "device") == call_dev), || {
            format!("{name}: a connect without the device tsm_latemod passed ({call_dev})")
        });
        let binds = op("bind");
        for dev in [VMM_DEV, SLOW_DEV] {
            let n = binds.iter().filter(|o| s(o, "device") == dev).count();
            c.eq(n, 1, &format!("{name}: binds of {dev}"));
        }
        if let Some(slow) = binds.iter().find(|o| s(o, "device") == SLOW_DEV) {
            let d = u(slow, "end_ns").saturating_sub(u(slow, "start_ns"));
            c.check(d >= SLOW_NS, || {
                format!("{name}: the in-flight bind took {d} ns, less than the fixture's 3 s")
            });
            c.eq(
                s(slow, "result"),
                "ok".to_string(),
                &format!("{name}: slow bind result"),
            );
        }
        c.check(
            lines.iter().any(|o| {
                s(o, "type") == "leak"
                    && s(o, "event") == "detected"
                    && s(o, "reason") == "vmm_exited"
                    && s(o, "device") == VMM_DEV
            }),
            || format!("{name}: no vmm_exited leak for {VMM_DEV}"),
        );
    }
    check_privileges(&mut c, out)?;
    c.finish("module", out)
}

/// Capability bits (linux/capability.h), for reading /proc/<pid>/status.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn caps(status: &str, field: &str) -> Option<Vec<u32>> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))?
        .trim();
    let v = u64::from_str_radix(hex, 16).ok()?;
    Some((0..64).filter(|b| v & (1 << b) != 0).collect())
}

/// The daemon started with `--user 65534:65534 --late-attach-window 3s`: nobody once
/// attached, holding only what attaching needs while the window is open, then CAP_BPF only;
/// no attach on the module loads after the window.
fn check_privileges(c: &mut Checks, out: &VmOutput) -> Result<()> {
    let open = &out.section("mod_p_open")?.text;
    let closed = &out.section("mod_p_closed")?.text;
    let paranoid: i32 = parse_kv(open.lines().next().unwrap_or(""))
        .get("paranoid")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let mut attach = vec![CAP_SYS_ADMIN, CAP_SYSLOG, CAP_PERFMON, CAP_BPF];
    if paranoid < 3 {
        attach.retain(|&b| b != CAP_SYS_ADMIN);
    }
    for (phase, text, want) in [
        ("window open", open, attach),
        ("window closed", closed, vec![CAP_BPF]),
    ] {
        for f in ["Uid", "Gid"] {
            let ids: Vec<&str> = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{f}:")))
                .unwrap_or("")
                .split_whitespace()
                .collect();
            c.eq(
                ids,
                vec!["65534"; 4],
                &format!("--user, {phase}: {f} (real, effective, saved, fs)"),
            );
        }
        for f in ["CapEff", "CapPrm"] {
            c.eq(
                caps(text, f),
                Some(want.clone()),
                &format!("--user, {phase}: {f} (perf_event_paranoid={paranoid})"),
            );
        }
        for f in ["CapInh", "CapAmb"] {
            c.eq(
                caps(text, f),
                Some(vec![]),
                &format!("--user, {phase}: {f}"),
            );
        }
    }
    let err = &out.section("mod_p.err")?.text;
    c.check(
        err.contains("now running as uid 65534, gid 65534")
            && err.contains("the late-attach window is over: dropped all capabilities but CAP_BPF")
            && err.contains("driver_connect will not attach"),
        || format!("mod_p.err: no user switch or window close:\n{err}"),
    );
    c.check(
        !err.contains("a module load made more probes available"),
        || format!("mod_p.err: attached after the window closed:\n{err}"),
    );
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("mod_p.err: no clean exit:\n{err}")
    });
    Ok(())
}

/// Three detaches and three attaches, no rescan failure, a clean exit.
fn check_logs(c: &mut Checks, out: &VmOutput, name: &str) -> Result<()> {
    let err = &out.section(name)?.text;
    let count = |p: &str| err.lines().filter(|l| l.contains(p)).count();
    c.eq(
        count("a module load made more probes available"),
        CYCLES,
        &format!("{name}: attaches on load"),
    );
    c.eq(
        count("module tsm_latemod was unloaded: detached"),
        CYCLES,
        &format!("{name}: detaches on unload"),
    );
    c.check(
        !err.contains("after a module load failed") && !err.contains("timeout waiting"),
        || format!("{name}: a failure in the log:\n{err}"),
    );
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("{name}: no clean exit:\n{err}")
    });
    Ok(())
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}
