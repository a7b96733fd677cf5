//! State that outlives the daemon: maps and links pinned in bpffs.
//!
//! `tsm-trace run` pins what a restart must not lose under `<root>/<layout>/` (default root
//! `/sys/fs/bpf/tsm-trace`):
//!
//! - `maps/`: the ring buffer of events (what happens while the daemon is down waits there),
//!   the in-flight calls, the VMM table, the self-counters and the exact aggregates (so
//!   `tsm_trace_operations_total` keeps counting across a restart), and the epoch gate;
//! - `links/<program>@<epoch>`: the probes, which keep running while no daemon runs
//!   (bpffs refuses names with a dot: it keeps those for itself).
//!
//! **Handover.** A starting daemon reads the gate (the live epoch `e`), loads its own
//! programs as epoch `e + 1` against the same maps, attaches them next to the old ones,
//! then writes `e + 1` to the gate: from that instant the old programs stand aside (entries,
//! point events and orphans are the live epoch's; a return completes whichever entry is
//! in flight, so a call that straddles the handover is reported once). Then it removes the
//! old epoch's links, whatever their programs are named (the names of earlier versions are
//! in `targets::LEGACY_PROGRAMS`).
//!
//! (An epoch is a daemon's place in this handover; not to be confused with the *generation*
//! of the iommufd TSM patch series a kernel carries, `targets::GENERATIONS`.)
//!
//! **Layouts.** `<layout>` is a hash of everything the two epochs must agree on (record
//! and key sizes, map set, table sizes, [`REVISION`]). A version with another layout (an
//! upgrade or downgrade that changed a record) cannot share the maps: it starts its own
//! directory, attaches, and then removes the other layout's links and maps. The events that
//! waited in the old ring buffer are lost then (logged); the binding table survives anyway,
//! in the state file (`correlate/state.rs`), so no leak is lost or invented.
//!
//! `tsm-trace unpin` removes everything under the root (detaching the probes), after checking
//! that every entry is one of ours (`unpin.rs`).

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, MapData},
    programs::links::PinnedLink,
};
use thiserror::Error;
use tsm_trace_common::{EPOCH_GLOBAL, InflightKey, KernelCounter, RawEvent, aggregates, maps};

use super::unpin::{self, is_bpffs};

/// The default root: one directory per tool in bpffs.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/tsm-trace";

/// Bump when the meaning of a pinned map changes without its sizes changing (2: `INFLIGHT`
/// and `THREAD_OPS` became plain hashes; they were LRU hashes. 3: their entries live as long
/// as their thread, an `INFLIGHT` slot with start time 0 is free; earlier programs would
/// count a free slot as a missed return).
pub const REVISION: u32 = 3;

/// The maps a daemon pins. The rest (offsets, histogram bounds, scratch space, the control
/// ring) belong to one epoch of programs.
pub const MAPS: [&str; 9] = [
    maps::EVENTS,
    maps::INFLIGHT,
    maps::THREAD_OPS,
    maps::VMM_TGIDS,
    maps::STATS,
    maps::OP_COUNTS,
    maps::OP_HIST,
    maps::GATE,
    maps::LAST_RETURN,
];

pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "{path} is not on a BPF filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`), or run with --no-persist"
    )]
    NotBpffs { path: PathBuf },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another tsm-trace run holds {path} (two daemons on one pin directory would take the probes from each other); stop it, or give this one its own --pin-dir and --state-file"
    )]
    Busy { path: PathBuf },
    #[error("removing the other layout {path}")]
    Layout {
        path: PathBuf,
        #[source]
        source: Box<unpin::UnpinError>,
    },
    #[error("reading the epoch gate pinned at {path}")]
    Gate {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The layout this build pins with: 12 hex digits.
pub fn layout_id() -> String {
    let mut h = blake3::Hasher::new();
    let sizes = [
        REVISION as usize,
        core::mem::size_of::<RawEvent>(),
        core::mem::size_of::<InflightKey>(),
        core::mem::size_of::<aggregates::ThreadOp>(),
        aggregates::HIST_LEN as usize,
        KernelCounter::COUNT as usize,
    ];
    for s in sizes {
        h.update(&(s as u64).to_le_bytes());
    }
    for m in MAPS {
        h.update(m.as_bytes());
        h.update(b"\0");
    }
    h.finalize().to_hex()[..12].to_string()
}

/// Where the links of this epoch are pinned.
#[derive(Clone, Debug)]
pub struct LinkPins {
    dir: PathBuf,
    epoch: u32,
}

impl LinkPins {
    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(format!("{program}@{}", self.epoch))
    }
}

