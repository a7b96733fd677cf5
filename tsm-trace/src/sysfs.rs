//! sysfs reconciliation input: `/sys/bus/pci/devices/*/tsm/bound` and `tsm/connect`.
//!
//! `tsm/connect` names the TSM the device is connected to (empty when it is not): the
//! device table is rebuilt from it on every start, so the devices gauge and disconnect
//! attribution are right after any restart. (Versions of the series before 6.19 printed
//! `0`/`1` there: that names no TSM and is not used.)
//!
//! `tsm/bound` holds the TSM's name while the device is bound (TDISP LOCKED/RUN/ERROR) and is
//! empty otherwise. A device without a `tsm/` directory (or without `tsm/bound`, on kernels
//! before the attribute existed) tells nothing: it is [`DeviceState::Unknown`], never unbound.
//! Errors reading one device are recorded and that device is unknown; they never fail the
//! whole snapshot.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The default sysfs mount point.
pub const DEFAULT_ROOT: &str = "/sys";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "tsm")]
pub enum DeviceState {
    /// `tsm/bound` names this TSM.
    Bound(String),
    /// `tsm/bound` exists and is empty.
    Unbound,
    /// No `tsm/` directory, no `tsm/bound`, or it could not be read.
    Unknown,
}

impl DeviceState {
    /// What the contents of a `tsm/bound` attribute say: the TSM's name (surrounding white
    /// space dropped; bytes that are not UTF-8 replaced), or unbound when there is none.
    pub fn parse_bound(bytes: &[u8]) -> DeviceState {
        let text = String::from_utf8_lossy(bytes);
        let name = text.trim();
        if name.is_empty() {
            DeviceState::Unbound
        } else {
            DeviceState::Bound(name.to_string())
        }
    }

    pub const fn label(&self) -> &'static str {
        match self {
            DeviceState::Bound(_) => "bound",
            DeviceState::Unbound => "unbound",
            DeviceState::Unknown => "unknown",
        }
    }
}

/// A per-device read error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SysfsError {
    pub device: String,
    pub path: PathBuf,
    pub error: String,
}

/// What sysfs said about every PCI device at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub root: PathBuf,
    /// BDF → state, for every entry of `<root>/bus/pci/devices`.
    pub devices: BTreeMap<String, DeviceState>,
    /// BDF → the TSM `tsm/connect` names (`None`: not connected), for every device whose
    /// `tsm/connect` could be read and says either.
    pub links: BTreeMap<String, Option<String>>,
    /// Devices whose `tsm/bound` could not be read (they are `Unknown`).
    pub errors: Vec<SysfsError>,
    /// `<root>/bus/pci/devices` itself could not be listed: the snapshot says nothing.
    pub listing_error: Option<String>,
    /// The registered PCIe IDE streams: the `stream<H>.<R>.<E>` links in each host bridge's
    /// directory (`<root>/devices/pci<domain>:<bus>/`); `None` when `<root>/devices` could
    /// not be listed.
    pub ide_streams: Option<Vec<IdeLink>>,
}

/// A registered IDE stream as sysfs shows it (`pci_ide_stream_register` links the host
/// bridge's directory to the endpoint under the stream's name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IdeLink {
    /// `pci0000:00`.
    pub host_bridge: String,
    /// `stream0.0.0`.
    pub name: String,
    /// The endpoint's BDF (the link's last component); `None` when it cannot be read.
    pub endpoint: Option<String>,
}

/// The `stream*` links of every host bridge under `<root>/devices`.
fn read_ide_streams(root: &Path) -> Option<Vec<IdeLink>> {
    let mut links = Vec::new();
    for hb in std::fs::read_dir(root.join("devices")).ok()?.flatten() {
        let host_bridge = hb.file_name().to_string_lossy().into_owned();
        if !host_bridge.starts_with("pci") {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(hb.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("stream") {
                continue;
            }
            let endpoint = std::fs::read_link(e.path())
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
            links.push(IdeLink {
                host_bridge: host_bridge.clone(),
                name,
                endpoint,
            });
        }
    }
    links.sort_by(|a, b| (&a.host_bridge, &a.name).cmp(&(&b.host_bridge, &b.name)));
    Some(links)
}

/// Device counts per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub bound: usize,
    pub unbound: usize,
    pub unknown: usize,
}

