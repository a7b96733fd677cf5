//! Which suites run on which kernel of the matrix.
//!
//! Every suite can run on every kernel (`vm-test --full`, or `--kernel`): each one exercises
//! something that differs between kernels (kprobes on module functions and module BTF:
//! probes, modules; ring buffers and per-CPU maps under load: storm; bpffs pins and link
//! info: restart). The default matrix runs all of them on the newest 7.x and 6.1 and, on the
//! kernels between, those that exercise what differs there ([`default_scope`]). What a
//! kernel lacks changes what a suite proves, never whether it runs:
//!
//! | suite             | kernels with PCI TSM (7.x)               | kernels without (6.1, 6.12)          |
//! |-------------------|------------------------------------------|--------------------------------------|
//! | probes            | stand-in + the real `pci_tsm_bind`       | stand-in only                        |
//! | generations       | none, upstream PCI TSM only, v2, v5, post-v5 | none, v2, v5, post-v5            |
//! | lifecycle-trace   | the real PCI TSM core on q35 TEE devices | `check` reports each lifecycle probe absent, with its reason |
//! | modules           | module loads/unloads while tracing       | same                                 |
//! | storm             | exact /metrics at any event rate         | same                                 |
//! | restart           | against the real core's `tsm/bound`      | against the stand-in's bindings      |
//! | crash             | killed at any instant of a lifecycle, against the real core | same, on the stand-in's bindings |
//! | doctor            | root, nobody, no bpffs, lockdown         | same                                 |
//! | ide               | the kernel's `pci_ide_*` on an emulated IDE endpoint and root port: frames, stream table, leaks, metrics, a daemon learning streams from sysfs | not run: no IDE API (lifecycle-trace's `check` reports the nine `ide_stream_*` probes absent, with the reason) |
//!
//! The fixture smokes (`--smoke`, `--lifecycle`, no tsm-trace) run the stand-in's ctl
//! commands everywhere and the lifecycle smoke where PCI TSM is.
//! A whole matrix of four kernels costs about 4 × (2 to 4 min) under TCG, which keeps
//! `cargo xtask test` well inside CI's 90 minutes (see README "How it is tested").

use anyhow::{Context, Result};

use super::kernel::{Kernel, KernelSpec};
use super::qemu::{RunOptions, VmOutput};
use super::suites::smoke::{check_lifecycle, check_smoke};
use super::suites::{crash, doctor, generations, ide, lifecycle, modules, probes, restart, storm};
use crate::util::root;

/// A suite's checker: the number of checks made, or every failure.
pub type Check = fn(&VmOutput) -> Result<usize>;

/// What `vm-test` was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The tsm-trace suites (the default).
    Suites,
    /// The fixture smoke, and the lifecycle smoke where PCI TSM is.
    Smoke,
    /// Only the lifecycle smoke.
    LifecycleSmoke,
}

impl Mode {
    /// Does this mode run tsm-trace (so the static binary must be built)?
    pub fn needs_tsm_trace(self) -> bool {
        self == Mode::Suites
    }
}

/// The scenario scripts, read once.
pub struct Scripts {
    probes: String,
    generations: String,
    smoke: String,
    lifecycle_smoke: String,
    lifecycle_trace: String,
    modules: String,
    storm: String,
    restart: String,
    crash: String,
    doctor: String,
    ide: String,
}

/// The placeholder scenario of `--smoke` (exercises every stand-in ctl command).
pub const SMOKE_SCRIPT: &str = "tests/vm/scenarios/standin-smoke.sh";

/// The real PCI TSM core driven through `tsm_linktsm` (kernels with PCI TSM, q35 with TEE
/// devices), no tsm-trace.
pub const LIFECYCLE_SCRIPT: &str = "tests/vm/scenarios/lifecycle-smoke.sh";

impl Scripts {
    pub fn read() -> Result<Scripts> {
        let read = |path: &str| {
            std::fs::read_to_string(root().join(path)).with_context(|| format!("reading {path}"))
        };
        Ok(Scripts {
            probes: read(probes::SCRIPT)?,
            generations: read(generations::SCRIPT)?,
            smoke: read(SMOKE_SCRIPT)?,
            lifecycle_smoke: read(LIFECYCLE_SCRIPT)?,
            lifecycle_trace: read(lifecycle::SCRIPT)?,
            modules: read(modules::SCRIPT)?,
            storm: read(storm::SCRIPT)?,
            restart: read(restart::SCRIPT)?,
            crash: read(crash::SCRIPT)?,
            doctor: read(doctor::SCRIPT)?,
            ide: read(ide::SCRIPT)?,
        })
    }
}