/// This daemon's place in the pinned state.
#[derive(Debug)]
pub struct Pinned {
    root: PathBuf,
    dir: PathBuf,
    /// This daemon's epoch.
    pub epoch: u32,
    /// The epoch the gate held (pinned programs were running), if any.
    pub previous: Option<u32>,
    /// `flock` on the root, held while this value lives.
    _lock: fs::File,
}

/// What [`Pinned::go_live`] replaced.
#[derive(Debug, Default)]
pub struct Handover {
    /// Links of earlier epochs of this layout, removed.
    pub old_links: usize,
    /// Directories of other layouts, removed with their links and maps.
    pub other_layouts: Vec<String>,
    /// Entries of the root that are not tsm-trace's (or not wholly): left alone, with why.
    pub left_alone: Vec<String>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn mkdir_private(path: &Path) -> Result<(), PinError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("creating", path)(e)),
    }
}

impl Pinned {
    /// Prepares `<root>/<layout>/` and reads the gate of the programs pinned there, if any.
    pub fn prepare(root: &Path) -> Result<Pinned, PinError> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && !is_bpffs(root) {
            return Err(PinError::NotBpffs {
                path: parent.to_path_buf(),
            });
        }
        mkdir_private(root)?;
        let lock = fs::File::open(root).map_err(io("opening", root))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(PinError::Busy {
                    path: root.to_path_buf(),
                });
            }
            return Err(io("locking", root)(e));
        }
        let dir = root.join(layout_id());
        mkdir_private(&dir)?;
        mkdir_private(&dir.join("maps"))?;
        mkdir_private(&dir.join("links"))?;
        let gate = dir.join("maps").join(maps::GATE);
        let previous = if gate.exists() {
            let map = MapData::from_pin(&gate).map_err(|source| PinError::Gate {
                path: gate.clone(),
                source,
            })?;
            let arr: Array<MapData, u32> =
                Array::try_from(aya::maps::Map::Array(map)).map_err(|source| PinError::Gate {
                    path: gate.clone(),
                    source,
                })?;
            let g = arr.get(&0, 0).map_err(|source| PinError::Gate {
                path: gate.clone(),
                source,
            })?;
            // A gate of 0 was created but never opened: nothing ran.
            (g != 0).then_some(g)
        } else {
            None
        };
        let epoch = previous.unwrap_or(0).wrapping_add(1).max(1);
        Ok(Pinned {
            root: root.to_path_buf(),
            dir,
            epoch,
            previous,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What of this daemon's pins is gone (bpffs unmounted, files removed by hand): the
    /// maps and the links directory, by path. The programs and maps keep running on this
    /// process's references; only the next daemon would not find them.
    pub fn missing(&self) -> Vec<PathBuf> {
        let maps = self.dir.join("maps");
        MAPS.iter()
            .map(|m| maps.join(m))
            .chain([self.dir.join("links")])
            .filter(|p| !p.exists())
            .collect()
    }

    /// Points the loader's state maps at their pins (created there if missing) and gives the
    /// programs their epoch. A map already pinned keeps its size (the ring buffer's
    /// `--ringbuf-size` applies when it is created): returns `(map, pinned size)` where the
    /// pinned size is not what `wanted` asks.
    pub fn configure<'a>(
        &'a self,
        loader: &mut EbpfLoader<'a>,
        wanted: &[(&str, u32)],
    ) -> Vec<(&'static str, u32)> {
        let mut kept = Vec::new();
        for m in MAPS {
            let path = self.dir.join("maps").join(m);
            if let Ok(info) = aya::maps::MapInfo::from_pin(&path) {
                let n = info.max_entries();
                loader.map_max_entries(m, n);
                if wanted.iter().any(|(w, size)| *w == m && *size != n) {
                    kept.push((m, n));
                }
            }
            loader.map_pin_path(m, path);
        }
        loader.override_global(EPOCH_GLOBAL, &self.epoch, true);
        kept
    }

    pub fn link_pins(&self) -> LinkPins {
        LinkPins {
            dir: self.dir.join("links"),
            epoch: self.epoch,
        }
    }

    /// Opens the gate to this epoch (the old programs stand aside), then removes the
    /// old epochs' links and other layouts' state.
    pub fn go_live(&self, gate: &mut Array<MapData, u32>) -> Result<Handover, PinError> {
        gate.set(0, self.epoch, 0)
            .map_err(|source| PinError::Gate {
                path: self.dir.join("maps").join(maps::GATE),
                source,
            })?;
        let mut h = Handover::default();
        let suffix = format!("@{}", self.epoch);
        let links = self.dir.join("links");
        for e in fs::read_dir(&links)
            .map_err(io("listing", &links))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(&suffix) {
                remove_link(&e.path())?;
                h.old_links += 1;
            }
        }
        let mine = self.dir.file_name().map(|n| n.to_os_string());
        let programs = unpin::program_names();
        for e in fs::read_dir(&self.root)
            .map_err(io("listing", &self.root))?
            .flatten()
        {
            if Some(e.file_name()) == mine {
                continue;
            }
            // Only what passes unpin's checks is removed: a mistaken --pin-dir must not
            // cost another tool its pins.
            match unpin::plan_layout(&e.path(), &programs) {
                Ok(plan) if unpin::is_layout_name(&e.file_name().to_string_lossy()) => {
                    unpin::remove(&plan).map_err(|source| PinError::Layout {
                        path: e.path(),
                        source: Box::new(source),
                    })?;
                    h.other_layouts
                        .push(e.file_name().to_string_lossy().into_owned());
                }
                Ok(_) => h.left_alone.push(format!(
                    "{}: not named like a tsm-trace layout",
                    e.path().display()
                )),
                Err(why) => h.left_alone.push(why.to_string()),
            }
        }
        Ok(h)
    }
}

/// Unpins a link (which detaches its program once no process holds it).
fn remove_link(path: &Path) -> Result<(), PinError> {
    match PinnedLink::from_pin(path) {
        Ok(l) => l.unpin().map(drop).map_err(io("unpinning", path)),
        // Not a link (or unreadable): remove the file anyway, it is ours.
        Err(_) => fs::remove_file(path).map_err(io("removing", path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_id_is_stable_hex() {
        let a = layout_id();
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, layout_id());
    }

    #[test]
    fn refuses_a_directory_off_bpffs() {
        let d = std::env::temp_dir().join(format!("tsm-pin-{}", std::process::id()));
        let e = Pinned::prepare(&d.join("tsm-trace")).unwrap_err();
        assert!(matches!(e, PinError::NotBpffs { .. }), "{e}");
        assert!(e.to_string().contains("--no-persist"));
    }

    #[test]
    fn link_paths_carry_the_epoch() {
        let p = LinkPins {
            dir: PathBuf::from("/sys/fs/bpf/tsm-trace/x/links"),
            epoch: 7,
        };
        assert_eq!(
            p.path("tsm_bind_entry"),
            PathBuf::from("/sys/fs/bpf/tsm-trace/x/links/tsm_bind_entry@7")
        );
    }
}
