//! `cargo xtask vm-test`: boot real Debian kernels in qemu with the tsm_standin fixture module.
//!
//! Public API for scenario code:
//! - [`prepare`] / [`prepare_with`]: fetch kernels (private apt, cached in `.vm-cache/`) and
//!   build the stand-in module for each → [`Kernel`].
//! - [`run_in_vm`] / [`run_in_vm_with`]: boot a [`Kernel`] with a `/scenarios/run.sh` and extra
//!   files → [`VmOutput`] (console log + named sections). Guest crash / timeout → `Err`.
//! - [`parse_kv`]: parse a `key=value ...` line (the stand-in's `last` format).
//!
//! Everything downloaded or built lives under `<repo>/.vm-cache/` (override: `TSM_VM_CACHE`).

// Part of this module is API for scenario code that is not written yet.
#![allow(dead_code, unused_imports)]

pub mod doctor;
pub mod initramfs;
pub mod kernel;
pub mod leaks;
pub mod lifecycle;
pub mod module;
pub mod modules;
pub mod qemu;
pub mod restart;
pub mod scenarios;
pub mod storm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use kernel::{Kernel, KernelSpec};
pub use qemu::{RunOptions, Section, VmOutput, run_in_vm, run_in_vm_with};

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
    /// Run only these tsm-trace suites: probes, lifecycle-trace, modules, storm, restart, doctor
    /// (repeat or comma-separate). Default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub suite: Vec<String>,
}

/// `<repo>` (the workspace root).
pub use crate::util::root as repo_root;

/// `<repo>/.vm-cache` unless `TSM_VM_CACHE` is set.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TSM_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".vm-cache"))
}

/// Run a command; error (with its stderr) unless it succeeds.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<()> {
    run_cmd_output(cmd).map(|_| ())
}

/// Run a command and return its stdout; error (with its stderr) unless it succeeds.
pub(crate) fn run_cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", crate::util::show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            crate::util::show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

