//! `cargo xtask dist`: the Debian package (cargo-deb) and the container image recipe.
//!
//! The package holds the stripped static musl binary in /usr/bin, the systemd unit of
//! `deploy/systemd/` (ExecStart in /usr/bin) enabled and started by the maintainer scripts
//! cargo-deb generates, `/etc/default/tsm-trace` (a conffile, every option commented), man
//! pages and bash/zsh/fish completions — all of the last three written by the binary itself
//! (`tsm-trace generate`), so they cannot drift from its flags. lintian must report no error.
//! `install.rs` installs it into a bookworm root and removes it again (`cargo xtask test`).
//! `oci.rs` writes the container image as an OCI layout in `target/dist/oci/` from the same
//! binary, without a container engine, and checks it (skopeo reads it back).

pub mod install;
pub mod manifests;
pub mod oci;
pub mod shipped;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::build::{MUSL, build_static};
use crate::util::{self, root, run};

#[derive(clap::Args, Debug, Default)]
pub struct DistArgs {
    /// Also install the package into a bookworm root, run `tsm-trace doctor` from it, and
    /// remove and purge it (what `cargo xtask test` does).
    #[arg(long)]
    pub test: bool,
}

/// What `dist` built (it prints the binary's size).
pub struct Built {
    pub deb: PathBuf,
}

/// Where `tsm-trace generate` writes (cargo-deb's `target/release/dist-gen`).
fn gen_dir() -> PathBuf {
    root().join("target").join(MUSL).join("release/dist-gen")
}

const UNIT: &str = "deploy/systemd/tsm-trace.service";
const UNIT_EXEC: &str = "ExecStart=/usr/local/bin/tsm-trace ";

/// The unit as packaged: the binary is /usr/bin/tsm-trace.
fn packaged_unit(text: &str) -> Result<String> {
    let n = text.lines().filter(|l| l.starts_with(UNIT_EXEC)).count();
    if n != 1 {
        bail!("{UNIT}: expected one line starting with {UNIT_EXEC:?}, found {n}");
    }
    Ok(text.replace(UNIT_EXEC, "ExecStart=/usr/bin/tsm-trace "))
}

