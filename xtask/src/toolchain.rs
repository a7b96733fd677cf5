//! The eBPF toolchain pair: the dated nightly that compiles `tsm-trace-ebpf` and the
//! `bpf-linker` that links its bitcode. Both must use the same LLVM major, or bpf-linker
//! fails with `ERROR llvm: Invalid record` on a fresh machine.
//!
//! One place names the pair: `tsm-trace-ebpf/rust-toolchain.toml` (`channel =
//! "nightly-YYYY-MM-DD"`). Everything else is derived from it at run time: the LLVM major is
//! what that nightly's `rustc -vV` reports, and setup builds bpf-linker against Debian's
//! `llvm-<major>-dev` (see `setup.rs` for why Debian's LLVM and not rustup's). Upgrading is a
//! one-line change of the channel plus `cargo xtask setup`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::root;

/// `tsm-trace-ebpf/rust-toolchain.toml`, the one place the eBPF nightly is named.
pub fn toolchain_file() -> PathBuf {
    root().join("tsm-trace-ebpf/rust-toolchain.toml")
}

/// The pinned eBPF channel, e.g. `nightly-2026-05-20`.
pub fn pinned_channel() -> Result<String> {
    let path = toolchain_file();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_channel(&text).with_context(|| format!("in {}", path.display()))
}

/// The `channel` of a rust-toolchain.toml; it must be a dated nightly.
pub fn parse_channel(toml: &str) -> Result<String> {
    let channel = toml
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .context("no `channel = \"...\"` line")?;
    if channel_date(&channel).is_none() {
        bail!(
            "channel is {channel:?}: pin a dated nightly such as \"nightly-2026-05-20\" (an undated \
             nightly is whatever rustup serves today, whose LLVM may not be bpf-linker's)"
        );
    }
    Ok(channel)
}

/// `2026-05-20` of `nightly-2026-05-20`.
pub fn channel_date(channel: &str) -> Option<&str> {
    let date = channel.strip_prefix("nightly-")?;
    let ok = date.len() == 10
        && date.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    ok.then_some(date)
}

/// The LLVM major of `rustc -vV` output (`LLVM version: 22.1.4` → 22).
pub fn rustc_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
}

/// The LLVM major bpf-linker is linked against, from `ldd` output
/// (`libLLVM.so.22.1 => ...` or `libLLVM-22.so => ...`).
pub fn ldd_llvm_major(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        rest.split(['.', '-']).next()?.parse().ok()
    })
}

/// The triple-suffixed directory rustup keeps a toolchain in.
pub fn toolchain_dir_name(channel: &str) -> String {
    format!("{channel}-{}", host_triple())
}

fn host_triple() -> &'static str {
    "x86_64-unknown-linux-gnu"
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `rustup show home` (honours `RUSTUP_HOME`).
pub fn rustup_home() -> Result<PathBuf> {
    output(Command::new("rustup").args(["show", "home"]))
        .map(|s| PathBuf::from(s.trim()))
        .context("`rustup show home` failed: is rustup installed and on PATH?")
}

/// Is `channel` installed under its own name?
pub fn installed(channel: &str) -> Result<bool> {
    Ok(rustup_home()?
        .join("toolchains")
        .join(toolchain_dir_name(channel))
        .join("bin/rustc")
        .exists())
}

