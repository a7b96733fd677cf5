//! The PCI TSM lifecycle of each device: connected to a TSM, bound, disconnected; and the
//! bindings the PCI TSM core ends itself (disconnect, device removal, TSM unregistration all
//! unbind every function first, through `__pci_tsm_unbind`, never through `pci_tsm_unbind`).
//!
//! ```text
//! unconnected ──connect──▶ connected(tsmN) ──bind──▶ bound(VM) ──unbind──▶ connected
//!                               ▲                        │
//!                               └──────────── disconnect / removal / unregistration
//!                                            (binding closed with that cause) ──▶ disconnected
//! ```

use std::collections::BTreeMap;

use super::Correlator;
use super::types::{AnomalyKind, BindingClosed, ClearCause, OpKind, Operation, Output, TsmState};
use crate::events::{Event, Name, ProbeId, UnbindCause};

/// What the probes last saw of a device's link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DeviceLink {
    /// Connected to this TSM (`None`: disconnected).
    pub(super) tsm: Option<Name>,
    pub(super) since_ns: u64,
}

impl Correlator {
    /// Applies a connect or disconnect to the device table, and closes the bindings that a
    /// disconnect (of any cause) ended.
    pub(super) fn apply_lifecycle(
        &mut self,
        op: &Operation,
        frames: &[Box<Event>],
        out: &mut Vec<Output>,
    ) {
        // IDE steps with no probed caller (a stream released on its own): their kind says
        // which way the stream went, not that the device's link changed.
        if frames.iter().all(|f| f.probe.is_ide()) {
            return;
        }
        match op.kind {
            OpKind::Connect if op.ok() => {
                if let Some(d) = &op.device {
                    self.set_link(d, op.tsm.clone(), op.end_ns, out);
                }
            }
            OpKind::Disconnect => {
                let cause = op.cause.unwrap_or(UnbindCause::Disconnect);
                self.close_unbound(frames, cause, out);
                // A failed disconnect_store (wrong TSM name, not connected) changed nothing.
                if op.ok()
                    && let Some(d) = &op.device
                {
                    self.set_link(d, None, op.end_ns, out);
                }
            }
            _ => {}
        }
    }

    /// Closes the binding of every device a `__pci_tsm_unbind` frame found bound.
    pub(super) fn close_unbound(
        &mut self,
        frames: &[Box<Event>],
        cause: UnbindCause,
        out: &mut Vec<Output>,
    ) {
        for f in frames
            .iter()
            .filter(|f| f.probe == ProbeId::PciTsmUnbindAny && !f.nothing_bound)
        {
            if let Some(d) = &f.device {
                self.close_binding(d, cause, f.end_ns, out);
            }
        }
    }

    /// Ends the binding of `device` (if the table has one) at `closed_ns` and clears its
    /// leaks at that same time.
    /// A module was unloaded: every binding whose bind path ran through one of `probes`
    /// (the module's probed functions) ends with [`UnbindCause::ModuleUnloaded`] at `now_ns`.
    /// Call after the events before the unload (its exit path's unbinds) are applied.
    pub fn module_unloaded(&mut self, probes: &[ProbeId], now_ns: u64) -> Vec<Output> {
        let gone: Vec<Name> = self
            .bindings
            .values()
            .filter(|(b, _)| probes.contains(&b.path.probe()))
            .map(|(b, _)| b.device.clone())
            .collect();
        let mut out = Vec::new();
        for d in gone {
            self.close_binding(&d, UnbindCause::ModuleUnloaded, now_ns, &mut out);
        }
        out
    }

    pub(super) fn close_binding(
        &mut self,
        device: &str,
        cause: UnbindCause,
        closed_ns: u64,
        out: &mut Vec<Output>,
    ) {
        let had_leaks = self.has_leaks(device);
        if let Some(binding) = self.remove_binding(device) {
            out.push(Output::BindingClosed(BindingClosed {
                binding,
                cause,
                closed_ns,
            }));
            self.clear_leaks(device, ClearCause::Unbound, closed_ns, out);
        } else if had_leaks {
            self.clear_leaks(device, ClearCause::Unbound, closed_ns, out);
        }
    }

    pub(super) fn set_link(
        &mut self,
        device: &str,
        tsm: Option<Name>,
        at_ns: u64,
        out: &mut Vec<Output>,
    ) {
        if !self.devices.contains_key(device) && self.devices.len() >= self.cfg.max_bindings {
            // Forget a disconnected device first, else the first one.
            let victim = self
                .devices
                .iter()
                .find(|(_, l)| l.tsm.is_none())
                .or_else(|| self.devices.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(v) = victim {
                self.devices.remove(&v);
                self.anomaly(AnomalyKind::DeviceTableFull, None, Some(v), out);
            }
        }
        self.devices.insert(
            device.into(),
            DeviceLink {
                tsm,
                since_ns: at_ns,
            },
        );
        self.table_version += 1;
    }

    /// The device table, for the state file.
    pub(super) fn saved_links(&self) -> Vec<super::state::SavedLink> {
        self.devices
            .iter()
            .map(|(d, l)| super::state::SavedLink {
                device: d.clone(),
                tsm: l.tsm.clone(),
                since_ns: l.since_ns,
            })
            .collect()
    }

    /// Puts a saved device link back (at start, before any event), within the limit.
    pub(super) fn restore_link(&mut self, l: super::state::SavedLink) {
        if self.devices.len() < self.cfg.max_bindings {
            self.devices.insert(
                l.device,
                DeviceLink {
                    tsm: l.tsm,
                    since_ns: l.since_ns,
                },
            );
        }
    }

    /// What sysfs says of the devices' links (`tsm/connect`), applied where the table says
    /// otherwise: a connect or disconnect made while no daemon ran, or before this one
    /// started. Devices with a call running are left alone (their event will say).
    pub(super) fn learn_links(
        &mut self,
        links: &BTreeMap<String, Option<String>>,
        in_flight: &std::collections::BTreeSet<String>,
        now_ns: u64,
        out: &mut Vec<Output>,
    ) {
        for (device, tsm) in links {
            if in_flight.contains(device) {
                continue;
            }
            let known = self.devices.get(device.as_str()).map(|l| l.tsm.as_deref());
            let changed = match (known, tsm) {
                (Some(k), t) => k != t.as_deref(),
                // Never connected while we watched, not connected now: nothing to learn.
                (None, None) => false,
                (None, Some(_)) => true,
            };
            if changed {
                self.stats.links_from_sysfs += 1;
                self.set_link(device, tsm.as_deref().map(Name::from), now_ns, out);
            }
        }
    }

    /// The TSM a device is connected to, if its connect was seen.
    pub fn device_tsm(&self, device: &str) -> Option<&Name> {
        self.devices.get(device).and_then(|l| l.tsm.as_ref())
    }

    /// Devices per lifecycle state: `bound` counts the binding table; `connected`, devices
    /// connected and not bound; `disconnected`, devices disconnected since the start.
    pub fn device_states(&self) -> BTreeMap<TsmState, usize> {
        let mut m: BTreeMap<TsmState, usize> = TsmState::ALL.iter().map(|s| (*s, 0)).collect();
        *m.entry(TsmState::Bound).or_default() = self.bindings.len();
        for (d, l) in &self.devices {
            let state = match l.tsm {
                None => TsmState::Disconnected,
                Some(_) if self.bindings.contains_key(&**d) => continue,
                Some(_) => TsmState::Connected,
            };
            *m.entry(state).or_default() += 1;
        }
        m
    }
}