/// The default matrix runs every suite on the newest 7.x (`trixie-backports`) and all but the
/// crash loop on 6.1 (`bookworm`), the two ends of what tsm-trace supports; on the kernels between them only
/// the suites that exercise what differs there. `--full` (or naming the kernels) runs every
/// suite everywhere.
///
/// - `sid` (the other 7.x): its PCI TSM core is another version of the same code, so the
///   suites that drive it or detect it: probes (the real `pci_tsm_bind`), generations,
///   lifecycle-trace. restart, modules, storm and doctor exercise BPF and kernel features that
///   sid shares with trixie-backports, where restart and the crash loop restart the daemon
///   against the real core's `tsm/bound` a dozen times.
/// - `trixie` (6.12, no PCI TSM): what changed in BPF since 6.1 — probes (module BTF, kprobes
///   on module functions), generations (detection without PCI TSM). storm's kprobe miss counts
///   (from 6.7) are checked on trixie-backports, and its 6.1 path on bookworm; lifecycle-trace
///   and restart take 6.1's path (no PCI TSM) or 7.x's (bpf link info from 6.6) there; modules
///   and doctor are the same as on both.
pub fn default_scope(spec: &KernelSpec) -> Option<&'static [&'static str]> {
    match spec {
        KernelSpec::Sid => Some(&["probes", "generations", "lifecycle-trace"]),
        KernelSpec::Trixie => Some(&["probes", "generations"]),
        // The crash loop restarts the daemon a dozen times (minutes of TCG per kernel): it
        // runs on the newest 7.x, against the real PCI TSM core; 6.1's run (the stand-in's
        // path, the same persistence code) is `--full` or `--kernel bookworm --suite crash`.
        KernelSpec::Bookworm => Some(&[
            "probes",
            "generations",
            "lifecycle-trace",
            "modules",
            "storm",
            "restart",
            "doctor",
        ]),
        KernelSpec::TrixieBackports | KernelSpec::Exact(_) => None,
    }
}

/// One VM boot of the plan.
pub struct Run<'a> {
    /// The suite's name (`--suite` selects by it).
    pub suite: &'static str,
    pub script: &'a str,
    pub opts: RunOptions,
    pub check: Check,
}

/// The suite names `--suite` accepts.
pub const SUITES: &[&str] = &[
    "probes",
    "generations",
    "lifecycle-trace",
    "modules",
    "storm",
    "restart",
    "crash",
    "doctor",
    "ide",
    "smoke",
    "lifecycle",
];

/// The runs for `kernel` (`pci_tsm`: it has the upstream PCI TSM core), in order, restricted
/// to `only` when it is not empty.
pub fn plan<'a>(
    pci_tsm: bool,
    mode: Mode,
    scripts: &'a Scripts,
    opts: &RunOptions,
    only: &[String],
) -> Vec<Run<'a>> {
    let tee = RunOptions {
        tee_pcie: pci_tsm,
        ..opts.clone()
    };
    let mut runs = Vec::new();
    let mut add = |suite, script: &'a String, opts: &RunOptions, check: Check| {
        runs.push(Run {
            suite,
            script: script.as_str(),
            opts: opts.clone(),
            check,
        })
    };
    match mode {
        Mode::Suites => {
            add("probes", &scripts.probes, opts, check_probes);
            // Every generation of the patch series (and none), detected and decoded; the
            // stand-in built as each one travels with it (`suite.rs`).
            add(
                "generations",
                &scripts.generations,
                opts,
                generations::check,
            );
            let lc: Check = if pci_tsm {
                lifecycle::check
            } else {
                lifecycle::check_absent
            };
            add("lifecycle-trace", &scripts.lifecycle_trace, &tee, lc);
            add("modules", &scripts.modules, opts, modules::check);
            add("storm", &scripts.storm, opts, storm::check);
            add("restart", &scripts.restart, &tee, restart::check);
            // Killed at instants spread over a lifecycle, cycle after cycle: 21 cycles of
            // about 15 s under TCG.
            let long = RunOptions {
                timeout: tee.timeout.max(std::time::Duration::from_secs(900)),
                ..tee.clone()
            };
            add("crash", &scripts.crash, &long, crash::check);
            // `tsm-trace doctor` as root, nobody, without bpffs and under lockdown.
            add("doctor", &scripts.doctor, opts, doctor::check);
            // PCIe IDE streams through the kernel's own pci_ide_* (its API came with PCI
            // TSM in 6.19): an endpoint behind a root port, IDE emulated by tsm_linktsm.
            if pci_tsm {
                let ide_opts = RunOptions {
                    ide_pcie: true,
                    ..tee.clone()
                };
                add("ide", &scripts.ide, &ide_opts, ide::check);
            }
        }
        Mode::Smoke => {
            add("smoke", &scripts.smoke, opts, check_smoke);
            if pci_tsm {
                add("lifecycle", &scripts.lifecycle_smoke, &tee, check_lifecycle);
                // The IDE fixture alone (its script runs no tsm-trace yet).
                let ide_opts = RunOptions {
                    ide_pcie: true,
                    ..tee.clone()
                };
                add("ide", &scripts.ide, &ide_opts, ide::check);
            }
        }
        Mode::LifecycleSmoke => {
            if pci_tsm {
                add("lifecycle", &scripts.lifecycle_smoke, &tee, check_lifecycle);
            }
        }
    }
    if !only.is_empty() {
        runs.retain(|r| only.iter().any(|s| s == r.suite));
    }
    runs
}

