//! sysfs reconciliation: its runs and interval, the devices by `tsm/bound` state at the last
//! run, the disagreements with the binding table, and read errors.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Registry};

use super::{counter, counter_vec, gauge_vec};
use crate::correlate::MismatchKind;
use crate::sysfs::Snapshot;

pub(super) struct Reconcile {
    runs: IntCounter,
    interval: prometheus::Gauge,
    mismatches: IntCounterVec,
    devices: IntGaugeVec,
    errors: IntCounter,
}

impl Reconcile {
    /// Creates and registers the metrics (static definitions: the `expect`s cannot fail); the
    /// known label sets start at 0.
    pub(super) fn register(r: &Registry) -> Reconcile {
        let runs = counter(
            r,
            "tsm_trace_sysfs_reconcile_runs_total",
            "sysfs reconciliation runs.",
        );
        let interval = prometheus::Gauge::new(
            "tsm_trace_sysfs_reconcile_interval_seconds",
            "Seconds between sysfs reconciliation runs (--reconcile-interval); 0: only one, at start.",
        )
        .expect("valid metric definition");
        r.register(Box::new(interval.clone()))
            .expect("unique metric name");
        let mismatches = counter_vec(
            r,
            "tsm_trace_sysfs_mismatches_total",
            "Disagreements between sysfs tsm/bound and the binding table.",
            &["kind"],
        );
        let devices = gauge_vec(
            r,
            "tsm_trace_sysfs_devices",
            "PCI devices by tsm/bound state at the last reconciliation.",
            &["state"],
        );
        let errors = counter(
            r,
            "tsm_trace_sysfs_errors_total",
            "Errors reading sysfs during reconciliation.",
        );
        for kind in MismatchKind::ALL {
            mismatches.with_label_values(&[kind.as_str()]);
        }
        for state in ["bound", "unbound", "unknown"] {
            devices.with_label_values(&[state]).set(0);
        }
        Reconcile {
            runs,
            interval,
            mismatches,
            devices,
            errors,
        }
    }

    pub(super) fn set_interval(&self, every: std::time::Duration) {
        self.interval.set(every.as_secs_f64());
    }

    pub(super) fn observe_snapshot(&self, s: &Snapshot) {
        self.runs.inc();
        let c = s.counts();
        self.devices
            .with_label_values(&["bound"])
            .set(c.bound as i64);
        self.devices
            .with_label_values(&["unbound"])
            .set(c.unbound as i64);
        self.devices
            .with_label_values(&["unknown"])
            .set(c.unknown as i64);
        self.errors.inc_by(s.error_count() as u64);
    }

    pub(super) fn mismatch(&self, kind: MismatchKind) {
        self.mismatches.with_label_values(&[kind.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{D1, D3, feed, get, scenario};
    use crate::correlate::tests::unbind_via_ioctl;
    use crate::sysfs::{Snapshot, fake};

    #[test]
    fn sysfs_after_a_scenario() {
        let (mut p, m) = scenario();
        feed(&mut p, unbind_via_ioctl(10, 20_000_000_000, D1));
        // sysfs: D3 bound (known), a foreign device bound, one without tsm/.
        let dir = tempfile::tempdir().unwrap();
        fake::device(dir.path(), D3, Some("tsm0"));
        fake::device(dir.path(), "0000:09:00.0", Some("tsm0"));
        fake::device(dir.path(), "0000:0a:00.0", None);
        p.reconcile(
            &Snapshot::read(dir.path()),
            &Default::default(),
            21_000_000_000,
        );
        let s = m.samples();
        assert_eq!(get(&s, "tsm_trace_sysfs_reconcile_runs_total"), 1.0);
        assert_eq!(get(&s, "tsm_trace_sysfs_devices{state=\"bound\"}"), 2.0);
        assert_eq!(get(&s, "tsm_trace_sysfs_devices{state=\"unbound\"}"), 0.0);
        assert_eq!(get(&s, "tsm_trace_sysfs_devices{state=\"unknown\"}"), 1.0);
        assert_eq!(
            get(
                &s,
                "tsm_trace_sysfs_mismatches_total{kind=\"bound_without_owner\"}"
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "tsm_trace_sysfs_mismatches_total{kind=\"denies_binding\"}"
            ),
            0.0
        );
        assert_eq!(get(&s, "tsm_trace_sysfs_errors_total"), 0.0);
        assert_eq!(
            get(
                &s,
                "tsm_trace_bindings_leaked{reason=\"sysfs_bound_without_owner\"}"
            ),
            1.0
        );
    }
}
