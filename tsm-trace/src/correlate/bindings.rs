//! The binding table and the leak table: how an operation changes them ([`Correlator::apply`]),
//! and the delayed VM-destroyed / VMM-exited checks that turn lingering bindings into leaks.

use super::Correlator;
use super::build::is_unbind_probe;
use super::nesting::{Key, RECENT_KEYS};
use super::types::{
    AnomalyKind, BindPath, Binding, ClearCause, Leak, LeakReason, OpKind, Operation, Output,
    VmEvent, VmEventKind,
};
use crate::events::{Event, Name, ProbeId, UnbindCause};

#[derive(Debug)]
enum VmCheckTarget {
    Kvm(crate::events::VmId),
    Tgid(u32),
}

#[derive(Debug)]
pub(super) struct VmCheck {
    pub(super) deadline_ns: u64,
    event_ns: u64,
    target: VmCheckTarget,
}

fn binding_of_tgid(b: &Binding, tgid: u32) -> bool {
    b.vmm_tgid == tgid || b.vm.as_ref().and_then(|v| v.pid) == i32::try_from(tgid).ok()
}

impl Correlator {
    /// The VM checks waiting for their grace period, for the state file.
    pub(super) fn saved_vm_checks(&self) -> Vec<super::state::SavedVmCheck> {
        self.vm_checks
            .iter()
            .map(|c| super::state::SavedVmCheck {
                deadline_ns: c.deadline_ns,
                event_ns: c.event_ns,
                vm_bits: match c.target {
                    VmCheckTarget::Kvm(id) => Some(id.bits()),
                    VmCheckTarget::Tgid(_) => None,
                },
                tgid: match c.target {
                    VmCheckTarget::Tgid(t) => Some(t),
                    VmCheckTarget::Kvm(_) => None,
                },
            })
            .collect()
    }

    /// Puts a saved VM check back (at start, before any event), within the limit.
    pub(super) fn restore_vm_check(&mut self, c: super::state::SavedVmCheck) {
        let target = match (c.vm_bits, c.tgid) {
            (Some(b), _) => VmCheckTarget::Kvm(crate::events::VmId::from_bits(b)),
            (None, Some(t)) => VmCheckTarget::Tgid(t),
            (None, None) => return,
        };
        if self.vm_checks.len() < self.cfg.max_vm_checks {
            self.vm_checks.push_back(VmCheck {
                deadline_ns: c.deadline_ns,
                event_ns: c.event_ns,
                target,
            });
        }
    }

    /// A VM lifecycle event (VM destroyed, VMM exited): reported, and its bindings are checked
    /// again when [`super::Config::leak_grace_ns`] has passed after it (event time).
    /// The thread's own pending chains that ended before it are closed first (the thread has
    /// moved on); if another thread still has a chain pending that ended before it, the event
    /// waits until that chain is closed (`nesting.rs`), so that what the chain did (a bind, an
    /// unbind) counts as before the event.
    pub(super) fn point_event(&mut self, ev: Event, now_ns: u64, out: &mut Vec<Output>) {
        let key = Key::of(&ev);
        if self.recent_points.contains(&key) {
            self.anomaly(AnomalyKind::DuplicateEvent, Some(ev.tid), None, out);
            return;
        }
        if self.recent_points.len() >= RECENT_KEYS * 4 {
            self.recent_points.pop_front();
        }
        self.recent_points.push_back(key);
        self.close_moved_on(ev.tid, ev.end_ns, now_ns, out);
        if !self.deferred_points.is_empty() || self.earliest_pending_end() < ev.end_ns {
            if self.deferred_points.len() >= self.cfg.max_vm_checks {
                // Bounded: the oldest waits no longer.
                self.anomaly(AnomalyKind::VmCheckOverflow, None, None, out);
                if let Some(old) = self.deferred_points.pop_front() {
                    self.apply_point(old, now_ns, out);
                }
            }
            self.deferred_points.push_back(ev);
            return;
        }
        self.apply_point(ev, now_ns, out);
    }