/// What is wrong with `root` as the sysfs root (`--sysfs-root`), in one line, if its
/// `bus/pci/devices` cannot be listed: reconciliation would then see no device at all.
pub fn root_problem(root: &Path) -> Option<String> {
    let dir = root.join("bus/pci/devices");
    match std::fs::read_dir(&dir) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "--sysfs-root {}: cannot list {} ({e}): sysfs reconciliation will see no device, so bindings made or ended on unprobed paths go unnoticed; point it at a sysfs tree (default /sys)",
            root.display(),
            dir.display()
        )),
    }
}

impl Snapshot {
    /// Reads `<root>/bus/pci/devices/*/tsm/bound`. `root` is `/sys` in production and a fake
    /// tree in tests.
    pub fn read(root: &Path) -> Snapshot {
        let mut snap = Snapshot {
            root: root.to_path_buf(),
            ..Default::default()
        };
        let dir = root.join("bus/pci/devices");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                snap.listing_error = Some(format!("{}: {e}", dir.display()));
                return snap;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    snap.errors.push(SysfsError {
                        device: String::new(),
                        path: dir.clone(),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let device = entry.file_name().to_string_lossy().into_owned();
            // Entries are symlinks to the device directories: follow them.
            let tsm = entry.path().join("tsm");
            let state = if !tsm.is_dir() {
                DeviceState::Unknown
            } else {
                let bound = tsm.join("bound");
                match crate::files::read_capped(&bound, crate::files::cap::SYSFS_ATTR) {
                    Ok(bytes) => DeviceState::parse_bound(&bytes),
                    Err(e) if e.kind() == ErrorKind::NotFound => DeviceState::Unknown,
                    Err(e) => {
                        snap.errors.push(SysfsError {
                            device: device.clone(),
                            path: bound,
                            error: e.to_string(),
                        });
                        DeviceState::Unknown
                    }
                }
            };
            if tsm.is_dir()
                && let Some(link) = read_link(&tsm.join("connect"))
            {
                snap.links.insert(device.clone(), link);
            }
            snap.devices.insert(device, state);
        }
        snap.ide_streams = read_ide_streams(root);
        snap
    }

    /// How many devices are in each state.
    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for s in self.devices.values() {
            match s {
                DeviceState::Bound(_) => c.bound += 1,
                DeviceState::Unbound => c.unbound += 1,
                DeviceState::Unknown => c.unknown += 1,
            }
        }
        c
    }

    /// Errors in this snapshot (per device, plus one for a failed listing).
    pub fn error_count(&self) -> usize {
        self.errors.len() + usize::from(self.listing_error.is_some())
    }

    pub fn state(&self, device: &str) -> Option<&DeviceState> {
        self.devices.get(device)
    }
}

/// What `tsm/connect` says: the TSM's name, or `None` (not connected); `None` outside the
/// `Option` when it cannot be read or names no TSM (the series' old `0`/`1`).
fn read_link(path: &Path) -> Option<Option<String>> {
    let bytes = crate::files::read_capped(path, crate::files::cap::SYSFS_ATTR).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    match text.trim() {
        "" => Some(None),
        "0" | "1" => None,
        name => Some(Some(name.to_string())),
    }
}

/// Helpers to build fake sysfs trees (tests here and in other modules).
#[cfg(test)]
pub mod fake {
    use std::fs;
    use std::path::Path;

    /// Adds a PCI device directory; `bound`: `None` = no `tsm/` dir, `Some("")` = unbound,
    /// `Some(name)` = bound to `name`.
    pub fn device(root: &Path, bdf: &str, bound: Option<&str>) {
        let dev = root.join("bus/pci/devices").join(bdf);
        fs::create_dir_all(&dev).unwrap();
        if let Some(b) = bound {
            fs::create_dir_all(dev.join("tsm")).unwrap();
            let text = if b.is_empty() {
                "\n".to_string()
            } else {
                format!("{b}\n")
            };
            fs::write(dev.join("tsm/bound"), text).unwrap();
        }
    }

    /// Adds the host bridge's link `stream<key>` to the endpoint `bdf`.
    pub fn ide_stream(root: &Path, host_bridge: &str, key: &str, bdf: &str) {
        let hb = root.join("devices").join(host_bridge);
        fs::create_dir_all(&hb).unwrap();
        std::os::unix::fs::symlink(
            format!("{host_bridge}/0000:00:06.0/{bdf}"),
            hb.join(format!("stream{key}")),
        )
        .unwrap();
    }

