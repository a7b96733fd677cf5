//! `cargo xtask bench --compare REV[,REV...]`: the static tsm-trace of other git revisions,
//! each built in a temporary `git worktree` under `target/bench-compare/<rev>` (with a target
//! dir of its own, `target/bench-compare/target-<rev>`; the binary is copied to
//! `<rev>.tsm-trace`), so the VM run can measure their cost per probed call beside the
//! current tree's.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::vm::Compare;
use crate::util::root;

/// Builds every revision; names them by their short commit id.
pub fn build(revs: &[String]) -> Result<Vec<Compare>> {
    let mut out = Vec::new();

    for rev in revs.iter().filter(|r| !r.trim().is_empty()) {
        let short = git(&["rev-parse", "--short=10", &format!("{rev}^{{commit}}")])
            .with_context(|| format!("--compare {rev}: not a git revision of this repository"))?;
        let dir = root().join("target/bench-compare").join(&short);
        let target = root()
            .join("target/bench-compare")
            .join(format!("target-{short}"));
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
            // A target dir of its own per revision. One shared by every revision is not
            // safe: cargo hashes a workspace member by its path inside the workspace, so two
            // worktrees share the build script's OUT_DIR, where the eBPF object is built,
            // and a revision whose build script cargo found fresh embedded the object of the
            // revision built before it (measured: a revision two commits back reported the
            // current tree's cost).
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!(
                "--compare {rev}: cargo build of tsm-trace failed in {} (see above)",
                dir.display()
            );
        }
        let built: PathBuf = target.join(crate::build::MUSL).join("release/tsm-trace");
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