    /// Reports a VM lifecycle event and schedules its check.
    pub(super) fn apply_point(&mut self, ev: Event, now_ns: u64, out: &mut Vec<Output>) {
        let mut ev = ev;
        if let Some(v) = ev.vm.as_mut() {
            self.vm_names.learn(v);
            self.vm_names.fill(v);
        }

        let (event, target, bound) = match ev.probe {
            ProbeId::KvmDestroyVm => {
                let Some(vm) = ev.vm.as_ref() else {
                    self.anomaly(AnomalyKind::VmEventWithoutVm, Some(ev.tid), None, out);
                    return;
                };
                let kvm = vm.id;
                let bound = self
                    .bindings
                    .values()
                    .filter(|(b, _)| b.vm.as_ref().is_some_and(|v| v.id == kvm))
                    .count();
                (VmEventKind::VmDestroyed, VmCheckTarget::Kvm(kvm), bound)
            }
            _ => {
                let tgid = ev.tgid;
                let bound = self
                    .bindings
                    .values()
                    .filter(|(b, _)| binding_of_tgid(b, tgid))
                    .count();
                if ev.vm.is_none() {
                    ev.vm = self.vm_of_tgid(tgid);
                }
                (VmEventKind::VmmExited, VmCheckTarget::Tgid(tgid), bound)
            }
        };
        if ev.probe == ProbeId::KvmDestroyVm
            && let Some(v) = &ev.vm
        {
            self.vm_names.forget_vm(v.id);
        }
        out.push(Output::VmEvent(VmEvent {
            event,
            time_ns: ev.end_ns,
            vm: ev.vm.clone(),
            tgid: ev.tgid,
            comm: ev.comm.clone(),
            bound_devices: bound,
        }));
        if self.vm_checks.len() >= self.cfg.max_vm_checks {
            // Run the oldest check early rather than grow.
            self.anomaly(AnomalyKind::VmCheckOverflow, None, None, out);
            if let Some(c) = self.vm_checks.pop_front() {
                self.run_vm_check(&c, now_ns, out);
            }
        }
        self.vm_checks.push_back(VmCheck {
            deadline_ns: ev.end_ns.saturating_add(self.cfg.leak_grace_ns),
            event_ns: ev.end_ns,
            target,
        });
    }

    /// Applies an operation to the tables. Times are the frames': a binding starts when the
    /// outermost bind call that succeeded returned, ends when the unbind returned; a leak is
    /// detected when the operation that shows it returned.
    pub(super) fn apply(&mut self, op: &Operation, frames: &[Box<Event>], out: &mut Vec<Output>) {
        let Some(outer) = frames.first() else {
            return;
        };
        if frames.iter().any(|f| f.probe.is_ide()) || op.kind == OpKind::Disconnect {
            self.apply_ide(op, frames, out);
        }
        match op.kind {
            OpKind::Bind => {
                // The deepest of ioctl / tsm_bind / pci_tsm_bind decides; else the driver's op.
                let decider = frames
                    .iter()
                    .rev()
                    .find(|f| {
                        matches!(
                            f.probe,
                            ProbeId::TsmOpIoctl | ProbeId::TsmBind | ProbeId::PciTsmBind
                        )
                    })
                    .or_else(|| frames.iter().find(|f| f.probe == ProbeId::DriverBind));
                let Some(decider) = decider else { return };
                if !decider.ok() {
                    return;
                }
                let device = op
                    .device
                    .clone()
                    .or_else(|| self.device_by_vdevice(op.tgid, op.vdevice_id));
                let Some(device) = device else {
                    self.anomaly(AnomalyKind::BindWithoutDevice, Some(op.tid), None, out);
                    return;
                };
                let path = match outer.probe {
                    ProbeId::TsmOpIoctl => BindPath::Ioctl,
                    ProbeId::TsmBind => BindPath::TsmBind,
                    ProbeId::PciTsmBind => BindPath::PciTsmBind,
                    _ => BindPath::DriverBind,
                };
                // The device is bound once the outermost bind call under the ioctl that
                // succeeded returned (the ioctl returns later: when it fails, its end is when
                // the leak is seen). An ioctl alone: its end.
                let since_ns = frames
                    .iter()
                    .find(|f| {
                        matches!(
                            f.probe,
                            ProbeId::TsmBind | ProbeId::PciTsmBind | ProbeId::DriverBind
                        ) && f.ok()
                    })
                    .map_or(op.end_ns, |f| f.end_ns);
                self.clear_leaks(&device, ClearCause::Rebound, since_ns, out);
                let mut binding = Binding {
                    device: device.clone(),
                    vm: op.vm.clone(),
                    vmm_tgid: op.tgid,
                    vmm_comm: op.comm.clone(),
                    vdevice_id: op.vdevice_id,
                    tdi_id: op.tdi_id,
                    since_ns,
                    path,
                    tsm: self.device_tsm(&device).cloned(),
                };
                if let Some((old, _)) = self.bindings.get(&*device) {
                    let same_vm = match (&old.vm, &binding.vm) {
                        (Some(a), Some(b)) => a.id == b.id,
                        _ => true,
                    };
                    if same_vm {
                        // Idempotent rebind: keep the original time and fill unknowns.
                        binding.since_ns = old.since_ns;
                        binding.vm = binding.vm.or_else(|| old.vm.clone());
                        binding.vdevice_id = binding.vdevice_id.or(old.vdevice_id);
                        binding.tdi_id = binding.tdi_id.or(old.tdi_id);
                        binding.tsm = binding.tsm.or_else(|| old.tsm.clone());
                    } else {
                        self.anomaly(
                            AnomalyKind::BindingReplaced,
                            Some(op.tid),
                            Some(device.clone()),
                            out,
                        );
                    }
                }
                self.insert_binding(binding, since_ns, out);
                if outer.probe == ProbeId::TsmOpIoctl && !outer.ok() {
                    self.detect_leak(&device, LeakReason::IoctlFailedAfterBind, op.end_ns, out);
                }
            }
            OpKind::Unbind | OpKind::Teardown => {
                let mut unbind_frames = false;
                let mut unbind_ok = false;
                for f in frames.iter().filter(|f| is_unbind_probe(f.probe)) {
                    unbind_frames = true;
                    unbind_ok |= f.ok();
                }
                let unbound = unbind_ok
                    || (op.kind == OpKind::Unbind
                        && outer.probe == ProbeId::TsmOpIoctl
                        && outer.ok());
                let device: Option<Name> = op
                    .device
                    .clone()
                    .or_else(|| self.device_by_vdevice(op.tgid, op.vdevice_id));
                if unbound {
                    // Every device the PCI TSM core itself found bound (also other functions'),
                    // then the operation's own device.
                    self.close_unbound(frames, UnbindCause::Unbind, out);
                    match device {
                        Some(d) => {
                            // When the outermost unbind call returned (the ioctl or the
                            // teardown may return later).
                            let closed_ns = frames
                                .iter()
                                .find(|f| is_unbind_probe(f.probe) && f.ok())
                                .map_or(op.end_ns, |f| f.end_ns);
                            self.close_binding(&d, UnbindCause::Unbind, closed_ns, out);
                        }
                        None => {
                            self.anomaly(AnomalyKind::UnbindWithoutDevice, Some(op.tid), None, out)
                        }
                    }
                } else if op.kind == OpKind::Teardown
                    && !unbind_frames
                    && let Some(d) = device
                    && self.bindings.contains_key(&*d)
                {
                    self.detect_leak(&d, LeakReason::VdeviceTeardownWithoutUnbind, op.end_ns, out);
                }
            }
            OpKind::Connect | OpKind::Disconnect => self.apply_lifecycle(op, frames, out),
            OpKind::Invalid | OpKind::GuestRequest => {}
        }
    }

