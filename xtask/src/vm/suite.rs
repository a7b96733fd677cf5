//! `cargo xtask vm-test`: the kernel matrix. Each kernel is resolved (private apt lists) and
//! fetched (cached), the fixtures are built for it, and the suites [`plan`] picks for it are
//! booted in qemu; a table of every kernel's suites and times ends the run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cache::prune_runs;
use super::kernel::{self, Kernel, KernelSpec};
use super::plan::{self, Mode, Scripts};
use super::qemu::{RunOptions, run_in_vm_with};
use super::{generations, leaks, module};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct VmTestArgs {
    /// Kernel(s) to test: `trixie-backports` (newest 7.x there), `sid` (newest 7.x there),
    /// `trixie` (its 6.12), `bookworm` (newest 6.1), or an exact Debian release such as
    /// `7.3.4+deb13-amd64` (pinned: no apt once prepared). Repeat or comma-separate.
    /// Default: all four, resolved from the Debian archive at run time.
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
    /// Run only these suites: probes, generations, lifecycle-trace, modules, storm, restart, doctor (or, with
    /// --smoke, smoke and lifecycle); repeat or comma-separate. Default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub suite: Vec<String>,
}

/// Fetch (or reuse) each kernel and build the fixture modules for it.
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
    for s in &args.suite {
        if !plan::SUITES.contains(&s.as_str()) {
            bail!("unknown suite {s:?}: use {}", plan::SUITES.join(", "));
        }
    }
    let mode = match (args.smoke, args.lifecycle) {
        (true, _) => Mode::Smoke,
        (false, true) => Mode::LifecycleSmoke,
        (false, false) => Mode::Suites,
    };
    let scripts = Scripts::read()?;
    let extra = if mode.needs_tsm_trace() {
        let bin = crate::build::build_static()?;
        vec![(bin, "/bin/tsm-trace".to_string())]
    } else {
        Vec::new()
    };
    let opts = RunOptions {
        timeout: Duration::from_secs(args.timeout),
        keep: args.keep,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut table: Vec<String> = Vec::new();
    let mut passed = 0;
    for spec in &specs {
        let t0 = Instant::now();
        let prepared = prepare_with(std::slice::from_ref(spec), args.refresh).and_then(|mut k| {
            let k = k.remove(0);
            let (pci_tsm, _) = k.pci_tsm_evidence()?;
            Ok((k, pci_tsm))
        });
        let (kernel, pci_tsm) = match prepared {
            Ok(k) => k,
            Err(e) => {
                eprintln!("vm: {spec:?}: FAILED to prepare: {e:#}");
                failures.push(format!("{spec:?}: prepare: {e:#}"));
                table.push(format!("  {spec:?}: prepare FAILED"));
                continue;
            }
        };
        let prep = t0.elapsed().as_secs_f64();
        let runs = plan::plan(pci_tsm, mode, &scripts, &opts, &args.suite);
        println!("{}", plan::describe(&kernel, pci_tsm, &runs));
        let mut row = Vec::new();
        for r in runs {
            let t1 = Instant::now();
            // The scenario's own checks, then: no kernel address in any tsm-trace output.
            // The generations suite also carries the stand-in built as each generation.
            let files = if r.suite == "generations" {
                generations::files(&kernel).map(|g| [extra.clone(), g].concat())
            } else {
                Ok(extra.clone())
            };
            let result = files
                .and_then(|files| run_in_vm_with(&kernel, &files, r.script, &r.opts))
                .and_then(|out| {
                    let n = (r.check)(&out)? + leaks::check(&out)?;
                    Ok((out, n))
                });
            let secs = t1.elapsed().as_secs_f64();
            let label = r.suite;
            match result {
                Ok((out, n)) => {
                    passed += 1;
                    for w in &out.warnings {
                        eprintln!("vm: {} {label}: kernel warning: {w}", out.kernel_version);
                    }
                    println!(
                        "vm: {} {label} ok: {n} checks; prepare {prep:.1}s, vm {secs:.1}s (logs {})",
                        kernel.version,
                        out.run_dir.display()
                    );
                    row.push(format!("{label} ok {n} checks {secs:.0}s"));
                }
                Err(e) => {
                    eprintln!("vm: {} {label}: FAILED: {e:#}", kernel.version);
                    failures.push(format!("{} {label}: {e:#}", kernel.version));
                    println!(
                        "vm: {} {label} FAILED; prepare {prep:.1}s, vm {secs:.1}s",
                        kernel.version
                    );
                    row.push(format!("{label} FAILED {secs:.0}s"));
                }
            }
        }
        table.push(format!(
            "  {:<22} pci_tsm={:<3} prepare {prep:>5.0}s  total {:>5.0}s  {}",
            kernel.version,
            if pci_tsm { "yes" } else { "no" },
            t0.elapsed().as_secs_f64(),
            row.join(", ")
        ));
    }
    prune_runs(30);
    println!(
        "vm-test: {passed} passed, {} failed, {:.0}s in all:\n{}",
        failures.len(),
        started.elapsed().as_secs_f64(),
        table.join("\n")
    );
    if !failures.is_empty() {
        bail!("vm-test failed:\n{}", failures.join("\n"));
    }
    Ok(())
}