fn generate(bin: &Path) -> Result<()> {
    let out = gen_dir();
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    run(Command::new(bin).arg("generate").arg(&out))?;
    // Man pages compressed as Debian wants them (-n: no name or time stamp, reproducible).
    let pages: Vec<PathBuf> = std::fs::read_dir(out.join("man"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    if pages.is_empty() {
        bail!("tsm-trace generate wrote no man page");
    }
    run(Command::new("gzip").args(["-9nf"]).args(&pages))?;
    let unit =
        std::fs::read_to_string(root().join(UNIT)).with_context(|| format!("reading {UNIT}"))?;
    run(Command::new("strip")
        .arg("-o")
        .arg(out.join("tsm-trace"))
        .arg(bin))?;
    std::fs::write(out.join("changelog"), changelog()?)?;
    std::fs::create_dir_all(out.join("systemd"))?;
    std::fs::write(out.join("systemd/tsm-trace.service"), packaged_unit(&unit)?)?;
    Ok(())
}

/// The Debian changelog: one entry for this version, dated by the last commit (so the
/// package is the same whenever it is built from one commit).
fn changelog() -> Result<String> {
    let version = env!("CARGO_PKG_VERSION");
    let date =
        util::output(
            Command::new("git")
                .current_dir(root())
                .args(["log", "-1", "--format=%aD"]),
        )?;
    Ok(format!(
        "tsm-trace ({version}-1) unstable; urgency=medium\n\n  * tsm-trace {version}: see README.md.\n\n -- tsm-trace developers <tsm-trace@example.invalid>  {}\n",
        date.trim()
    ))
}

/// `usr/bin/tsm-trace` as `deb` holds it.
fn binary_in(deb: &Path) -> Result<Vec<u8>> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -xOf - ./usr/bin/tsm-trace")
        .arg("sh")
        .arg(deb)
        .output()
        .context("running dpkg-deb")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "no usr/bin/tsm-trace in {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// One line of `git` output at the repository root.
fn git(args: &[&str]) -> Result<String> {
    Ok(
        util::output(Command::new("git").current_dir(root()).args(args))?
            .trim()
            .to_string(),
    )
}

/// `key = "value"` of a Cargo.toml (the first such line).
fn toml_string(file: &str, key: &str) -> Result<String> {
    let text =
        std::fs::read_to_string(root().join(file)).with_context(|| format!("reading {file}"))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim_start()
                .strip_prefix('=')?
                .trim()
                .strip_prefix('"')?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .with_context(|| format!("{file}: no {key} = \"...\""))
}

/// The image's tag, `Cmd` and labels: the DaemonSet's image and args, the crate's metadata,
/// the last commit (so one commit gives one image).
fn image_meta() -> Result<oci::Meta> {
    let version = env!("CARGO_PKG_VERSION");
    let (image, cmd) = manifests::daemonset_image_and_args(&root())?;
    if image != format!("tsm-trace:{version}") {
        bail!(
            "deploy/kubernetes/daemonset.yaml runs {image:?}; the image written is tsm-trace:{version} (the crate version): pin that"
        );
    }
    let created = git(&["log", "-1", "--format=%cI"])?;
    let epoch = git(&["log", "-1", "--format=%ct"])?
        .parse()
        .context("git log: commit time")?;
    let labels = [
        ("title", "tsm-trace".to_string()),
        (
            "description",
            toml_string("tsm-trace/Cargo.toml", "description")?,
        ),
        ("version", version.to_string()),
        ("revision", git(&["rev-parse", "HEAD"])?),
        ("created", created.clone()),
        ("licenses", toml_string("Cargo.toml", "license")?),
        ("base.name", "scratch".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v))
    .collect();
    Ok(oci::Meta {
        tag: version.to_string(),
        cmd,
        labels,
        created,
        epoch,
    })
}

/// Builds the package; returns it and the binary's size.
pub fn build() -> Result<Built> {
    let bin = build_static()?;
    generate(&bin)?;
    let out_dir = root().join("target/dist");
    std::fs::create_dir_all(&out_dir)?;
    let out = util::cargo()
        .args([
            "deb",
            "-p",
            "tsm-trace",
            "--no-build",
            "--target",
            MUSL,
            "--output",
        ])
        .arg(&out_dir)
        .output()
        .context("running cargo deb (cargo xtask setup installs cargo-deb)")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deb = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or(""),
    );
    if !deb.is_file() {
        bail!(
            "cargo deb printed no package path: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let packaged = binary_in(&deb)?;
    println!(
        "dist: {} ({} KiB), stripped static binary {:.1} MiB (unstripped {:.1} MiB)",
        deb.display(),
        std::fs::metadata(&deb)?.len() >> 10,
        packaged.len() as f64 / (1 << 20) as f64,
        std::fs::metadata(&bin)?.len() as f64 / (1 << 20) as f64,
    );
    lintian(&deb)?;
    // The image from the binary the package holds, read back and inspected by skopeo.
    let meta = image_meta()?;
    let image = oci::write(&packaged, &oci::dir(&root()), &meta)?;
    let digest = oci::verify(&image.dir, &packaged, &meta)?;
    oci::skopeo_inspect(&image.dir, &meta, &digest)?;
    println!(
        "dist: OCI image {}:{} ({} KiB layer), manifest {digest}; its /tsm-trace is the package's binary; skopeo inspect agrees (copy it with `skopeo copy oci:{}:{} docker://REGISTRY/tsm-trace:{}`)",
        image.dir.display(),
        image.tag,
        image.layer_bytes >> 10,
        image.dir.display(),
        image.tag,
        image.tag,
    );
    Ok(Built { deb })
}

/// lintian: no error (warnings and notes are printed).
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("running lintian (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let errors = text.lines().filter(|l| l.starts_with("E: ")).count();
    let warnings = text.lines().filter(|l| l.starts_with("W: ")).count();
    if !out.status.success() || errors > 0 {
        bail!(
            "lintian: {errors} errors in {} (above){}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("dist: lintian: no errors, {warnings} warnings");
    Ok(())
}

pub fn run_dist(args: &DistArgs) -> Result<()> {
    let built = build()?;
    if args.test {
        install::test(&built.deb)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_unit_runs_usr_bin() {
        let unit = std::fs::read_to_string(root().join(UNIT)).unwrap();
        let p = packaged_unit(&unit).unwrap();
        assert!(p.contains("\nExecStart=/usr/bin/tsm-trace run"));
        assert!(!p.contains("/usr/local/bin/tsm-trace run"));
        assert!(packaged_unit("[Service]\nExecStart=/bin/true\n").is_err());
    }
}
