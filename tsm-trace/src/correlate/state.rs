//! The binding and leak tables kept in a file, so that a restart of the daemon (clean or
//! not) neither forgets a binding made before it, and then calls the device
//! `sysfs_bound_without_owner`, nor drops a leak it had reported.
//!
//! The daemon writes the file whenever the tables changed, after each batch of events
//! (write to a temporary file, then rename: a reader or a crash sees the old or the new
//! file, never half of one). It lives in `/run` (a tmpfs): bindings do not survive a reboot
//! and neither does the file; the boot id in it refuses a file from another boot anyway.
//! What happened while no daemon ran is not in the file: it waits in the pinned ring buffer
//! (`probes/pin.rs`) and is applied on top of the restored tables at start.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Correlator;
use super::types::{Binding, Leak};
use crate::events::{Event, Name};

/// The file format. Format 1 (tables only) is read too; a newer format is refused with an
/// explanation.
pub const FORMAT: u32 = 2;

/// The default path (beside the VM-name key, which names the VMs in it).
pub const DEFAULT_PATH: &str = "/run/tsm-trace/state.json";

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub format: u32,
    /// `/proc/sys/kernel/random/boot_id` when it was written.
    pub boot_id: String,
    /// Oldest first.
    pub bindings: Vec<Binding>,
    /// Leaks not cleared.
    pub leaks: Vec<Leak>,
    /// How far the event ring buffer had been read: every record before this position is
    /// in this file, none after it. The next daemon starts reading the pinned ring there
    /// (`probes/ring.rs`), so each record is applied once whatever instant the writer died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingMark>,
    /// Operations in progress: completed calls waiting for their outer call, per thread.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingChain>,
    /// VMs destroyed or VMMs exited whose devices are checked when the grace period ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vm_checks: Vec<SavedVmCheck>,
    /// VM events waiting for a pending chain that ended before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred_points: Vec<Event>,
    /// Each device's link as the probes last saw it (connected to a TSM or not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<SavedLink>,
    /// The correlator's event time (latest return handled).
    #[serde(default)]
    pub clock_ns: u64,
    /// PCIe IDE streams (allocated and not freed), with their leaks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ide_streams: Vec<super::IdeStreamRecord>,
}

/// A position in the event ring buffer: the map's id (unique within a boot) and a byte
/// offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMark {
    pub map_id: u32,
    pub pos: u64,
}

/// A device's link: connected to `tsm` (`None`: disconnected) since `since_ns`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLink {
    pub device: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsm: Option<Name>,
    pub since_ns: u64,
}

/// A thread's completed calls that no outer call has claimed yet (`nesting.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChain {
    pub tid: u32,
    /// When nobody can claim them any more (event time).
    pub deadline_ns: u64,
    /// Outermost first.
    pub frames: Vec<Event>,
}

/// A VM check waiting for its grace period (`bindings.rs`): the VM (its id's bits) or the
/// VMM process whose bindings are checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedVmCheck {
    pub deadline_ns: u64,
    pub event_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_bits: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tgid: Option<u32>,
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a tsm-trace state file; it was moved to {moved} and the daemon starts with empty tables"
    )]
    Malformed {
        path: PathBuf,
        moved: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} has format {found}, this tsm-trace reads format {FORMAT}; it was moved to {moved} and the daemon starts with empty tables"
    )]
    Format {
        path: PathBuf,
        found: u32,
        moved: PathBuf,
    },
    #[error(
        "{path} is not a tsm-trace state file ({why}); it was left alone (is --state-file right?)"
    )]
    NotOurs { path: PathBuf, why: &'static str },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    /// The `reason` label of `tsm_trace_state_load_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            StateError::Read { .. } | StateError::NotOurs { .. } | StateError::Write { .. } => {
                "unreadable"
            }
            StateError::Malformed { .. } => "malformed",
            StateError::Format { .. } => "format",
        }
    }
}

/// Why nothing was restored.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    NoFile,
    /// Written in another boot: its bindings are gone.
    OtherBoot,
}

