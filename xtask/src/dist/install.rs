//! The package's install/remove test: `dpkg -i` into a Debian 12 (bookworm) root, check what
//! it put there (binary, unit enabled by its own maintainer scripts, conffile, man pages,
//! completions), run `tsm-trace doctor` from it, then `dpkg -r` (everything but the conffile
//! gone) and `dpkg -P` (the root exactly as before, symlinks of the enablement included).
//!
//! The root is made once with `debootstrap --variant=minbase` plus systemd (as PID 1 in the
//! VM test of `dist/shipped.rs`) and init-system-helpers (whose deb-systemd-helper the
//! maintainer scripts call), without documentation, locales and apt's lists and caches, and
//! kept as a tarball in `.vm-cache/dist/`; every run unpacks a fresh copy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::run;
use crate::vm::{cache::cache_dir, kernel::debian_mirror};

const UNIT_WANTS: &str = "etc/systemd/system/multi-user.target.wants/tsm-trace.service";
const CONFFILE: &str = "/etc/default/tsm-trace";

/// What the root holds beside minbase.
const INCLUDE: &str = "--include=init-system-helpers,systemd,systemd-sysv";

/// What is removed from the root once made: nothing the package, dpkg or systemd reads
/// (about 130 of 240 MB, which the VM test would otherwise hold in its RAM).
const TRIM: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
];

/// The cached bookworm root tarball (minbase, systemd), made on first use.
pub fn bookworm_root() -> Result<PathBuf> {
    let dir = cache_dir().join("dist");
    let tar = dir.join("bookworm-systemd.tar");
    if tar.is_file() {
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir)?;
    let build = dir.join("bookworm-build");
    if build.exists() {
        std::fs::remove_dir_all(&build)?;
    }
    println!(
        "dist: debootstrap bookworm (once; cached in {})",
        tar.display()
    );
    run(Command::new("debootstrap")
        .args(["--variant=minbase", INCLUDE, "bookworm"])
        .arg(&build)
        .arg(debian_mirror()))
    .context("debootstrap (cargo xtask setup installs it)")?;
    for t in TRIM {
        let p = build.join(t);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("trimming {}", p.display()))?;
            std::fs::create_dir(&p)?;
        }
    }
    let part = dir.join("bookworm-systemd.tar.part");
    run(Command::new("tar")
        .arg("-C")
        .arg(&build)
        .arg("-cf")
        .arg(&part)
        .arg("."))?;
    std::fs::rename(&part, &tar)?;
    std::fs::remove_dir_all(&build)?;
    Ok(tar)
}

/// Every path under `root` (relative), but dpkg's own database and logs, which a remove
/// rightly changes.
fn snapshot(root: &Path) -> Result<BTreeSet<String>> {
    const SKIP: &[&str] = &["var/lib/dpkg", "var/log", "var/cache", "tmp", "run"];
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            if SKIP
                .iter()
                .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
            {
                continue;
            }
            if e.file_type()?.is_dir() {
                stack.push(p);
            }
            out.insert(rel);
        }
    }
    Ok(out)
}

/// Runs `args` chrooted into `root` as dpkg wants it; returns (exit code, stdout, stderr).
fn chroot(root: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    crate::util::chroot(
        root,
        args,
        &[("DEBIAN_FRONTEND", "noninteractive"), ("LC_ALL", "C")],
    )
}

fn chroot_ok(root: &Path, args: &[&str]) -> Result<String> {
    let (rc, out, err) = chroot(root, args)?;
    if rc != 0 {
        bail!("chroot: `{}` exited {rc}:\n{out}{err}", args.join(" "));
    }
    Ok(out)
}

struct Failures(Vec<String>, usize);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.1 += 1;
        if !ok {
            self.0.push(what());
        }
    }
}

