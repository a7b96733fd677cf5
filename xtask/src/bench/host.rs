//! Host-side figures: `tsm-trace-bench/src/bin/bench_host.rs`, release build.

use std::process::Command;

use anyhow::{Context, Result};

use super::figures::{Row, Sizes, kv};

fn num(m: &std::collections::BTreeMap<String, String>, k: &str) -> Option<f64> {
    m.get(k).and_then(|v| v.parse().ok())
}

/// `smoke`: build for the musl target, whose release build of the library the Debian package
/// and the VM steps of `cargo xtask test` have already made (a host-target release build
/// would cost minutes more for figures nobody reads at smoke size). The full bench measures
/// the host target's build, with glibc's allocator, as a user builds it.
pub fn run(s: &Sizes, smoke: bool) -> Result<Vec<Row>> {
    let target = smoke.then_some(crate::build::MUSL);
    let bin = crate::build::build_release(Some("bench_host"), target)?;
    let shown = bin
        .strip_prefix(crate::util::root())
        .unwrap_or(&bin)
        .display()
        .to_string();
    let exec = |args: &[String]| -> Result<(String, String)> {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            anyhow::bail!("bench_host {args:?} failed ({}): {err}{text}", out.status);
        }
        Ok((text, args.join(" ")))
    };
    let mut rows = Vec::new();

    // 3. Correlator throughput, one core.
    let args = vec![
        "throughput".to_string(),
        "--events".into(),
        s.events.to_string(),
    ];
    let cmd = |a: &str| format!("{shown} {a}");
    match exec(&args) {
        Ok((text, a)) => {
            let m = kv(&text);
            match (
                num(&m, "pipeline_events_per_s"),
                num(&m, "pipeline_ns_per_event"),
                num(&m, "correlator_events_per_s"),
                num(&m, "correlator_ns_per_event"),
            ) {
                (Some(p), Some(pns), Some(c), Some(cns)) => {
                    let n = m.get("events").cloned().unwrap_or_default();
                    // Wall-clock rates measure this machine as much as the code: the same
                    // build's instruction count (row 3c) stayed put while these moved by a
                    // third between days. The floor is on 3c.
                    let mut r = Row::report(
                        "3. replay throughput, one core, wall clock: Pipeline::handle (correlator + metrics, as `tsm-trace replay` and the daemon)",
                        format!(
                            "{:.2} M events/s ({pns:.0} ns/event; {n} synthetic events)",
                            p / 1e6
                        ),
                    );
                    r.command = cmd(&a);
                    rows.push(r);
                    let mut r = Row::report(
                        "3. replay throughput, one core, wall clock: Correlator::handle alone",
                        format!("{:.2} M events/s ({cns:.0} ns/event)", c / 1e6),
                    );
                    r.command = cmd(&a);
                    rows.push(r);
                }
                _ => rows.push(Row::missing(
                    "3. correlator throughput",
                    format!("no numbers in {text:?}"),
                )),
            }
        }
        Err(e) => rows.push(Row::missing("3. correlator throughput", format!("{e:#}"))),
    }

    // 3c. The same path in instructions (callgrind): repeats to the instruction.
    if !smoke {
        rows.push(instructions_per_event(&bin, &shown));
    }

    // 4. Scale: /metrics render and RSS with many bindings.
    let args = vec![
        "scale".to_string(),
        "--devices".into(),
        s.devices.to_string(),
        "--vms".into(),
        s.vms.to_string(),
    ];
    match exec(&args) {
        Ok((text, a)) => {
            let m = kv(&text);
            let label = format!("4. {} devices bound across {} VMs", s.devices, s.vms);
            match (
                num(&m, "render_ms_max"),
                num(&m, "render_ms_p50"),
                num(&m, "vm_hwm_kib"),
            ) {
                (Some(max), Some(p50), Some(hwm)) => {
                    let bytes = m.get("exposition_bytes").cloned().unwrap_or_default();
                    let mut r = Row::floor(
                        format!("{label}: /metrics render time (worst of 20, incl. the first)"),
                        format!("{max:.3} ms (median {p50:.3} ms; {bytes} bytes)"),
                        "≤ 5 ms",
                        max <= 5.0,
                    );
                    r.command = cmd(&a);
                    rows.push(r);
                    let mut r = Row::floor(
                        format!("{label}: peak RSS (VmHWM) of a process holding the pipeline"),
                        format!("{:.1} MiB", hwm / 1024.0),
                        &format!("≤ {} MiB", super::figures::RSS_FLOOR_MIB),
                        hwm <= super::figures::RSS_FLOOR_MIB * 1024.0,
                    );
                    r.command = cmd(&a);
                    rows.push(r);
                }
                _ => rows.push(Row::missing(label, format!("no numbers in {text:?}"))),
            }
        }
        Err(e) => rows.push(Row::missing("4. scale", format!("{e:#}"))),
    }

    // 8. What the OTLP span export adds per operation on the event loop's thread.
    let args = vec![
        "otlp".to_string(),
        "--events".into(),
        (s.events / 10).max(1000).to_string(),
    ];
    match exec(&args) {
        Ok((text, a)) => {
            let m = kv(&text);
            let get = |k: &str| m.get(k).cloned().unwrap_or_default();
            match num(&m, "otlp_added_ns_per_operation") {
                Some(added) => {
                    let mut r = Row::report(
                        "8. OTLP span export (`--otlp-endpoint`), cost per operation on the event loop: building the spans and queueing them (the batch processor sends from its own thread) to a receiver in the process",
                        format!(
                            "+{added:.0} ns per operation ({} vs {} ns; {} operations, {} spans: {} exported, {} dropped queue_full with the 2048-span queue, {} otherwise; final flush {} s)",
                            get("otlp_ns_per_operation"),
                            get("base_ns_per_operation"),
                            get("operations"),
                            get("spans"),
                            get("spans_exported"),
                            get("spans_dropped_queue_full"),
                            get("spans_dropped_other"),
                            get("final_flush_s"),
                        ),
                    );
                    r.command = cmd(&a);
                    rows.push(r);
                }
                None => rows.push(Row::missing(
                    "8. OTLP export",
                    format!("no numbers in {text:?}"),
                )),
            }
        }
        Err(e) => rows.push(Row::missing("8. OTLP export", format!("{e:#}"))),
    }
    Ok(rows)
}

