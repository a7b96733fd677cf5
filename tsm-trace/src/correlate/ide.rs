//! PCIe IDE streams (drivers/pci/ide.c): each stream a link TSM's connect sets up between an
//! endpoint and its root port, followed from `pci_ide_stream_alloc` to `_free`, and the
//! streams a disconnect left behind.
//!
//! ```text
//! alloc ─▶ allocated ─setup─▶ set_up ─enable─▶ enabled      (both ports Secure)
//!                                         └──▶ not_secure   (-ENXIO: never reached Secure)
//!          register / unregister: `registered` (the sysfs link stream<H>.<R>.<E>)
//!          disable ─▶ disabled ─teardown─▶ torn_down ─free / release─▶ (gone)
//! ```
//!
//! A stream is keyed by its endpoint and `<H>.<R>.<E>` (host bridge stream, root port and
//! endpoint register blocks: what `pci_ide_stream_alloc` assigns and the sysfs name spells).
//! A stream still registered, or with a port still enabled, when the disconnect of its
//! endpoint returns is leaked: its stream id stays taken on the host bridge and blocks later
//! connects. sysfs (`/sys/devices/pci<domain>:<bus>/stream<H>.<R>.<E>`) is the cross-check:
//! a registered stream it no longer shows is gone, one it shows that the table does not know
//! (made while no daemon watched, or before a restart that lost the state file) is learned,
//! and leaked if its endpoint is not connected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Correlator;
use super::types::{OpKind, Operation, Output};
use crate::events::{Event, IdeStream, Name, ProbeId, UnbindCause};
use crate::sysfs::Snapshot;

/// Where a stream is in its lifecycle (the last step that changed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdeState {
    /// `pci_ide_stream_alloc` returned it.
    Allocated,
    /// `pci_ide_stream_setup` programmed a port.
    SetUp,
    /// `pci_ide_stream_enable` returned 0 on every port it was called on: Secure.
    Enabled,
    /// `pci_ide_stream_enable` failed on a port (-ENXIO: the stream did not reach Secure).
    NotSecure,
    /// `pci_ide_stream_disable` on a port (of a stream that was Secure).
    Disabled,
    /// `pci_ide_stream_teardown` on a port.
    TornDown,
    /// Learned from sysfs (registered, steps not seen): the daemon started after them.
    Unknown,
}

impl IdeState {
    pub const ALL: [IdeState; 7] = [
        IdeState::Allocated,
        IdeState::SetUp,
        IdeState::Enabled,
        IdeState::NotSecure,
        IdeState::Disabled,
        IdeState::TornDown,
        IdeState::Unknown,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            IdeState::Allocated => "allocated",
            IdeState::SetUp => "set_up",
            IdeState::Enabled => "enabled",
            IdeState::NotSecure => "not_secure",
            IdeState::Disabled => "disabled",
            IdeState::TornDown => "torn_down",
            IdeState::Unknown => "unknown",
        }
    }
}

/// Why a stream is believed leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdeLeakReason {
    /// Its endpoint was disconnected (`tsm/disconnect`, or sysfs shows it not connected).
    DeviceDisconnected,
    /// Its endpoint was removed.
    DeviceRemoved,
    /// The TSM its endpoint was connected to unregistered.
    TsmUnregistered,
}

impl IdeLeakReason {
    pub const ALL: [IdeLeakReason; 3] = [
        IdeLeakReason::DeviceDisconnected,
        IdeLeakReason::DeviceRemoved,
        IdeLeakReason::TsmUnregistered,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            IdeLeakReason::DeviceDisconnected => "device_disconnected",
            IdeLeakReason::DeviceRemoved => "device_removed",
            IdeLeakReason::TsmUnregistered => "tsm_unregistered",
        }
    }

    fn of(cause: UnbindCause) -> IdeLeakReason {
        match cause {
            UnbindCause::DeviceRemoval => IdeLeakReason::DeviceRemoved,
            UnbindCause::TsmUnregister | UnbindCause::ModuleUnloaded => {
                IdeLeakReason::TsmUnregistered
            }
            UnbindCause::Disconnect | UnbindCause::Unbind => IdeLeakReason::DeviceDisconnected,
        }
    }
}

/// One port of a stream (the endpoint's or the root port's register block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdePort {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_up: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    /// The last `pci_ide_stream_enable` of this port failed (with this errno).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_errno: Option<i32>,
}

