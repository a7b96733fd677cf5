//! Builds the eBPF programs (`tsm-trace-ebpf`, nightly + bpf-linker) and embeds the object.
//! `cargo xtask setup` installs that toolchain. Set `AYA_BUILD_SKIP=1` to skip (the binary
//! then embeds an empty object and refuses to load).
use std::{env, fs, path::PathBuf};

fn main() -> aya_build::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out.join("tsm-trace"), b"")?;
        return Ok(());
    }
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("../tsm-trace-ebpf");
    let root = root.canonicalize()?;
    // The eBPF crate is its own workspace (nightly, bpf target): build it from its directory.
    env::set_current_dir(&root)?;
    let root = root.to_str().expect("utf-8 path");
    println!("cargo:rerun-if-changed={root}/../tsm-trace-common/src");
    // The eBPF crate's dated nightly, named once in its rust-toolchain.toml (aya-build would
    // otherwise run plain `cargo +nightly`, whatever nightly that is today).
    let toolchain_file = format!("{root}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let channel = pinned_channel(&fs::read_to_string(&toolchain_file)?).ok_or_else(|| {
        std::io::Error::other(format!(
            "{toolchain_file}: no `channel = \"nightly-YYYY-MM-DD\"` line"
        ))
    })?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tsm-trace-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )?;
    strip_dwarf(&out.join("tsm-trace"))
}

/// Rewrites the eBPF object without its DWARF sections (`.debug_*` and their relocations):
/// the linker needs DWARF to emit BTF, the loader needs only the BTF (`.BTF`, `.BTF.ext`).
/// Measured on the daemon's start-up: the object drops from 3.4 MB to 0.8 MB, and aya's
/// parse of it (twice at start: `probes/loader.rs` checks it for CO-RE relocations, then
/// loads it) from 11.0 to 7.8 MiB of peak RSS, the daemon's whole start-up peak.
fn strip_dwarf(path: &std::path::Path) -> aya_build::Result<()> {
    let data = fs::read(path)?;
    let mut b = object::build::elf::Builder::read(&*data).map_err(std::io::Error::other)?;
    for s in b.sections.iter_mut() {
        let name = s.name.as_slice();
        if name.starts_with(b".debug") || name.starts_with(b".rel.debug") {
            s.delete = true;
        }
    }
    b.delete_orphans();
    // bpf-linker names sections in `.strtab`, shared with the symbols; the writer keeps
    // section names in a table of their own.
    if !b
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString))
    {
        let s = b.sections.add();
        s.name = (&b".shstrtab"[..]).into();
        s.sh_type = object::elf::SHT_STRTAB;
        s.sh_addralign = 1;
        s.data = object::build::elf::SectionData::SectionString;
    }
    let mut out = Vec::new();
    b.write(&mut out).map_err(std::io::Error::other)?;
    fs::write(path, out)?;
    Ok(())
}

/// `channel = "..."` of a rust-toolchain.toml (xtask's `toolchain.rs` validates it further).
fn pinned_channel(toml: &str) -> Option<String> {
    toml.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
}
