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
    )
}

/// `channel = "..."` of a rust-toolchain.toml (xtask's `toolchain.rs` validates it further).
fn pinned_channel(toml: &str) -> Option<String> {
    toml.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
}
