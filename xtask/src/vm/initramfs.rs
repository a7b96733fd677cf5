//! The test VM's initramfs: an uncompressed newc cpio written directly (no root, no staging
//! tree) holding busybox-static, `tests/vm/init`, the stand-in module, `/scenarios/run.sh` and
//! any extra host files.
//!
//! Guest layout: `/init`, `/bin/busybox` (applets linked by init), `/dev/console`,
//! `/lib/modules/tsm_standin.ko`, `/lib/modules/tsm_linktsm.ko` (kernels with PCI TSM only),
//! `/lib/modules/tsm_latemod.ko`,
//! `/scenarios/run.sh`, the static helpers of `tests/vm/tools/` (`/bin/sysfs_write`), plus each
//! extra file at its guest path.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::tools;
use crate::util::root as repo_root;

/// Guest path of the stand-in module inside the initramfs.
pub const STANDIN_GUEST_PATH: &str = "/lib/modules/tsm_standin.ko";
/// Guest path of the module loaded and unloaded while tracing.
pub const LATEMOD_GUEST_PATH: &str = "/lib/modules/tsm_latemod.ko";
/// Guest path of the link TSM fixture (present only where it was built).
pub const LINKTSM_GUEST_PATH: &str = "/lib/modules/tsm_linktsm.ko";

/// What goes into one initramfs.
pub struct InitramfsSpec<'a> {
    pub standin_ko: &'a Path,
    /// `tsm_linktsm.ko` if built for this kernel (not loaded by `/init`: scenarios do).
    pub linktsm_ko: Option<&'a Path>,
    /// `tsm_latemod.ko` (not loaded by `/init`: scenarios do).
    pub latemod_ko: Option<&'a Path>,
    /// Contents of `/scenarios/run.sh`.
    pub script: &'a str,
    /// `(host path, guest absolute path)`; the host file's executable bit is kept.
    pub extra_files: &'a [(PathBuf, String)],
}

/// Write the initramfs to `out`.
pub fn build(spec: &InitramfsSpec, out: &Path) -> Result<()> {
    let busybox = find_busybox()?;
    let mut w = Cpio::default();
    w.file(
        "/init",
        &fs::read(repo_root().join("tests/vm/init"))?,
        0o755,
    )?;
    w.file("/bin/busybox", &fs::read(&busybox)?, 0o755)?;
    w.node("/dev/console", 0o020600, (5, 1))?;
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
    ] {
        w.dir(d)?;
    }
    w.file(
        STANDIN_GUEST_PATH,
        &fs::read(spec.standin_ko).with_context(|| spec.standin_ko.display().to_string())?,
        0o644,
    )?;
    for (ko, guest) in [
        (spec.linktsm_ko, LINKTSM_GUEST_PATH),
        (spec.latemod_ko, LATEMOD_GUEST_PATH),
    ] {
        if let Some(ko) = ko {
            w.file(
                guest,
                &fs::read(ko).with_context(|| ko.display().to_string())?,
                0o644,
            )?;
        }
    }
    for (guest, source) in tools::HELPERS {
        w.file(guest, &fs::read(tools::build(source)?)?, 0o755)?;
    }
    w.file("/scenarios/run.sh", spec.script.as_bytes(), 0o755)?;
    // Helpers every scenario sources (`. /scenarios/lib.sh`).
    let lib = repo_root().join("tests/vm/scenarios/lib.sh");
    let lib = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
    w.file("/scenarios/lib.sh", &lib, 0o644)?;
    for (host, guest) in spec.extra_files {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = fs::metadata(host)?.permissions().mode() & 0o777;
        w.file(guest, &data, mode)?;
    }
    let bytes = w.finish();
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}

