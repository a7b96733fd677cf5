//! Reading and creating files safely: every read has a size cap, files we create are private
//! and never reached through a symlink.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Caps, by kind of file. A file above its cap is refused with [`too_large`].
pub mod cap {
    /// vmlinux BTF when it cannot be mapped (a 7.x vmlinux is ~6 MiB).
    pub const VMLINUX_BTF: u64 = 256 << 20;
    /// One module's split BTF (the largest in-tree modules are a few MiB).
    pub const MODULE_BTF: u64 = 64 << 20;
    /// A sysfs attribute (one page is the most sysfs returns).
    pub const SYSFS_ATTR: u64 = 4096;
    /// A small configuration or PEM file (web config, certificate, key, CA bundle).
    pub const CONFIG: u64 = 1 << 20;
    /// The state file, when `unpin` checks it is one (a million bindings are ~500 MiB).
    pub const STATE: u64 = 1 << 30;
    /// A record file given to `replay`.
    pub const RECORD: u64 = 4 << 30;
    /// One line of a record file.
    pub const RECORD_LINE: u64 = 1 << 20;
    /// `/proc/kallsyms` (or `--kallsyms`): a 7.x distribution kernel lists about 20 MiB.
    pub const KALLSYMS: u64 = 512 << 20;
    /// One line of it (a symbol, its type and its module).
    pub const KALLSYMS_LINE: u64 = 4096;
}

/// The error for a file over its cap: names the file, its cap and what to do.
pub fn too_large(path: &Path, cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is larger than {} bytes, the most tsm-trace reads from such a file",
            path.display(),
            cap
        ),
    )
}

/// Reads at most `cap` bytes of `path`; a longer file is an error (never a silent truncation).
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    read_all_capped(f, path, cap)
}

/// As [`read_capped`], from an open file (`path` names it in errors).
pub fn read_all_capped(f: impl Read, path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // One byte more than allowed tells a file at the cap from one above it.
    f.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_large(path, cap));
    }
    Ok(buf)
}

/// As [`read_capped`], as UTF-8 text.
pub fn read_to_string_capped(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8 text", path.display()),
        )
    })
}

/// Whether the symbolic link `link` (its own metadata `m`) can only have been placed by root:
/// it belongs to root and so does its directory, which no one else can write. Such a link is
/// as trustworthy as a directory root made (systemd's `DynamicUser=` layout links
/// `/run/NAME` into `/run/private/NAME`); any other link is refused where tsm-trace writes.
pub fn root_placed_link(link: &Path, m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = link
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    m.file_type().is_symlink()
        && m.uid() == 0
        && std::fs::symlink_metadata(parent)
            .is_ok_and(|p| p.is_dir() && p.uid() == 0 && p.mode() & 0o022 == 0)
}

/// Creates `path` for writing, mode 0600, never following a symlink at its last component.
/// An existing file is an error unless `overwrite`, and then only a regular file is
/// truncated.
pub fn create_private(path: &Path, overwrite: bool) -> io::Result<File> {
    // What is there decides before anything is opened: opening a FIFO would block, and
    // --force must not be offered for what it cannot overwrite.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a symbolic link; tsm-trace does not write through links",
                    path.display()
                ),
            ));
        }
        Ok(m) if !m.file_type().is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is {}, not a regular file; give a file path",
                    path.display(),
                    file_kind(&m.file_type())
                ),
            ));
        }
        _ => {}
    }
    let mut o = OpenOptions::new();
    o.write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if overwrite {
        o.create(true);
    } else {
        o.create_new(true);
    }
    let f = o.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EEXIST) => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists; pass --force to overwrite it",
                path.display()
            ),
        ),
        Some(libc::ELOOP) => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link; tsm-trace does not write through links",
                path.display()
            ),
        ),
        _ => e,
    })?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if overwrite {
        // The file may have existed with a wider mode: narrow it, then empty it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.set_len(0)?;
    }
    Ok(f)
}

/// "a directory", "a character device", … for messages.
fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `--record` on what is not a regular file: one clear reason, with or without --force.
    #[test]
    fn create_private_refuses_what_is_not_a_file() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("lnk");
        std::os::unix::fs::symlink(d.path().join("target"), &link).unwrap();
        for force in [false, true] {
            for (p, want) in [
                (
                    Path::new("/dev/null"),
                    "is a character device, not a regular file",
                ),
                (d.path(), "is a directory, not a regular file"),
                (link.as_path(), "is a symbolic link"),
            ] {
                let e = create_private(p, force).unwrap_err().to_string();
                assert!(e.contains(want), "force={force} {}: {e}", p.display());
                assert!(!e.contains("--force"), "{e}");
            }
        }
        assert!(!d.path().join("target").exists());
    }

    /// A link is followed only where no one but root could have placed it.
    #[test]
    fn only_links_root_placed_are_trusted() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("tsm-trace");
        symlink(d.path().join("private"), &link).unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        // SAFETY: no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(root_placed_link(&link, &meta(&link)), root);
        // Not a link at all.
        assert!(!root_placed_link(d.path(), &meta(d.path())));
        if root {
            // A directory others can write: anyone could have placed it.
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
            assert!(!root_placed_link(&link, &meta(&link)));
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            // A link of another user.
            std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
            assert!(!root_placed_link(&link, &meta(&link)));
        }
    }

    #[test]
    fn capped_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_capped(&p, 5).unwrap(), b"12345");
        let e = read_capped(&p, 4).unwrap_err().to_string();
        assert!(e.contains("larger than 4 bytes"), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(
            read_to_string_capped(&p, 10)
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
    }

    #[test]
    fn created_private_never_through_a_link_never_clobbering() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cap.jsonl");
        drop(create_private(&p, false).unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Exists: refused without overwrite, names --force.
        let e = create_private(&p, false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        // With overwrite: emptied, still 0600 even if it was wider.
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private(&p, true).unwrap());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 0);
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // A symlink is never followed, with or without overwrite.
        let target = d.path().join("precious");
        std::fs::write(&target, "keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for overwrite in [false, true] {
            let e = create_private(&link, overwrite).unwrap_err().to_string();
            assert!(e.contains("link") || e.contains("exists"), "{e}");
        }
        // A dangling link too (create_new would otherwise create the target).
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        assert!(create_private(&dangling, true).is_err());
        assert!(!d.path().join("nowhere").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        // A directory is not a record file.
        assert!(create_private(d.path(), true).is_err());
    }
}
