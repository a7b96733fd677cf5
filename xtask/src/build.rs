//! Building the tsm-trace binaries (host, static musl for the test VMs, the benchmark programs).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::util::{cargo, root, run};

/// The static (musl) tsm-trace binary for the test VMs.
pub fn build_static() -> Result<PathBuf> {
    build_release(None, Some(MUSL))
}

pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// The static binary as the package ships it: stripped (about a tenth of the release build,
/// whose debug info is for profiling on the host). The test VMs carry this one: what they test
/// is what is shipped, and a guest unpacks a 10 MB initramfs instead of a 90 MB one (seconds
/// of every boot under TCG).
pub fn build_shipped() -> Result<PathBuf> {
    stripped(&build_static()?)
}

/// A stripped copy of `bin` beside it (`NAME.stripped`), made again when `bin` is newer.
pub fn stripped(bin: &std::path::Path) -> Result<PathBuf> {
    let mut name = bin.file_name().unwrap_or_default().to_os_string();
    name.push(".stripped");
    let out = bin.with_file_name(name);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((modified(bin), modified(&out)), (Some(b), Some(o)) if o >= b);
    if !fresh {
        run(std::process::Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(bin))
        .with_context(|| format!("stripping {} (binutils)", bin.display()))?;
    }
    Ok(out)
}

/// Release-builds the tsm-trace binary, or one of the benchmark programs of
/// `tsm-trace-bench` (`bench_host`, `bench_vm`), for `target` (host if `None`), and returns
/// the path of the result. Both share the release build of the tsm-trace library: the bench
/// crate adds no feature to any dependency.
pub fn build_release(bench: Option<&str>, target: Option<&str>) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release"]);
    let mut path = root().join("target");
    if let Some(t) = target {
        cmd.args(["--target", t]);
        path.push(t);
    }
    path.push("release");
    match bench {
        Some(b) => {
            cmd.args(["--package", "tsm-trace-bench", "--bin", b]);
            path.push(b);
        }
        None => {
            cmd.args(["--package", "tsm-trace", "--bin", "tsm-trace"]);
            path.push("tsm-trace");
        }
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
