//! bpftrace for the bench VM: Debian trixie's `bpftrace` package and its dependency closure,
//! downloaded through the private apt root of `xtask/src/vm/kernel.rs` (nothing installed on
//! the host), unpacked with `dpkg -x` into `.vm-cache/bpftrace/root/`, and put into the guest
//! as `/opt/bpftrace/bin/bpftrace` + the shared objects it needs (`DT_NEEDED`, transitively) in
//! `/opt/bpftrace/lib/`, with a `/bin/bpftrace` wrapper that starts it through the package's
//! own `ld-linux-x86-64.so.2 --library-path /opt/bpftrace/lib` (the guest has no libc).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::vm::cache::cache_dir;
use crate::vm::kernel::AptRoot;

/// Where the guest finds it.
pub const GUEST_DIR: &str = "/opt/bpftrace";
const LIB_DIRS: [&str; 2] = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"];

/// bpftrace staged for the guest: the extra files and the package version.
pub struct Staged {
    pub files: Vec<(PathBuf, String)>,
    pub version: String,
    pub bytes: u64,
}

/// Downloads (once) and stages bpftrace; the error says why it is not available.
pub fn stage() -> Result<Staged> {
    let dir = cache_dir().join("bpftrace");
    let root = dir.join("root");
    let ready = dir.join("ready");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&dir);
        let debs = dir.join("debs");
        AptRoot::Trixie
            .download_closure(&["bpftrace"], &debs)
            .context("downloading bpftrace and its dependencies from Debian trixie")?;
        let mut n = 0;
        for e in fs::read_dir(&debs)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "deb") {
                crate::util::run_quiet(Command::new("dpkg").arg("-x").arg(&p).arg(&root))
                    .with_context(|| format!("dpkg -x {}", p.display()))?;
                n += 1;
            }
        }
        if n == 0 {
            bail!("apt-get downloaded no package into {}", debs.display());
        }
        fs::write(&ready, format!("{n} packages\n"))?;
    }
    let version = fs::read_dir(dir.join("debs"))?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("bpftrace_")
                .and_then(|v| v.split('_').next())
                .map(str::to_owned)
        })
        .next()
        .unwrap_or_else(|| "?".into());
    let bin = root.join("usr/bin/bpftrace");
    if !bin.exists() {
        bail!("{} missing after unpacking", bin.display());
    }
    let mut files = vec![(bin.clone(), format!("{GUEST_DIR}/bin/bpftrace"))];
    let mut bytes = fs::metadata(&bin)?.len();
    for lib in closure(&root, &bin)? {
        let name = lib.file_name().unwrap().to_string_lossy().into_owned();
        bytes += fs::metadata(&lib)?.len();
        files.push((lib, format!("{GUEST_DIR}/lib/{name}")));
    }
    // The loader itself (not a DT_NEEDED of the executable, its PT_INTERP).
    let ld = find_lib(&root, "ld-linux-x86-64.so.2")
        .ok_or_else(|| anyhow!("no ld-linux-x86-64.so.2 among the unpacked packages"))?;
    if !files
        .iter()
        .any(|(_, g)| g.ends_with("/ld-linux-x86-64.so.2"))
    {
        bytes += fs::metadata(&ld)?.len();
        files.push((ld, format!("{GUEST_DIR}/lib/ld-linux-x86-64.so.2")));
    }
    let wrapper = dir.join("bpftrace.sh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# Debian trixie's bpftrace {version}, through its own loader (see xtask/src/bench/bpftrace.rs).\nexec {GUEST_DIR}/lib/ld-linux-x86-64.so.2 --library-path {GUEST_DIR}/lib {GUEST_DIR}/bin/bpftrace \"$@\"\n"
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    }
    files.push((wrapper, "/bin/bpftrace".into()));
    Ok(Staged {
        files,
        version,
        bytes,
    })
}

fn find_lib(root: &Path, soname: &str) -> Option<PathBuf> {
    LIB_DIRS
        .iter()
        .map(|d| root.join(d).join(soname))
        .find(|p| p.exists())
}

/// Every shared object `bin` needs, transitively, resolved in the unpacked tree (symlinks
/// followed: the guest gets a regular file under the soname).
fn closure(root: &Path, bin: &Path) -> Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut todo = vec![bin.to_path_buf()];
    while let Some(f) = todo.pop() {
        let data = fs::read(&f).with_context(|| f.display().to_string())?;
        for n in needed(&data).with_context(|| format!("parsing {}", f.display()))? {
            if !seen.insert(n.clone()) {
                continue;
            }
            let p = find_lib(root, &n).ok_or_else(|| {
                anyhow!(
                    "{} needs {n}, which no unpacked package provides",
                    f.display()
                )
            })?;
            todo.push(p.clone());
            out.push(p);
        }
    }
    Ok(out)
}

fn u16_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?) as u64)
}
fn u32_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?) as u64)
}
fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?))
}

/// `DT_NEEDED` entries of a little-endian ELF64 file (PT_DYNAMIC, strings via DT_STRTAB mapped
/// through the PT_LOAD segments).
pub fn needed(d: &[u8]) -> Result<Vec<String>> {
    let bad = || anyhow!("not a little-endian ELF64 file, or truncated");
    if d.get(..4) != Some(b"\x7fELF") || d.get(4) != Some(&2) || d.get(5) != Some(&1) {
        return Err(bad());
    }
    let phoff = u64_at(d, 0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(d, 0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(d, 0x38).ok_or_else(bad)? as usize;
    let mut loads = Vec::new(); // (vaddr, offset, filesz)
    let mut dynamic = None; // (offset, size)
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let ty = u32_at(d, o).ok_or_else(bad)?;
        let off = u64_at(d, o + 8).ok_or_else(bad)?;
        let vaddr = u64_at(d, o + 16).ok_or_else(bad)?;
        let filesz = u64_at(d, o + 32).ok_or_else(bad)?;
        match ty {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((off, filesz)),
            _ => {}
        }
    }
    let Some((doff, dsize)) = dynamic else {
        return Ok(Vec::new()); // static
    };
    let mut strtab = None;
    let mut names = Vec::new();
    let mut o = doff as usize;
    while o + 16 <= (doff + dsize) as usize {
        let tag = u64_at(d, o).ok_or_else(bad)?;
        let val = u64_at(d, o + 8).ok_or_else(bad)?;
        match tag {
            0 => break,
            1 => names.push(val),
            5 => strtab = Some(val),
            _ => {}
        }
        o += 16;
    }
    let strtab = strtab.ok_or_else(|| anyhow!("PT_DYNAMIC without DT_STRTAB"))?;
    let file_off = loads
        .iter()
        .find(|(v, _, sz)| strtab >= *v && strtab < v + sz)
        .map(|(v, off, _)| strtab - v + off)
        .ok_or_else(|| anyhow!("DT_STRTAB outside every PT_LOAD"))?;
    names
        .into_iter()
        .map(|n| {
            let start = (file_off + n) as usize;
            let rest = d.get(start..).ok_or_else(bad)?;
            let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_of_the_running_test_binary() {
        // The test binary itself is a dynamic ELF64 that needs libc.
        let exe = std::env::current_exe().unwrap();
        let n = needed(&fs::read(exe).unwrap()).unwrap();
        assert!(n.iter().any(|s| s.starts_with("libc.so")), "{n:?}");
    }

    #[test]
    fn not_elf() {
        assert!(needed(b"#!/bin/sh\n").is_err());
    }
}
