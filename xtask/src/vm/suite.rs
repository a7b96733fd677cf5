//! `cargo xtask vm-test`: the kernel matrix. Each kernel is fetched (private apt, cached),
//! the fixtures are built for it, and the suites that kernel can run are booted in qemu.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cache::prune_runs;
use super::kernel::{self, Kernel, KernelSpec};
use super::kv::parse_kv;
use super::qemu::{RunOptions, VmOutput, run_in_vm_with};
use super::smoke::{check_lifecycle, check_smoke};
use super::{leaks, lifecycle, module, modules, restart, scenarios, storm};
use crate::util::root as repo_root;

/// The placeholder scenario run by `cargo xtask vm-test` (exercises every ctl command).
pub const SMOKE_SCRIPT: &str = "tests/vm/scenarios/standin-smoke.sh";

/// The real PCI TSM core driven through `tsm_linktsm` (7.x only, q35 with TEE devices).
pub const LIFECYCLE_SCRIPT: &str = "tests/vm/scenarios/lifecycle-smoke.sh";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct VmTestArgs {
    /// Kernel(s) to test: `trixie-backports` (newest 7.x there), `bookworm` (newest 6.1), or
    /// an exact Debian release such as `7.3.4+deb13-amd64`. Repeat or comma-separate.
    /// Default: trixie-backports and bookworm.
    #[arg(long = "kernel", env = "TSM_VM_KERNEL", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Keep the initramfs of each run next to its logs in .vm-cache/runs/.
    #[arg(long)]
    pub keep: bool,
    /// Run `apt-get update` on the private package lists even if they are cached.
    #[arg(long)]
    pub refresh: bool,
    /// Run the fixture smoke test (every ctl command, no tsm-trace) instead of the probe suite;
    /// on kernels with PCI TSM (7.x) also the lifecycle smoke (see --lifecycle).
    #[arg(long)]
    pub smoke: bool,
    /// Run only the lifecycle smoke: the real PCI TSM core (connect, disconnect, bind, unbind,
    /// guest requests, removal, TSM unregistration) driven through the tsm_linktsm fixture,
    /// no tsm-trace. Kernels without PCI TSM are skipped.
    #[arg(long)]
    pub lifecycle: bool,
    /// Seconds before a guest is killed.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Run only these tsm-trace suites: probes, lifecycle-trace, modules, storm, restart
    /// (repeat or comma-separate). Default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub suite: Vec<String>,
}

/// Fetch (or reuse) each kernel and build the stand-in module for it.
pub fn prepare(specs: &[KernelSpec]) -> Result<Vec<Kernel>> {
    prepare_with(specs, false)
}

/// `prepare`; `refresh` re-downloads the apt package lists first.
pub fn prepare_with(specs: &[KernelSpec], refresh: bool) -> Result<Vec<Kernel>> {
    let mut out = Vec::new();
    for spec in specs {
        let k =
            kernel::fetch(spec, refresh).with_context(|| format!("fetching kernel {spec:?}"))?;
        module::build(&k).with_context(|| format!("building tsm_standin for {}", k.version))?;
        if !out.iter().any(|o: &Kernel| o.version == k.version) {
            out.push(k);
        }
    }
    Ok(out)
}