    /// Detects the leaks of a VM check at `at_ns`: its deadline when it is due, earlier when
    /// the check table overflowed.
    pub(super) fn run_vm_check(&mut self, check: &VmCheck, at_ns: u64, out: &mut Vec<Output>) {
        let (reason, devices) = self.vm_check_devices(check);
        for d in devices {
            self.detect_leak(&d, reason, at_ns, out);
        }
    }

    /// End of input before a check's deadline: its devices are counted, not reported.
    pub(super) fn unconfirmed_vm_check(&mut self, check: &VmCheck, out: &mut Vec<Output>) {
        let (_, devices) = self.vm_check_devices(check);
        for d in devices {
            self.anomaly(AnomalyKind::LeakUnconfirmed, None, Some(d), out);
        }
    }

    /// The VM of a VMM's bindings (if they all name one), else the VM known by its pid.
    fn vm_of_tgid(&self, tgid: u32) -> Option<crate::events::Vm> {
        let mut vms = self
            .bindings
            .values()
            .filter(|(b, _)| binding_of_tgid(b, tgid))
            .filter_map(|(b, _)| b.vm.as_ref());
        match vms.next() {
            Some(first) if vms.all(|v| v.id == first.id) => Some(first.clone()),
            Some(_) => None,
            None => self.vm_names.by_pid(tgid).cloned(),
        }
    }

    fn vm_check_devices(&self, check: &VmCheck) -> (LeakReason, Vec<Name>) {
        let (reason, mut devices): (LeakReason, Vec<Name>) = match check.target {
            VmCheckTarget::Kvm(kvm) => (
                LeakReason::VmDestroyed,
                self.bindings
                    .values()
                    .filter(|(b, _)| {
                        b.since_ns <= check.event_ns && b.vm.as_ref().is_some_and(|v| v.id == kvm)
                    })
                    .map(|(b, _)| b.device.clone())
                    .collect(),
            ),
            VmCheckTarget::Tgid(tgid) => (
                LeakReason::VmmExited,
                self.bindings
                    .values()
                    .filter(|(b, _)| b.since_ns <= check.event_ns && binding_of_tgid(b, tgid))
                    .map(|(b, _)| b.device.clone())
                    .collect(),
            ),
        };
        devices.sort();
        (reason, devices)
    }