pub fn test(deb: &Path) -> Result<()> {
    let t0 = std::time::Instant::now();
    let tar = bookworm_root()?;
    let root = cache_dir().join("dist/root");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xf")
        .arg(&tar))?;
    let before = snapshot(&root)?;
    std::fs::copy(deb, root.join("tmp/tsm-trace.deb"))
        .context("copying the package into the root")?;
    let mut f = Failures(Vec::new(), 0);

    chroot_ok(&root, &["dpkg", "-i", "/tmp/tsm-trace.deb"])?;
    let status = chroot_ok(&root, &["dpkg-query", "-W", "-f", "${Status}", "tsm-trace"])?;
    f.check(status == "install ok installed", || {
        format!("dpkg status {status:?}")
    });
    let listed = chroot_ok(&root, &["dpkg", "-L", "tsm-trace"])?;
    let files: Vec<&str> = listed
        .lines()
        .filter(|l| {
            root.join(l.trim_start_matches('/'))
                .symlink_metadata()
                .is_ok_and(|m| !m.is_dir())
        })
        .collect();
    for want in [
        "/usr/bin/tsm-trace",
        CONFFILE,
        "/usr/share/man/man1/tsm-trace.1.gz",
        "/usr/share/man/man1/tsm-trace-run.1.gz",
        "/usr/share/man/man1/tsm-trace-doctor.1.gz",
        "/usr/share/bash-completion/completions/tsm-trace",
        "/usr/share/zsh/vendor-completions/_tsm-trace",
        "/usr/share/fish/vendor_completions.d/tsm-trace.fish",
        "/usr/share/doc/tsm-trace/copyright",
    ] {
        f.check(files.contains(&want), || {
            format!("the package did not install {want}")
        });
    }
    let unit = files
        .iter()
        .find(|p| p.ends_with("systemd/system/tsm-trace.service"));
    f.check(unit.is_some(), || {
        format!("no systemd unit among {files:?}")
    });
    // Enabled by the package's own postinst (deb-systemd-helper), not by hand.
    let wants = root.join(UNIT_WANTS);
    f.check(wants.symlink_metadata().is_ok(), || {
        format!("the unit is not enabled: no {UNIT_WANTS}")
    });
    let conffiles = chroot_ok(
        &root,
        &["dpkg-query", "-W", "-f", "${Conffiles}", "tsm-trace"],
    )?;
    f.check(conffiles.contains(CONFFILE), || {
        format!("{CONFFILE} is not a conffile: {conffiles:?}")
    });
    let version = chroot_ok(&root, &["tsm-trace", "--version"])?;
    f.check(version.starts_with("tsm-trace "), || {
        format!("--version printed {version:?}")
    });
    // doctor from the installed binary: a JSON report whose exit code is its exit status.
    let (rc, out, err) = chroot(&root, &["tsm-trace", "doctor", "--json"])?;
    let report: Option<serde_json::Value> = serde_json::from_str(out.trim()).ok();
    let code = report.as_ref().and_then(|r| r["exit_code"].as_i64());
    f.check((0..=2).contains(&rc) && code == Some(i64::from(rc)), || {
        format!("doctor in the root exited {rc} with {out:?} {err:?}")
    });
    println!(
        "dist: installed into a bookworm root: {} files; doctor there says {} (exit {rc})",
        files.len(),
        report
            .as_ref()
            .map_or("?".into(), |r| r["verdict"].to_string())
    );

    chroot_ok(&root, &["dpkg", "-r", "tsm-trace"])?;
    for p in &files {
        let gone = root
            .join(p.trim_start_matches('/'))
            .symlink_metadata()
            .is_err();
        if *p == CONFFILE {
            f.check(!gone, || {
                format!("dpkg -r removed the conffile {p} (only purge may)")
            });
        } else {
            f.check(gone, || format!("dpkg -r left {p}"));
        }
    }
    chroot_ok(&root, &["dpkg", "-P", "tsm-trace"])?;
    let after = snapshot(&root)?;
    let left: Vec<&String> = after.difference(&before).collect();
    let lost: Vec<&String> = before.difference(&after).collect();
    f.check(left.is_empty(), || format!("dpkg -P left {left:?}"));
    f.check(lost.is_empty(), || {
        format!("installing and purging removed {lost:?}")
    });
    std::fs::remove_dir_all(&root)?;
    if !f.0.is_empty() {
        bail!(
            "{} of {} package checks failed:\n  {}",
            f.0.len(),
            f.1,
            f.0.join("\n  ")
        );
    }
    println!(
        "dist: install/remove test ok: {} checks in {:.1}s (dpkg -i, doctor, dpkg -r, dpkg -P: root as before)",
        f.1,
        t0.elapsed().as_secs_f64()
    );
    // The image's root filesystem (its one layer, unpacked by GNU tar), as a runtime would.
    let said = super::oci::run_rootfs(
        &super::oci::dir(&crate::util::root()),
        &cache_dir().join("dist/oci-root"),
    )
    .context("running the OCI image's root filesystem (written by `cargo xtask dist`)")?;
    println!("dist: the OCI image's root filesystem runs: {said}");
    Ok(())
}