/// A stream as the table knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdeStreamRecord {
    pub endpoint: String,
    /// `<H>.<R>.<E>`.
    pub key: String,
    /// The root port (the partner the setup/enable calls named that is not the endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_port: Option<String>,
    /// The host bridge (`pci0000:00`), from sysfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_bridge: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<i32>,
    /// The sysfs name while registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub registered: bool,
    pub state: IdeState,
    pub ep: IdePort,
    pub rp: IdePort,
    /// The TSM the endpoint was connected to when the stream was allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsm: Option<Name>,
    /// When it was allocated (or learned), and when it last changed.
    pub since_ns: u64,
    pub changed_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak: Option<IdeLeak>,
}

impl IdeStreamRecord {
    /// Still holding the host bridge's stream id or a port's keys.
    fn holds(&self) -> bool {
        self.registered || self.ep.enabled || self.rp.enabled
    }

    /// `stream0.0.0` when registered, else `<H>.<R>.<E>`.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.key)
    }
}

/// A stream left registered or enabled after its endpoint disconnected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdeLeak {
    pub reason: IdeLeakReason,
    pub detected_ns: u64,
}

/// A stream leak detected or cleared ([`Output::IdeStreamLeaked`],
/// [`Output::IdeStreamLeakCleared`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdeLeakChange {
    pub stream: IdeStreamRecord,
    pub reason: IdeLeakReason,
    pub time_ns: u64,
    /// Why a leak stopped being one: `released` (unregistered/disabled/freed), `sysfs_gone`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_by: Option<&'static str>,
}

/// The end of `s`'s leak, if it has one (the stream as it was, leak included).
fn leak_cleared(s: &IdeStreamRecord, at: u64, by: &'static str) -> Option<Output> {
    let l = s.leak.as_ref()?;
    Some(Output::IdeStreamLeakCleared(IdeLeakChange {
        reason: l.reason,
        stream: s.clone(),
        time_ns: at,
        cleared_by: Some(by),
    }))
}

/// The table: (endpoint, `<H>.<R>.<E>`) → stream.
pub(super) type Streams = BTreeMap<(String, String), IdeStreamRecord>;

/// `<H>.<R>.<E>` when the numbers were read, else the numbers in the sysfs name.
fn stream_key(ide: &IdeStream) -> Option<String> {
    match (ide.host_bridge_stream, ide.rp_index, ide.ep_index) {
        (Some(h), Some(r), Some(e)) => Some(format!("{h}.{r}.{e}")),
        _ => ide
            .name
            .as_deref()
            .and_then(|n| n.strip_prefix("stream"))
            .map(str::to_string),
    }
}

impl Correlator {
    /// Applies an operation's IDE steps (in call order) to the stream table; after a
    /// disconnect of an endpoint, its streams still held are leaks.
    pub(super) fn apply_ide(
        &mut self,
        op: &Operation,
        frames: &[Box<Event>],
        out: &mut Vec<Output>,
    ) {
        let mut steps: Vec<&Event> = frames
            .iter()
            .filter(|f| f.probe.is_ide())
            .map(|f| &**f)
            .collect();
        steps.sort_by_key(|f| (f.start_ns, f.end_ns));
        for f in steps {
            self.apply_ide_step(op, f, out);
        }
        // A disconnect of the endpoint; not IDE steps alone (a stream released on its own).
        if op.kind == OpKind::Disconnect
            && op.ok()
            && frames.iter().any(|f| !f.probe.is_ide())
            && let Some(d) = &op.device
        {
            let reason = IdeLeakReason::of(op.cause.unwrap_or(UnbindCause::Disconnect));
            self.leak_streams_of(d, reason, op.end_ns, out);
        }
    }

