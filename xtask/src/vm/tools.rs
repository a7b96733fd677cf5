//! Static helper programs for the test VMs (`tests/vm/tools/*.c`), built with the host's gcc
//! against glibc's `libc.a` and cached under `.vm-cache/tools/`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::cache::cache_dir;
use crate::util::{root, run_quiet};

/// `(guest path, source)` of every helper the initramfs carries.
pub const HELPERS: &[(&str, &str)] = &[
    ("/bin/sysfs_write", "tests/vm/tools/sysfs_write.c"),
    ("/bin/mono_us", "tests/vm/tools/mono_us.c"),
    ("/bin/vmm_bind", "tests/vm/tools/vmm_bind.c"),
];

/// Builds `source` (unless the cached build is of the same source) and returns the binary.
pub fn build(source: &str) -> Result<PathBuf> {
    // VMs booting at once (`vm-test --jobs`) each put the helpers into their initramfs: one
    // compiles, the others wait for it rather than write the same binary together.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let src = root().join(source);
    let text = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
    let dir = cache_dir().join("tools");
    let stem = src
        .file_stem()
        .context("a helper source has a file name")?
        .to_string_lossy()
        .into_owned();
    let bin = dir.join(&stem);
    let copy = dir.join(format!("{stem}.c"));
    if bin.is_file() && fs::read(&copy).is_ok_and(|c| c == text) {
        return Ok(bin);
    }
    fs::create_dir_all(&dir)?;
    run_quiet(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&bin)
            .arg(&src),
    )
    .with_context(|| {
        format!("building {source} (needs gcc and libc6-dev: cargo xtask setup installs them)")
    })?;
    fs::write(&copy, &text)?;
    Ok(bin)
}