/// One line naming what the kernel has and what runs on it (`names`: the suites, in order).
pub fn describe(kernel: &Kernel, pci_tsm: bool, names: &[&str]) -> String {
    format!(
        "vm: {}: PCI TSM {} → {}",
        kernel.version,
        if pci_tsm {
            "yes (CONFIG_PCI_TSM=y, pci_tsm_bind in BTF)"
        } else {
            "no (no CONFIG_PCI_TSM, no pci_tsm_bind in BTF)"
        },
        if names.is_empty() {
            "nothing to run".to_string()
        } else {
            names.join(", ")
        }
    )
}

/// Runs every probe-suite check; returns how many were made, or every failure.
fn check_probes(out: &VmOutput) -> Result<usize> {
    let real_pci = super::kv::parse_kv(&out.section("standin_info")?.text)
        .get("pci_tsm")
        .is_some_and(|v| v == "real");
    let mut all = vec![
        ("session A", probes::check_session_a(out)?),
        ("daemon", probes::check_daemon(out)?),
        (
            "session L (module loaded late)",
            probes::check_session_late(out)?,
        ),
        (
            "session F (kernel diagnostics)",
            probes::diagnostics::check_session_diag(out)?,
        ),
    ];
    if real_pci {
        all.push((
            "session B (real pci_tsm_bind)",
            probes::check_session_b(out)?,
        ));
    }
    let mut n = 0;
    let mut failed = Vec::new();
    for (name, c) in all {
        n += c.count;
        failed.extend(c.failed.into_iter().map(|f| format!("{name}: {f}")));
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {n} checks failed (logs in {}):\n  {}",
            failed.len(),
            out.run_dir.display(),
            failed.join("\n  ")
        );
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scripts() -> Scripts {
        let s = |n: &str| n.to_string();
        Scripts {
            probes: s("p"),
            generations: s("g"),
            smoke: s("s"),
            lifecycle_smoke: s("ls"),
            lifecycle_trace: s("lt"),
            modules: s("m"),
            storm: s("st"),
            restart: s("r"),
            crash: s("c"),
            doctor: s("d"),
            ide: s("i"),
        }
    }

    #[test]
    fn the_default_matrix_runs_every_suite_at_both_ends() {
        let all: Vec<&str> = SUITES
            .iter()
            .copied()
            // ide runs only where the IDE API is (7.x) for now.
            .filter(|s| !matches!(*s, "smoke" | "lifecycle" | "ide"))
            .collect();
        assert_eq!(default_scope(&KernelSpec::TrixieBackports), None);
        // 6.1 runs every suite but the crash loop (the newest 7.x runs it).
        let bookworm = default_scope(&KernelSpec::Bookworm).expect("a subset");
        let but_crash: Vec<&str> = all.iter().copied().filter(|s| *s != "crash").collect();
        assert_eq!(bookworm, &but_crash[..]);
        // Between them, a subset of known suites; each suite runs somewhere on every run.
        let mut seen = Vec::new();
        for spec in [KernelSpec::Sid, KernelSpec::Trixie] {
            let only = default_scope(&spec).expect("a subset");
            assert!(!only.is_empty() && only.len() < all.len(), "{spec:?}");
            for s in only {
                assert!(all.contains(s), "{spec:?}: unknown suite {s}");
                seen.push(*s);
            }
        }
        assert!(
            seen.contains(&"probes") && seen.contains(&"generations"),
            "{seen:?}"
        );
    }

    #[test]
    fn every_kernel_runs_every_suite_tee_only_with_pci_tsm() {
        let sc = scripts();
        for pci in [true, false] {
            let runs = plan(pci, Mode::Suites, &sc, &RunOptions::default(), &[]);
            let names: Vec<_> = runs.iter().map(|r| r.suite).collect();
            let mut want = vec![
                "probes",
                "generations",
                "lifecycle-trace",
                "modules",
                "storm",
                "restart",
                "crash",
                "doctor",
            ];
            if pci {
                want.push("ide");
            }
            assert_eq!(names, want);
            let tee: Vec<_> = runs
                .iter()
                .filter(|r| r.opts.tee_pcie)
                .map(|r| r.suite)
                .collect();
            assert_eq!(
                tee,
                if pci {
                    vec!["lifecycle-trace", "restart", "crash", "ide"]
                } else {
                    vec![]
                }
            );
        }
        let smoke = plan(false, Mode::Smoke, &sc, &RunOptions::default(), &[]);
        assert_eq!(smoke.len(), 1);
        assert!(
            plan(
                false,
                Mode::LifecycleSmoke,
                &sc,
                &RunOptions::default(),
                &[]
            )
            .is_empty()
        );
        let only = plan(
            true,
            Mode::Suites,
            &sc,
            &RunOptions::default(),
            &["storm".into()],
        );
        assert_eq!(only.len(), 1);
        assert!(only.iter().all(|r| SUITES.contains(&r.suite)));
    }
}
