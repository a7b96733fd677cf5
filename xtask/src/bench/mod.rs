//! `cargo xtask bench`: benchmarks with floors, written to BENCHMARKS.md.
//!
//! Host side (release build, `tsm-trace-bench/src/bin/bench_host.rs`): correlator throughput on one
//! core, and `/metrics` render time + RSS with 4,096 devices bound across 256 VMs.
//! VM side (`tests/vm/scenarios/bench.sh` with the static `tsm-trace` and
//! `tsm-trace-bench/src/bin/bench_vm.rs`): in-kernel cost per program vs an empty kprobe/kretprobe on
//! the same function in the same run, hot-path silence, daemon idle CPU, kretprobe → /metrics
//! latency, and bind-latency accuracy against the stand-in module's own measurement.
//!
//! Every figure is measured in this run; comparisons are ratios measured side by side. A missed
//! floor fails the command (after BENCHMARKS.md is written). `--smoke` runs everything with tiny
//! sizes (one VM boot), checks only that each benchmark produced a number, and writes nothing.

mod bpftrace;
mod compare;
mod cost;
mod figures;
mod host;
mod rate;
mod vm;

use std::fmt::Write as _;

use anyhow::{Result, bail};

use figures::{Row, Sizes, Verdict};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BenchArgs {
    /// Tiny sizes: the smoke run that `cargo xtask test` does so benchmarks cannot rot.
    #[arg(long)]
    pub smoke: bool,
    /// Also measure the cost per probed call of tsm-trace built from these git revisions
    /// (each in a temporary `git worktree` under target/, its own build), side by side with
    /// the current tree in the same VM run. Report rows only.
    #[arg(long, value_delimiter = ',', value_name = "REV[,REV...]")]
    pub compare: Vec<String>,
    /// Only the in-kernel cost per probed call: this tree's daemon (stopped through each
    /// armed round) and each `--compare` revision's, side by side in one VM run; no other
    /// tool, no host part, BENCHMARKS.md untouched. For iterating on the probes:
    /// `cargo xtask bench --smoke --cost-only --compare HEAD~1`.
    #[arg(long)]
    pub cost_only: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    let cmd = if args.smoke {
        "cargo xtask bench --smoke"
    } else {
        "cargo xtask bench"
    };
    let t = std::time::Instant::now();
    if args.cost_only {
        let compare = compare::build(&args.compare)?;
        let vm = vm::run(&sizes, &compare, true)?;
        let rows: Vec<Row> = vm.rows.into_iter().filter(|r| r.measured).collect();
        println!("\n{}", render(&rows, &machine(), &vm.machine, args.smoke));
        println!("bench --cost-only: {:.1}s", t.elapsed().as_secs_f64());
        return Ok(());
    }
    let mut rows = host::run(&sizes, args.smoke)?;
    for r in &mut rows {
        r.command = format!("{cmd} (host part: {})", r.command);
    }
    let compare = compare::build(&args.compare)?;
    let vm = vm::run(&sizes, &compare, false)?;
    let bpftrace_missing = vm.bpftrace.is_err();
    let guest = vm.machine.clone();
    for mut r in vm.rows {
        r.command = format!("{cmd} (VM part: {})", r.command);
        rows.push(r);
    }
    let host_machine = machine();
    let table = render(&rows, &host_machine, &guest, args.smoke);
    println!("\n{table}");
    println!("bench: {:.1}s", t.elapsed().as_secs_f64());

    if args.smoke {
        // bpftrace that could not be put into the guest is tolerated at smoke size (its rows
        // say why); the full bench fails on it.
        let bad: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                let tolerated = bpftrace_missing && r.figure.contains("bpftrace");
                (!r.measured && !tolerated) || (r.smoke && r.verdict == Verdict::Fail)
            })
            .collect();
        if !bad.is_empty() {
            bail!(
                "bench --smoke: {} benchmark(s) produced no number or missed a smoke floor:\n  {}",
                bad.len(),
                bad.iter()
                    .map(|r| format!("{}: {} (floor {})", r.figure, r.value, r.floor))
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
        if bpftrace_missing {
            eprintln!("bench --smoke: WARNING: bpftrace was not in the guest; its rows say why");
        }
        println!(
            "bench --smoke: every benchmark ran and produced a number; smoke floors held (each tool fired, costs positive, tsm-trace > empty pair, tsm-trace at most 1.0x ftrace and bpftrace with the same fields on the deterministic clock); the size-dependent floors are not checked"
        );
        return Ok(());
    }
    let path = crate::util::root().join("BENCHMARKS.md");
    // The soak's section (`cargo xtask soak`) stays.
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, crate::soak::keep_section(&old, &table))?;
    println!("wrote {}", path.display());
    let failed: Vec<&Row> = rows.iter().filter(|r| r.verdict == Verdict::Fail).collect();
    if !failed.is_empty() {
        bail!(
            "{} floor(s) missed:\n  {}",
            failed.len(),
            failed
                .iter()
                .map(|r| format!("{}: {} (floor {})", r.figure, r.value, r.floor))
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    Ok(())
}

/// The host: CPU model, cores, kernel.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// How figure 9 is measured (BENCHMARKS.md's method list).
const RATE_METHOD: &str = "- detail under storms (figure 9): `tsm-trace run` at its default ring buffer size (256 KiB) pinned to the guest's second CPU, watches steps of `storm <vdev> <pairs> <gap_us>` written from the first (bind+unbind pairs from one write, the writer asleep gap_us after each pair: a steady rate; gap 0 is back to back), each step's rate its pairs over the stand-in's `duration_ns` on the deterministic clock (sleeps included: pairs per 10⁹ guest instructions and idle time), and its loss the change of the daemon's `tsm_trace_events_lost_total` (every reason) and `tsm_trace_events_processed_total` over the step, read from /metrics once the daemon's next sweep has exported the kernel's counters (tests/vm/scenarios/bench_rate.sh); the same steps for each `--compare` revision. The daemon shares the guest's clock with the storm (one host thread runs both vCPUs), so the lossless rate is what one guest core does for both.\n";

fn render(rows: &[Row], host: &str, guest: &str, smoke: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench`{}; every number below was measured by that run, \
         comparisons are ratios measured side by side in the same run, and a missed floor \
         makes the command fail.\n",
        if smoke {
            " --smoke (tiny sizes; floors NOT checked)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "- host: {host}");
    let _ = writeln!(s, "- VM: {guest}");
    let _ = writeln!(
        s,
        "- cost per probed call (figure 1): rounds of `storm <vdev> <pairs>` (bind+unbind pairs in one write, timed by the stand-in: `duration_ns`), each tool block interleaving baseline rounds (all kprobes disarmed through /sys/kernel/debug/kprobes/enabled) with armed rounds, each armed round followed by a wait until the tool's process used no CPU for 20 ms (`bench_vm settle`: work it deferred never lands in the next round, a baseline included), the CPU time that process used over the rounds reported beside (schedstat); added = minimum armed − minimum baseline (on the deterministic clock a round's time is the instructions it executed and anything else that ran in it only adds, so the minimum over the rounds is the undisturbed round and repeats run to run; medians and maxima beside); under `-accel tcg,thread=single` both vCPUs share one host thread, so a tool's process running during a round (the daemon decoding and correlating) is on that round's clock, and block (d′) separates that share: the same daemon stopped (SIGSTOP) through each armed round and let go after it, with a ring buffer that holds a round's records (a loss fails it); probed calls per pair counted from the ftrace events' hits (kprobe_profile); every tool probes the same functions (tests/vm/scenarios/bench_cost.sh) and must fire in armed rounds and not in disarmed ones. Fields: ftrace fetches them with the tracefs BTF argument syntax (`dev->kobj.name:string`, `kvm->userspace_pid`, `$retval`), bpftrace casts the arguments to the kernel's BTF types itself; the ioctl's `struct iommufd_ucmd` and the UAPI struct behind its `void *cmd` exist only in the module's split BTF, which bpftrace's casts cannot name, so both tools read those at the offsets `tsm-trace check` reports from that BTF (the same loads either way). Program statistics come from the bpf syscall (`tsm-trace-bench/src/bin/bench_vm.rs`, `kernel.bpf_stats_enabled=1`); bpftool is not in the VM.\n"
    );
    let _ = writeln!(s, "{RATE_METHOD}");
    let _ = writeln!(
        s,
        "| figure | measured | floor | result | where | reproduce |\n|---|---|---|---|---|---|"
    );
    for r in rows {
        let verdict = match (r.measured, r.verdict) {
            (false, _) => "NOT MEASURED",
            (_, Verdict::Pass) => "pass",
            (_, Verdict::Fail) => "**FAIL**",
            (_, Verdict::Report) => "report",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | `{}` |",
            r.figure.replace('|', "\\|"),
            r.value.replace('|', "\\|"),
            r.floor.replace('|', "\\|"),
            verdict,
            r.place,
            r.command.replace('|', "\\|"),
        );
    }
    s
}
