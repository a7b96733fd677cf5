//! Removing what `tsm-trace run` pinned — and nothing else.
//!
//! A pin directory is a path a user types (`--pin-dir`, `TSM_TRACE_PIN_DIR`): a mistake must
//! never remove another tool's pins or files. So before anything is removed, the whole tree
//! under the root is checked against what [`super::pin`] creates:
//!
//! - the root is on a BPF filesystem (tsm-trace pins nowhere else);
//! - it holds only layout directories (12 hex digits, [`super::pin::layout_id`]), each holding
//!   only `maps/` and `links/`;
//! - every `maps/` entry is named like one of [`super::pin::MAPS`] and is a BPF map whose
//!   kernel name is that name;
//! - every `links/` entry is named `<program>@<epoch>` after one of our programs and is a BPF
//!   link whose program carries that program's name.
//!
//! One entry that fails a check refuses the whole removal (nothing is removed) and names the
//! entry and why. A daemon holding the root's lock refuses it too, unless forced.

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya_obj::generated::{bpf_link_info, bpf_map_info, bpf_prog_info};

use super::bpf_sys::{c_name, kernel_name, obj_get, obj_info, object_kind, prog_by_id};
use thiserror::Error;

use super::pin::{BPF_FS_MAGIC, MAPS};

#[derive(Debug, Error)]
pub enum UnpinError {
    #[error(
        "{path} is not on a BPF filesystem, and tsm-trace pins only in bpffs: nothing there is ours; nothing was removed"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "{root} is not tsm-trace's pin directory: {path} {why}; nothing was removed (is --pin-dir right? tsm-trace pins under {})",
        super::pin::DEFAULT_ROOT
    )]
    Foreign {
        root: PathBuf,
        path: PathBuf,
        why: String,
        /// The system call that examined `path`, where one failed.
        #[source]
        source: Option<io::Error>,
    },
    #[error(
        "a running tsm-trace daemon holds {path}; stop it first (`systemctl stop tsm-trace`), or pass --force to detach its probes under it"
    )]
    Busy { path: PathBuf },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpinError + 'a {
    move |source| UnpinError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One pinned object of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// A link: removing it detaches `program` (once no process holds the link).
    Link {
        path: PathBuf,
        program: String,
    },
    Map {
        path: PathBuf,
        name: String,
    },
}

impl Pin {
    pub fn path(&self) -> &Path {
        match self {
            Pin::Link { path, .. } | Pin::Map { path, .. } => path,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Pin::Link { path, program } => {
                format!("{} (link of program {program})", path.display())
            }
            Pin::Map { path, name } => format!("{} (map {name})", path.display()),
        }
    }
}

/// What [`plan`] found: every pin, links first, then the directories (deepest first).
#[derive(Debug, Default)]
pub struct Plan {
    pub pins: Vec<Pin>,
    pub dirs: Vec<PathBuf>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty() && self.dirs.is_empty()
    }
}

pub(crate) fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: all zeroes is a valid statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

/// Whether `name` is a layout directory's name: 12 lowercase hex digits.
pub(crate) fn is_layout_name(name: &str) -> bool {
    name.len() == 12 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The program a link's pin name names (`<program>@<epoch>`), if it is one of ours.
fn link_program(name: &str, programs: &[&str]) -> Option<String> {
    let (program, epoch) = name.rsplit_once('@')?;
    (!epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) && programs.contains(&program))
        .then(|| program.to_string())
}

/// Why a pinned object is not ours: what it is ("is …"), and the failed system call that
/// showed it, if one did.
struct Why(String, Option<io::Error>);

impl From<String> for Why {
    fn from(why: String) -> Why {
        Why(why, None)
    }
}

/// `why`, because a system call failed with `e`.
fn failed(why: impl Into<String>) -> impl FnOnce(io::Error) -> Why {
    move |e| Why(why.into(), Some(e))
}

/// Opens the object pinned at `path`, which must be a BPF `kind` (tsm-trace pins `ours`
/// there).
fn open_pin(path: &Path, kind: &str, ours: &str) -> Result<std::os::fd::OwnedFd, Why> {
    let fd = obj_get(path).map_err(failed("is not a BPF object"))?;
    match object_kind(fd.as_fd()) {
        Some(k) if k == kind => Ok(fd),
        Some(k) => Err(format!("is a BPF {k}, where tsm-trace pins {ours}").into()),
        None => Err(Why("is not a BPF object".into(), None)),
    }
}

