//! Loading BTF: vmlinux (mapped, or copied into a memfd where sysfs cannot map it) and every
//! module's split BTF stacked on it, with a report per object.

use super::*;

pub(super) struct Obj {
    pub(super) name: String,
    pub(super) btf: Btf,
    /// First type id defined by this object (`None` for vmlinux).
    pub(super) split_start: Option<u32>,
}

pub(super) struct Objects {
    /// `[0]` is vmlinux, then modules by name.
    pub(super) list: Vec<Obj>,
    pub(super) unreadable: usize,
}

pub(super) fn load(sources: &BtfSources) -> Result<(Objects, Vec<ObjectReport>), BtfError> {
    let path = &sources.vmlinux;
    // Prefer the mmap backend (parses lazily: a few MiB instead of ~45 MiB of peak RSS for a
    // 7.x vmlinux); sysfs supports mmap of vmlinux BTF only on newer kernels, so fall back to
    // reading and parsing the whole file.
    let vmlinux = match Btf::from_file_with_backend(path, btf_rs::Backend::Mmap) {
        Ok(b) => b,
        Err(_) if let Ok(b) = mapped_copy(path) => b,
        Err(_) => {
            let bytes = crate::files::read_capped(path, crate::files::cap::VMLINUX_BTF).map_err(
                |cause| {
                    if cause.kind() == io::ErrorKind::NotFound {
                        BtfError::VmlinuxMissing { path: path.clone() }
                    } else {
                        BtfError::VmlinuxRead {
                            path: path.clone(),
                            cause,
                        }
                    }
                },
            )?;
            Btf::from_bytes(&bytes).map_err(|cause| BtfError::VmlinuxParse {
                path: path.clone(),
                cause,
            })?
        }
    };
    let (_, end) = vmlinux.base().type_id_range();
    let mut reports = vec![ObjectReport {
        name: "vmlinux".into(),
        path: path.clone(),
        types: end,
        error: None,
    }];

    let dir = &sources.modules_dir;
    let entries = fs::read_dir(dir).map_err(|cause| BtfError::ModulesDir {
        path: dir.clone(),
        cause,
    })?;
    let mut modules: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|cause| BtfError::ModulesDir {
            path: dir.clone(),
            cause,
        })?;
        let p = entry.path();
        // Skip vmlinux itself, whatever the base path is.
        if entry.file_name() == "vmlinux" || same_file(&p, path) {
            continue;
        }
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        modules.push((entry.file_name().to_string_lossy().into_owned(), p));
    }
    modules.sort();

    let mut list = vec![Obj {
        name: "vmlinux".into(),
        btf: vmlinux,
        split_start: None,
    }];
    let mut unreadable = 0;
    for (name, p) in modules {
        let loaded = crate::files::read_capped(&p, crate::files::cap::MODULE_BTF)
            .map_err(|e| format!("read failed: {e}"))
            .and_then(|b| {
                Btf::from_split_bytes(&b, &list[0].btf)
                    .map_err(|e| format!("not split BTF on top of vmlinux: {e}"))
            });
        match loaded {
            Ok(btf) => {
                let (start, end) = btf.split().map(|s| s.type_id_range()).unwrap_or((1, 0));
                reports.push(ObjectReport {
                    name: name.clone(),
                    path: p,
                    types: (end + 1).saturating_sub(start),
                    error: None,
                });
                list.push(Obj {
                    name,
                    btf,
                    split_start: Some(start),
                });
            }
            Err(e) => {
                unreadable += 1;
                reports.push(ObjectReport {
                    name,
                    path: p,
                    types: 0,
                    error: Some(e),
                });
            }
        }
    }
    Ok((Objects { list, unreadable }, reports))
}

/// vmlinux BTF copied into an anonymous memory file and parsed lazily from a mapping of it:
/// where sysfs cannot map vmlinux BTF (6.1), reading and parsing it whole peaks at ~45 MiB
/// of RSS (measured by the storm suite on 6.1); the copy only costs the pages the lazy
/// parse touches. Any failure (no memfd_create, no /proc) falls back to the whole read.
pub(super) fn mapped_copy(path: &Path) -> io::Result<Btf> {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    let src = fs::File::open(path)?;
    // SAFETY: memfd_create takes a NUL-terminated name; the fd returned is ours alone.
    let fd = unsafe { libc::memfd_create(c"tsm-trace-vmlinux-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let mut mem = unsafe { fs::File::from_raw_fd(fd) };
    let cap = crate::files::cap::VMLINUX_BTF;
    let mut buf = vec![0u8; 64 << 10];
    let mut src = src.take(cap + 1);
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > cap {
            return Err(crate::files::too_large(path, cap));
        }
        mem.write_all(&buf[..n])?;
    }
    drop(buf);
    Btf::from_file_with_backend(
        format!("/proc/self/fd/{}", mem.as_raw_fd()),
        btf_rs::Backend::Mmap,
    )
    .map_err(io::Error::other)
}

pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
