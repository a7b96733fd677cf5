//! `cargo xtask setup`: install what the build and the tests need on a Debian 12 machine.
//!
//! Idempotent: every step checks first and does nothing when its tool is present, so the whole
//! check takes well under a second and every other xtask command runs it first.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{run as sh, succeeds};

/// Debian packages: LLVM 22 for bpf-linker; qemu, busybox, cpio for the test VMs; gcc, make,
/// libelf, dwarves (pahole), bc, flex, bison, kmod for building the stand-in kernel module;
/// prometheus for promtool and the end-to-end scrape test.
pub const DEB_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "gcc",
    "make",
    "libelf-dev",
    "dwarves",
    "bc",
    "flex",
    "bison",
    "kmod",
    "xz-utils",
    "zstd",
    "prometheus",
];

const BPF_LINKER_VERSION: &str = "0.13";

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    check: bool,
}

struct Missing {
    packages: Vec<&'static str>,
    nightly: bool,
    rust_src: bool,
    musl: bool,
    bpf_linker: bool,
}

impl Missing {
    fn none(&self) -> bool {
        self.packages.is_empty()
            && !self.nightly
            && !self.rust_src
            && !self.musl
            && !self.bpf_linker
    }

    fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.packages.is_empty() {
            v.push(format!("Debian packages: {}", self.packages.join(" ")));
        }
        if self.nightly {
            v.push("the nightly Rust toolchain (builds the eBPF programs)".into());
        }
        if self.rust_src {
            v.push("rust-src for nightly (-Z build-std=core)".into());
        }
        if self.musl {
            v.push("the x86_64-unknown-linux-musl target (static binary for the test VMs)".into());
        }
        if self.bpf_linker {
            v.push(format!(
                "bpf-linker {BPF_LINKER_VERSION} built against LLVM 22"
            ));
        }
        v
    }
}

fn find_missing() -> Result<Missing> {
    let installed = installed_packages()?;
    let packages = DEB_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.iter().any(|i| i == p))
        .collect();
    let toolchains = capture("rustup", &["toolchain", "list"]).unwrap_or_default();
    let nightly = !toolchains.lines().any(|l| l.starts_with("nightly"));
    let rust_src = nightly
        || !capture(
            "rustup",
            &["component", "list", "--installed", "--toolchain", "nightly"],
        )
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("rust-src"));
    // The toolchain in rust-toolchain.toml (the one cargo runs us with).
    let musl = !capture("rustup", &["target", "list", "--installed"])
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "x86_64-unknown-linux-musl");
    let bpf_linker = !capture("bpf-linker", &["--version"])
        .map(|v| v.contains(&format!(" {BPF_LINKER_VERSION}.")))
        .unwrap_or(false);
    Ok(Missing {
        packages,
        nightly,
        rust_src,
        musl,
        bpf_linker,
    })
}

fn installed_packages() -> Result<Vec<String>> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f", "${Package} ${db:Status-Status}\n"]);
    cmd.args(DEB_PACKAGES);
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the known ones.
    let out = cmd
        .output()
        .context("running dpkg-query (is this a Debian machine?)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(" installed").map(str::to_string))
        .collect())
}

fn capture(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks, and installs what is missing. Called by every command that needs tools.
pub fn ensure() -> Result<()> {
    let missing = find_missing()?;
    if missing.none() {
        return Ok(());
    }
    install(&missing)
}

pub fn run(args: &SetupArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let missing = find_missing()?;
    if missing.none() {
        println!(
            "setup: everything is installed (checked in {:.2}s)",
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if args.check {
        for m in missing.describe() {
            println!("setup: missing {m}");
        }
        bail!("setup: run `cargo xtask setup` to install the above");
    }
    install(&missing)?;
    println!("setup: done in {:.0}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn install(m: &Missing) -> Result<()> {
    for d in m.describe() {
        println!("setup: installing {d}");
    }
    if !m.packages.is_empty() {
        if effective_uid() != 0 {
            bail!(
                "setup: installing Debian packages needs root. Run as root, or install them yourself:\n  apt-get install -y {}",
                m.packages.join(" ")
            );
        }
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&m.packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if m.nightly {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    } else if m.rust_src {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if m.musl {
        sh(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))?;
    }
    if m.bpf_linker {
        // Measured: ~35 s. Without LLVM_PREFIX the link fails with `unable to find library -lLLVM`.
        sh(Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("setup: bpf-linker is still not on PATH; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // Avoids a libc dependency: /proc/self/status has the effective uid on its `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}