pub use crate::clock::boot_id;

fn move_aside(path: &Path) -> PathBuf {
    let moved = path.with_extension("json.bad");
    let _ = std::fs::rename(path, &moved);
    moved
}

/// Reads the file of this boot. A malformed file is moved aside (`.json.bad`) and reported.
pub fn load(path: &Path, boot: &str) -> Result<Result<SavedState, Missing>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(Missing::NoFile)),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    match serde_json::from_str::<Head>(&text) {
        // Older formats hold a subset: read with defaults.
        Ok(h) if h.format > FORMAT || h.format == 0 => {
            return Err(StateError::Format {
                path: path.to_path_buf(),
                found: h.format,
                moved: move_aside(path),
            });
        }
        _ => {}
    }
    let state: SavedState =
        serde_json::from_str(&text).map_err(|source| StateError::Malformed {
            path: path.to_path_buf(),
            moved: move_aside(path),
            source,
        })?;
    if !boot.is_empty() && !state.boot_id.is_empty() && state.boot_id != boot {
        return Ok(Err(Missing::OtherBoot));
    }
    Ok(Ok(state))
}

/// Whether `path` is a tsm-trace state file that `unpin` may remove: `Ok(false)` when there
/// is none; an error (and nothing to remove) for anything that is not one (a symbolic link,
/// a directory, a file whose JSON is not `{"format": N, "boot_id": ...}`).
pub fn check_removable(path: &Path) -> Result<bool, StateError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let not_ours = |why| StateError::NotOurs {
        path: path.to_path_buf(),
        why,
    };
    if !meta.file_type().is_file() {
        return Err(not_ours("not a regular file"));
    }
    if meta.len() > crate::files::cap::STATE {
        return Err(not_ours("larger than any state file tsm-trace writes"));
    }
    let text = std::fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Head {
        format: u32,
        boot_id: String,
    }
    serde_json::from_slice::<Head>(&text)
        .map(|_| true)
        .map_err(|_| not_ours("its JSON has no tsm-trace format and boot_id"))
}

/// The temporary file of [`save`] for `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    path.with_extension("json.tmp")
}

/// A temporary file that a save cut short (the daemon killed mid-write) left beside `path`,
/// if it is a regular file (never a symbolic link): `unpin` removes it with the state file.
pub fn leftover_temp(path: &Path) -> Option<PathBuf> {
    let t = temp_path(path);
    std::fs::symlink_metadata(&t)
        .is_ok_and(|m| m.file_type().is_file())
        .then_some(t)
}

/// Writes the file atomically (temporary file in the same directory, then rename), 0600;
/// returns its size.
pub fn save(path: &Path, state: &SavedState) -> Result<u64, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    let body = serde_json::to_vec(state).map_err(|e| err(std::io::Error::other(e)))?;
    if let Err(e) = f.write_all(&body) {
        // A full disk: leave no partial temporary file behind.
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(body.len() as u64)
}

impl Correlator {
    /// Bumped whenever the binding or leak table changes.
    pub fn table_version(&self) -> u64 {
        self.table_version
    }

    /// Changes whenever anything the state file keeps may have changed: the tables, the
    /// pending calls, the VM checks.
    pub fn state_version(&self) -> (u64, u64, usize, usize, usize) {
        (
            self.table_version,
            self.stats.events,
            self.pending_count,
            self.vm_checks.len(),
            self.deferred_points.len(),
        )
    }

    /// What the state file keeps: the tables and the operations in progress.
    pub fn saved_state(&self, boot_id: &str) -> SavedState {
        SavedState {
            ring: None,
            pending: self.pending_chains(),
            vm_checks: self.saved_vm_checks(),
            deferred_points: self.deferred_points.iter().cloned().collect(),
            devices: self.saved_links(),
            ide_streams: self.ide_streams().cloned().collect(),
            clock_ns: self.clock_ns,
            format: FORMAT,
            boot_id: boot_id.to_string(),
            bindings: self
                .binding_order
                .values()
                .filter_map(|d| self.bindings.get(d).map(|(b, _)| b.clone()))
                .collect(),
            leaks: self.leaks.values().cloned().collect(),
        }
    }