/// Parse `key=value key=value ...` (values without spaces). Later keys win.
pub fn parse_kv(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
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
    let doctor_script = read_script(doctor::SCRIPT)?;
    let extra = if smoke || lifecycle_only {
        Vec::new()
    } else {
        let bin = crate::util::build_static()?;
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
            // `tsm-trace doctor` as root, nobody, without bpffs and under lockdown.
            runs.push((
                " doctor",
                doctor_script.as_str(),
                opts.clone(),
                doctor::check,
            ));
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
                        eprintln!("vm: {}{label}: kernel warning: {w}", kernel.version);
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

/// Keep only the newest `keep` run directories.
fn prune_runs(keep: usize) {
    let Ok(rd) = std::fs::read_dir(cache_dir().join("runs")) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    if dirs.len() > keep {
        for d in &dirs[..dirs.len() - keep] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;
const EINVAL: i32 = 22;
const EIO: i32 = 5;
const EFAULT: i32 = 14;
const EBUSY: i32 = 16;

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

/// Check the lifecycle smoke (`tests/vm/scenarios/lifecycle-smoke.sh`): the guest compares
/// every step's ground truth (sysfs, the fixture's `events`/`last`/`info`) with what the real
/// PCI TSM core must do and prints one `check=<name> ok|FAIL ...` line per comparison in the
/// `checks` section; every line must say ok, at least `LIFECYCLE_MIN_CHECKS` of them.
fn check_lifecycle(out: &VmOutput) -> Result<usize> {
    const LIFECYCLE_MIN_CHECKS: usize = 60;
    let text = &out.section("checks")?.text;
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("check=")).collect();
    let failed: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| parse_kv(l).get("result").map(String::as_str) != Some("ok"))
        .collect();
    let mut errs: Vec<String> = failed.iter().map(|l| l.to_string()).collect();
    if out.run_rc != Some(0) {
        errs.push(format!("run.sh exited {:?}", out.run_rc));
    }
    if lines.len() < LIFECYCLE_MIN_CHECKS {
        errs.push(format!(
            "only {} checks ran, expected at least {LIFECYCLE_MIN_CHECKS}",
            lines.len()
        ));
    }
    if !errs.is_empty() {
        bail!(
            "{} of {} lifecycle checks failed (logs in {}):\n  {}",
            errs.len(),
            lines.len(),
            out.run_dir.display(),
            errs.join("\n  ")
        );
    }
    Ok(lines.len())
}

/// Check the placeholder scenario's output; returns the number of checks made.
fn check_smoke(out: &VmOutput) -> Result<usize> {
    let mut n = 0;
    let mut errs: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        n += 1;
        if !ok {
            errs.push(what);
        }
    };

    let insmod = out.section("insmod")?;
    check(
        insmod.rc == Some(0),
        format!("insmod failed: {}", insmod.text.trim()),
    );
    let module = out.section("module")?;
    check(
        module.text.trim() == "live",
        format!("module state {:?}", module.text.trim()),
    );
    let btf = out.section("btf")?;
    check(
        btf.rc == Some(0),
        format!("/sys/kernel/btf/tsm_standin missing: {}", btf.text.trim()),
    );
    let names = out.section("btf_names")?;
    check(
        !names.text.contains("=no") && names.text.contains("=yes"),
        format!("module BTF lacks names: {}", names.text.trim()),
    );
    let info = parse_kv(&out.section("standin_info")?.text);
    let real_pci_tsm = info.get("pci_tsm").map(String::as_str) == Some("real");
    check(
        out.run_rc == Some(0),
        format!("run.sh exited {:?}", out.run_rc),
    );

    let mut steps: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for line in out.section("steps")?.text.lines() {
        let kv = parse_kv(line);
        if let Some(name) = kv.get("step") {
            steps.push((name.clone(), kv));
        }
    }
    let get = |name: &str| steps.iter().find(|(n, _)| n == name).map(|(_, kv)| kv);
    let empty = BTreeMap::new();
    let field = |step: &str, key: &str| -> String {
        get(step)
            .unwrap_or(&empty)
            .get(key)
            .cloned()
            .unwrap_or_default()
    };

    // Every record parses, is fresh, and write() failed exactly when rc != 0.
    let mut last_seq = 0u64;
    for (name, kv) in &steps {
        let seq: u64 = kv.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
        check(
            seq > last_seq,
            format!("{name}: seq {seq} not after {last_seq}"),
        );
        last_seq = seq;
        let rc: Option<i32> = kv.get("rc").and_then(|s| s.parse().ok());
        check(rc.is_some(), format!("{name}: no rc in record {kv:?}"));
        let write_ok = kv.get("write").map(String::as_str) == Some("ok");
        check(
            write_ok == (rc == Some(0)),
            format!("{name}: write={:?} but rc={rc:?}", kv.get("write")),
        );
        check(
            kv.contains_key("pid") && kv.contains_key("cmd"),
            format!("{name}: record lacks pid/cmd"),
        );
    }

    let mut expect: Vec<(&str, i32)> = vec![
        ("vm1", 0),
        ("vm2", 0),
        ("vm1_again", -EEXIST),
        ("vdev1", 0),
        ("vdev2_nonpci", 0),
        ("vdev3_nokvm", 0),
        ("vdev4_vm2", 0),
        ("vdev_nodev", -ENODEV),
        ("flags", -EOPNOTSUPP),
        ("novdev", -ENOENT),
        ("nokvm", -ENODEV),
        ("badop", -EINVAL),
        ("nonpci", -EINVAL),
        ("inject_eio", 0),
        ("bind_eio", -EIO),
        ("delay", 0),
        ("inject_efault", 0),
        ("bind_efault", -EFAULT),
        ("delay0", 0),
        ("bind_same", 0),
        ("bind_other_vm", -EBUSY),
        ("unbind", 0),
        ("rebind", 0),
        ("destroy1", 0),
        ("vdev6", 0),
        ("bind6", 0),
        ("destroy6_nounbind", 0),
        ("disconnect", 0),
        ("tsm_bind", 0),
        ("tsm_unbind", 0),
        ("tsm_unbind_nonpci", -EINVAL),
        ("vm2_destroy", 0),
        ("destroy4", 0),
        ("vm1_destroy", 0),
        ("destroy2", 0),
        ("destroy3", 0),
        ("realpci_on", if real_pci_tsm { 0 } else { -EOPNOTSUPP }),
        ("bogus", -EINVAL),
        ("inject_clear", 0),
    ];
    if real_pci_tsm {
        expect.extend([
            ("vm3", 0),
            ("vdev7", 0),
            ("real_bind", -EINVAL),
            ("real_unbind", 0),
            ("realpci_off", 0),
            ("destroy7", 0),
            ("vm3_destroy", 0),
        ]);
    }
    for (name, rc) in &expect {
        let got = field(name, "rc");
        check(
            got == rc.to_string(),
            format!("{name}: rc {got:?}, expected {rc} ({:?})", get(name)),
        );
    }
    check(
        steps.len() == expect.len(),
        format!("{} steps ran, {} expected", steps.len(), expect.len()),
    );

    // Ground-truth details.
    let kvm1 = field("vm1", "kvm");
    let kvm2 = field("vm2", "kvm");
    for vm in ["vm1", "vm2"] {
        let pid = field(vm, "pid");
        check(
            field(vm, "kvm_pid") == pid && field(vm, "stats_id") == format!("kvm-{pid}"),
            format!("{vm}: owner not the caller: {:?}", get(vm)),
        );
    }
    check(
        kvm1.starts_with("0x") && kvm1 != "0x0" && kvm1 != kvm2,
        format!("vm kvm pointers {kvm1:?} {kvm2:?}"),
    );
    check(
        field("vm1", "pid") != field("vm2", "pid"),
        "vm2 not created by a child".into(),
    );
    check(field("vdev1", "dev") == "0000:00:02.0", "vdev1 dev".into());
    check(
        field("vdev2_nonpci", "dev") == "tsm_standin",
        "nonpci dev name".into(),
    );
    check(field("vdev3_nokvm", "kvm") == "0x0", "nokvm kvm".into());
    check(
        field("bind_eio", "driver_rc") == format!("-{EIO}")
            && field("bind_eio", "after_kvm") == "0x0",
        format!("bind_eio: {:?}", get("bind_eio")),
    );
    let driver_ns: u64 = field("bind_efault", "driver_ns").parse().unwrap_or(0);
    check(
        driver_ns >= 15_000_000,
        format!("bind_efault: driver_ns {driver_ns} < 20ms delay"),
    );
    check(
        field("bind_efault", "after_kvm") == kvm1
            && field("bind_efault", "respond_rc") == format!("-{EFAULT}")
            && field("bind_efault", "tdi_id") == "77"
            && field("bind_efault", "virt_id") == "77",
        format!(
            "bind_efault: device must stay bound: {:?}",
            get("bind_efault")
        ),
    );
    check(
        field("bind_same", "driver_called").is_empty() && field("bind_same", "bound_kvm") == kvm1,
        format!("bind_same: {:?}", get("bind_same")),
    );
    check(
        field("bind_other_vm", "bound_kvm") == kvm1 && field("bind_other_vm", "kvm") == kvm2,
        format!("bind_other_vm: {:?}", get("bind_other_vm")),
    );
    check(
        field("unbind", "driver_unbind") == "1" && field("unbind", "after_kvm") == "0x0",
        format!("unbind: {:?}", get("unbind")),
    );
    check(
        field("rebind", "driver_called") == "1" && field("rebind", "after_kvm") == kvm1,
        format!("rebind: {:?}", get("rebind")),
    );
    check(
        field("destroy1", "driver_unbind") == "1" && field("destroy1", "after_kvm") == "0x0",
        format!("destroy1: {:?}", get("destroy1")),
    );
    check(
        field("destroy6_nounbind", "driver_unbind").is_empty()
            && field("destroy6_nounbind", "after_kvm") == kvm2,
        format!(
            "destroy6_nounbind must leak the binding: {:?}",
            get("destroy6_nounbind")
        ),
    );
    check(
        field("disconnect", "driver_unbind") == "1" && field("disconnect", "bound_kvm") == kvm2,
        format!("disconnect: {:?}", get("disconnect")),
    );
    check(
        field("tsm_bind", "driver_called") == "1" && field("tsm_bind", "tdi_id") == "5",
        format!("tsm_bind: {:?}", get("tsm_bind")),
    );
    check(
        field("vm2_destroy", "destroyed") == "0"
            && field("destroy4", "destroyed") == "1"
            && field("destroy4", "destroyed_kvm") == kvm2,
        "vm2 must be destroyed when its last vDevice goes".into(),
    );
    check(
        field("vm1_destroy", "destroyed") == "0" && field("destroy2", "destroyed_kvm") == kvm1,
        "vm1 must be destroyed when its last vDevice goes".into(),
    );
    if real_pci_tsm {
        check(
            field("real_bind", "layer") == "pci_tsm_bind"
                && field("real_bind", "driver_called").is_empty(),
            format!("real_bind: {:?}", get("real_bind")),
        );
        check(
            field("real_unbind", "layer") == "pci_tsm_unbind",
            format!("real_unbind: {:?}", get("real_unbind")),
        );
    }
    let bound = out.section("bound")?;
    check(
        bound.rc == Some(0) && bound.text.trim().is_empty(),
        format!("devices left bound: {}", bound.text.trim()),
    );

    if !errs.is_empty() {
        bail!(
            "{} of {n} checks failed (logs in {}):\n  {}",
            errs.len(),
            out.run_dir.display(),
            errs.join("\n  ")
        );
    }
    Ok(n)
}
