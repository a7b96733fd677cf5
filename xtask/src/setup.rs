//! `cargo xtask setup`: install what the build and the tests need on a Debian 12 machine.
//!
//! Idempotent: every step checks first and does nothing when its tool is present, so the whole
//! check takes well under a second and every other xtask command runs it first.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::toolchain;
use crate::util::{run as sh, succeeds};

/// Debian packages: qemu, busybox, cpio for the test VMs; gcc, make, libelf, dwarves (pahole),
/// bc, flex, bison, kmod for building the stand-in kernel module; prometheus for promtool and
/// the end-to-end scrape test; musl-tools for the C parts of the static binary. LLVM (`llvm-<major>-dev`, `libpolly-<major>-dev`) is added for
/// the major the pinned nightly uses: see [`llvm_packages`].
pub const DEB_PACKAGES: &[&str] = &[
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "gcc",
    // libc.a: the static helpers of the test VMs (tests/vm/tools/).
    "libc6-dev",
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
    // The Python client's OpenMetrics parser: the OpenMetrics exposition's tests (a strict
    // parser besides Prometheus's own in the e2e run).
    "python3-prometheus-client",
    // x86_64-linux-musl-gcc: the static binary's C dependencies (ring, under rustls).
    "musl-tools",
    // systemd-analyze: the unit's hardening score in `cargo xtask test`.
    "systemd",
    // `cargo xtask dist`: lintian checks the package; debootstrap makes the bookworm root
    // its install/remove test runs in.
    "lintian",
    "debootstrap",
    // `cargo xtask dist`: skopeo reads the OCI image layout back (no container daemon).
    "skopeo",
];

/// bpf-linker is built against Debian's LLVM of the pinned nightly's major, not against the LLVM
/// rustup ships: rustup's `llvm-tools` has no headers, `llvm-config` or linkable libLLVM, and
/// bpf-linker's own "rust-llvm" feature downloads prebuilt LLVM from GitHub, which machines
/// with only the package registries cannot reach. Debian (bookworm included) carries
/// `llvm-<major>-dev` for the majors rustc has used since 2023.
pub fn llvm_packages(major: u32) -> [String; 2] {
    [format!("llvm-{major}-dev"), format!("libpolly-{major}-dev")]
}

const BPF_LINKER_VERSION: &str = "0.13";

/// Components the pinned nightly needs (also listed in its rust-toolchain.toml).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    check: bool,
    /// Rebuild bpf-linker even if one is installed (after changing the pinned nightly).
    #[arg(long)]
    rebuild_bpf_linker: bool,
}

/// What is missing, in the order it is installed (the nightly first: its LLVM major decides
/// which LLVM packages and which bpf-linker build the rest needs).
#[derive(Default)]
struct Missing {
    /// The pinned nightly, and whether an installed copy of the same build can be adopted.
    nightly: Option<Option<PathBuf>>,
    /// Components of the pinned nightly that are missing: `rust-src` (`-Z build-std=core`)
    /// and `clippy` (the test suite lints the eBPF crate).
    components: Vec<&'static str>,
    /// `None` while the nightly (and so the LLVM major) is still missing.
    llvm_major: Option<u32>,
    packages: Vec<String>,
    musl: bool,
    /// Why bpf-linker must be (re)built.
    bpf_linker: Option<String>,
    /// cargo-fuzz (`cargo xtask fuzz` and the fuzz step of `cargo xtask test`).
    cargo_fuzz: bool,
    /// cargo-deb (`cargo xtask dist` and the package step of `cargo xtask test`).
    cargo_deb: bool,
}

impl Missing {
    fn none(&self) -> bool {
        self.nightly.is_none()
            && self.components.is_empty()
            && self.packages.is_empty()
            && !self.musl
            && self.bpf_linker.is_none()
            && !self.cargo_fuzz
            && !self.cargo_deb
    }

    fn describe(&self, channel: &str) -> Vec<String> {
        let mut v = Vec::new();
        match &self.nightly {
            Some(Some(src)) => v.push(format!(
                "{channel} (the eBPF toolchain; the same build is at {}, adopted without a download)",
                src.display()
            )),
            Some(None) => v.push(format!("{channel} (the eBPF toolchain, from rustup)")),
            None => {}
        }
        if !self.components.is_empty() {
            v.push(format!(
                "{} for {channel} (-Z build-std=core; clippy of the eBPF crate)",
                self.components.join(", ")
            ));
        }
        if !self.packages.is_empty() {
            v.push(format!("Debian packages: {}", self.packages.join(" ")));
        }
        if self.musl {
            v.push("the x86_64-unknown-linux-musl target (static binary for the test VMs)".into());
        }
        if let Some(why) = &self.bpf_linker {
            let llvm = self
                .llvm_major
                .map_or_else(|| "the nightly's LLVM".to_string(), |m| format!("LLVM {m}"));
            v.push(format!(
                "bpf-linker {BPF_LINKER_VERSION} built against {llvm} ({why})"
            ));
        }
        if self.cargo_fuzz {
            v.push("cargo-fuzz (the fuzz targets in fuzz/)".into());
        }
        if self.cargo_deb {
            v.push(format!("cargo-deb {CARGO_DEB_VERSION} (cargo xtask dist)"));
        }
        v
    }
}

