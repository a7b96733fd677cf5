//! Where the key of the VM names ([`VmKey`], see [`super::vm_id`]) lives: 32 random bytes in a
//! file, by default [`DEFAULT_PATH`] under `/run` (a tmpfs: one key, hence stable names, per
//! boot, shared by every tsm-trace process of that boot; a reboot makes new names).
//!
//! The key is a secret: with it, a name can be inverted by hashing every candidate pointer.
//! So the file is created 0600 in a directory only its owner can write, never through a
//! symbolic link, and published atomically (written under a private temporary name created
//! with `O_EXCL`, then hard-linked to its name, which fails if another process won the race:
//! then its key is used). A key file that is a link, not a regular file, not ours, readable
//! by others or not exactly 32 bytes is refused with an error that says what to do.
//!
//! When the directory cannot be created or written (a read-only or missing `/run`, no
//! permission), the key is kept in memory only: names are then stable for this process but
//! change when it restarts. The caller logs that once ([`KeySource::InMemory`]).

use std::fs::{DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::vm_id::VmKey;

/// The default key file.
pub const DEFAULT_PATH: &str = "/run/tsm-trace/vm-key";

/// Where the key came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// This process made the key and stored it.
    Created(PathBuf),
    /// The key another tsm-trace process stored this boot.
    Loaded(PathBuf),
    /// The key could not be stored: it lives in this process only.
    InMemory { path: PathBuf, reason: String },
}

impl KeySource {
    /// One line for the log.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Created(p) => {
                format!("VM names (vm#…) use a new key, stored in {}", p.display())
            }
            KeySource::Loaded(p) => format!("VM names (vm#…) use the key in {}", p.display()),
            KeySource::InMemory { path, reason } => format!(
                "cannot keep the VM-name key in {} ({reason}): using a key held in memory, so VM names (vm#…) change each time tsm-trace restarts (--vm-key picks another file)",
                path.display()
            ),
        }
    }
}

/// A key file (or its directory) that must not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}; {fix}")]
pub struct KeyError {
    pub path: PathBuf,
    pub problem: String,
    pub fix: &'static str,
    /// The system call's error, where one failed.
    #[source]
    pub source: Option<io::Error>,
}

const FIX_FILE: &str =
    "remove it (tsm-trace then makes a new key; VM names change) or pick another --vm-key";
const FIX_DIR: &str = "use a directory only its owner can write (the default is /run/tsm-trace), or pick another --vm-key";

fn refuse(path: &Path, problem: impl Into<String>, fix: &'static str) -> KeyError {
    KeyError {
        path: path.to_path_buf(),
        problem: problem.into(),
        fix,
        source: None,
    }
}

/// [`refuse`] because a system call failed with `source`.
fn failed(path: &Path, problem: &str, fix: &'static str, source: io::Error) -> KeyError {
    KeyError {
        source: Some(source),
        ..refuse(path, problem, fix)
    }
}

/// The key in `path`, made and stored there if there is none; in memory if it cannot be
/// stored. Errors only for a file or directory that is unsafe to use.
pub fn load_or_create(path: &Path) -> Result<(VmKey, KeySource), KeyError> {
    let in_memory = |reason: String| -> Result<(VmKey, KeySource), KeyError> {
        let key = VmKey::random().map_err(|e| {
            failed(
                path,
                "no random bytes for a key",
                "check the kernel's random source",
                e,
            )
        })?;
        Ok((
            key,
            KeySource::InMemory {
                path: path.to_path_buf(),
                reason,
            },
        ))
    };
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return in_memory("no directory".into());
    };
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return in_memory(format!("creating {}: {e}", dir.display())),
    }
    check_dir(dir)?;
    // Another process may be creating the file at the same moment: at most two rounds.
    for _ in 0..2 {
        match read_existing(path)? {
            Some(key) => return Ok((key, KeySource::Loaded(path.to_path_buf()))),
            None => match create(dir, path) {
                Ok(Some(key)) => return Ok((key, KeySource::Created(path.to_path_buf()))),
                Ok(None) => continue,
                Err(e) => return in_memory(format!("writing it: {e}")),
            },
        }
    }
    in_memory("another process kept replacing it".into())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn check_dir(dir: &Path) -> Result<(), KeyError> {
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| failed(dir, "cannot be examined", FIX_DIR, e))?;
    // systemd's DynamicUser= with a preserved RuntimeDirectory= makes /run/tsm-trace a link
    // into /run/private/; a link that only root could have placed is followed.
    let m = if m.file_type().is_symlink() {
        if !crate::files::root_placed_link(dir, &m) {
            return Err(refuse(dir, "is a symbolic link", FIX_DIR));
        }
        std::fs::metadata(dir).map_err(|e| failed(dir, "cannot be followed", FIX_DIR, e))?
    } else {
        m
    };
    if !m.is_dir() {
        return Err(refuse(dir, "is not a directory", FIX_DIR));
    }
    if m.uid() != euid() && m.uid() != 0 {
        return Err(refuse(
            dir,
            format!("belongs to uid {}, not to us or root", m.uid()),
            FIX_DIR,
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refuse(
            dir,
            format!("can be written by others (mode {:o})", m.mode() & 0o7777),
            FIX_DIR,
        ));
    }
    Ok(())
}