pub fn run(args: &VmTestArgs) -> Result<()> {
    let specs = if args.kernels.is_empty() {
        KernelSpec::defaults()
    } else {
        args.kernels
            .iter()
            .map(|s| KernelSpec::parse(s))
            .collect::<Result<Vec<_>>>()?
    };
    // Which scenario runs: the probe suite (default), the fixture smoke (+ lifecycle on
    // kernels with PCI TSM), or the lifecycle smoke alone.
    let (smoke, lifecycle_only) = (args.smoke, args.lifecycle && !args.smoke);
    let read_script = |path: &str| {
        std::fs::read_to_string(repo_root().join(path)).with_context(|| format!("reading {path}"))
    };
    let script = read_script(if smoke {
        SMOKE_SCRIPT
    } else {
        scenarios::SCRIPT
    })?;
    let lifecycle_script = if smoke || args.lifecycle {
        Some(read_script(LIFECYCLE_SCRIPT)?)
    } else {
        None
    };
    let lifecycle_trace = read_script(lifecycle::SCRIPT)?;
    let modules_script = read_script(modules::SCRIPT)?;
    let storm_script = read_script(storm::SCRIPT)?;
    let restart_script = read_script(restart::SCRIPT)?;
    let extra = if smoke || lifecycle_only {
        Vec::new()
    } else {
        let bin = crate::build::build_static()?;
        vec![(bin, "/bin/tsm-trace".to_string())]
    };
    let opts = RunOptions {
        timeout: Duration::from_secs(args.timeout),
        keep: args.keep,
        ..RunOptions::default()
    };
    let mut failures = Vec::new();
    let mut passed = 0;
    for spec in &specs {
        let t0 = Instant::now();
        let kernel = match prepare_with(std::slice::from_ref(spec), args.refresh) {
            Ok(mut k) => k.remove(0),
            Err(e) => {
                eprintln!("vm: {spec:?}: FAILED to prepare: {e:#}");
                failures.push(format!("{spec:?}: prepare: {e:#}"));
                continue;
            }
        };
        let prep = t0.elapsed();
        // (label, script, options, checker)
        type Check = fn(&VmOutput) -> Result<usize>;
        let mut runs: Vec<(&str, &str, RunOptions, Check)> = Vec::new();
        if !lifecycle_only {
            let check: Check = if smoke { check_smoke } else { check_probes };
            runs.push(("", script.as_str(), opts.clone(), check));
        }
        // The lifecycle suite (tsm-trace against the real PCI TSM core): q35 with TEE
        // devices on kernels with PCI TSM; elsewhere it only reports what `check` attaches.
        if !smoke && !lifecycle_only {
            let lopts = RunOptions {
                tee_pcie: kernel.has_pci_tsm(),
                ..opts.clone()
            };
            let check: Check = if kernel.has_pci_tsm() {
                lifecycle::check
            } else {
                lifecycle::check_absent
            };
            runs.push((" lifecycle-trace", lifecycle_trace.as_str(), lopts, check));
            // Module loads and unloads while tracing (every kernel).
            runs.push((
                " modules",
                modules_script.as_str(),
                opts.clone(),
                modules::check,
            ));
            // Storms: /metrics exact at any event rate (every kernel).
            runs.push((" storm", storm_script.as_str(), opts.clone(), storm::check));
            // Restarts: SIGKILL and SIGTERM with bindings (every kernel; on kernels with PCI
            // TSM against the real core's sysfs `tsm/bound`).
            let ropts = RunOptions {
                tee_pcie: kernel.has_pci_tsm(),
                ..opts.clone()
            };
            runs.push((" restart", restart_script.as_str(), ropts, restart::check));
        }
        if let Some(ls) = &lifecycle_script {
            if kernel.has_pci_tsm() {
                let lopts = RunOptions {
                    tee_pcie: true,
                    ..opts.clone()
                };
                runs.push((" lifecycle", ls.as_str(), lopts, check_lifecycle));
            } else if lifecycle_only {
                println!("vm: {} skipped: no CONFIG_PCI_TSM", kernel.version);
            }
        }
        if !args.suite.is_empty() {
            runs.retain(|(label, ..)| {
                let name = if label.is_empty() {
                    "probes"
                } else {
                    label.trim()
                };
                args.suite.iter().any(|s| s == name)
            });
        }
        for (label, script, ropts, check) in runs {
            let t1 = Instant::now();
            // The scenario's own checks, then: no kernel address in any tsm-trace output.
            let result = run_in_vm_with(&kernel, &extra, script, &ropts).and_then(|out| {
                let n = check(&out)? + leaks::check(&out)?;
                Ok((out, n))
            });
            let boot = t1.elapsed();
            match result {
                Ok((out, n)) => {
                    passed += 1;
                    for w in &out.warnings {
                        eprintln!("vm: {}{label}: kernel warning: {w}", out.kernel_version);
                    }
                    println!(
                        "vm: {}{label} ok: {n} checks; prepare {:.1}s, vm {:.1}s (logs {})",
                        kernel.version,
                        prep.as_secs_f64(),
                        boot.as_secs_f64(),
                        out.run_dir.display()
                    );
                }
                Err(e) => {
                    eprintln!("vm: {}{label}: FAILED: {e:#}", kernel.version);
                    failures.push(format!("{}{label}: {e:#}", kernel.version));
                    println!(
                        "vm: {}{label} FAILED; prepare {:.1}s, vm {:.1}s",
                        kernel.version,
                        prep.as_secs_f64(),
                        boot.as_secs_f64()
                    );
                }
            }
        }
    }
    prune_runs(30);
    println!("vm-test: {passed} passed, {} failed", failures.len());
    if !failures.is_empty() {
        bail!("vm-test failed:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// Runs every probe-suite check; returns how many were made, or every failure.
fn check_probes(out: &VmOutput) -> Result<usize> {
    let real_pci = parse_kv(&out.section("standin_info")?.text)
        .get("pci_tsm")
        .is_some_and(|v| v == "real");
    let mut all = vec![
        ("session A", scenarios::check_session_a(out)?),
        ("daemon", scenarios::check_daemon(out)?),
        (
            "session L (module loaded late)",
            scenarios::check_session_late(out)?,
        ),
    ];
    if real_pci {
        all.push((
            "session B (real pci_tsm_bind)",
            scenarios::check_session_b(out)?,
        ));
    }
    let mut n = 0;
    let mut failed = Vec::new();
    for (name, c) in all {
        n += c.count;
        failed.extend(c.failed.into_iter().map(|f| format!("{name}: {f}")));
    }
    if !failed.is_empty() {
        bail!(
            "{} of {n} checks failed (logs in {}):\n  {}",
            failed.len(),
            out.run_dir.display(),
            failed.join("\n  ")
        );
    }
    Ok(n)
}
