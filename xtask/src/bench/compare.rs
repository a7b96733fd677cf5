//! `cargo xtask bench --compare REV[,REV...]`: the static tsm-trace of other git revisions,
//! each built in a temporary `git worktree` under `target/bench-compare/<rev>` (one shared
//! target dir, `target/bench-compare/target`; the binary is copied to `<rev>.tsm-trace`), so
//! the VM run can measure their cost per probed call beside the current tree's.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::vm::Compare;
use crate::util::root;

/// Builds every revision; names them by their short commit id.
pub fn build(revs: &[String]) -> Result<Vec<Compare>> {
    let mut out = Vec::new();
    let shared = root().join("target/bench-compare/target");
    for rev in revs.iter().filter(|r| !r.trim().is_empty()) {
        let short = git(&["rev-parse", "--short=10", &format!("{rev}^{{commit}}")])
            .with_context(|| format!("--compare {rev}: not a git revision of this repository"))?;
        let dir = root().join("target/bench-compare").join(&short);
        if !dir.join(".git").exists() {
            let _ = git(&["worktree", "prune"]);
            std::fs::create_dir_all(dir.parent().unwrap())?;
            git(&[
                "worktree",
                "add",
                "--detach",
                "--force",
                &dir.to_string_lossy(),
                &short,
            ])
            .with_context(|| format!("git worktree add for {rev}"))?;
        }
        println!(
            "bench: building tsm-trace at {rev} ({short}) in {}",
            dir.display()
        );
        // Every revision's binary lands at the same path in the shared target dir: a
        // revision whose crates cargo finds fresh would not be linked again, and the copy
        // below would take the previous revision's binary. Touching its main makes cargo
        // build and link this revision's binary (and run its build script's checks).
        let main_rs = dir.join("tsm-trace/src/main.rs");
        std::fs::File::options()
            .append(true)
            .open(&main_rs)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .with_context(|| format!("--compare {rev}: touching {}", main_rs.display()))?;
        let status = Command::new("cargo")
            .args([
                "build",
                "--release",
                "--package",
                "tsm-trace",
                "--target",
                crate::build::MUSL,
            ])
            .current_dir(&dir)
            // One target dir for every revision (built one after the other): the
            // dependencies are built once; each worktree's own crates get their own artifacts
            // (their paths differ), so a build never reuses another revision's.
            .env("CARGO_TARGET_DIR", &shared)
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!(
                "--compare {rev}: cargo build of tsm-trace failed in {} (see above)",
                dir.display()
            );
        }
        let built: PathBuf = shared.join(crate::build::MUSL).join("release/tsm-trace");
        // Beside the worktree (inside it, `tsm-trace` is the crate's directory).
        let binary = dir.with_file_name(format!("{short}.tsm-trace"));
        std::fs::copy(&built, &binary).with_context(|| {
            format!(
                "--compare {rev}: copying {} to {} after the build",
                built.display(),
                binary.display()
            )
        })?;
        out.push(Compare { rev: short, binary });
    }
    Ok(out)
}

fn git(args: &[&str]) -> Result<String> {
    let o = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(args)
        .output()
        .context("running git")?;
    if !o.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}
