//! `cargo xtask demo`: the main job where no TSM hardware exists. Builds tsm-trace, boots the
//! newest Debian 7.x kernel in qemu (q35, with PCIe endpoints the kernel's real PCI TSM core
//! accepts), registers a test link TSM driver, runs `tsm-trace run`, plays the lifecycle
//! (a failing and a good connect, IDE streams through the kernel's own `pci_ide_stream_*`:
//! Secure, never Secure, left registered; binds and their failures, a guest request, a
//! disconnect while bound, leaks) and shows the trace lines, the alerts and /metrics.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::vm::{self, KernelSpec, RunOptions, checks::parse_exposition};

pub const SCRIPT: &str = "tests/vm/scenarios/demo.sh";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Kernel to boot: `trixie-backports` (newest 7.x), `bookworm` (6.1) or an exact release.
    #[arg(long, default_value = "trixie-backports", env = "TSM_VM_KERNEL")]
    kernel: String,
    /// Print the whole /metrics exposition, not only the tsm_trace_* series that are non-zero.
    #[arg(long)]
    full_metrics: bool,
}

fn heading(s: &str) {
    println!(
        "\n\x1b[1m── {s} {}\x1b[0m",
        "─".repeat(70usize.saturating_sub(s.len()))
    );
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let bin = crate::build::build_shipped()?;
    let spec = KernelSpec::parse(&args.kernel)?;
    let kernel = vm::prepare(&[spec])?.remove(0);
    let script = std::fs::read_to_string(crate::util::root().join(SCRIPT))
        .with_context(|| format!("reading {SCRIPT}"))?;
    println!(
        "demo: booting Debian {} in qemu with a test TSM driver on the kernel's PCI TSM core (no TSM hardware needed)...",
        kernel.version
    );
    let out = vm::run_in_vm_with(
        &kernel,
        &[(bin, "/bin/tsm-trace".into())],
        &script,
        &RunOptions {
            timeout: Duration::from_secs(300),
            tee_pcie: true,
            ide_pcie: true,
            ..RunOptions::default()
        },
    )?;
    // What the demo shows must not show a kernel address either.
    vm::suites::leaks::check(&out)?;

    heading("tsm-trace run: startup (which probes attached, which BTF fields resolved)");
    for l in out.section("daemon_err")?.text.lines() {
        println!("  {}", l.trim_start_matches("tsm-trace: info: "));
    }
    heading("what happened (sysfs writes, the test TSM driver and the stand-in VMM)");
    for l in out.section("story")?.text.lines() {
        println!("  {l}");
    }
    heading("trace lines (tsm-trace run --print text)");
    let trace = &out.section("daemon_out")?.text;
    for l in trace.lines() {
        println!("  {l}");
    }
    heading(
        "tsm-trace trace --deep 'tsm_linktsm:lt_spdm_*' --deep 'tsm_linktsm:lt_ide_*' (inside the driver)",
    );
    for l in out.section("deep_err")?.text.lines() {
        if let Some(i) = l.find("deep: ") {
            println!("  {}", &l[i..]);
        }
    }
    let deep = &out.section("deep_out")?.text;
    // Two connects with their call trees inside the driver: the one that failed (where its
    // errno began, and the kernel stack there) and the one whose root port never reached
    // Secure (the IDE step's ENXIO, swallowed by the driver's lt_ide_connect).
    let mut show = false;
    for l in deep.lines() {
        if l.trim_start().starts_with(|c: char| c.is_ascii_digit()) {
            show = l.contains(" connect ") && (l.contains("origin=") || l.contains("ENXIO"));
        }
        if show {
            println!("  {l}");
        }
    }
    let m = parse_exposition(&out.section("metrics")?.text);
    heading("alert: TsmLeakedBinding (dashboards/alerts.yml) fires for");
    let leaks: Vec<_> = m
        .iter()
        .filter(|(k, v)| k.starts_with("tsm_trace_leaked_binding_info{") && **v == 1.0)
        .collect();
    for (k, _) in &leaks {
        println!("  {k}");
    }
    heading(
        "alerts: TsmIdeStreamNotSecure and TsmLeakedIdeStream (dashboards/alerts.yml) fire for",
    );
    let insecure = m
        .get("tsm_trace_ide_insecure_connects_total")
        .copied()
        .unwrap_or(0.0);
    println!("  tsm_trace_ide_insecure_connects_total {insecure}");
    let ide_leaks: Vec<_> = m
        .iter()
        .filter(|(k, v)| k.starts_with("tsm_trace_leaked_ide_stream_info{") && **v == 1.0)
        .collect();
    for (k, _) in &ide_leaks {
        println!("  {k}");
    }
    heading("final /metrics (tsm_trace_* series with a value; --full-metrics for all)");
    if args.full_metrics {
        print!("{}", out.section("metrics")?.text);
    } else {
        for (k, v) in m
            .iter()
            .filter(|(k, v)| k.starts_with("tsm_trace_") && **v != 0.0 && !k.contains("_bucket{"))
        {
            println!("  {k} {v}");
        }
    }
    heading("/bindings");
    println!("  {}", out.section("bindings")?.text.trim());
    println!(
        "\ndemo: done in {:.0}s (VM {:.0}s). Logs: {}",
        t0.elapsed().as_secs_f64(),
        out.elapsed.as_secs_f64(),
        out.run_dir.display()
    );
    let lifecycle = [
        "connect ",
        "disconnect",
        "UNBOUND",
        "EIO from tsm_driver",
        "ide_stream_enable[rp",
        "IDE-LEAK",
    ];
    if leaks.len() < 2
        || ide_leaks.is_empty()
        || insecure < 1.0
        || !trace.contains("EBUSY")
        || !trace
            .lines()
            .any(|l| l.contains("guest_request") && l.contains("guest_req_ioctl"))
        || lifecycle.iter().any(|w| !trace.contains(w))
        || !deep.contains("origin=lt_spdm_verify")
        || !deep.contains("lt_spdm_verify [tsm_linktsm] EIO, kernel stack:")
        || !deep.contains("lt_ide_connect")
    {
        bail!(
            "demo: the scenario did not produce the expected failures and leaks; see the logs above"
        );
    }
    Ok(())
}
