//! `cargo xtask fuzz`: run the cargo-fuzz targets of `fuzz/` (libFuzzer, on the pinned
//! nightly of `tsm-trace-ebpf/rust-toolchain.toml`), each for a fixed time.
//!
//! Each target starts from its committed seeds (`fuzz/corpus/<target>/`, read only) and a
//! working corpus under `target/fuzz-corpus/<target>/` (kept between runs, so longer runs
//! build on shorter ones). A crash fails the run and names the input libFuzzer saved under
//! `target/fuzz-artifacts/<target>/`, with the command that replays it. The eBPF object is
//! not built for fuzzing (`AYA_BUILD_SKIP=1`): no target loads it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::util::root;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &["record", "ringbuf", "sysfs", "flags"];

/// Seconds per target in `cargo xtask test` (4 targets: about a minute with the build): a
/// regression check on the committed corpus; `cargo xtask fuzz` runs as long as asked.
pub const TEST_SECS: u64 = 10;

#[derive(clap::Args, Default)]
pub struct FuzzArgs {
    /// Target to run (repeatable): record, ringbuf, sysfs, flags. Default: all.
    #[arg(long = "target", value_name = "T")]
    pub targets: Vec<String>,
    /// Seconds per target.
    #[arg(long = "time", value_name = "S", default_value_t = 60)]
    pub secs: u64,
}

/// What one target's run did.
pub struct Outcome {
    pub target: String,
    pub secs: f64,
    pub execs: Option<u64>,
}

fn fuzz_cmd(channel: &str) -> Command {
    let mut c = Command::new("cargo");
    c.arg(format!("+{channel}"))
        .arg("fuzz")
        .current_dir(root())
        .env("AYA_BUILD_SKIP", "1");
    c
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        args.targets.clone()
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    if args.secs == 0 {
        bail!("--time 0: give each target at least a second");
    }
    let outcomes = run_targets(&targets, args.secs)?;
    for o in &outcomes {
        println!(
            "fuzz: {:<8} {:>7.0}s  {} executions",
            o.target,
            o.secs,
            o.execs.map_or("?".to_string(), |n| n.to_string())
        );
    }
    Ok(())
}

/// Builds the targets once, then runs each for `secs`; fails at the first crash.
pub fn run_targets(targets: &[String], secs: u64) -> Result<Vec<Outcome>> {
    let channel = crate::toolchain::pinned_channel()?;
    let status = fuzz_cmd(&channel)
        .arg("build")
        .status()
        .context("running `cargo fuzz build` (cargo xtask setup installs cargo-fuzz)")?;
    if !status.success() {
        bail!("cargo +{channel} fuzz build failed");
    }
    let mut outcomes = Vec::new();
    for t in targets {
        outcomes.push(run_one(&channel, t, secs)?);
    }
    Ok(outcomes)
}

fn run_one(channel: &str, target: &str, secs: u64) -> Result<Outcome> {
    let r = root();
    let seeds = r.join("fuzz/corpus").join(target);
    let work = r.join("target/fuzz-corpus").join(target);
    let artifacts = r.join("target/fuzz-artifacts").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let started = SystemTime::now();
    let t0 = Instant::now();
    println!("fuzz: {target} for {secs}s");
    let out = fuzz_cmd(channel)
        .args(["run", target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .output()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let crashes = new_files(&artifacts, started);
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed after {:.0}s; crashing input: {}\nreplay it with: AYA_BUILD_SKIP=1 cargo +{channel} fuzz run {target} <input>\n{}",
            t0.elapsed().as_secs_f64(),
            if crashes.is_empty() {
                "none saved (see the log below)".to_string()
            } else {
                crashes
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            tail.join("\n")
        );
    }
    Ok(Outcome {
        target: target.to_string(),
        secs: t0.elapsed().as_secs_f64(),
        execs: stat(&log, "stat::number_of_executed_units:"),
    })
}

/// libFuzzer's `-print_final_stats` value for `key`.
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// Files in `dir` modified at or after `since` (the inputs this run saved).
fn new_files(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m >= since)
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats() {
        let log = "#1234 DONE\nstat::number_of_executed_units: 203135\nstat::average_exec_per_sec:     12695\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), Some(203_135));
        assert_eq!(stat("", "stat::number_of_executed_units:"), None);
    }

    #[test]
    fn every_target_has_seeds() {
        for t in TARGETS {
            let d = root().join("fuzz/corpus").join(t);
            let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
            assert!(n > 0, "{} has no seeds", d.display());
            assert!(
                root()
                    .join("fuzz/fuzz_targets")
                    .join(format!("{t}.rs"))
                    .is_file()
            );
        }
    }
}
