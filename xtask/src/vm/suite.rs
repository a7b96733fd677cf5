//! `cargo xtask vm-test`: the kernel matrix. Each kernel is resolved (private apt lists) and
//! fetched (cached), the fixtures are built for it, and the suites [`plan`] picks for it are
//! booted in qemu, `--jobs` at a time ([`jobs`]); a table of every kernel's suites and times
//! ends the run. See `tests/vm/README.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cache::prune_runs;
use super::fixtures;
use super::jobs::{self, Event, Feed};
use super::kernel::{self, Kernel, KernelSpec};
use super::plan::{self, Check, Mode, Scripts};
use super::qemu::{RunOptions, VmOutput, run_in_vm_with};
use super::suites::{generations, leaks};

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
    /// Run only these suites: probes, generations, lifecycle-trace, modules, storm, restart, crash, doctor, ide (or, with
    /// --smoke, smoke and lifecycle); repeat or comma-separate. Default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub suite: Vec<String>,
    /// VMs booted at a time (each qemu under single-threaded TCG keeps about one host core
    /// busy). Default: min(2, available cores). Kernels are still prepared one at a time,
    /// while earlier kernels' VMs run; each run's output is printed whole when it ends.
    #[arg(long, env = "TSM_VM_JOBS")]
    pub jobs: Option<usize>,
    /// Run every suite on every kernel. Without it (and without --kernel), the default matrix
    /// runs every suite on the newest 7.x and on 6.1, and on sid and 6.12 only the suites
    /// that exercise what differs there (see `xtask/src/vm/plan.rs`, `default_scope`).
    #[arg(long)]
    pub full: bool,
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
        fixtures::build(&k).with_context(|| format!("building tsm_standin for {}", k.version))?;
        if !out.iter().any(|o: &Kernel| o.version == k.version) {
            out.push(k);
        }
    }
    Ok(out)
}

/// What the producer of [`run`] reports about one kernel of the matrix.
enum Note {
    /// Prepared: its plan (suite name and checker of each run, in order) is queued.
    Prepared {
        ki: usize,
        started: Instant,
        kernel: Arc<Kernel>,
        pci_tsm: bool,
        prep: f64,
        runs: Vec<(&'static str, Check)>,
    },
    /// Could not be prepared: nothing of it runs.
    Failed {
        ki: usize,
        started: Instant,
        error: String,
    },
}

/// One VM boot for a worker.
struct VmJob<'a> {
    ki: usize,
    ri: usize,
    kernel: Arc<Kernel>,
    /// The initramfs's extra files, or why they could not be built.
    files: Result<Vec<(PathBuf, String)>>,
    script: &'a str,
    opts: RunOptions,
}

/// A worker's answer: the guest's output (not yet checked) and the boot's wall time.
struct Ran {
    ki: usize,
    ri: usize,
    out: Result<VmOutput>,
    secs: f64,
}

/// How a run ended, once checked.
enum Outcome {
    Ok { n: usize, secs: f64 },
    Failed { error: String, secs: f64 },
}

