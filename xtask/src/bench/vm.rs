//! VM figures: one boot of the test VM running `tests/vm/scenarios/bench.sh` with the static
//! tsm-trace and `bench_vm` helper (both musl, release).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};

use super::figures::{Row, Sizes, kv, percentile};
use crate::util::root;
use crate::vm::{self, KernelSpec, RunOptions, VmOutput};

pub const SCRIPT: &str = "tests/vm/scenarios/bench.sh";
pub const COST_SCRIPT: &str = "tests/vm/scenarios/bench_cost.sh";
pub const RATE_SCRIPT: &str = "tests/vm/scenarios/bench_rate.sh";

pub struct VmBench {
    /// Guest description for the table header.
    pub machine: String,
    pub rows: Vec<Row>,
    /// Why bpftrace could not be put into the guest (its rows say so too).
    pub bpftrace: Result<String, String>,
}

fn vm_row(mut r: Row, cmd: &str) -> Row {
    r.place = "VM";
    r.command = cmd.to_owned();
    r
}

/// A tsm-trace built from another git revision, measured side by side (`--compare`).
pub struct Compare {
    pub rev: String,
    pub binary: std::path::PathBuf,
}

/// `cost_only`: the cost blocks of tsm-trace (stopped daemon) and the `compare` revisions
/// only (`cargo xtask bench --cost-only`).
pub fn run(s: &Sizes, compare: &[Compare], cost_only: bool) -> Result<VmBench> {
    let spec = match std::env::var("TSM_VM_KERNEL") {
        Ok(k) if !k.trim().is_empty() => KernelSpec::parse(&k)?,
        _ => KernelSpec::TrixieBackports,
    };
    let tsm_trace = crate::build::build_shipped()?;
    let helper = crate::build::stripped(&crate::build::build_release(
        Some("bench_vm"),
        Some(crate::build::MUSL),
    )?)?;
    let kernel = vm::prepare(std::slice::from_ref(&spec))?.remove(0);
    let body = std::fs::read_to_string(root().join(SCRIPT)).context(SCRIPT)?;
    let revs: Vec<&str> = compare.iter().map(|c| c.rev.as_str()).collect();
    let script = format!(
        "#!/bin/sh\nIDLE_S={}\nHOT_N={}\nLAT_N={}\nACC_N={}\nROUNDS={}\nPAIRS={}\nRATE_STEPS=\"{}\"\nCOMPARE=\"{}\"\nCOST_ONLY={}\n{body}",
        s.idle_s,
        s.hot_n,
        s.lat_n,
        s.acc_n,
        s.rounds,
        s.pairs,
        s.rate_steps,
        revs.join(" "),
        u8::from(cost_only)
    );
    let mut extra = vec![
        (tsm_trace, "/bin/tsm-trace".to_string()),
        (helper, "/bin/bench_vm".to_string()),
        (
            root().join(COST_SCRIPT),
            "/scenarios/bench_cost.sh".to_string(),
        ),
        (
            root().join(RATE_SCRIPT),
            "/scenarios/bench_rate.sh".to_string(),
        ),
    ];
    for c in compare {
        extra.push((c.binary.clone(), format!("/bin/tsm-trace-{}", c.rev)));
    }
    // bpftrace from Debian trixie's packages; without it the bpftrace rows say why.
    let staged = if cost_only {
        Err("not staged (--cost-only)".into())
    } else {
        super::bpftrace::stage().map_err(|e| format!("{e:#}"))
    };
    let bpftrace = match staged {
        Ok(b) => {
            println!(
                "bench: bpftrace {} for the guest ({} files, {:.0} MiB)",
                b.version,
                b.files.len(),
                b.bytes as f64 / 1048576.0
            );
            extra.extend(b.files);
            Ok(b.version)
        }
        Err(e) => {
            eprintln!("bench: bpftrace not available in the guest: {e}");
            Err(e)
        }
    };
    let opts = RunOptions {
        timeout: Duration::from_secs(if s.rounds > 10 { 2400 } else { 900 }),
        // bpftrace's libraries (~200 MiB) live in the initramfs.
        memory_mb: 2048,
        // The deterministic clock: every guest time below is guest instructions.
        icount: true,
        ..RunOptions::default()
    };
    super::cost::DETERMINISTIC.store(true, std::sync::atomic::Ordering::Relaxed);
    println!(
        "bench: booting {} (TCG) for the VM benchmarks",
        kernel.version
    );
    let out = vm::run_in_vm_with(&kernel, &extra, &script, &opts)?;
    println!(
        "bench: VM run {:.1}s (logs {})",
        out.elapsed.as_secs_f64(),
        out.run_dir.display()
    );
    let env = out
        .section("bench_env")
        .map(|s| kv(&s.text))
        .unwrap_or_default();
    let accel = std::env::var("TSM_VM_ACCEL").unwrap_or_else(|_| "tcg,thread=single".into());
    let machine = format!(
        "qemu -accel {accel} -icount {} -cpu max -smp 2 on the host above (the deterministic clock: the guest's clock counts the guest instructions executed, 1 ns = 1 instruction, and an idle guest skips ahead; every guest time below, ns, µs or ms, is that count); guest CPU {} ({} vCPUs), guest kernel {} (Debian), with the tsm_standin fixture; bpftool in VM: {}, bpftrace in VM: {}",
        crate::vm::qemu::ICOUNT,
        env.get("cpu").map_or("?".into(), |c| c.replace('_', " ")),
        env.get("cpus").map_or("?", String::as_str),
        kernel.version,
        env.get("bpftool").map_or("?", String::as_str),
        match &bpftrace {
            Ok(v) => format!(
                "Debian trixie's {v} (dpkg -x, run through its own ld-linux-x86-64.so.2 --library-path)"
            ),
            Err(_) => "no".into(),
        },
    );
    let cmd = format!(
        "{SCRIPT} on {} (IDLE_S={} HOT_N={} LAT_N={} ACC_N={} ROUNDS={} PAIRS={} RATE_STEPS=\"{}\")",
        kernel.version, s.idle_s, s.hot_n, s.lat_n, s.acc_n, s.rounds, s.pairs, s.rate_steps
    );
    let mut rows = Vec::new();
    let mut cost = super::cost::rows(&out);
    if let Err(why) = &bpftrace {
        for r in cost
            .iter_mut()
            .filter(|r| !r.measured && r.figure.contains("bpftrace"))
        {
            r.value = format!("NOT MEASURED: bpftrace could not be put into the guest: {why}");
        }
    }
    rows.extend(cost.into_iter().map(|r| vm_row(r, &cmd)));
    rows.extend(super::rate::rows(&out).into_iter().map(|r| vm_row(r, &cmd)));
    if cost_only {
        return Ok(VmBench {
            machine,
            rows,
            bpftrace,
        });
    }
    rows.push(vm_row(hotpath(&out, s), &cmd));
    rows.extend(idle(&out, s).into_iter().map(|r| vm_row(r, &cmd)));
    rows.push(vm_row(latency(&out), &cmd));
    rows.extend(accuracy(&out).into_iter().map(|r| vm_row(r, &cmd)));
    Ok(VmBench {
        machine,
        rows,
        bpftrace,
    })
}