    fn apply_ide_step(&mut self, op: &Operation, f: &Event, out: &mut Vec<Output>) {
        let Some(ide) = &f.ide else {
            self.stats.ide_untracked += 1;
            return;
        };
        let (Some(endpoint), Some(key)) = (ide.endpoint.clone(), stream_key(ide)) else {
            // A failed alloc has no stream; anything else unreadable cannot be followed.
            if f.probe != ProbeId::IdeStreamAlloc || f.ok() {
                self.stats.ide_untracked += 1;
            }
            return;
        };
        let at = f.end_ns;
        let id = (endpoint.clone(), key.clone());
        if f.probe == ProbeId::IdeStreamAlloc {
            if f.ok() {
                let tsm = self.device_tsm(&endpoint).cloned().or(op.tsm.clone());
                let old = self.ide_streams.insert(
                    id,
                    IdeStreamRecord {
                        endpoint,
                        key,
                        root_port: None,
                        host_bridge: None,
                        stream_id: None,
                        name: None,
                        registered: false,
                        state: IdeState::Allocated,
                        ep: IdePort::default(),
                        rp: IdePort::default(),
                        tsm,
                        since_ns: at,
                        changed_ns: at,
                        leak: None,
                    },
                );
                if let Some(old) = old {
                    out.extend(leak_cleared(&old, at, "reallocated"));
                }
                self.table_version += 1;
            }
            return;
        }
        let Some(s) = self.ide_streams.get_mut(&id) else {
            // A step on a stream allocated before we watched: learn it.
            self.stats.ide_untracked += 1;
            return;
        };
        s.changed_ns = at;
        if let Some(sid) = ide.stream_id.filter(|v| *v >= 0) {
            s.stream_id = Some(sid);
        }
        let on_rp = f.device.as_deref().is_some_and(|p| p != s.endpoint);
        if on_rp && s.root_port.is_none() {
            s.root_port = f.device.as_deref().map(str::to_string);
        }
        let port = if on_rp { &mut s.rp } else { &mut s.ep };
        match f.probe {
            ProbeId::IdeStreamSetup => {
                port.set_up = true;
                if s.state < IdeState::SetUp || s.state == IdeState::Unknown {
                    s.state = IdeState::SetUp;
                }
            }
            ProbeId::IdeStreamEnable => {
                port.enabled = f.ok();
                port.enable_errno = f.errno();
                s.state = if s.ep.enable_errno.is_some() || s.rp.enable_errno.is_some() {
                    IdeState::NotSecure
                } else {
                    IdeState::Enabled
                };
            }
            ProbeId::IdeStreamDisable => {
                port.enabled = false;
                // A partner disabled after the other's enable failed: still not Secure.
                if s.state != IdeState::NotSecure {
                    s.state = IdeState::Disabled;
                }
            }
            ProbeId::IdeStreamTeardown => {
                port.set_up = false;
                port.enabled = false;
                s.state = IdeState::TornDown;
            }
            ProbeId::IdeStreamRegister if f.ok() => {
                s.registered = true;
                s.name = ide
                    .name
                    .clone()
                    .or_else(|| Some(format!("stream{}", s.key)));
            }
            ProbeId::IdeStreamUnregister => {
                s.registered = false;
                s.name = None;
            }
            ProbeId::IdeStreamRelease | ProbeId::IdeStreamFree => {
                if let Some(s) = self.ide_streams.remove(&id) {
                    out.extend(leak_cleared(&s, at, "released"));
                }
                self.table_version += 1;
                return;
            }
            _ => {}
        }
        if !s.holds() {
            out.extend(leak_cleared(s, at, "released"));
            s.leak = None;
        }
        self.table_version += 1;
    }

    /// Every stream of `endpoint` still held becomes a leak (unless it already is one).
    fn leak_streams_of(
        &mut self,
        endpoint: &str,
        reason: IdeLeakReason,
        at: u64,
        out: &mut Vec<Output>,
    ) {
        for s in self
            .ide_streams
            .range_mut((endpoint.to_string(), String::new())..)
            .take_while(|((e, _), _)| e == endpoint)
            .map(|(_, s)| s)
        {
            if s.holds() && s.leak.is_none() {
                s.leak = Some(IdeLeak {
                    reason,
                    detected_ns: at,
                });
                self.stats.ide_leaks_detected[reason as usize] += 1;
                self.table_version += 1;
                out.push(Output::IdeStreamLeaked(IdeLeakChange {
                    stream: s.clone(),
                    reason,
                    time_ns: at,
                    cleared_by: None,
                }));
            }
        }
    }

