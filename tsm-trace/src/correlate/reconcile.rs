//! sysfs reconciliation: the binding table checked against what the kernel reports.

use std::collections::BTreeSet;

use super::Correlator;
use super::types::{ClearCause, Leak, LeakReason, Mismatch, MismatchKind, Output};
use crate::events::Name;
use crate::sysfs::{DeviceState, Snapshot};

impl Correlator {
    /// Compares the binding table with what sysfs says.
    ///
    /// - sysfs bound, no binding known (and none pending) → leak `sysfs_bound_without_owner`.
    /// - binding known, sysfs `tsm/bound` empty → mismatch `denies_binding`: binding dropped.
    /// - sysfs unbound clears `sysfs_bound_without_owner` leaks.
    /// - a device without `tsm/` (or not listed) is unknown: nothing changes.
    /// - IDE streams: against the host bridges' `stream*` links (`ide.rs`).
    /// - a device in `in_flight` (a bind or unbind entered and not returned: the kernel may
    ///   show its new state before the call returns) is owned by that call: nothing changes.
    ///
    /// Callers drain the event stream first, so that every call that returned is applied.
    pub fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        in_flight: &BTreeSet<String>,
        now_ns: u64,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        if snapshot.listing_error.is_some() {
            return out;
        }
        for (device, state) in &snapshot.devices {
            if in_flight.contains(device) {
                self.stats.reconcile_in_flight += 1;
                continue;
            }
            match state {
                DeviceState::Bound(tsm) => {
                    if self.bindings.contains_key(device.as_str()) || self.pending_mentions(device)
                    {
                        continue;
                    }
                    let name = Name::from(device.as_str());
                    let key = (name.clone(), LeakReason::SysfsBoundWithoutOwner);
                    if self.leaks.contains_key(&key) {
                        continue;
                    }
                    let leak = Leak {
                        device: name.clone(),
                        reason: LeakReason::SysfsBoundWithoutOwner,
                        vm: None,
                        vmm_tgid: None,
                        vmm_comm: None,
                        vdevice_id: None,
                        tdi_id: None,
                        bound_since_ns: None,
                        tsm: Some(tsm.as_str().into()),
                        detected_ns: now_ns,
                        cleared_ns: None,
                        cleared_by: None,
                    };
                    *self
                        .stats
                        .mismatches
                        .entry(MismatchKind::BoundWithoutOwner)
                        .or_default() += 1;
                    out.push(Output::Mismatch(Mismatch {
                        kind: MismatchKind::BoundWithoutOwner,
                        device: name,
                        binding: None,
                    }));
                    self.insert_leak(leak, &mut out);
                }
                DeviceState::Unbound => {
                    if self.bindings.contains_key(device.as_str()) {
                        *self
                            .stats
                            .mismatches
                            .entry(MismatchKind::DeniesBinding)
                            .or_default() += 1;
                        let binding = self.remove_binding(device);
                        out.push(Output::Mismatch(Mismatch {
                            kind: MismatchKind::DeniesBinding,
                            device: device.as_str().into(),
                            binding,
                        }));
                    }
                    self.clear_leaks(device, ClearCause::SysfsUnbound, now_ns, &mut out);
                }
                DeviceState::Unknown => {}
            }
        }
        self.learn_links(&snapshot.links, in_flight, now_ns, &mut out);
        self.reconcile_ide(snapshot, in_flight, now_ns, &mut out);
        out
    }
}
