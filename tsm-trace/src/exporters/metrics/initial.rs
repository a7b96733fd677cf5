//! The label sets of the operation and event metrics that are known before anything happens,
//! started at 0 by [`super::Metrics::new`].
//!
//! A counter series that first appears with the value 1 hides that first increment from
//! `increase()` and `rate()`: the first failed bind after a start would not count towards
//! `TsmBindFailureRateHigh`. So every series an alert or dashboard selects, and every one
//! whose label values form a small fixed list, exists at 0 from start-up:
//!
//! - `tsm_trace_operations_total{result="ok"}`: each operation with each layer its outermost
//!   call can be in ([`OK_LAYERS`]).
//! - `tsm_trace_operations_total{result="error"}`: the errnos the runbook lists for binds and
//!   connects, with the layer that returns them ([`COMMON_ERRORS`]). An errno not listed
//!   still appears at its first occurrence (the errno space is too large to pre-create).
//! - `tsm_trace_operation_duration_seconds`: each `(op, layer)` of [`OK_LAYERS`], ok and
//!   error.
//! - `tsm_trace_events_processed_total`: every probe that delivers events.
//! - `tsm_trace_inflight_expired_total`: every kprobe that parks an entry record, by each
//!   expiry reason.

use prometheus::IntCounterVec;

use super::histograms::Durations;
use super::misses::MissMetrics;
use crate::correlate::OpKind;
use crate::events::{Layer, ProbeId};

const BIND_LAYERS: &[Layer] = &[
    Layer::Iommufd,
    Layer::TsmCore,
    Layer::PciTsm,
    Layer::TsmDriver,
];
const PCI_TSM_LAYERS: &[Layer] = &[Layer::PciTsm, Layer::TsmDriver];

/// For each operation, the layers its outermost call can be in (the `layer` of a success):
/// a bind or unbind starts at the ioctl, a bare `tsm_bind`, `pci_tsm_bind` or the driver's
/// op; a teardown and an invalid ioctl in iommufd; connect and disconnect in PCI TSM or (a
/// driver op called on its own) the driver; a guest request at the series' ioctl, a bare
/// `tsm_guest_req`, `pci_tsm_guest_req` or the driver's op.
pub const OK_LAYERS: [(OpKind, &[Layer]); 7] = [
    (OpKind::Bind, BIND_LAYERS),
    (OpKind::Unbind, BIND_LAYERS),
    (OpKind::Teardown, &[Layer::Iommufd]),
    (OpKind::Invalid, &[Layer::Iommufd]),
    (OpKind::Connect, PCI_TSM_LAYERS),
    (OpKind::Disconnect, PCI_TSM_LAYERS),
    (OpKind::GuestRequest, BIND_LAYERS),
];

/// `(op, layer, errno)` failures known up front: docs/runbook.md's tables for
/// TsmBindFailureRateHigh and TsmConnectFailureRateHigh (the alerts select
/// `op="bind"|"connect", result="error"`), and the invalid ioctl's EINVAL.
pub const COMMON_ERRORS: &[(OpKind, Layer, &str)] = &[
    (OpKind::Bind, Layer::Iommufd, "EOPNOTSUPP"),
    (OpKind::Bind, Layer::Iommufd, "ENOENT"),
    (OpKind::Bind, Layer::Iommufd, "ENODEV"),
    (OpKind::Bind, Layer::Iommufd, "EINVAL"),
    (OpKind::Bind, Layer::Iommufd, "EFAULT"),
    (OpKind::Bind, Layer::TsmCore, "EINVAL"),
    (OpKind::Bind, Layer::PciTsm, "EINVAL"),
    (OpKind::Bind, Layer::PciTsm, "ENXIO"),
    (OpKind::Bind, Layer::PciTsm, "EBUSY"),
    (OpKind::Bind, Layer::TsmDriver, "EIO"),
    (OpKind::Bind, Layer::TsmDriver, "ETIMEDOUT"),
    (OpKind::Connect, Layer::PciTsm, "EINVAL"),
    (OpKind::Connect, Layer::PciTsm, "EBUSY"),
    (OpKind::Connect, Layer::PciTsm, "ENXIO"),
    (OpKind::Connect, Layer::TsmDriver, "ENXIO"),
    (OpKind::Connect, Layer::TsmDriver, "EIO"),
    (OpKind::Connect, Layer::TsmDriver, "ETIMEDOUT"),
    (OpKind::Invalid, Layer::Iommufd, "EINVAL"),
];

/// The probes whose decoded events count in `tsm_trace_events_processed_total` (every probe
/// but `module_load`, whose records are control messages, not events).
pub fn event_probes() -> impl Iterator<Item = ProbeId> {
    ProbeId::ALL
        .into_iter()
        .filter(|p| *p != ProbeId::ModuleLoad)
}

/// The probes with a kprobe that parks an entry record for its return (those whose records
/// can expire: `tsm_trace_inflight_expired_total`).
pub fn expiring_probes() -> impl Iterator<Item = ProbeId> {
    crate::probes::TARGETS
        .iter()
        .filter(|t| {
            crate::probes::program_names(t).any(|(_, k)| k == crate::probes::Kind::Kretprobe)
        })
        .map(|t| t.probe)
}