/// Events `bench_host throughput` replays under callgrind for row 3c.
const CALLGRIND_EVENTS: u64 = 100_000;

/// Row 3c: host instructions per event inside `Pipeline::handle` (inclusive: correlation,
/// metrics, dropping the event), counted by callgrind collecting only inside that function.
fn instructions_per_event(bin: &std::path::Path, shown: &str) -> Row {
    const FIGURE: &str = "3c. replay path, host instructions per event: Pipeline::handle inclusive (callgrind; the same count every run)";
    const FUNCTION: &str = "tsm_trace::pipeline::Pipeline::handle";
    let out_file =
        std::env::temp_dir().join(format!("tsm-trace-bench-{}.callgrind", std::process::id()));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(format!("--toggle-collect={FUNCTION}"))
        .arg(bin)
        .args(["throughput", "--events", &CALLGRIND_EVENTS.to_string()])
        .output();
    let _ = std::fs::remove_file(&out_file);
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            return Row::missing(
                FIGURE,
                format!("cannot run valgrind ({e}): install it (apt install valgrind)"),
            );
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    // "==PID== I   refs:      317,143,838"
    let refs = err
        .lines()
        .find_map(|l| {
            l.split_once("I   refs:")
                .map(|(_, v)| v.trim().replace(',', ""))
        })
        .and_then(|v| v.parse::<u64>().ok());
    match (out.status.success(), refs) {
        (true, Some(r)) if r > 0 => {
            let per = r as f64 / CALLGRIND_EVENTS as f64;
            let mut row = Row::floor(
                FIGURE,
                format!(
                    "{per:.0} instructions per event ({r} in {CALLGRIND_EVENTS} synthetic events)"
                ),
                "≤ 1,000 instructions per event",
                per <= 1000.0,
            );
            row.command = format!(
                "valgrind --tool=callgrind '--toggle-collect={FUNCTION}' {shown} throughput --events {CALLGRIND_EVENTS}"
            );
            row
        }
        _ => Row::missing(
            FIGURE,
            format!(
                "callgrind gave no instruction count ({}): {}",
                out.status,
                err.trim()
            ),
        ),
    }
}