    pub(super) fn device_by_vdevice(&self, tgid: u32, vdevice_id: Option<u32>) -> Option<Name> {
        let id = vdevice_id?;
        self.bindings
            .values()
            .find(|(b, _)| b.vmm_tgid == tgid && b.vdevice_id == Some(id))
            .map(|(b, _)| b.device.clone())
    }

    /// Inserts a binding made at `at_ns` (the time an evicted binding's leaks are cleared).
    pub(super) fn insert_binding(&mut self, binding: Binding, at_ns: u64, out: &mut Vec<Output>) {
        self.table_version += 1;
        self.seq += 1;
        let seq = self.seq;
        // The binding's own name is the key (shared, not copied).
        if let Some((_, old_seq)) = self.bindings.remove(&*binding.device) {
            self.binding_order.remove(&old_seq);
        }
        let device = binding.device.clone();
        while self.bindings.len() >= self.cfg.max_bindings {
            let Some((_, old)) = self.binding_order.pop_first() else {
                break;
            };
            self.bindings.remove(&*old);
            self.anomaly(AnomalyKind::BindingEvicted, None, Some(old.clone()), out);
            self.clear_leaks(&old, ClearCause::Evicted, at_ns, out);
        }
        self.binding_order.insert(seq, device.clone());
        self.bindings.insert(device, (binding, seq));
    }

    pub(super) fn remove_binding(&mut self, device: &str) -> Option<Binding> {
        let (b, seq) = self.bindings.remove(device)?;
        self.table_version += 1;
        self.binding_order.remove(&seq);
        Some(b)
    }

    pub(super) fn has_leaks(&self, device: &str) -> bool {
        !self.leaks.is_empty() && self.leak_keys(device).next().is_some()
    }

    fn leak_keys(&self, device: &str) -> impl Iterator<Item = &(Name, LeakReason)> {
        let d = Name::from(device);
        let lo = (d.clone(), LeakReason::ALL[0]);
        let hi = (d, LeakReason::ALL[LeakReason::ALL.len() - 1]);
        self.leaks.range(lo..=hi).map(|(k, _)| k)
    }

    /// Records a leak of a bound device, seen at `at_ns` (event time), unless it is already
    /// recorded for that reason.
    pub(super) fn detect_leak(
        &mut self,
        device: &str,
        reason: LeakReason,
        at_ns: u64,
        out: &mut Vec<Output>,
    ) {
        let Some((b, _)) = self.bindings.get(device) else {
            return;
        };
        if self.leaks.contains_key(&(Name::from(device), reason)) {
            return;
        }
        let leak = Leak {
            device: device.into(),
            reason,
            vm: b.vm.clone(),
            vmm_tgid: Some(b.vmm_tgid),
            vmm_comm: Some(b.vmm_comm.clone()),
            vdevice_id: b.vdevice_id,
            tdi_id: b.tdi_id,
            bound_since_ns: Some(b.since_ns),
            tsm: None,
            detected_ns: at_ns,
            cleared_ns: None,
            cleared_by: None,
        };
        self.insert_leak(leak, out);
    }

    pub(super) fn insert_leak(&mut self, leak: Leak, out: &mut Vec<Output>) {
        if self.leaks.len() >= self.cfg.max_leaks {
            self.anomaly(
                AnomalyKind::LeakTableFull,
                None,
                Some(leak.device.clone()),
                out,
            );
            return;
        }
        self.table_version += 1;
        *self.stats.leaks_detected.entry(leak.reason).or_default() += 1;
        self.leak_count[leak.reason as usize] += 1;
        self.leaks
            .insert((leak.device.clone(), leak.reason), leak.clone());
        out.push(Output::LeakDetected(leak));
    }

    /// Clears the leaks of `device`, at `at_ns` (the time of what cleared them).
    pub(super) fn clear_leaks(
        &mut self,
        device: &str,
        cause: ClearCause,
        at_ns: u64,
        out: &mut Vec<Output>,
    ) {
        if self.leaks.is_empty() {
            return;
        }
        let keys: Vec<(Name, LeakReason)> = self.leak_keys(device).cloned().collect();
        for k in keys {
            if let Some(mut leak) = self.leaks.remove(&k) {
                self.table_version += 1;
                self.leak_count[leak.reason as usize] -= 1;
                // Never before it was detected (an out-of-order unbind clears it at once).
                leak.cleared_ns = Some(at_ns.max(leak.detected_ns));
                leak.cleared_by = Some(cause);
                out.push(Output::LeakCleared(leak));
            }
        }
    }
}