/// The key in `path`; `None` if there is no such file.
fn read_existing(path: &Path) -> Result<Option<VmKey>, KeyError> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refuse(path, "is a symbolic link", FIX_FILE));
        }
        Err(e) => return Err(failed(path, "cannot be read", FIX_FILE, e)),
    };
    let m = f
        .metadata()
        .map_err(|e| failed(path, "cannot be examined", FIX_FILE, e))?;
    if !m.file_type().is_file() {
        return Err(refuse(path, "is not a regular file", FIX_FILE));
    }
    if m.uid() != euid() {
        return Err(refuse(
            path,
            format!("belongs to uid {}, not to us (uid {})", m.uid(), euid()),
            FIX_FILE,
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(refuse(
            path,
            format!(
                "can be read by others (mode {:o}): the key may be known",
                m.mode() & 0o7777
            ),
            FIX_FILE,
        ));
    }
    if m.len() != VmKey::LEN as u64 {
        return Err(refuse(
            path,
            format!("holds {} bytes, not a {}-byte key", m.len(), VmKey::LEN),
            FIX_FILE,
        ));
    }
    let mut k = [0u8; VmKey::LEN];
    (&f).take(VmKey::LEN as u64)
        .read_exact(&mut k)
        .map_err(|e| failed(path, "cannot be read", FIX_FILE, e))?;
    Ok(Some(VmKey::from_bytes(k)))
}

/// Makes a key and publishes it at `path`; `None` if another process published one first.
fn create(dir: &Path, path: &Path) -> io::Result<Option<VmKey>> {
    let key = VmKey::random()?;
    let tmp = dir.join(format!(".vm-key.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f: File = crate::files::create_private(&tmp, false)?;
        f.write_all(key.bytes())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Some(key)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn created_once_private_then_loaded() {
        let d = private_dir();
        let p = d.path().join("sub/vm-key");
        let (k1, s1) = load_or_create(&p).unwrap();
        assert_eq!(s1, KeySource::Created(p.clone()));
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(m.len(), 32);
        assert_eq!(
            std::fs::metadata(d.path().join("sub"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let (k2, s2) = load_or_create(&p).unwrap();
        assert_eq!(s2, KeySource::Loaded(p.clone()));
        assert_eq!(k1.bytes(), k2.bytes());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
    }

    #[test]
    fn unsafe_files_are_refused_with_what_to_do() {
        let d = private_dir();
        let p = d.path().join("vm-key");
        std::fs::write(&p, [1u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(
            e.contains("can be read by others") && e.contains("remove it"),
            "{e}"
        );

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, [1u8; 5]).unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("holds 5 bytes"), "{e}");

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = load_or_create(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");

        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = load_or_create(&open.path().join("vm-key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("can be written by others"), "{e}");
    }

    #[test]
    fn falls_back_to_memory_when_it_cannot_store() {
        let p = Path::new("/nonexistent-tsm-trace-test/sub/vm-key");
        let (k1, s) = load_or_create(p).unwrap();
        assert!(matches!(&s, KeySource::InMemory { .. }), "{s:?}");
        assert!(
            s.describe().contains("change each time"),
            "{}",
            s.describe()
        );
        let (k2, _) = load_or_create(p).unwrap();
        assert_ne!(k1.bytes(), k2.bytes());
    }
}
