//! Building the tsm-trace binaries (host, static musl for the test VMs, examples).

use std::path::PathBuf;

use anyhow::Result;

use crate::util::{cargo, root, run};

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
