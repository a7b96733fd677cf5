//! The soak's section of BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::data::{Samples, Sizes};

fn p50_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

pub(super) fn section(
    ops: u64,
    sz: &Sizes,
    m: &BTreeMap<String, String>,
    s: &Samples,
    bad: &[String],
) -> String {
    let g = |k: &str| m.get(k).map_or("?", String::as_str).to_string();
    let f = |k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let last = |c: &str| *s.col(c).last().unwrap_or(&0.0);
    let peak = |c: &str| s.col(c).into_iter().fold(0f64, f64::max);
    let (rss_a, rss_b) = s.halves("rss_kib");
    let (heap_a, heap_b) = s.halves("heap_kib");
    let (ser_a, ser_b) = s.halves("series");
    let (st_a, st_b) = s.halves("state_bytes");
    let (sc50, scmax) = p50_max(s.col("scrape_ns"));
    let (bj50, bjmax) = p50_max(s.col("bindings_json_ns"));
    let (save_s, handle_s, cpu_s) = (f("save_s"), f("handle_s"), f("cpu_s"));
    let saves = f("saves");
    let bytes = f("save_bytes");
    let mut o = String::new();
    let _ = writeln!(o, "## Soak: a month compressed\n");
    let _ = writeln!(
        o,
        "Written by `cargo xtask soak --ops {}` (reproduce with that command: the events are the same every run, a fixed seed; times are CPU times of the single thread, so other work on the machine does not inflate them). \
         `tsm-trace-bench/src/bin/soak` drives a synthetic host through the daemon's userspace path: {} live VM slots, each VM created with 1–4 devices (connected first if need be), bound through the ioctl (1 bind in 12 fails with EBUSY; 1 VM in 16 binds through the bare `tsm_bind` path of a module), 1–3 guest requests, then ended: half cleanly (ioctl unbind or vdevice teardown with unbind, VM destroyed, VMM exit), 3/16 by vdevice teardown without unbind, 2/16 by a VMM crash, 2/16 with a device disconnected while bound; a device a dead VM left bound is cleaned up (tsm/disconnect) before its next bind. \
         The frames are those of the 7.3 captures; each batch of {} events goes through `Pipeline::handle` and `Pipeline::tick`, then the state file is saved as `event_loop::save_state` does (on tmpfs, as /run/tsm-trace); every {} operations the module is unloaded (`Pipeline::module_unloaded`) or loaded again, every {} operations sysfs is reconciled against the host's truth (`Pipeline::reconcile`), and every {} operations /metrics (`Metrics::render`) and /bindings (`BindingsView`) are rendered and every table measured. \
         The bounds are the daemon's code with its limits scaled down (`correlate::Config`; defaults in brackets) so that a million operations cross each of them many times.\n",
        ops,
        g("live_vms"),
        g("batch_events"),
        sz.module_every,
        sz.reconcile_every,
        sz.sample_every
    );
    let _ = writeln!(
        o,
        "![soak: RSS, series, state file, scrape time over operations](docs/soak.svg)\n"
    );
    let _ = writeln!(o, "| figure | value |\n|---|---|");
    let row = |o: &mut String, k: &str, v: String| {
        let _ = writeln!(o, "| {k} | {v} |");
    };
    row(
        &mut o,
        "operations (events)",
        format!(
            "{} ({} events, {} s of event time)",
            g("ops"),
            g("events"),
            g("event_seconds")
        ),
    );
    row(
        &mut o,
        "distinct devices / VMs",
        format!(
            "{} devices, {} VMs created and destroyed",
            g("devices_used"),
            g("vms")
        ),
    );
    row(
        &mut o,
        "leaks detected (then cleared by unbind, disconnect, rebind or eviction)",
        format!(
            "{}; {} sysfs mismatches",
            g("leaks_detected"),
            g("mismatches")
        ),
    );
    row(
        &mut o,
        "module unloads: bindings they ended",
        format!(
            "{} unloads, {} bindings closed (module_unloaded); {} reconciliations; {} scrapes",
            g("module_unloads"),
            g("module_unloaded_closed"),
            g("reconciles"),
            g("scrapes")
        ),
    );
    row(
        &mut o,
        "RSS: peak first half / second half / final",
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            rss_a / 1024.0,
            rss_b / 1024.0,
            last("rss_kib") / 1024.0
        ),
    );
    row(
        &mut o,
        "heap in use (counting allocator): peak first half / second half / final",
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            heap_a / 1024.0,
            heap_b / 1024.0,
            last("heap_kib") / 1024.0
        ),
    );
    row(
        &mut o,
        "/metrics series: peak first half / second half / final",
        format!("{ser_a} / {ser_b} / {}", last("series")),
    );
    row(
        &mut o,
        "state file: peak first half / second half / final",
        format!(
            "{:.0} / {:.0} / {:.0} KiB",
            st_a / 1024.0,
            st_b / 1024.0,
            last("state_bytes") / 1024.0
        ),
    );
    row(
        &mut o,
        "/metrics render (CPU): p50 / max",
        format!(
            "{:.2} / {:.2} ms ({:.0} KiB exposition at most)",
            sc50 / 1e6,
            scmax / 1e6,
            peak("exposition_bytes") / 1024.0
        ),
    );
    row(
        &mut o,
        "/bindings render (CPU): p50 / max",
        format!(
            "{:.2} / {:.2} ms ({:.0} KiB at most)",
            bj50 / 1e6,
            bjmax / 1e6,
            peak("bindings_json_bytes") / 1024.0
        ),
    );
    row(
        &mut o,
        "state saves (one per batch that changed anything)",
        format!(
            "{saves:.0} saves, {:.0} MiB, {save_s:.1} s CPU: {:.1} ms and {:.0} KiB each, at most {:.0} saves/s and {:.0} MiB/s",
            bytes / 1048576.0,
            save_s / saves.max(1.0) * 1e3,
            bytes / saves.max(1.0) / 1024.0,
            saves / save_s.max(1e-9),
            bytes / 1048576.0 / save_s.max(1e-9)
        ),
    );
    row(
        &mut o,
        "CPU: events (handle + tick) / state saves / whole run",
        format!(
            "{handle_s:.1} s / {save_s:.1} s / {cpu_s:.1} s: saves take {:.0}% of the run, {:.1}× the events' own cost",
            save_s / cpu_s.max(1e-9) * 100.0,
            save_s / handle_s.max(1e-9)
        ),
    );
    let (fb, fms) = (f("default_bounds_save_bytes"), f("default_bounds_save_ms"));
    row(
        &mut o,
        "one save at the default bounds' size (65,536 bindings, leaks and device links: the final state's entries repeated)",
        format!(
            "{:.1} MiB, {fms:.0} ms CPU: at most {:.0} saves/s; at one save per batch, a daemon with full default tables spends {fms:.0} ms per batch saving",
            fb / 1048576.0,
            1e3 / fms.max(1e-9)
        ),
    );
    let _ = writeln!(
        o,
        "\n| table | bound in the soak [default] | peak | at the bound | counted (whole run) |\n|---|---|---|---|---|"
    );
    let b = |o: &mut String, t: &str, bound: String, col: &str, what: &str, counter: &str| {
        let n = m
            .get(&format!("anomaly_{counter}"))
            .map_or("0", String::as_str);
        let _ = writeln!(
            o,
            "| {t} | {bound} | {} | {what} | `{counter}` {n} |",
            peak(col)
        );
    };
    b(
        &mut o,
        "bindings",
        format!("{} [65,536]", sz.max_bindings),
        "bindings",
        "the oldest binding is evicted, its leaks cleared (cause evicted); sysfs reconciliation then reports the device bound without owner",
        "binding_evicted",
    );
    b(
        &mut o,
        "leaks (and `tsm_trace_leaked_binding_info` series, one per leak)",
        format!("{} [65,536]", sz.max_leaks),
        "leaks",
        "a new leak is not recorded",
        "leak_table_full",
    );
    b(
        &mut o,
        "device links",
        format!("{} (= max bindings) [65,536]", sz.max_bindings),
        "devices",
        "a disconnected device's link is forgotten first, else the first by name",
        "device_table_full",
    );
    b(
        &mut o,
        "threads",
        format!("{} [4,096]", sz.max_threads),
        "threads",
        "the least recently seen thread is forgotten; its pending frames become operations (counted only then: an idle thread holds nothing)",
        "thread_evicted",
    );
    b(
        &mut o,
        "VM checks (grace period)",
        format!("{} [4,096]", sz.max_vm_checks),
        "vm_checks",
        "the oldest check runs early",
        "vm_check_overflow",
    );
    b(
        &mut o,
        "deferred VM events",
        format!("{} (= max VM checks) [4,096]", sz.max_vm_checks),
        "deferred",
        "the oldest waits no longer",
        "vm_check_overflow",
    );
    b(
        &mut o,
        "pending chains (peak: frames over all threads)",
        "16 per thread [16]".to_string(),
        "pending_frames",
        "the thread's oldest chain is closed (the soak's threads never hold 16: not reached)",
        "pending_overflow",
    );
    let _ = writeln!(
        o,
        "\nVM names and vdevice ids learned (`correlate/vm_names.rs`) are bounded at 4,096 each, the oldest forgotten silently (they only name things); recent point events at a fixed 4× the duplicate window. Every sample checks each table against its bound and the leak series against the leak table (the run fails at the first disagreement)."
    );
    if bad.is_empty() {
        let _ = writeln!(
            o,
            "\nBounded: every table reached its bound in the first half and stayed at or under it; the series and the state file peaked in the second half within 10% of the first half's peak, the heap in use within 25% and RSS within 25% + 2 MiB. The heap may step up once after the tables are full: a hash table under churn (the binding table: evictions and unbinds leave tombstones) rehashes into twice its buckets when the tombstones fill it while it is more than half full, then never again at that size (this seed puts it at about 930,000 operations: +1.5 MiB, about 190 bytes for each of 8,192 more buckets, consistent with the binding table's entries; at the default 65,536 bindings the same step would be about 24 MiB). RSS also counts what glibc's allocator keeps of freed memory."
        );
    } else {
        let _ = writeln!(o, "\n**NOT BOUNDED**:\n");
        for l in bad {
            let _ = writeln!(o, "- {l}");
        }
    }
    o
}