struct Prog {
    name: String,
    kind: String,
    run_cnt: u64,
}

fn progs(text: &str, prefix: &str) -> BTreeMap<u32, Prog> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let m = kv(l);
            Some((
                m.get("id")?.parse().ok()?,
                Prog {
                    name: m.get("name")?.clone(),
                    kind: m.get("type").cloned().unwrap_or_default(),
                    run_cnt: m
                        .get("run_cnt")
                        .or_else(|| m.get("run_cnt_delta"))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// 2. run_cnt deltas of every program over the hot-path loop must all be 0.
fn hotpath(out: &VmOutput, s: &Sizes) -> Row {
    let figure = format!(
        "2. runs of our programs during {} non-TSM ioctls + {} getpid calls",
        s.hot_n, s.hot_n
    );
    let text = match out.section("hotpath") {
        Ok(t) => t.text.clone(),
        Err(e) => return Row::missing(figure, format!("{e:#}")),
    };
    let ioctls = text.lines().find(|l| l.starts_with("ioctls=")).map(kv);
    let getpids = text.lines().find(|l| l.starts_with("getpids=")).map(kv);
    let deltas = progs(&text, "delta ");
    let (Some(i), Some(g)) = (ioctls, getpids) else {
        return Row::missing(figure, format!("helper output: {}", text.trim()));
    };
    if deltas.is_empty() {
        return Row::missing(figure, "no BPF programs loaded during the loop".into());
    }
    // The raw tracepoints (process exit, module load and free) run on every such event by
    // design, whichever process it is (one hash lookup for an exit): a task that exits
    // anywhere in the system during the loops runs them, the loops themselves never do.
    // Every other program (the kprobes on the TSM path) must not have run at all.
    let (tracepoints, probes): (Vec<&Prog>, Vec<&Prog>) = deltas
        .values()
        .partition(|p| p.kind.contains("RAW_TRACEPOINT"));
    let list = |ps: &[&Prog]| -> String {
        let nonzero: Vec<String> = ps
            .iter()
            .filter(|p| p.run_cnt > 0)
            .map(|p| format!("{}={}", p.name, p.run_cnt))
            .collect();
        if nonzero.is_empty() {
            String::new()
        } else {
            format!(": {}", nonzero.join(", "))
        }
    };
    let total: u64 = probes.iter().map(|p| p.run_cnt).sum();
    let exits: u64 = tracepoints.iter().map(|p| p.run_cnt).sum();
    Row::floor(
        figure,
        format!(
            "{total} runs across {} kprobe programs{} (loops took {} s + {} s); the {} raw-tracepoint programs (process exits, module loads) ran {exits} times{} (they run on every task exit and module event in the system, not on the loops' syscalls)",
            probes.len(),
            list(&probes),
            i.get("seconds").map_or("?", String::as_str),
            g.get("seconds").map_or("?", String::as_str),
            tracepoints.len(),
            list(&tracepoints),
        ),
        "0 runs of the kprobe programs (run_cnt unchanged)",
        total == 0 && !probes.is_empty(),
    )
}

/// 5. Daemon CPU time while idle.
fn idle(out: &VmOutput, s: &Sizes) -> Vec<Row> {
    let figure = format!(
        "5. daemon CPU time over {} s idle (probes attached, no events)",
        s.idle_s
    );
    let text = match out.section("idle") {
        Ok(t) => t.text.clone(),
        Err(e) => return vec![Row::missing(figure, format!("{e:#}"))],
    };
    let m = kv(&text);
    // A schedstat delta counts only if schedstat was readable (its total is non-zero).
    let ns: Option<u64> = m
        .get("schedstat_cpu_ns")
        .and_then(|v| v.parse().ok())
        .filter(|_| {
            m.get("schedstat_total_ns")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|t| t > 0)
        });
    let ms: Option<u64> = m.get("stat_cpu_ms").and_then(|v| v.parse().ok());
    // Floor scaled to the window: 10 ms per 30 s.
    let limit_ms = 10.0 * s.idle_s as f64 / 30.0;
    let hz: Option<f64> = m
        .get("clk_tck")
        .and_then(|v| v.parse().ok())
        .filter(|hz| *hz > 0.0);
    let mut rows = vec![match (ns, ms, hz) {
        (Some(ns), Some(ms), Some(hz)) => Row::floor(
            figure,
            format!(
                "{:.3} ms (sum of /proc/PID/task/*/schedstat; utime+stime: {ms} ms at {} Hz ticks; {} times on a CPU across {} threads; daemon total since start {:.0} ms)",
                ns as f64 / 1e6,
                m.get("clk_tck").map_or("?", String::as_str),
                m.get("schedstat_runs").map_or("?", String::as_str),
                m.get("threads").map_or("?", String::as_str),
                m.get("schedstat_total_ns")
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    / 1e6
            ),
            &format!("< {limit_ms:.0} ms"),
            // The floor is on schedstat's exact nanoseconds. utime+stime is charged in whole
            // ticks to whoever runs at a tick, so 7.8 ms of CPU can show as 0, 10 or 20 ms: it
            // only cross-checks schedstat, to within one tick.
            (ns as f64 / 1e6) < limit_ms && (ms as f64) <= (ns as f64 / 1e6) + 1000.0 / hz,
        ),
        _ => Row::missing(figure, format!("helper output: {}", text.trim())),
    }];
    if let (Some(hwm), Some(rss)) = (
        m.get("vmhwm_kib").and_then(|v| v.parse::<f64>().ok()),
        m.get("vmrss_kib").and_then(|v| v.parse::<f64>().ok()),
    ) {
        // VmHWM never decreases, so the real daemon's peak at idle is a lower bound of its
        // peak with 4,096 bindings: floor 4 applies to it too.
        rows.push(Row::floor(
            "4b. the real daemon (`tsm-trace run`) in the VM, idle with probes attached: peak RSS (VmHWM; a lower bound of its peak at any scale)",
            format!(
                "VmHWM {:.1} MiB (VmRSS now {:.1} MiB)",
                hwm / 1024.0,
                rss / 1024.0
            ),
            &format!("≤ {} MiB", super::figures::RSS_FLOOR_MIB),
            hwm <= super::figures::RSS_FLOOR_MIB * 1024.0,
        ));
    }
    rows
}

/// 6. kretprobe → /metrics latency.
fn latency(out: &VmOutput) -> Row {
    let figure = "6. end-to-end latency, write() of the bind/unbind ioctl returned → counter visible on /metrics (polled every 0.5 ms)";
    let text = match out.section("latency") {
        Ok(t) => t.text.clone(),
        Err(e) => return Row::missing(figure, format!("{e:#}")),
    };
    let mut v: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("latency_us="))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    if v.is_empty() {
        return Row::missing(figure, format!("helper output: {}", text.trim()));
    }
    v.sort_by(f64::total_cmp);
    let p50 = percentile(&v, 50.0) / 1e3;
    let p99 = percentile(&v, 99.0) / 1e3;
    let max = v[v.len() - 1] / 1e3;
    Row::floor(
        figure,
        format!(
            "p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} operations)",
            v.len()
        ),
        "p99 ≤ 250 ms (generous: TCG emulation)",
        p99 <= 250.0,
    )
}

/// 7. driver_bind frame duration vs the module's own `driver_ns`.
fn accuracy(out: &VmOutput) -> Vec<Row> {
    let figure = "7. accuracy: driver_bind frame (trace --json) vs the stand-in's measured driver_ns, every bind from the first after attach (no warm-up)";
    let (trace, truth) = match (out.section("acc_trace"), out.section("acc_truth")) {
        (Ok(t), Ok(u)) => (t.text.clone(), u.text.clone()),
        (Err(e), _) | (_, Err(e)) => return vec![Row::missing(figure, format!("{e:#}"))],
    };
    // Successful binds in order, with their frames' durations by probe.
    let mut binds: Vec<BTreeMap<String, u64>> = Vec::new();
    let mut first: Option<String> = None;
    for l in trace.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["type"] != "operation" || v["kind"] != "bind" || v["result"] != "ok" {
            continue;
        }
        let mut frames = BTreeMap::new();
        for f in v["frames"].as_array().into_iter().flatten() {
            if let (Some(p), Some(d)) = (f["probe"].as_str(), f["duration_ns"].as_u64()) {
                frames.insert(p.to_owned(), d);
            }
        }
        binds.push(frames);
    }
    let truths: Vec<BTreeMap<String, String>> = truth.lines().map(kv).collect();
    if binds.is_empty() || binds.len() != truths.len() {
        return vec![Row::missing(
            figure,
            format!(
                "{} bind operations traced, {} binds made",
                binds.len(),
                truths.len()
            ),
        )];
    }
    let mut worst_excess = f64::NEG_INFINITY; // error minus allowance, ns
    let mut worst = String::new();
    let mut outer_err: Vec<f64> = Vec::new();
    let mut misses = 0;
    for (b, t) in binds.iter().zip(&truths) {
        let (Some(frame), Some(truth)) = (
            b.get("driver_bind"),
            t.get("driver_ns").and_then(|v| v.parse::<u64>().ok()),
        ) else {
            misses += 1;
            continue;
        };
        let err = (*frame as f64 - truth as f64).abs();
        let allowed = 0.01 * truth as f64 + 50_000.0;
        first.get_or_insert_with(|| {
            format!(
                "first bind: error {:.1} µs (allowed {:.1} µs); ",
                err / 1e3,
                allowed / 1e3
            )
        });
        if err - allowed > worst_excess {
            worst_excess = err - allowed;
            worst = format!(
                "worst: frame {:.3} ms vs module {:.3} ms (delay_us={}), error {:.1} µs, allowed {:.1} µs",
                *frame as f64 / 1e6,
                truth as f64 / 1e6,
                t.get("delay_us").map_or("?", String::as_str),
                err / 1e3,
                allowed / 1e3
            );
        }
        if let (Some(f), Some(d)) = (
            b.get("tsm_op_ioctl"),
            t.get("duration_ns").and_then(|v| v.parse::<u64>().ok()),
        ) {
            outer_err.push((*f as f64 - d as f64).abs() / 1e3);
        }
    }
    let n = binds.len() - misses;
    let mut rows = vec![if n == 0 {
        Row::missing(
            figure,
            "no bind had both a driver_bind frame and driver_ns".into(),
        )
    } else {
        Row::floor(
            figure,
            format!(
                "{n} binds, delays 0/1/5/20 ms; {}{worst}{}",
                first.unwrap_or_default(),
                if misses > 0 {
                    format!("; {misses} binds lacked a driver frame")
                } else {
                    String::new()
                }
            ),
            "|error| ≤ 1% + 50 µs, every bind",
            worst_excess <= 0.0 && misses == 0,
        )
    }];
    if !outer_err.is_empty() {
        outer_err.sort_by(f64::total_cmp);
        rows.push(Row::report(
            "7b. accuracy, outer frame: tsm_op_ioctl frame vs the module's duration_ns of iommufd_vdevice_tsm_op_ioctl",
            format!(
                "|error| median {:.1} µs, max {:.1} µs ({} binds)",
                percentile(&outer_err, 50.0),
                outer_err[outer_err.len() - 1],
                outer_err.len()
            ),
        ));
    }
    rows.push(emulator(out));
    rows.push(first_run(out));
    rows
}