    /// Writes the device's `tsm/connect` (`""`: not connected).
    pub fn connect(root: &Path, bdf: &str, tsm: &str) {
        let dir = root.join("bus/pci/devices").join(bdf).join("tsm");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("connect"), format!("{tsm}\n")).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_which_tsm_each_device_is_connected_to() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake::device(root, "0000:01:00.0", Some(""));
        fake::connect(root, "0000:01:00.0", "tsm0");
        fake::device(root, "0000:02:00.0", Some(""));
        fake::connect(root, "0000:02:00.0", "");
        // The series' old boolean names no TSM; no tsm/connect at all says nothing.
        fake::device(root, "0000:03:00.0", Some(""));
        fake::connect(root, "0000:03:00.0", "1");
        fake::device(root, "0000:04:00.0", Some(""));
        fake::device(root, "0000:05:00.0", None);
        let s = Snapshot::read(root);
        let want: BTreeMap<String, Option<String>> = [
            ("0000:01:00.0".to_string(), Some("tsm0".to_string())),
            ("0000:02:00.0".to_string(), None),
        ]
        .into_iter()
        .collect();
        assert_eq!(s.links, want);
    }

    #[test]
    fn reads_bound_unbound_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake::device(root, "0000:01:00.0", Some("tsm0"));
        fake::device(root, "0000:02:00.0", Some(""));
        fake::device(root, "0000:03:00.0", None);
        // tsm/ without bound (older kernel): unknown.
        std::fs::create_dir_all(root.join("bus/pci/devices/0000:04:00.0/tsm")).unwrap();
        let s = Snapshot::read(root);
        assert_eq!(s.listing_error, None);
        assert_eq!(
            s.state("0000:01:00.0"),
            Some(&DeviceState::Bound("tsm0".into()))
        );
        assert_eq!(s.state("0000:02:00.0"), Some(&DeviceState::Unbound));
        assert_eq!(s.state("0000:03:00.0"), Some(&DeviceState::Unknown));
        assert_eq!(s.state("0000:04:00.0"), Some(&DeviceState::Unknown));
        assert_eq!(
            s.counts(),
            StateCounts {
                bound: 1,
                unbound: 1,
                unknown: 2
            }
        );
        assert!(s.errors.is_empty());
        assert_eq!(s.error_count(), 0);
    }

    #[test]
    fn follows_symlinks_like_real_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let real = root.join("devices/pci0000:00/0000:00:01.0");
        std::fs::create_dir_all(real.join("tsm")).unwrap();
        std::fs::write(real.join("tsm/bound"), "tsm1\n").unwrap();
        std::fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(&real, root.join("bus/pci/devices/0000:00:01.0")).unwrap();
        let s = Snapshot::read(root);
        assert_eq!(
            s.state("0000:00:01.0"),
            Some(&DeviceState::Bound("tsm1".into()))
        );
    }

    #[test]
    fn per_device_errors_are_recorded_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake::device(root, "0000:01:00.0", Some("tsm0"));
        // `bound` is a directory: reading it fails with EISDIR.
        std::fs::create_dir_all(root.join("bus/pci/devices/0000:05:00.0/tsm/bound")).unwrap();
        let s = Snapshot::read(root);
        assert_eq!(s.state("0000:05:00.0"), Some(&DeviceState::Unknown));
        assert_eq!(
            s.state("0000:01:00.0"),
            Some(&DeviceState::Bound("tsm0".into()))
        );
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].device, "0000:05:00.0");
        assert_eq!(s.error_count(), 1);
    }

    /// A `bound` larger than a sysfs page is not sysfs: an error, the device unknown.
    #[test]
    fn oversized_attribute_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake::device(root, "0000:06:00.0", Some("tsm0"));
        std::fs::write(
            root.join("bus/pci/devices/0000:06:00.0/tsm/bound"),
            vec![b'a'; 5000],
        )
        .unwrap();
        let s = Snapshot::read(root);
        assert_eq!(s.state("0000:06:00.0"), Some(&DeviceState::Unknown));
        assert!(
            s.errors[0].error.contains("larger than 4096 bytes"),
            "{:?}",
            s.errors
        );
    }

    #[test]
    fn missing_root_is_a_listing_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::read(&dir.path().join("nope"));
        assert!(s.listing_error.is_some());
        assert!(s.devices.is_empty());
        assert_eq!(s.error_count(), 1);
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;

    #[test]
    fn a_root_without_pci_devices_is_named() {
        let why = root_problem(Path::new("/nonexistent")).expect("a warning");
        assert!(
            why.starts_with("--sysfs-root /nonexistent: cannot list /nonexistent/bus/pci/devices"),
            "{why}"
        );
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("bus/pci/devices")).unwrap();
        assert_eq!(root_problem(t.path()), None);
    }
}
