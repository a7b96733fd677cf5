//! Running commands, building, and the whole test suite.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The repository root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// Runs a command, echoing it, and fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", show(cmd));
    }
    Ok(())
}

pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The static (musl) tsm-trace binary for the test VMs.
pub fn build_static() -> Result<PathBuf> {
    build_release(None, Some(MUSL))
}

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Release-builds the tsm-trace binary, or one of its examples, for `target` (host if `None`)
/// and returns the path of the result.
pub fn build_release(example: Option<&str>, target: Option<&str>) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--package", "tsm-trace"]);
    let mut path = root().join("target");
    if let Some(t) = target {
        cmd.args(["--target", t]);
        path.push(t);
    }
    path.push("release");
    match example {
        Some(e) => {
            cmd.args(["--example", e]);
            path.push("examples");
            path.push(e);
        }
        None => path.push("tsm-trace"),
    }
    run(&mut cmd)?;
    Ok(path)
}

pub fn build_all() -> Result<()> {
    run(cargo().args(["build", "--workspace"]))?;
    let bin = build_static()?;
    println!("built {}", bin.display());
    Ok(())
}

/// `cargo xtask test`: lints, unit and host tests (incl. the verifier-load test), promtool
/// checks, then the VM suite on real kernels.
pub fn test_all(no_vm: bool) -> Result<()> {
    let mut steps: Vec<(&str, f64)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        println!("\n==> {name}");
        let t = Instant::now();
        f().with_context(|| format!("test step `{name}` failed"))?;
        steps.push((name, t.elapsed().as_secs_f64()));
        Ok(())
    };
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
    step("promtool rules", &mut || crate::promtool::check())?;
    step("systemd unit hardening", &mut || {
        // "OK" in systemd-analyze's terms is an exposure below 5; the unit scores 1.8.
        let unit = "deploy/systemd/tsm-trace.service";
        run(std::process::Command::new("systemd-analyze").args([
            "security",
            "--offline=true",
            "--threshold=20",
            "--no-pager",
            unit,
        ]))
        .with_context(|| {
            format!(
                "{unit}: exposure above 2.0 (or systemd-analyze missing: apt-get install systemd)"
            )
        })
    })?;
    step("Kubernetes manifests", &mut crate::dist::manifests::check)?;
    step("Debian package (lintian, install/remove)", &mut || {
        let built = crate::dist::build()?;
        crate::dist::install::test(&built.deb)
    })?;
    step("fuzz (20 s per target)", &mut || {
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
        step("VM suite (real kernels)", &mut || {
            crate::vm::run(&crate::vm::VmTestArgs {
                timeout: 300,
                ..Default::default()
            })
        })?;
    }
    if !no_vm {
        step("Prometheus end to end (VM)", &mut || {
            crate::e2e::run(&crate::e2e::E2eArgs::default())
        })?;
        step("benchmark smoke run", &mut || {
            crate::bench::run(&crate::bench::BenchArgs { smoke: true })
        })?;
    }
    println!("\nall test steps passed:");
    for (name, secs) in &steps {
        println!("  {name:<28} {secs:>7.1}s");
    }
    Ok(())
}