/// The kprobe programs' (run_cnt, run_time_ns) in `phase`'s bpf_stats lines, by program name
/// (summed over programs of the same name).
fn prog_stats(text: &str, phase: &str) -> BTreeMap<String, (u64, u64)> {
    let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (name, c, ns) in super::cost::stats_snapshot(text, phase).into_values() {
        let e = m.entry(name).or_default();
        e.0 += c;
        e.1 += ns;
    }
    m
}

/// 7d. A fresh session's driver-bind programs on their first run vs their second (bpf_stats):
/// under TCG, code never executed before is translated on its first run, and a freshly
/// loaded program's JIT code is such code.
fn first_run(out: &VmOutput) -> Row {
    let figure = "7d. accuracy, the emulator's part: a fresh session's driver-bind programs (driver_bind_entry + driver_bind_return), run time of their first run vs their second (bpf_stats)";
    let text = match out.section("acc_firstrun") {
        Ok(t) => t.text.clone(),
        Err(e) => return Row::missing(figure, format!("{e:#}")),
    };
    let (s0, s1, s2) = (
        prog_stats(&text, "s0"),
        prog_stats(&text, "s1"),
        prog_stats(&text, "s2"),
    );
    let mut first = (0u64, 0u64);
    let mut second = (0u64, 0u64);
    // The kernel's names of `driver_bind_entry` and `driver_bind_return` (bpf_prog_info keeps
    // 15 bytes).
    for name in ["driver_bind_ent", "driver_bind_ret"] {
        let (Some(a), Some(b), Some(c)) = (s0.get(name), s1.get(name), s2.get(name)) else {
            return Row::missing(figure, format!("no bpf_stats for {name}: {}", text.trim()));
        };
        first.0 += b.0 - a.0;
        first.1 += b.1 - a.1;
        second.0 += c.0 - b.0;
        second.1 += c.1 - b.1;
    }
    if first.0 != 2 || second.0 != 2 {
        return Row::missing(
            figure,
            format!(
                "want one run of each program per bind, got {} and {}: {}",
                first.0,
                second.0,
                text.trim()
            ),
        );
    }
    Row::report(
        figure,
        format!(
            "first bind {:.1} µs, second bind {:.1} µs: {:.1} µs more on the first run, the same code (compare the first-bind error of row 7)",
            first.1 as f64 / 1e3,
            second.1 as f64 / 1e3,
            (first.1 as f64 - second.1 as f64) / 1e3
        ),
    )
}

