//! `cargo xtask test`: the whole suite CI runs, step by step, with each step's time.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::util::{cargo, root, run};

/// `cargo xtask test`: lints, unit and host tests (incl. the verifier-load test), promtool
/// checks, then the VM suite on real kernels.
pub fn test_all(no_vm: bool) -> Result<()> {
    let started = Instant::now();
    let mut steps: Vec<(&str, f64)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        println!("\n==> {name}");
        let t = Instant::now();
        f().with_context(|| format!("test step `{name}` failed"))?;
        steps.push((name, t.elapsed().as_secs_f64()));
        Ok(())
    };
    // On a fresh machine this installs everything (minutes); later, a check (under a second).
    step("setup", &mut crate::setup::ensure)?;
    step(
        "eBPF toolchain pair",
        &mut crate::toolchain::check_installed,
    )?;
    step("format", &mut || {
        run(cargo().args(["fmt", "--all", "--check"]))
    })?;
    step("clippy", &mut || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        let channel = crate::toolchain::pinned_channel()?;
        run(Command::new("cargo")
            .current_dir(root().join("tsm-trace-ebpf"))
            .arg(format!("+{channel}"))
            .args([
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]))
    })?;
    step("unit and host tests", &mut || {
        run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
    })?;
    // check rules, the hand-written rule tests, and the tests generated from captures replayed
    // by the debug tsm-trace the tests above built (every alert must fire in one; ~15 s).
    step("promtool rules", &mut || crate::promtool::check())?;
    step("systemd unit hardening", &mut || {
        // "OK" in systemd-analyze's terms is an exposure below 5; the unit scores 2.3 (it
        // cannot use ProtectKernelTunables= nor ProtectProc=invisible: see the unit). The
        // unit as it runs under systemd is checked by the "deployments as shipped" step.
        let unit = "deploy/systemd/tsm-trace.service";
        run(std::process::Command::new("systemd-analyze").args([
            "security",
            "--offline=true",
            "--threshold=25",
            "--no-pager",
            unit,
        ]))
        .with_context(|| {
            format!(
                "{unit}: exposure above 2.5 (or systemd-analyze missing: apt-get install systemd)"
            )
        })
    })?;
    step("Kubernetes manifests", &mut crate::dist::manifests::check)?;
    step("Debian package (lintian, install/remove)", &mut || {
        let built = crate::dist::build()?;
        crate::dist::install::test(&built.deb)
    })?;
    // After the Debian package: its musl release build of the library is what the soak
    // program links against (seconds, not minutes).
    step("soak smoke (20,000 operations)", &mut crate::soak::smoke)?;
    step("fuzz (10 s per target)", &mut || {
        let targets: Vec<String> = crate::fuzz::TARGETS.iter().map(|t| t.to_string()).collect();
        for o in crate::fuzz::run_targets(&targets, crate::fuzz::TEST_SECS)? {
            println!(
                "fuzz: {} ran {:.0}s, {} executions, no crash",
                o.target,
                o.secs,
                o.execs.map_or("?".to_string(), |n| n.to_string())
            );
        }
        Ok(())
    })?;
    if !no_vm {
        step("VM suite (4 kernels)", &mut || {
            crate::vm::run(&crate::vm::VmTestArgs {
                timeout: 300,
                ..Default::default()
            })
        })?;
    }
    if !no_vm {
        step(
            "deployments as shipped (systemd, DaemonSet privileges; VM)",
            &mut || {
                let built = crate::dist::build()?;
                crate::dist::shipped::test(&built.deb)
            },
        )?;
        step("Prometheus end to end (VM)", &mut || {
            crate::e2e::run(&crate::e2e::E2eArgs::default())
        })?;
        step("benchmark smoke run", &mut || {
            crate::bench::run(&crate::bench::BenchArgs {
                smoke: true,
                compare: Vec::new(),
                cost_only: false,
            })
        })?;
    }
    println!("\nall test steps passed:");
    for (name, secs) in &steps {
        println!("  {name:<28} {secs:>7.1}s");
    }
    println!(
        "  {:<28} {:>7.1}s (CI allows 90 min)",
        "total",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