    /// Puts saved tables back (at start, before any event). Restored leaks are not counted
    /// as detected again (`tsm_trace_leaks_detected_total` counts detections by this
    /// process); they are current leaks, as before the restart. Returns (bindings, leaks).
    pub fn restore(&mut self, state: SavedState) -> (usize, usize) {
        let mut ignored = Vec::new();
        let (nb, nl) = (state.bindings.len(), state.leaks.len());
        // Names from the VMMs' command lines are kept across restarts (older files have none),
        // unless this daemon runs with `--vm-name stats-id`.
        let keep_names = self.cfg.vmm_names;
        for mut b in state.bindings {
            if !keep_names && let Some(vm) = b.vm.as_mut() {
                vm.vmm = None;
            }
            if let Some(vm) = &b.vm {
                self.vm_names.learn(vm);
            }
            let since = b.since_ns;
            self.insert_binding(b, since, &mut ignored);
        }
        for mut l in state.leaks {
            if self.leaks.len() >= self.cfg.max_leaks {
                break;
            }
            if !keep_names && let Some(vm) = l.vm.as_mut() {
                vm.vmm = None;
            }
            self.leak_count[l.reason as usize] += 1;
            self.leaks.insert((l.device.clone(), l.reason), l);
        }
        for p in state.pending {
            self.restore_pending(p);
        }
        for c in state.vm_checks {
            self.restore_vm_check(c);
        }
        self.deferred_points.extend(state.deferred_points);
        for l in state.devices {
            self.restore_link(l);
        }
        self.restore_ide(state.ide_streams);
        self.clock_ns = self.clock_ns.max(state.clock_ns);
        self.table_version += 1;
        (nb, nl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::types::{BindPath, LeakReason};
    use crate::events::{Vm, VmId};

    fn binding(dev: &str) -> Binding {
        Binding {
            device: dev.into(),
            vm: Some(Vm {
                id: VmId::from_bits(0xabc),
                pid: Some(42),
                stats_id: Some("kvm-42".into()),
                vmm: None,
            }),
            vmm_tgid: 42,
            vmm_comm: "qemu".into(),
            vdevice_id: Some(3),
            tdi_id: Some(9),
            since_ns: 1_000,
            path: BindPath::Ioctl,
            tsm: Some("tsm0".into()),
        }
    }

    fn leak(dev: &str) -> Leak {
        Leak {
            device: dev.into(),
            reason: LeakReason::VmmExited,
            vm: None,
            vmm_tgid: Some(42),
            vmm_comm: Some("qemu".into()),
            vdevice_id: Some(3),
            tdi_id: Some(9),
            bound_since_ns: Some(1_000),
            tsm: None,
            detected_ns: 2_000,
            cleared_ns: None,
            cleared_by: None,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tsm-state-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("state.json")
    }

    #[test]
    fn round_trip_through_the_file_and_the_correlator() {
        let mut c = Correlator::default();
        let st = SavedState {
            format: FORMAT,
            boot_id: "b".into(),
            bindings: vec![binding("0000:01:00.0"), binding("0000:02:00.0")],
            leaks: vec![leak("0000:02:00.0")],
            ..Default::default()
        };
        let v = c.table_version();
        assert_eq!(c.restore(st.clone()), (2, 1));
        assert!(c.table_version() > v);
        assert_eq!(c.binding_count(), 2);
        assert_eq!(c.leak_count(LeakReason::VmmExited), 1);
        // Not a new detection.
        assert!(c.stats().leaks_detected.is_empty());
        let back = c.saved_state("b");
        assert_eq!(back, st);
        let p = tmp("rt");
        save(&p, &back).unwrap();
        assert_eq!(load(&p, "b").unwrap().unwrap(), st);
    }

    #[test]
    fn vm_names_survive_a_restart_and_older_files_still_load() {
        let named = |mut b: Binding| {
            b.vm.as_mut().unwrap().vmm = Some(crate::events::VmmName {
                vmm: "qemu".into(),
                name: "web-1".into(),
            });
            b
        };
        let mut l = leak("0000:02:00.0");
        l.vm = named(binding("x")).vm;
        let st = SavedState {
            format: FORMAT,
            boot_id: "b".into(),
            bindings: vec![named(binding("0000:01:00.0"))],
            leaks: vec![l],
            ..Default::default()
        };
        let p = tmp("names");
        save(&p, &st).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("\"vmm\":{\"vmm\":\"qemu\",\"name\":\"web-1\"}"),
            "{text}"
        );
        let mut c = Correlator::default();
        c.restore(load(&p, "b").unwrap().unwrap());
        let back = c.saved_state("b");
        assert_eq!(back, st);
        assert_eq!(&*back.bindings[0].vm.as_ref().unwrap().name(), "web-1");
        // A file written before the names (no `vmm`) loads: the stats id names the VM.
        let old = text.replace(",\"vmm\":{\"vmm\":\"qemu\",\"name\":\"web-1\"}", "");
        assert!(!old.contains("web-1"));
        std::fs::write(&p, old).unwrap();
        let mut c = Correlator::default();
        c.restore(load(&p, "b").unwrap().unwrap());
        assert_eq!(
            &*c.saved_state("b").bindings[0].vm.as_ref().unwrap().name(),
            "kvm-42"
        );
        // `--vm-name stats-id` drops restored names.
        let mut c = Correlator::new(crate::correlate::Config {
            vmm_names: false,
            ..Default::default()
        });
        c.restore(st);
        let back = c.saved_state("b");
        assert_eq!(&*back.bindings[0].vm.as_ref().unwrap().name(), "kvm-42");
        assert_eq!(&*back.leaks[0].vm.as_ref().unwrap().name(), "kvm-42");
    }

    #[test]
    fn another_boot_and_no_file_restore_nothing() {
        let p = tmp("boot");
        assert_eq!(load(&p, "x").unwrap(), Err(Missing::NoFile));
        let st = Correlator::default().saved_state("old-boot");
        save(&p, &st).unwrap();
        assert_eq!(load(&p, "new-boot").unwrap(), Err(Missing::OtherBoot));
    }

    #[test]
    fn a_malformed_file_is_named_and_moved_aside() {
        let p = tmp("bad");
        std::fs::write(&p, "{\"format\":1,\"boot_id\":\"b\",\"bindings\":[{]}").unwrap();
        let e = load(&p, "b").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("state.json") && msg.contains("json.bad"),
            "{msg}"
        );
        // serde_json names the line and column.
        let src = std::error::Error::source(&e).unwrap().to_string();
        assert!(src.contains("line 1 column"), "{src}");
        assert!(!p.exists() && p.with_extension("json.bad").exists());
    }

    #[test]
    fn another_format_is_refused() {
        let p = tmp("fmt");
        std::fs::write(&p, "{\"format\":99}").unwrap();
        let e = load(&p, "b").unwrap_err().to_string();
        assert!(
            e.contains("format 99") && e.contains(&format!("format {FORMAT}")),
            "{e}"
        );
    }

    /// A file of the previous format (tables only) is read: an upgrade keeps the bindings.
    #[test]
    fn the_previous_format_is_read() {
        let p = tmp("fmt1");
        let b = serde_json::to_string(&binding("0000:01:00.0")).unwrap();
        std::fs::write(
            &p,
            format!("{{\"format\":1,\"boot_id\":\"b\",\"bindings\":[{b}],\"leaks\":[]}}"),
        )
        .unwrap();
        let st = load(&p, "b").unwrap().unwrap();
        assert_eq!(st.bindings.len(), 1);
        assert!(st.ring.is_none() && st.pending.is_empty());
    }
}