/// One kernel's row of the final table, filled in as its notes and results arrive.
struct Row {
    spec: KernelSpec,
    /// When its preparation started (the producer prepares kernels in order).
    started: Option<Instant>,
    prepared: Option<(Arc<Kernel>, bool, f64)>,
    prepare_error: Option<String>,
    runs: Vec<(&'static str, Check)>,
    outcomes: Vec<Option<Outcome>>,
    last_end: Option<Instant>,
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
    let jobs = jobs::resolve_jobs(args.jobs)?;
    let mode = match (args.smoke, args.lifecycle) {
        (true, _) => Mode::Smoke,
        (false, true) => Mode::LifecycleSmoke,
        (false, false) => Mode::Suites,
    };
    // The default matrix: every suite on the newest 7.x and on 6.1, the differing ones between.
    let trimmed = args.kernels.is_empty() && !args.full && mode == Mode::Suites;
    if trimmed && args.suite.is_empty() {
        println!(
            "vm-test: the default matrix: every suite on trixie-backports and bookworm; on sid and trixie the suites that exercise what differs there (--full runs all)"
        );
    }
    let scripts = Scripts::read()?;
    let extra = if mode.needs_tsm_trace() {
        let bin = crate::build::build_shipped()?;
        vec![(bin, "/bin/tsm-trace".to_string())]
    } else {
        Vec::new()
    };
    // Every guest carries the static helpers: built once here, not by two boots at once.
    for (_, source) in super::tools::HELPERS {
        super::tools::build(source)?;
    }
    let opts = RunOptions {
        timeout: Duration::from_secs(args.timeout),
        keep: args.keep,
        ..RunOptions::default()
    };
    println!(
        "vm-test: {} kernel(s), up to {jobs} VM(s) at a time (--jobs, TSM_VM_JOBS)",
        specs.len()
    );
    let started = Instant::now();
    let mut rows: Vec<Row> = specs
        .iter()
        .map(|spec| Row {
            spec: spec.clone(),
            started: None,
            prepared: None,
            prepare_error: None,
            runs: Vec::new(),
            outcomes: Vec::new(),
            last_end: None,
        })
        .collect();

    // Kernels are prepared one after another (apt lists and glibc copies are shared between
    // kernels, fixtures are built under each kernel's own folder) while earlier kernels' VMs
    // run; each run's output is checked and printed here, whole, as it ends.
    jobs::run_pool(
        jobs,
        |feed: &Feed<Note, VmJob, Ran>| {
            for (ki, spec) in specs.iter().enumerate() {
                let t0 = Instant::now();
                let prepared =
                    prepare_with(std::slice::from_ref(spec), args.refresh).and_then(|mut k| {
                        let k = k.remove(0);
                        let (pci_tsm, _) = k.pci_tsm_evidence()?;
                        Ok((k, pci_tsm))
                    });
                let (kernel, pci_tsm) = match prepared {
                    Ok(k) => k,
                    Err(e) => {
                        feed.note(Note::Failed {
                            ki,
                            started: t0,
                            error: format!("{e:#}"),
                        });
                        continue;
                    }
                };
                let scope: Vec<String> = match plan::default_scope(spec) {
                    Some(only) if trimmed && args.suite.is_empty() => {
                        only.iter().map(|s| s.to_string()).collect()
                    }
                    _ => args.suite.clone(),
                };
                let runs = plan::plan(pci_tsm, mode, &scripts, &opts, &scope);
                // The generations suite also carries the stand-in built as each generation:
                // built here, with the kernel's other fixtures, never by two threads at once.
                let files: Vec<Result<Vec<(PathBuf, String)>>> = runs
                    .iter()
                    .map(|r| {
                        if r.suite == "generations" {
                            generations::files(&kernel).map(|g| [extra.clone(), g].concat())
                        } else {
                            Ok(extra.clone())
                        }
                    })
                    .collect();
                let kernel = Arc::new(kernel);
                feed.note(Note::Prepared {
                    ki,
                    started: t0,
                    kernel: kernel.clone(),
                    pci_tsm,
                    prep: t0.elapsed().as_secs_f64(),
                    runs: runs.iter().map(|r| (r.suite, r.check)).collect(),
                });
                for (ri, (r, files)) in runs.into_iter().zip(files).enumerate() {
                    feed.job(VmJob {
                        ki,
                        ri,
                        kernel: kernel.clone(),
                        files,
                        script: r.script,
                        opts: r.opts,
                    });
                }
            }
        },
        |j: VmJob| {
            let t1 = Instant::now();
            let out = j
                .files
                .and_then(|files| run_in_vm_with(&j.kernel, &files, j.script, &j.opts));
            Ran {
                ki: j.ki,
                ri: j.ri,
                out,
                secs: t1.elapsed().as_secs_f64(),
            }
        },
        |ev| match ev {
            Event::Note(Note::Failed { ki, started, error }) => {
                let row = &mut rows[ki];
                row.started = Some(started);
                eprintln!("vm: {:?}: FAILED to prepare: {error}", row.spec);
                row.prepare_error = Some(error);
            }
            Event::Note(Note::Prepared {
                ki,
                started,
                kernel,
                pci_tsm,
                prep,
                runs,
            }) => {
                let row = &mut rows[ki];
                row.started = Some(started);
                let names: Vec<&str> = runs.iter().map(|(suite, _)| *suite).collect();
                println!("{}", plan::describe(&kernel, pci_tsm, &names));
                row.outcomes = runs.iter().map(|_| None).collect();
                row.runs = runs;
                row.prepared = Some((kernel, pci_tsm, prep));
            }
            Event::Done(ran) => {
                let row = &mut rows[ran.ki];
                let (label, check) = row.runs[ran.ri];
                let Some((kernel, _, prep)) = &row.prepared else {
                    return;
                };
                // The scenario's own checks, then: no kernel address in any tsm-trace output.
                let checked = ran
                    .out
                    .and_then(|out| Ok(((check)(&out)? + leaks::check(&out)?, out)));
                let secs = ran.secs;
                let outcome = match checked {
                    Ok((n, out)) => {
                        for w in &out.warnings {
                            eprintln!("vm: {} {label}: kernel warning: {w}", out.kernel_version);
                        }
                        println!(
                            "vm: {} {label} ok: {n} checks; prepare {prep:.1}s, vm {secs:.1}s (logs {})",
                            kernel.version,
                            out.run_dir.display()
                        );
                        Outcome::Ok { n, secs }
                    }
                    Err(e) => {
                        eprintln!("vm: {} {label}: FAILED: {e:#}", kernel.version);
                        println!(
                            "vm: {} {label} FAILED; prepare {prep:.1}s, vm {secs:.1}s",
                            kernel.version
                        );
                        Outcome::Failed {
                            error: format!("{e:#}"),
                            secs,
                        }
                    }
                };
                row.outcomes[ran.ri] = Some(outcome);
                row.last_end = Some(Instant::now());
            }
        },
    );
    prune_runs(30);

    // The table and the failures in kernel order, each kernel's suites in plan order.
    let mut failures = Vec::new();
    let mut table: Vec<String> = Vec::new();
    let mut passed = 0;
    for row in &rows {
        if let Some(e) = &row.prepare_error {
            failures.push(format!("{:?}: prepare: {e}", row.spec));
            table.push(format!("  {:?}: prepare FAILED", row.spec));
            continue;
        }
        let Some((kernel, pci_tsm, prep)) = &row.prepared else {
            failures.push(format!("{:?}: never prepared", row.spec));
            table.push(format!("  {:?}: never prepared", row.spec));
            continue;
        };
        let mut cells = Vec::new();
        let mut vm_secs = 0.0;
        for ((label, _), outcome) in row.runs.iter().zip(&row.outcomes) {
            match outcome {
                Some(Outcome::Ok { n, secs }) => {
                    passed += 1;
                    vm_secs += secs;
                    cells.push(format!("{label} ok {n} checks {secs:.0}s"));
                }
                Some(Outcome::Failed { error, secs }) => {
                    vm_secs += secs;
                    failures.push(format!("{} {label}: {error}", kernel.version));
                    cells.push(format!("{label} FAILED {secs:.0}s"));
                }
                None => {
                    failures.push(format!("{} {label}: never ran", kernel.version));
                    cells.push(format!("{label} never ran"));
                }
            }
        }
        // total: from the start of the kernel's preparation to the end of its last VM (with
        // --jobs 1 the sum of its parts; with more, kernels' spans overlap); vm: its boots'
        // summed wall time.
        let total = match (row.started, row.last_end) {
            (Some(s), Some(e)) => e.duration_since(s).as_secs_f64(),
            _ => *prep,
        };
        table.push(format!(
            "  {:<22} pci_tsm={:<3} prepare {prep:>5.0}s  vm {vm_secs:>5.0}s  total {total:>5.0}s  {}",
            kernel.version,
            if *pci_tsm { "yes" } else { "no" },
            cells.join(", ")
        ));
    }
    println!(
        "vm-test: {passed} passed, {} failed, {:.0}s in all (--jobs {jobs}):\n{}",
        failures.len(),
        started.elapsed().as_secs_f64(),
        table.join("\n")
    );
    if !failures.is_empty() {
        bail!("vm-test failed:\n{}", failures.join("\n"));
    }
    Ok(())
}