/// Starts every series above at 0 (called once, by `Metrics::new`).
pub(super) fn declare(
    operations: &IntCounterVec,
    durations: &Durations,
    events_processed: &IntCounterVec,
    misses: &MissMetrics,
) {
    for (op, layers) in OK_LAYERS {
        for &layer in layers {
            operations.with_label_values(&[op.as_str(), layer.as_str(), "ok", ""]);
            durations.declare(op, layer, true);
            durations.declare(op, layer, false);
        }
    }
    for &(op, layer, errno) in COMMON_ERRORS {
        operations.with_label_values(&[op.as_str(), layer.as_str(), "error", errno]);
    }
    for probe in event_probes() {
        events_processed.with_label_values(&[probe.as_str()]);
    }
    for probe in expiring_probes() {
        misses.declare_expiries(probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::exporters::metrics::Metrics;

    fn value(samples: &std::collections::BTreeMap<String, f64>, key: &str) -> f64 {
        *samples
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in a fresh exposition"))
    }

    /// What the alerts select exists, at 0, before anything has happened: the first failure
    /// after a start is then an increase of 1, not a new series that `increase()` misses.
    #[test]
    fn a_fresh_exposition_has_every_known_series_at_zero() {
        let s = Metrics::new().samples();
        // The alerts' own selectors: op="bind"|"connect", result="error" (and their totals).
        for (op, layer, result, errno) in [
            ("bind", "iommufd", "ok", ""),
            ("bind", "pci_tsm", "ok", ""),
            ("bind", "pci_tsm", "error", "EBUSY"),
            ("bind", "tsm_driver", "error", "EIO"),
            ("bind", "iommufd", "error", "EFAULT"),
            ("connect", "pci_tsm", "ok", ""),
            ("connect", "tsm_driver", "error", "ENXIO"),
            ("connect", "tsm_driver", "error", "EIO"),
            ("connect", "pci_tsm", "error", "EBUSY"),
        ] {
            let key = format!(
                "tsm_trace_operations_total{{errno=\"{errno}\",layer=\"{layer}\",op=\"{op}\",result=\"{result}\"}}"
            );
            assert_eq!(value(&s, &key), 0.0, "{key}");
        }
        for (op, layers) in OK_LAYERS {
            for layer in layers {
                let key = format!(
                    "tsm_trace_operations_total{{errno=\"\",layer=\"{}\",op=\"{}\",result=\"ok\"}}",
                    layer.as_str(),
                    op.as_str()
                );
                assert_eq!(value(&s, &key), 0.0, "{key}");
                for result in ["ok", "error"] {
                    let key = format!(
                        "tsm_trace_operation_duration_seconds_count{{layer=\"{}\",op=\"{}\",result=\"{result}\"}}",
                        layer.as_str(),
                        op.as_str()
                    );
                    assert_eq!(value(&s, &key), 0.0, "{key}");
                }
            }
        }
        for &(op, layer, errno) in COMMON_ERRORS {
            let key = format!(
                "tsm_trace_operations_total{{errno=\"{errno}\",layer=\"{}\",op=\"{}\",result=\"error\"}}",
                layer.as_str(),
                op.as_str()
            );
            assert_eq!(value(&s, &key), 0.0, "{key}");
        }
        assert_eq!(
            value(
                &s,
                "tsm_trace_operation_duration_seconds_bucket{layer=\"pci_tsm\",op=\"connect\",result=\"ok\",le=\"+Inf\"}"
            ),
            0.0
        );
        for p in event_probes() {
            let key = format!(
                "tsm_trace_events_processed_total{{probe=\"{}\"}}",
                p.as_str()
            );
            assert_eq!(value(&s, &key), 0.0, "{key}");
        }
        for p in expiring_probes() {
            for reason in ["thread_exited", "timeout"] {
                let key = format!(
                    "tsm_trace_inflight_expired_total{{probe=\"{}\",reason=\"{reason}\"}}",
                    p.as_str()
                );
                assert_eq!(value(&s, &key), 0.0, "{key}");
            }
        }
    }

    /// The first event after start-up increments the pre-created series (no second series).
    #[test]
    fn the_first_failure_increments_the_zero_series() {
        use crate::correlate::tests::{EBUSY, bind_stack};
        let m = std::sync::Arc::new(Metrics::new());
        let mut p =
            crate::pipeline::Pipeline::new(crate::correlate::Config::default(), m.clone(), None);
        let stack = bind_stack(
            7,
            100,
            "0000:01:00.0",
            Some(EBUSY),
            Some(EBUSY),
            Some(EBUSY),
            None,
        );
        for ev in stack {
            let now = ev.end_ns;
            p.handle(ev, now);
        }
        assert_eq!(
            m.operations_count(OpKind::Bind, Layer::PciTsm, "error", "EBUSY"),
            1,
            "{}",
            m.render()
        );
    }

    /// `promtool check metrics` accepts what a just-started daemon serves.
    #[test]
    fn promtool_accepts_a_fresh_exposition() {
        let text = Metrics::new().render();
        if let Some(r) = crate::test_support::promtool_check_metrics(&text) {
            r.unwrap_or_else(|e| panic!("promtool check metrics: {e}"));
        }
    }

    #[test]
    fn errnos_are_real_names() {
        for (_, _, e) in COMMON_ERRORS {
            let n = crate::errno::parse(e).unwrap_or_else(|| panic!("{e} is not an errno"));
            assert_eq!(crate::errno::name(n), *e);
        }
    }

    #[test]
    fn every_operation_has_its_layers() {
        for op in OpKind::ALL {
            assert!(OK_LAYERS.iter().any(|(o, l)| *o == op && !l.is_empty()));
        }
        assert!(expiring_probes().any(|p| p == ProbeId::PciTsmBind));
        assert!(!expiring_probes().any(|p| p == ProbeId::VmmExit));
    }
}