/// Copy a kernel module into `dir` as a plain `.ko` (busybox `insmod` cannot decompress):
/// `.ko.xz` / `.ko.zst` / `.ko.gz` are decompressed with xz / zstd / gzip. Returns the copy.
pub fn plain_module(src: &Path, dir: &Path) -> Result<PathBuf> {
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, tool) = if let Some(s) = name.strip_suffix(".xz") {
        (s, Some("xz"))
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Some("zstd"))
    } else if let Some(s) = name.strip_suffix(".gz") {
        (s, Some("gzip"))
    } else {
        (name.as_str(), None)
    };
    fs::create_dir_all(dir)?;
    let out = dir.join(stem);
    let data = match tool {
        None => fs::read(src).with_context(|| format!("reading {}", src.display()))?,
        Some(tool) => {
            let o = std::process::Command::new(tool)
                .args(["-dc"])
                .arg(src)
                .output()
                .with_context(|| format!("running {tool} -dc {}", src.display()))?;
            if !o.status.success() {
                bail!(
                    "{tool} -dc {} failed: {}",
                    src.display(),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            o.stdout
        }
    };
    fs::write(&out, data).with_context(|| format!("writing {}", out.display()))?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o644))?;
    Ok(out)
}

pub fn find_busybox() -> Result<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox", "/usr/sbin/busybox"] {
        let p = Path::new(p);
        if p.is_file() {
            if has_interp(&fs::read(p)?) {
                bail!("{} is not static: install busybox-static", p.display());
            }
            return Ok(p.to_owned());
        }
    }
    bail!("busybox not found: apt-get install busybox-static")
}

/// Does an ELF64 file have a PT_INTERP program header (i.e. is it dynamically linked)?
fn has_interp(elf: &[u8]) -> bool {
    let rd = |off: usize, n: usize| -> u64 {
        elf.get(off..off + n)
            .map(|b| b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
            .unwrap_or(0)
    };
    if !elf.starts_with(b"\x7fELF") || elf.get(4) != Some(&2) {
        return false;
    }
    let (phoff, phentsize, phnum) = (
        rd(0x20, 8) as usize,
        rd(0x36, 2) as usize,
        rd(0x38, 2) as usize,
    );
    (0..phnum).any(|i| rd(phoff + i * phentsize, 4) == 3)
}

/// Minimal newc ("070701") cpio writer.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() && mode & 0o170000 != 0o040000 {
            bail!("empty cpio path");
        }
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let namesize = name.len() + 1;
        write!(
            self.buf,
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0
        )?;
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let path = path.trim_start_matches('/');
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if self.dirs.insert(acc.clone()) {
                let a = acc.clone();
                self.entry(&a, 0o040755, &[], (0, 0))?;
            }
        }
        Ok(())
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        self.parents(path)?;
        let p = path.trim_start_matches('/').to_owned();
        if self.dirs.insert(p.clone()) {
            self.entry(&p, 0o040755, &[], (0, 0))?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], perm: u32) -> Result<()> {
        if !path.starts_with('/') {
            bail!("guest path {path:?} must be absolute");
        }
        self.parents(path)?;
        self.entry(path, 0o100000 | (perm & 0o7777), data, (0, 0))
    }

    fn node(&mut self, path: &str, mode: u32, rdev: (u32, u32)) -> Result<()> {
        self.parents(path)?;
        self.entry(path, mode, &[], rdev)
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        // Trailer: ino 0.
        let _ = write!(
            self.buf,
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}TRAILER!!!\0",
            0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0
        );
        self.pad();
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_layout() {
        let mut c = Cpio::default();
        c.file("/a/b/c.txt", b"hello", 0o644).unwrap();
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        // Parent directories come first.
        let s = String::from_utf8_lossy(&out);
        let a = s.find("a\0").unwrap();
        let ab = s.find("a/b\0").unwrap();
        let f = s.find("a/b/c.txt\0").unwrap();
        assert!(a < ab && ab < f);
        assert!(s.contains("TRAILER!!!"));
        assert_eq!(out.len() % 512, 0);
    }

    #[test]
    fn interp_detection() {
        if let Ok(sh) = fs::read("/bin/sh") {
            assert!(has_interp(&sh));
        }
        assert!(!has_interp(b"not an elf"));
    }
}
