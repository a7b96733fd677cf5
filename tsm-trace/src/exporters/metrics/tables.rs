//! What the correlator's tables hold: bindings (active, closed), devices by lifecycle state,
//! leaks (by reason, detected, one info series per leaked binding), pending frames; and the
//! VM lifecycle events it saw.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::{counter_vec, gauge, gauge_vec};
use crate::correlate::{Correlator, Leak, LeakReason, TsmState, VmEventKind};
use crate::events::UnbindCause;

pub(super) struct Tables {
    bindings_active: IntGauge,
    bindings_closed: IntCounterVec,
    devices: IntGaugeVec,
    /// `tsm_trace_bindings_leaked{reason}`, in `LeakReason::ALL` order (resolved once).
    leaked: [IntGauge; LeakReason::ALL.len()],
    leaks_detected: IntCounterVec,
    leaked_info: IntGaugeVec,
    pending_frames: IntGauge,
    vm_events: IntCounterVec,
}

impl Tables {
    /// Creates and registers the metrics (static definitions: the `expect`s cannot fail); the
    /// known label sets start at 0.
    pub(super) fn register(r: &Registry) -> Tables {
        let bindings_active = gauge(
            r,
            "tsm_trace_bindings_active",
            "Devices currently believed bound to a VM (including leaked ones).",
        );
        let bindings_closed = counter_vec(
            r,
            "tsm_trace_bindings_closed_total",
            "Bindings that ended, by cause: unbind (pci_tsm_unbind), the PCI TSM core unbinding on disconnect, device_removal or tsm_unregister, or module_unloaded (the module whose function made the binding was unloaded with no unbind seen).",
            &["cause"],
        );
        let devices = gauge_vec(
            r,
            "tsm_trace_devices",
            "Devices by PCI TSM lifecycle state as the probes saw it and sysfs tsm/connect says: connected (not bound), bound, disconnected (since start).",
            &["state"],
        );
        let bindings_leaked = gauge_vec(
            r,
            "tsm_trace_bindings_leaked",
            "Bindings currently believed leaked, by reason.",
            &["reason"],
        );
        let leaks_detected = counter_vec(
            r,
            "tsm_trace_leaks_detected_total",
            "Leaked bindings detected, by reason (stays when the leak clears).",
            &["reason"],
        );
        let leaked_info = gauge_vec(
            r,
            "tsm_trace_leaked_binding_info",
            "1 for each currently leaked binding.",
            &["device", "vm", "reason"],
        );
        let pending_frames = gauge(
            r,
            "tsm_trace_pending_frames",
            "Completed inner calls waiting for their outer call.",
        );
        let vm_events = counter_vec(
            r,
            "tsm_trace_vm_events_total",
            "VM lifecycle events seen (VM destroyed, VMM exited).",
            &["event"],
        );

        for reason in LeakReason::ALL {
            bindings_leaked.with_label_values(&[reason.as_str()]).set(0);
            leaks_detected.with_label_values(&[reason.as_str()]);
        }
        for cause in UnbindCause::ALL {
            bindings_closed.with_label_values(&[cause.as_str()]);
        }
        for state in TsmState::ALL {
            devices.with_label_values(&[state.as_str()]).set(0);
        }
        for ev in VmEventKind::ALL {
            vm_events.with_label_values(&[ev.as_str()]);
        }
        Tables {
            bindings_active,
            bindings_closed,
            devices,
            leaked: LeakReason::ALL
                .map(|reason| bindings_leaked.with_label_values(&[reason.as_str()])),
            leaks_detected,
            leaked_info,
            pending_frames,
            vm_events,
        }
    }

    /// Sets the gauges that mirror the correlator's tables.
    pub(super) fn sync(&self, c: &Correlator) {
        self.bindings_active.set(c.binding_count() as i64);
        for (state, n) in c.device_states() {
            self.devices
                .with_label_values(&[state.as_str()])
                .set(n as i64);
        }
        for (g, reason) in self.leaked.iter().zip(LeakReason::ALL) {
            g.set(c.leak_count(reason) as i64);
        }
        self.pending_frames.set(c.pending_frames() as i64);
    }

    pub(super) fn leak_detected(&self, leak: &Leak) {
        self.leaks_detected
            .with_label_values(&[leak.reason.as_str()])
            .inc();
        self.show_leak(leak);
    }

    /// The leak's own series, as a detection sets it; also for a leak restored at start.
    pub(super) fn show_leak(&self, leak: &Leak) {
        self.leaked_info
            .with_label_values(&[&leak.device, &leak.vm_name(), leak.reason.as_str()])
            .set(1);
    }

    pub(super) fn leak_cleared(&self, leak: &Leak) {
        let _ = self.leaked_info.remove_label_values(&[
            &leak.device,
            &leak.vm_name(),
            leak.reason.as_str(),
        ]);
    }

    pub(super) fn vm_event(&self, event: VmEventKind) {
        self.vm_events.with_label_values(&[event.as_str()]).inc();
    }

    pub(super) fn binding_closed(&self, cause: UnbindCause) {
        self.bindings_closed
            .with_label_values(&[cause.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::{D1, feed, get, scenario};
    use crate::correlate::tests::unbind_via_ioctl;

    #[test]
    fn bindings_and_leaks_after_a_scenario() {
        let (mut p, m) = scenario();
        let s = m.samples();
        assert_eq!(get(&s, "tsm_trace_bindings_active"), 2.0);
        let leaked = |r: &str| get(&s, &format!("tsm_trace_bindings_leaked{{reason=\"{r}\"}}"));
        assert_eq!(leaked("ioctl_failed_after_bind"), 1.0);
        assert_eq!(leaked("vdevice_teardown_without_unbind"), 1.0);
        assert_eq!(leaked("vm_destroyed"), 2.0);
        assert_eq!(leaked("vmm_exited"), 0.0);
        assert_eq!(leaked("sysfs_bound_without_owner"), 0.0);
        let detected = |s: &BTreeMap<String, f64>, r: &str| {
            get(
                s,
                &format!("tsm_trace_leaks_detected_total{{reason=\"{r}\"}}"),
            )
        };
        assert_eq!(detected(&s, "vm_destroyed"), 2.0);
        assert_eq!(detected(&s, "vmm_exited"), 0.0);
        let info = "tsm_trace_leaked_binding_info{device=\"0000:01:00.0\",reason=\"vm_destroyed\",vm=\"kvm-4242\"}";
        assert_eq!(get(&s, info), 1.0);
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("tsm_trace_leaked_binding_info"))
                .count(),
            4
        );
        assert_eq!(
            get(&s, "tsm_trace_vm_events_total{event=\"vm_destroyed\"}"),
            1.0
        );

        // Unbinding D1 clears its leaks: info series gone, gauges down, counters stay.
        feed(&mut p, unbind_via_ioctl(10, 20_000_000_000, D1));
        let s = m.samples();
        assert!(!s.contains_key(info));
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("tsm_trace_leaked_binding_info"))
                .count(),
            2
        );
        assert_eq!(
            get(&s, "tsm_trace_bindings_leaked{reason=\"vm_destroyed\"}"),
            1.0
        );
        assert_eq!(get(&s, "tsm_trace_bindings_active"), 1.0);
        assert_eq!(detected(&s, "vm_destroyed"), 2.0);
    }
}