/// An installed toolchain that is the pinned nightly under another name (our images ship the
/// 2026-05-20 build as plain `nightly`): its channel manifest carries the same date.
pub fn same_build_elsewhere(channel: &str) -> Result<Option<PathBuf>> {
    let date = channel_date(channel).context("not a dated nightly")?;
    let dir = rustup_home()?.join("toolchains");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let want = format!("date = \"{date}\"");
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("nightly") || name == toolchain_dir_name(channel) {
            continue;
        }
        let manifest = e.path().join("lib/rustlib/multirust-channel-manifest.toml");
        let Ok(m) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        if m.lines().any(|l| l.trim() == want) && e.path().join("bin/rustc").exists() {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

/// Gives the build at `src` the pinned name without a download: a hard-linked copy of the
/// toolchain directory (rustup refuses `toolchain link` for names of official channels, and a
/// copy stays a normal dist toolchain, so `rustup component add` keeps working on it).
pub fn adopt(src: &Path, channel: &str) -> Result<()> {
    let dst = rustup_home()?
        .join("toolchains")
        .join(toolchain_dir_name(channel));
    crate::util::run(Command::new("cp").arg("-al").arg(src).arg(&dst))
}

/// The nightly's LLVM major (`rustup run CHANNEL rustc -vV`).
pub fn nightly_llvm(channel: &str) -> Result<u32> {
    let vv = output(Command::new("rustup").args(["run", channel, "rustc", "-vV"]))
        .with_context(|| format!("`rustup run {channel} rustc -vV` failed"))?;
    rustc_llvm_major(&vv).with_context(|| format!("no `LLVM version:` in rustc -vV of {channel}"))
}

/// The bpf-linker on PATH and the LLVM major it links, if it is there.
pub fn bpf_linker_llvm() -> Option<(PathBuf, Option<u32>)> {
    let path = which("bpf-linker")?;
    let ldd = output(Command::new("ldd").arg(&path)).unwrap_or_default();
    Some((path, ldd_llvm_major(&ldd)))
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|f| f.is_file())
    })
}

/// The one-line verdict on the pair: `Ok` when nightly and bpf-linker agree.
pub fn check_pair(
    channel: &str,
    nightly: u32,
    linker: Option<(PathBuf, Option<u32>)>,
) -> Result<()> {
    match linker {
        None => bail!(
            "bpf-linker is not on PATH (the eBPF build needs it for {channel}, LLVM {nightly}): run `cargo xtask setup`"
        ),
        Some((path, None)) => bail!(
            "cannot tell which LLVM {} links (no libLLVM in `ldd`); {channel} needs LLVM {nightly}: \
             run `cargo xtask setup --rebuild-bpf-linker`",
            path.display()
        ),
        Some((path, Some(l))) if l != nightly => bail!(
            "{channel} uses LLVM {nightly} but {} links LLVM {l}: run `cargo xtask setup --rebuild-bpf-linker` \
             (or pin a nightly with LLVM {l} in tsm-trace-ebpf/rust-toolchain.toml)",
            path.display()
        ),
        Some(_) => Ok(()),
    }
}

/// Checks the installed pair (a test step of `cargo xtask test`).
pub fn check_installed() -> Result<()> {
    let channel = pinned_channel()?;
    let nightly = nightly_llvm(&channel)?;
    check_pair(&channel, nightly, bpf_linker_llvm())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_must_be_dated() {
        assert_eq!(
            parse_channel("[toolchain]\nchannel = \"nightly-2026-05-20\"\n").unwrap(),
            "nightly-2026-05-20"
        );
        let err = parse_channel("[toolchain]\nchannel = \"nightly\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("pin a dated nightly"),
            "{err:#}"
        );
        assert!(parse_channel("[toolchain]\n").is_err());
        assert!(channel_date("nightly-2026-5-20").is_none());
    }

    #[test]
    fn llvm_majors_parse() {
        let vv =
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(rustc_llvm_major(vv), Some(22));
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x1)\n";
        assert_eq!(ldd_llvm_major(ldd), Some(22));
        assert_eq!(ldd_llvm_major("\tlibLLVM-23.so => /x (0x1)\n"), Some(23));
        assert_eq!(
            ldd_llvm_major("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            None
        );
    }

    #[test]
    fn mismatch_is_one_clear_line() {
        let linker = Some((PathBuf::from("/root/.cargo/bin/bpf-linker"), Some(22)));
        let err = check_pair("nightly-2026-10-30", 23, linker)
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        for part in [
            "nightly-2026-10-30",
            "LLVM 23",
            "LLVM 22",
            "cargo xtask setup --rebuild-bpf-linker",
        ] {
            assert!(err.contains(part), "{part:?} missing in: {err}");
        }
        let linker = Some((PathBuf::from("/x/bpf-linker"), Some(23)));
        assert!(check_pair("nightly-2026-10-30", 23, linker).is_ok());
        assert!(check_pair("nightly-2026-10-30", 23, None).is_err());
    }

    /// The pair installed on this machine agrees (fails, never skips, on a mismatch or when
    /// either half is missing).
    #[test]
    fn installed_pair_agrees() {
        check_installed().unwrap();
    }

    #[test]
    fn repo_pins_a_dated_nightly() {
        pinned_channel().unwrap();
    }
}