/// Is cargo-fuzz on PATH? (A file check: no process, so setup stays fast.)
fn have_cargo_fuzz() -> bool {
    on_path("cargo-fuzz")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Pinned: the package's metadata (`[package.metadata.deb]`) is read by this version.
const CARGO_DEB_VERSION: &str = "3.8.0";

fn find_missing(channel: &str, rebuild_linker: bool) -> Result<Missing> {
    let mut m = Missing::default();
    if !toolchain::installed(channel)? {
        m.nightly = Some(toolchain::same_build_elsewhere(channel)?);
    }
    let tc_dir = toolchain::rustup_home()?
        .join("toolchains")
        .join(toolchain::toolchain_dir_name(channel));
    let have = |c: &str| match c {
        "rust-src" => tc_dir.join("lib/rustlib/src/rust/library/core").is_dir(),
        _ => tc_dir.join("bin/cargo-clippy").is_file(),
    };
    m.components = NIGHTLY_COMPONENTS
        .iter()
        .copied()
        .filter(|c| m.nightly.is_some() || !have(c))
        .collect();
    if m.nightly.is_none() {
        m.llvm_major = Some(toolchain::nightly_llvm(channel)?);
    }
    let mut wanted: Vec<String> = DEB_PACKAGES.iter().map(|p| p.to_string()).collect();
    if let Some(major) = m.llvm_major {
        wanted.extend(llvm_packages(major));
    }
    let installed = installed_packages(&wanted)?;
    m.packages = wanted
        .into_iter()
        .filter(|p| !installed.contains(p))
        .collect();
    // The toolchain in rust-toolchain.toml (the one cargo runs us with).
    m.musl = !capture("rustup", &["target", "list", "--installed"])
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "x86_64-unknown-linux-musl");
    m.bpf_linker = bpf_linker_problem(m.llvm_major, rebuild_linker);
    m.cargo_fuzz = !have_cargo_fuzz();
    m.cargo_deb = !on_path("cargo-deb");
    Ok(m)
}

/// Why the bpf-linker on PATH will not do, if it will not.
fn bpf_linker_problem(llvm_major: Option<u32>, rebuild: bool) -> Option<String> {
    if rebuild {
        return Some("asked to rebuild".into());
    }
    let version = capture("bpf-linker", &["--version"]);
    let Some(version) = version else {
        return Some("not installed".into());
    };
    if !version.contains(&format!(" {BPF_LINKER_VERSION}.")) {
        return Some(format!("installed is {}", version.trim()));
    }
    // Without the nightly the major is unknown yet; `install` asks again once it is there.
    let major = llvm_major?;
    match toolchain::bpf_linker_llvm() {
        Some((_, Some(l))) if l == major => None,
        Some((_, Some(l))) => Some(format!("installed links LLVM {l}")),
        _ => Some("cannot tell which LLVM the installed one links".into()),
    }
}

fn installed_packages(wanted: &[String]) -> Result<Vec<String>> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f", "${Package} ${db:Status-Status}\n"]);
    cmd.args(wanted);
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
    let channel = toolchain::pinned_channel()?;
    let missing = find_missing(&channel, false)?;
    if !missing.none() {
        install(&channel, missing)?;
    }
    toolchain::check_installed()
}

pub fn run(args: &SetupArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let channel = toolchain::pinned_channel()?;
    let missing = find_missing(&channel, args.rebuild_bpf_linker)?;
    if missing.none() {
        toolchain::check_installed()?;
        println!(
            "setup: everything is installed, {channel} and bpf-linker agree on LLVM {} (checked in {:.2}s)",
            missing.llvm_major.unwrap_or_default(),
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if args.check {
        for m in missing.describe(&channel) {
            println!("setup: missing {m}");
        }
        bail!("setup: run `cargo xtask setup` to install the above");
    }
    install(&channel, missing)?;
    toolchain::check_installed()?;
    println!("setup: done in {:.0}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn install(channel: &str, mut m: Missing) -> Result<()> {
    for d in m.describe(channel) {
        println!("setup: installing {d}");
    }
    let mut components = std::mem::take(&mut m.components);
    match m.nightly.take() {
        Some(Some(src)) => toolchain::adopt(&src, channel)?,
        Some(None) => {
            let mut cmd = Command::new("rustup");
            cmd.args(["toolchain", "install", channel, "--profile", "minimal"]);
            for c in &components {
                cmd.args(["--component", c]);
            }
            sh(&mut cmd)?;
            components.clear();
        }
        None => {}
    }
    if !components.is_empty() {
        sh(Command::new("rustup")
            .args(["component", "add", "--toolchain", channel])
            .args(&components))?;
    }
    // Now that the nightly is there, its LLVM decides the rest.
    let major = match m.llvm_major {
        Some(major) => major,
        None => {
            let major = toolchain::nightly_llvm(channel)?;
            let extra = llvm_packages(major);
            let have = installed_packages(&extra)?;
            m.packages
                .extend(extra.into_iter().filter(|p| !have.contains(p)));
            if m.bpf_linker.is_none() {
                m.bpf_linker = bpf_linker_problem(Some(major), false);
            }
            major
        }
    };
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
    if m.musl {
        sh(Command::new("rustup").args(["target", "add", "x86_64-unknown-linux-musl"]))?;
    }
    if m.bpf_linker.is_some() {
        // Measured: ~55 s. Without LLVM_PREFIX the link fails with `unable to find library -lLLVM`.
        sh(Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                &format!("~{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{major}")))?;
    }
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("setup: bpf-linker is still not on PATH; is ~/.cargo/bin on PATH?");
    }
    if m.cargo_fuzz {
        // Measured: ~2 min on 2 cores.
        sh(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
        if !have_cargo_fuzz() {
            bail!("setup: cargo-fuzz is still not on PATH; is ~/.cargo/bin on PATH?");
        }
    }
    if m.cargo_deb {
        // Measured: ~3 min on 2 busy cores.
        sh(Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
        if !on_path("cargo-deb") {
            bail!("setup: cargo-deb is still not on PATH; is ~/.cargo/bin on PATH?");
        }
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