/// Checks that `path` is the BPF map `name`.
fn check_map(path: &Path, name: &str) -> Result<(), Why> {
    let fd = open_pin(path, "map", &format!("the map {name}"))?;
    // SAFETY: a plain-data UAPI struct; all zeroes is its empty value.
    let mut info: bpf_map_info = unsafe { std::mem::zeroed() };
    obj_info(fd.as_fd(), &mut info).map_err(failed("has map info that cannot be read"))?;
    let found = c_name(&info.name);
    if found != kernel_name(name) {
        return Err(format!("is a BPF map named {found:?}, not tsm-trace's {name}").into());
    }
    Ok(())
}

/// Checks that `path` is a BPF link of the program `program`.
fn check_link(path: &Path, program: &str) -> Result<(), Why> {
    let fd = open_pin(path, "link", "links")?;
    // SAFETY: as in check_map.
    let mut link: bpf_link_info = unsafe { std::mem::zeroed() };
    obj_info(fd.as_fd(), &mut link).map_err(failed("has link info that cannot be read"))?;
    let prog = prog_by_id(link.prog_id).map_err(failed(format!(
        "links a program (id {}) that cannot be opened",
        link.prog_id
    )))?;
    // SAFETY: as in check_map.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    obj_info(prog.as_fd(), &mut info)
        .map_err(failed("links a program whose info cannot be read"))?;
    let found = c_name(&info.name);
    if found != kernel_name(program) {
        return Err(
            format!("is a link of the program {found:?}, not of tsm-trace's {program}").into(),
        );
    }
    Ok(())
}

/// Every program name tsm-trace attaches, from the compatibility table, and those earlier
/// versions gave the same programs ([`crate::targets::LEGACY_PROGRAMS`]): their pins are ours
/// too.
pub fn program_names() -> Vec<&'static str> {
    crate::targets::TARGETS
        .iter()
        .flat_map(|t| super::program_names(t).map(|(name, _)| name))
        .chain(crate::targets::LEGACY_PROGRAMS.iter().copied())
        .collect()
}

/// `path` (under `root`) is not ours; `why` reads after the path ("is …").
fn foreign(root: &Path, path: &Path, why: impl Into<String>) -> UnpinError {
    not_ours(root, path, Why(why.into(), None))
}

/// [`foreign`], with the failed system call that showed it, if one did.
fn not_ours(root: &Path, path: &Path, Why(why, source): Why) -> UnpinError {
    UnpinError::Foreign {
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        why,
        source,
    }
}

fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, fs::FileType)>, UnpinError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let e = e.map_err(io_err("listing", dir))?;
        let ty = e.file_type().map_err(io_err("reading", &e.path()))?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path(), ty));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Checks one layout directory and returns its pins (links first) and directories.
pub fn plan_layout(dir: &Path, programs: &[&str]) -> Result<Plan, UnpinError> {
    let root = dir.parent().unwrap_or(dir);
    let foreign = |path: &Path, why: &str| foreign(root, path, why);
    let mut plan = Plan::default();
    let mut maps = Vec::new();
    for (name, path, ty) in entries(dir)? {
        if !ty.is_dir() || !matches!(name.as_str(), "maps" | "links") {
            return Err(foreign(
                &path,
                "is in a layout directory, which holds only maps/ and links/",
            ));
        }
        for (entry, p, ety) in entries(&path)? {
            if ety.is_dir() {
                return Err(foreign(&p, "is a directory where tsm-trace pins objects"));
            }
            if name == "maps" {
                if !MAPS.contains(&entry.as_str()) {
                    return Err(foreign(&p, "is named like no map of tsm-trace"));
                }
                check_map(&p, &entry).map_err(|w| not_ours(root, &p, w))?;
                maps.push(Pin::Map {
                    path: p,
                    name: entry,
                });
            } else {
                let Some(program) = link_program(&entry, programs) else {
                    return Err(foreign(
                        &p,
                        "is not named <program>@<epoch> after a program of tsm-trace",
                    ));
                };
                check_link(&p, &program).map_err(|w| not_ours(root, &p, w))?;
                plan.pins.push(Pin::Link { path: p, program });
            }
        }
        plan.dirs.push(path);
    }
    plan.pins.extend(maps);
    plan.dirs.push(dir.to_path_buf());
    Ok(plan)
}