    /// The stream table checked against sysfs (see the module documentation). Endpoints with
    /// a call running or pending are left alone.
    pub(super) fn reconcile_ide(
        &mut self,
        snapshot: &Snapshot,
        in_flight: &std::collections::BTreeSet<String>,
        now_ns: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(shown) = &snapshot.ide_streams else {
            return;
        };
        let busy = |c: &Correlator, d: &str| in_flight.contains(d) || c.pending_mentions(d);
        // Registered streams sysfs no longer shows: gone without our seeing.
        let is_shown = |s: &IdeStreamRecord| {
            shown.iter().any(|l| {
                Some(&l.name) == s.name.as_ref() && l.endpoint.as_deref() == Some(&*s.endpoint)
            })
        };
        let gone: Vec<(String, String)> = self
            .ide_streams
            .iter()
            .filter(|(_, s)| s.registered && !is_shown(s))
            .map(|(k, _)| k.clone())
            .collect();
        for id in gone {
            if busy(self, &id.0) {
                continue;
            }
            if let Some(s) = self.ide_streams.remove(&id) {
                self.stats.ide_sysfs_gone += 1;
                out.extend(leak_cleared(&s, now_ns, "sysfs_gone"));
                self.table_version += 1;
            }
        }
        // Streams sysfs shows: learned when unknown; leaked when the endpoint is gone or not
        // connected.
        for link in shown {
            let (name, Some(endpoint)) = (&link.name, &link.endpoint) else {
                continue;
            };
            if busy(self, endpoint) {
                continue;
            }
            let Some(key) = name.strip_prefix("stream") else {
                continue;
            };
            let id = (endpoint.clone(), key.to_string());
            if !self.ide_streams.contains_key(&id) {
                if self.ide_streams.len() >= self.cfg.max_bindings {
                    self.stats.ide_table_full += 1;
                    continue;
                }
                self.stats.ide_from_sysfs += 1;
                self.ide_streams.insert(
                    id.clone(),
                    IdeStreamRecord {
                        endpoint: endpoint.clone(),
                        key: key.to_string(),
                        root_port: None,
                        host_bridge: Some(link.host_bridge.clone()),
                        stream_id: None,
                        name: Some(name.clone()),
                        registered: true,
                        state: IdeState::Unknown,
                        ep: IdePort::default(),
                        rp: IdePort::default(),
                        tsm: None,
                        since_ns: now_ns,
                        changed_ns: now_ns,
                        leak: None,
                    },
                );
                self.table_version += 1;
            }
            if let Some(s) = self.ide_streams.get_mut(&id)
                && s.host_bridge.is_none()
            {
                s.host_bridge = Some(link.host_bridge.clone());
            }
            let reason = if !snapshot.devices.contains_key(endpoint.as_str()) {
                Some(IdeLeakReason::DeviceRemoved)
            } else {
                match snapshot.links.get(endpoint.as_str()) {
                    Some(None) => Some(IdeLeakReason::DeviceDisconnected),
                    _ => None,
                }
            };
            if let Some(r) = reason {
                self.leak_streams_of(endpoint, r, now_ns, out);
            }
        }
    }

    /// The stream table, for `/bindings` and the state file.
    pub fn ide_streams(&self) -> impl Iterator<Item = &IdeStreamRecord> {
        self.ide_streams.values()
    }

    /// Streams per state, and how many are registered and leaked (by reason).
    pub fn ide_counts(&self) -> IdeCounts {
        let mut c = IdeCounts::default();
        for s in self.ide_streams.values() {
            c.by_state[IdeState::ALL
                .iter()
                .position(|x| *x == s.state)
                .unwrap_or(0)] += 1;
            c.registered += usize::from(s.registered);
            if let Some(l) = &s.leak {
                c.leaked[l.reason as usize] += 1;
            }
        }
        c
    }

    /// Puts saved streams back (at start, before any event), within the limit.
    pub(super) fn restore_ide(&mut self, saved: Vec<IdeStreamRecord>) {
        for s in saved {
            if self.ide_streams.len() >= self.cfg.max_bindings {
                self.stats.ide_table_full += 1;
                break;
            }
            self.ide_streams
                .insert((s.endpoint.clone(), s.key.clone()), s);
        }
    }
}

/// What [`Correlator::ide_counts`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdeCounts {
    /// In [`IdeState::ALL`] order.
    pub by_state: [usize; IdeState::ALL.len()],
    pub registered: usize,
    /// In [`IdeLeakReason::ALL`] order.
    pub leaked: [usize; IdeLeakReason::ALL.len()],
}
