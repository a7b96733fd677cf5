//! Building the fixture kernel modules against a fetched kernel's headers, with module BTF
//! (the daemon resolves struct offsets from `/sys/kernel/btf/<module>`):
//! - `tests/vm/standin/` → `tsm_standin.ko`, for every kernel;
//! - `tests/vm/latemod/` → `tsm_latemod.ko`, loaded and unloaded while tracing, every kernel;
//! - `tests/vm/linktsm/` → `tsm_linktsm.ko`, a link TSM for the real PCI TSM core, only for
//!   kernels with `CONFIG_PCI_TSM` (7.x); skipped (and any stale copy removed) elsewhere.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::kernel::Kernel;
use crate::util::root as repo_root;

/// One out-of-tree fixture module: its source folder under `tests/vm/`, the files copied into
/// the build folder, and its name.
struct ModuleSrc {
    dir: &'static str,
    name: &'static str,
    sources: &'static [&'static str],
}

const STANDIN: ModuleSrc = ModuleSrc {
    dir: "tests/vm/standin",
    name: "tsm_standin",
    // Every file of the composite module (tests/vm/standin/Kbuild): copied and compared.
    sources: &[
        "standin.h",
        "standin_main.c",
        "standin_ctl.c",
        "standin_cmds.c",
        "standin_storm.c",
        "standin_iommufd.c",
        "standin_req.c",
        "standin_tsm.c",
        "standin_kvm.c",
        "tsm_standin_gen.h",
        "Kbuild",
    ],
};

/// The generations of the iommufd TSM series the stand-in is built as (`STANDIN_GEN`, see
/// `tests/vm/standin/tsm_standin_gen.h`), by the name tsm-trace reports for each.
pub const GENERATIONS: &[(&str, u32)] = &[("v2", 2), ("v5", 5), ("post-v5", 6)];

const LATEMOD: ModuleSrc = ModuleSrc {
    dir: "tests/vm/latemod",
    name: "tsm_latemod",
    sources: &["tsm_latemod.c", "Kbuild"],
};

const LINKTSM: ModuleSrc = ModuleSrc {
    dir: "tests/vm/linktsm",
    name: "tsm_linktsm",
    // Every file of the composite module (tests/vm/linktsm/Kbuild).
    sources: &[
        "linktsm.h",
        "linktsm_main.c",
        "linktsm_cmds.c",
        "linktsm_ops.c",
        "linktsm_tee.c",
        "linktsm_ide.c",
        "linktsm_spdm.c",
        "Kbuild",
    ],
};

/// Build `tsm_standin.ko` for `k` into `k.standin_ko`, and on kernels with `CONFIG_PCI_TSM`
/// `tsm_linktsm.ko` into `k.linktsm_ko`, unless up-to-date builds are cached.
pub fn build(k: &Kernel) -> Result<()> {
    build_one(k, &STANDIN, &k.standin_ko, &[])?;
    build_one(k, &LATEMOD, &k.latemod_ko, &[])
        .with_context(|| format!("building tsm_latemod for {}", k.version))?;
    if k.has_pci_tsm() {
        build_one(k, &LINKTSM, &k.linktsm_ko, &[])
            .with_context(|| format!("building tsm_linktsm for {}", k.version))?;
    } else {
        let _ = fs::remove_file(&k.linktsm_ko);
    }
    Ok(())
}

/// Builds the stand-in as each of [`GENERATIONS`] for `k` (cached like every fixture):
/// `(name, .ko)` pairs, `.vm-cache/kernels/<version>/standin-<name>/tsm_standin.ko`.
pub fn build_generations(k: &Kernel) -> Result<Vec<(&'static str, std::path::PathBuf)>> {
    let base = k
        .standin_ko
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&k.dir);
    let mut out = Vec::new();
    for (name, n) in GENERATIONS {
        let ko = base.join(format!("standin-{name}")).join("tsm_standin.ko");
        build_one(k, &STANDIN, &ko, &[format!("STANDIN_GEN={n}")])
            .with_context(|| format!("building tsm_standin {name} for {}", k.version))?;
        out.push((*name, ko));
    }
    Ok(out)
}

fn build_one(k: &Kernel, m: &ModuleSrc, ko: &Path, make_args: &[String]) -> Result<()> {
    let src = repo_root().join(m.dir);
    let build = ko.parent().unwrap().to_path_buf();
    let args_file = build.join("make-args");
    let up_to_date = ko.is_file()
        && fs::read_to_string(&args_file).ok().as_deref() == Some(make_args.join(" ").as_str())
        && m.sources.iter().all(|f| {
            matches!((fs::read(src.join(f)), fs::read(build.join(f))), (Ok(a), Ok(b)) if a == b)
        });
    if up_to_date {
        return Ok(());
    }
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build)?;
    for f in m.sources {
        fs::copy(src.join(f), build.join(f)).with_context(|| format!("copying {f}"))?;
    }

    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(&k.headers)
        .arg(format!("M={}", build.display()))
        .arg(format!("CC={}", host_cc()))
        // pahole 1.24 (bookworm) has no --btf_features. The headers choose flags from the
        // pahole the kernel was built with (CONFIG_PAHOLE_VERSION), not the one here: 6.12's
        // Makefile.btf adds --btf_features=distilled_base for modules (MODULE_PAHOLE_FLAGS).
        .arg("PAHOLE_FLAGS=--btf_gen_floats -j")
        .arg("MODULE_PAHOLE_FLAGS=")
        .args(make_args)
        .arg("modules");
    if kernel_gcc_major(k) != host_gcc_major() {
        // Built with a newer gcc (7.x: gcc-14); this option's test result does not carry over.
        cmd.arg("CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=");
    }
    if !k
        .headers
        .join("tools/bpf/resolve_btfids/resolve_btfids")
        .exists()
    {
        cmd.arg("RESOLVE_BTFIDS=true");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running make for {}", k.version))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(build.join("build.log"), &log)?;
    let name = m.name;
    if !out.status.success() || !ko.is_file() {
        let _ = fs::remove_file(ko);
        bail!("building {name}.ko for {} failed:\n{log}", k.version);
    }
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(name) && (l.contains("warning:") || l.contains("error:")))
        .collect();
    if !warnings.is_empty() || log.contains("Skipping BTF generation") {
        let _ = fs::remove_file(ko);
        bail!(
            "{name}.ko for {} built with warnings or without BTF:\n{log}",
            k.version
        );
    }
    if !has_btf_section(ko)? {
        let _ = fs::remove_file(ko);
        bail!("{name}.ko for {} has no .BTF section", k.version);
    }
    fs::write(&args_file, make_args.join(" "))?;
    Ok(())
}

fn host_cc() -> String {
    std::env::var("TSM_VM_CC").unwrap_or_else(|_| {
        if Command::new("gcc-12").arg("--version").output().is_ok() {
            "gcc-12".into()
        } else {
            "gcc".into()
        }
    })
}

fn host_gcc_major() -> u32 {
    Command::new(host_cc())
        .arg("-dumpversion")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
        })
        .unwrap_or(0)
}

/// gcc major version from the kernel's `CONFIG_CC_VERSION_TEXT`.
fn kernel_gcc_major(k: &Kernel) -> u32 {
    let config = fs::read_to_string(k.headers.join(".config")).unwrap_or_default();
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_GCC_VERSION="))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map(|v| v / 10000)
        .unwrap_or(0)
}

fn has_btf_section(ko: &Path) -> Result<bool> {
    let out = Command::new("readelf")
        .arg("-S")
        .arg(ko)
        .output()
        .context("running readelf")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|w| w == ".BTF"))
}