/// 7c. The same binds timed by nothing but the kprobe machinery (a tracefs p:/r: pair on the
/// driver's bind op, trace_clock mono): what the emulator costs between the probe hit and the
/// function's own clock reads, without any BPF.
fn emulator(out: &VmOutput) -> Row {
    let figure = "7c. accuracy, the emulator's part: a tracefs p:/r: pair alone on standin_tdi_bind (trace_clock mono, no BPF) vs driver_ns, same binds, first included";
    let (trace, truth) = match (out.section("acc_ftrace"), out.section("acc_truth_ftrace")) {
        (Ok(t), Ok(u)) => (t.text.clone(), u.text.clone()),
        (Err(e), _) | (_, Err(e)) => return Row::missing(figure, format!("{e:#}")),
    };
    let ts = |l: &str, ev: &str| -> Option<f64> {
        let (head, _) = l.split_once(&format!(" {ev}: "))?;
        head.trim_end_matches(':')
            .rsplit(' ')
            .next()?
            .trim_end_matches(':')
            .parse::<f64>()
            .ok()
    };
    let mut durs = Vec::new();
    let mut start = None;
    for l in trace.lines() {
        if let Some(t) = ts(l, "db") {
            start = Some(t);
        } else if let (Some(t), Some(s)) = (ts(l, "dbr"), start.take()) {
            durs.push(((t - s) * 1e9).round());
        }
    }
    let truths: Vec<f64> = truth
        .lines()
        .filter_map(|l| kv(l).get("driver_ns")?.parse().ok())
        .collect();
    if durs.is_empty() || durs.len() != truths.len() {
        return Row::missing(
            figure,
            format!(
                "{} entry/return pairs traced, {} binds made",
                durs.len(),
                truths.len()
            ),
        );
    }
    let errs: Vec<f64> = durs
        .iter()
        .zip(&truths)
        .map(|(d, t)| (d - t).abs())
        .collect();
    let over = errs
        .iter()
        .zip(&truths)
        .filter(|(e, t)| **e > 0.01 * **t + 50_000.0)
        .count();
    let mut sorted = errs.clone();
    sorted.sort_by(f64::total_cmp);
    Row::report(
        figure,
        format!(
            "{} binds: first bind error {:.1} µs, median {:.1} µs, max {:.1} µs; {over} beyond 1% + 50 µs (timestamps at µs resolution)",
            errs.len(),
            errs[0] / 1e3,
            percentile(&sorted, 50.0) / 1e3,
            sorted[sorted.len() - 1] / 1e3
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(sections: &str) -> VmOutput {
        let (sections, run_rc, _) = crate::vm::qemu::parse_data(sections);
        VmOutput {
            kernel_version: String::new(),
            console: String::new(),
            sections,
            run_rc,
            warnings: Vec::new(),
            run_dir: std::path::PathBuf::new(),
            elapsed: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn first_run_against_second() {
        let data = "=== BEGIN acc_firstrun ===\n\
            s0 id=1 name=driver_bind_ent type=BPF_PROG_TYPE_KPROBE run_time_ns=0 run_cnt=0\n\
            s0 id=2 name=driver_bind_ret type=BPF_PROG_TYPE_KPROBE run_time_ns=0 run_cnt=0\n\
            s1 id=1 name=driver_bind_ent type=BPF_PROG_TYPE_KPROBE run_time_ns=500000 run_cnt=1\n\
            s1 id=2 name=driver_bind_ret type=BPF_PROG_TYPE_KPROBE run_time_ns=100000 run_cnt=1\n\
            s2 id=1 name=driver_bind_ent type=BPF_PROG_TYPE_KPROBE run_time_ns=520000 run_cnt=2\n\
            s2 id=2 name=driver_bind_ret type=BPF_PROG_TYPE_KPROBE run_time_ns=110000 run_cnt=2\n\
            === END acc_firstrun rc=0 ===\n";
        let r = first_run(&output(data));
        assert!(r.measured, "{}", r.value);
        assert!(
            r.value
                .starts_with("first bind 600.0 µs, second bind 30.0 µs: 570.0 µs more"),
            "{}",
            r.value
        );
        // A program that ran twice in one bind is not a first-run figure.
        let twice = data.replace(
            "run_time_ns=500000 run_cnt=1",
            "run_time_ns=500000 run_cnt=2",
        );
        assert!(!first_run(&output(&twice)).measured);
    }
}
