//! `--user`: the files the daemon keeps writing after it becomes that user are handed to it
//! first: the pin directory (links pinned on a late attach, the next epoch's take-over)
//! and the state file's directory (saved by rename, so the directory must be writable).
//!
//! Only directories that are tsm-trace's own are changed: the pin root, and a state
//! directory named `tsm-trace` (`/run/tsm-trace`). A state file elsewhere is left alone and
//! the caller says what that costs.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `lchown` one path (never follows a symlink).
fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `root` and everything under it to `uid:gid`; returns how many entries changed.
///
/// Needs CAP_CHOWN and no DAC override (the DaemonSet has neither CAP_DAC_OVERRIDE nor
/// CAP_DAC_READ_SEARCH): a directory (mode 0700) is listed while its owner is the caller.
/// Given away, it is listed first and changed last; taken to the caller's own uid (a start
/// as root after a run as `--user`), it is changed first and listed then.
pub fn give_tree(root: &Path, uid: u32, gid: u32) -> io::Result<usize> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let to_self = uid == unsafe { libc::geteuid() };
    give(root, uid, gid, to_self)
}

fn give(p: &Path, uid: u32, gid: u32, to_self: bool) -> io::Result<usize> {
    let change = || {
        lchown(p, uid, gid).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let meta = std::fs::symlink_metadata(p)?;
    if to_self {
        change()?;
    }
    let mut n = 1;
    if meta.is_dir() {
        let entries = std::fs::read_dir(p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        for e in entries {
            n += give(&e?.path(), uid, gid, to_self)?;
        }
    }
    if !to_self {
        change()?;
    }
    Ok(n)
}

/// A start as root with `--user`: takes back what the previous run was given (the pin
/// directory, the state and key directory) before anything in them is opened; a root
/// without CAP_DAC_OVERRIDE cannot search a 0700 directory of another uid, and the key
/// directory must be root's or ours. Missing directories are skipped; returns what failed.
pub fn take_back(dirs: &[&Path]) -> Vec<String> {
    // SAFETY: trivial getters.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut failed = Vec::new();
    for d in dirs {
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() && m.uid() != uid => {
                if let Err(e) = give_tree(d, uid, gid) {
                    failed.push(e.to_string());
                }
            }
            _ => {}
        }
    }
    failed
}

/// The directory of `state_file` if it is tsm-trace's own (named `tsm-trace`).
pub fn own_state_dir(state_file: &Path) -> Option<&Path> {
    state_file
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "tsm-trace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_directory_named_for_us_is_ours() {
        assert_eq!(
            own_state_dir(Path::new("/run/tsm-trace/state.json")),
            Some(Path::new("/run/tsm-trace"))
        );
        assert_eq!(own_state_dir(Path::new("/tmp/state.json")), None);
        assert_eq!(own_state_dir(Path::new("state.json")), None);
    }

    #[test]
    fn a_tree_is_given_to_its_own_owner_without_privileges() {
        let d = std::env::temp_dir().join(format!("tsm-own-{}", std::process::id()));
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        // SAFETY: trivial getters.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!(give_tree(&d, uid, gid).unwrap(), 5);
        std::fs::remove_dir_all(&d).unwrap();
    }
    /// As the DaemonSet runs it: root with CAP_CHOWN but without CAP_DAC_OVERRIDE and
    /// CAP_DAC_READ_SEARCH (capabilities are per thread: dropped in this test's thread only).
    /// The tree is handed to 65534 and taken back, 0700 directories included.
    #[test]
    fn hand_over_and_take_back_need_no_dac_override() {
        use caps::{CapSet, Capability};
        // SAFETY: trivial getter.
        if unsafe { libc::geteuid() } != 0
            || !caps::has_cap(None, CapSet::Effective, Capability::CAP_CHOWN).unwrap_or(false)
        {
            eprintln!("skipped: needs root with CAP_CHOWN");
            return;
        }
        let d = std::env::temp_dir().join(format!("tsm-own-dac-{}", std::process::id()));
        let dir = d.join("tsm-trace");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/state.json"), b"{}").unwrap();
        use std::os::unix::fs::PermissionsExt;
        for p in [dir.clone(), dir.join("sub")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let t = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for c in [
                    Capability::CAP_DAC_OVERRIDE,
                    Capability::CAP_DAC_READ_SEARCH,
                ] {
                    caps::drop(None, CapSet::Effective, c).unwrap();
                }
                let given = give_tree(&dir, 65534, 65534);
                let refused = std::fs::read_dir(&dir).is_err();
                let back = take_back(&[dir.as_path()]);
                (given.map_err(|e| e.to_string()), refused, back)
            })
        };
        let (given, refused, back) = t.join().unwrap();
        let uid_of = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        let after = [
            uid_of(&dir),
            uid_of(&dir.join("sub")),
            uid_of(&dir.join("sub/state.json")),
        ];
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(given.unwrap(), 3, "handed over without DAC override");
        assert!(
            refused,
            "a 0700 directory of uid 65534 must be closed to this thread"
        );
        assert!(back.is_empty(), "taken back without DAC override: {back:?}");
        assert_eq!(after, [0, 0, 0]);
    }
}
