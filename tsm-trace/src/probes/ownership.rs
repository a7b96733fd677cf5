//! `--user`: the files the daemon keeps writing after it becomes that user are handed to it
//! first: the pin directory (links pinned on a late attach, the next generation's take-over)
//! and the state file's directory (saved by rename, so the directory must be writable).
//!
//! Only directories that are tsm-trace's own are changed: the pin root, and a state
//! directory named `tsm-trace` (`/run/tsm-trace`). A state file elsewhere is left alone and
//! the caller says what that costs.

use std::io;
use std::os::unix::ffi::OsStrExt;
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
pub fn give_tree(root: &Path, uid: u32, gid: u32) -> io::Result<usize> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        lchown(&p, uid, gid)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        n += 1;
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(n)
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
}