/// Checks everything under `root` (see the module docs). `Ok` of an empty plan when the root
/// does not exist.
pub fn plan(root: &Path) -> Result<Plan, UnpinError> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Plan::default()),
        Err(e) => return Err(io_err("reading", root)(e)),
    };
    if !meta.is_dir() {
        return Err(foreign(root, root, "is not a directory"));
    }
    if !is_bpffs(root) {
        return Err(UnpinError::NotBpffs {
            path: root.to_path_buf(),
        });
    }
    let programs = program_names();
    let mut all = Plan::default();
    for (name, path, ty) in entries(root)? {
        if !ty.is_dir() || !is_layout_name(&name) {
            return Err(foreign(
                root,
                &path,
                "is not a layout directory (tsm-trace's pin directory holds only directories named by 12 hex digits)",
            ));
        }
        let p = plan_layout(&path, &programs)?;
        all.pins.extend(p.pins);
        all.dirs.extend(p.dirs);
    }
    // Links before maps across layouts too: the probes stop before their maps go.
    all.pins.sort_by_key(|p| matches!(p, Pin::Map { .. }));
    all.dirs.push(root.to_path_buf());
    Ok(all)
}

/// Holds the root's lock (the one a daemon holds while it runs) for the removal: a daemon
/// that starts meanwhile finds it taken and refuses to start.
pub struct RootLock {
    _file: fs::File,
}

/// Takes the root's lock: [`UnpinError::Busy`] if a daemon holds it, unless `force`.
pub fn lock(root: &Path, force: bool) -> Result<Option<RootLock>, UnpinError> {
    let f = match fs::File::open(root) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", root)(e)),
    };
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err("locking", root)(e));
        }
        if !force {
            return Err(UnpinError::Busy {
                path: root.to_path_buf(),
            });
        }
        return Ok(None);
    }
    Ok(Some(RootLock { _file: f }))
}

/// Removes what `plan` lists, in its order. Returns the number of pins removed.
pub fn remove(plan: &Plan) -> Result<usize, UnpinError> {
    for p in &plan.pins {
        fs::remove_file(p.path()).map_err(io_err("removing", p.path()))?;
    }
    for d in &plan.dirs {
        fs::remove_dir(d).map_err(io_err("removing", d))?;
    }
    Ok(plan.pins.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_link_names() {
        assert!(is_layout_name(&super::super::pin::layout_id()));
        for bad in [
            "",
            "0123456789ab0",
            "0123456789AB",
            "tsm-trace",
            "0123456789a/",
        ] {
            assert!(!is_layout_name(bad), "{bad}");
        }
        let programs = program_names();
        assert!(programs.contains(&"tsm_bind_entry"), "{programs:?}");
        assert_eq!(
            link_program("tsm_bind_entry@7", &programs).as_deref(),
            Some("tsm_bind_entry")
        );
        // Programs are named after their probe; a link an earlier version pinned under the
        // program's old name is still ours.
        assert_eq!(
            link_program("pci_tsm_bind_return@3", &programs).as_deref(),
            Some("pci_tsm_bind_return")
        );
        assert_eq!(
            link_program("pci_bind_return@2", &programs).as_deref(),
            Some("pci_bind_return")
        );
        for bad in [
            "tsm_bind_entry",
            "tsm_bind_entry@",
            "tsm_bind_entry@x",
            "other_prog@1",
            "@1",
        ] {
            assert_eq!(link_program(bad, &programs), None, "{bad}");
        }
    }

    /// The defect this module exists for: a plain directory holding another tool's files.
    #[test]
    fn refuses_a_plain_directory_and_removes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let other = d.path().join("other");
        fs::create_dir_all(other.join("maps")).unwrap();
        fs::create_dir_all(other.join("links")).unwrap();
        fs::write(other.join("maps/X"), "x").unwrap();
        fs::write(other.join("links/Y"), "y").unwrap();
        let e = plan(d.path()).unwrap_err();
        assert!(matches!(e, UnpinError::NotBpffs { .. }), "{e}");
        assert!(e.to_string().contains("nothing was removed"), "{e}");
        assert!(other.join("maps/X").exists() && other.join("links/Y").exists());
    }

    #[test]
    fn nothing_there_is_an_empty_plan() {
        let d = tempfile::tempdir().unwrap();
        assert!(plan(&d.path().join("absent")).unwrap().is_empty());
        assert!(lock(&d.path().join("absent"), false).unwrap().is_none());
    }

    #[test]
    fn a_file_is_not_a_pin_directory() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "").unwrap();
        let e = plan(&f).unwrap_err();
        assert!(matches!(e, UnpinError::Foreign { .. }), "{e}");
        assert!(f.exists());
    }

    #[test]
    fn a_held_lock_refuses_unless_forced() {
        let d = tempfile::tempdir().unwrap();
        let held = fs::File::open(d.path()).unwrap();
        // SAFETY: a valid descriptor.
        assert_eq!(
            unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let e = lock(d.path(), false).err().expect("busy");
        assert!(matches!(e, UnpinError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(lock(d.path(), true).unwrap().is_none());
        drop(held);
        assert!(lock(d.path(), false).unwrap().is_some());
    }
}
