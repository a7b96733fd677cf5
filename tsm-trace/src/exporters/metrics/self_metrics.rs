//! tsm-trace itself: which probes are attached, events processed and lost (the kernel-side
//! counters among them), kernel read faults, correlation anomalies, what BTF resolved, the
//! kernel's generation, build information and the process collector. The kernel's own miss
//! counts and expiries are in `misses.rs`, owned here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::misses::MissMetrics;
use super::{counter, counter_to, counter_vec, gauge, gauge_vec};
use crate::correlate::AnomalyKind;
use crate::events::ProbeId;
use crate::probes::KernelCounts;
use tsm_trace_common::KernelCounter;

/// The loss reason userspace itself counts: a ring-buffer record it could not decode.
pub const DECODE_ERROR: &str = "decode_error";

/// Why events were lost (`tsm_trace_events_lost_total{reason}`): every kernel counter that
/// counts a loss, by its one label ([`KernelCounter::label`]), and [`DECODE_ERROR`].
pub const LOST_REASONS: [&str; 13] = lost_reasons();

const fn lost_reasons() -> [&'static str; 13] {
    // Loss labels are distinct (tsm-trace-common's tests): one slot each, then DECODE_ERROR.
    let mut out = [DECODE_ERROR; 13];
    let mut n = 0;
    let mut i = 0;
    while i < KernelCounter::ALL.len() {
        let c = KernelCounter::ALL[i];
        if c.is_loss() {
            out[n] = c.label();
            n += 1;
        }
        i += 1;
    }
    // The array is exactly as long as the reasons: a new loss counter fails the build here
    // until it is made longer.
    assert!(
        n == out.len() - 1,
        "LOST_REASONS: one slot per loss label plus decode_error"
    );
    out
}

const N_PROBES: usize = ProbeId::ALL.len();

fn probe_index(p: ProbeId) -> usize {
    p as usize
}

pub(super) struct SelfMetrics {
    probe_attached: IntGaugeVec,
    pub(super) events_processed: IntCounterVec,
    events_lost: IntCounterVec,
    kernel_read_faults: IntCounter,
    anomalies: IntCounterVec,
    btf_field: IntGaugeVec,
    kernel_info: IntGaugeVec,
    btf_unresolved: IntGauge,
    pub(super) misses: MissMetrics,
    btf_fields: Mutex<BTreeMap<String, bool>>,
    /// The function label last published per (probe, kind).
    probe_functions: Mutex<HashMap<(ProbeId, String), String>>,
    /// `tsm_trace_events_processed_total{probe}`, by probe, resolved once (hot path: every
    /// event). Series are still created on first use, as `with_label_values` would.
    processed: [OnceLock<IntCounter>; N_PROBES],
}

impl SelfMetrics {
    /// Creates and registers the metrics, `tsm_trace_build_info` and the process collector
    /// (static definitions: the `expect`s cannot fail); the known label sets start at 0.
    pub(super) fn register(r: &Registry) -> SelfMetrics {
        let probe_attached = gauge_vec(
            r,
            "tsm_trace_probe_attached",
            "1 if the probe is attached, 0 if it could not be.",
            &["probe", "function", "kind"],
        );
        let events_processed = counter_vec(
            r,
            "tsm_trace_events_processed_total",
            "Events decoded and correlated, by probe.",
            &["probe"],
        );
        let events_lost = counter_vec(
            r,
            "tsm_trace_events_lost_total",
            "Events lost, by reason.",
            &["reason"],
        );
        let kernel_read_faults = counter(
            r,
            "tsm_trace_kernel_read_faults_total",
            "Kernel memory reads by the eBPF programs that faulted (fields reported unknown).",
        );
        let anomalies = counter_vec(
            r,
            "tsm_trace_correlation_anomalies_total",
            "Events that did not fit the expected call structure, by kind.",
            &["kind"],
        );
        let btf_field = gauge_vec(
            r,
            "tsm_trace_btf_field_resolved",
            "1 if the kernel struct field was found in BTF, else 0.",
            &["field"],
        );
        let kernel_info = gauge_vec(
            r,
            "tsm_trace_kernel_info",
            "What the kernel carries, detected from kallsyms and BTF: tsm_patch (v2, v5, post-v5, none, unknown), pci_tsm (yes, no); value 1.",
            &["tsm_patch", "pci_tsm"],
        );
        let btf_unresolved = gauge(
            r,
            "tsm_trace_btf_fields_unresolved",
            "Kernel struct fields that BTF could not resolve.",
        );
        let build_info = gauge_vec(
            r,
            "tsm_trace_build_info",
            "Build information; value 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            // Only fails on a duplicate registration, which a fresh registry cannot have.
            let _ = r.register(Box::new(pc));
        }
        for reason in LOST_REASONS {
            events_lost.with_label_values(&[reason]);
        }
        for kind in AnomalyKind::ALL {
            anomalies.with_label_values(&[kind.as_str()]);
        }
        SelfMetrics {
            probe_attached,
            events_processed,
            events_lost,
            kernel_read_faults,
            anomalies,
            btf_field,
            kernel_info,
            btf_unresolved,
            misses: MissMetrics::register(r),
            btf_fields: Mutex::new(BTreeMap::new()),
            probe_functions: Mutex::new(HashMap::new()),
            processed: Default::default(),
        }
    }

    pub(super) fn event_processed(&self, probe: ProbeId) {
        self.processed[probe_index(probe)]
            .get_or_init(|| self.events_processed.with_label_values(&[probe.as_str()]))
            .inc();
    }

    pub(super) fn decode_error(&self) {
        self.events_lost.with_label_values(&[DECODE_ERROR]).inc();
    }

    pub(super) fn anomaly(&self, kind: AnomalyKind) {
        self.anomalies.with_label_values(&[kind.as_str()]).inc();
    }

    pub(super) fn set_kernel_counters(&self, k: &KernelCounts) {
        for c in KernelCounter::ALL {
            match c {
                KernelCounter::ReadFault => counter_to(&self.kernel_read_faults, k[c]),
                KernelCounter::OperationUnfinished => {
                    self.misses.set_return_missed_operations(k[c])
                }
                _ => counter_to(&self.events_lost.with_label_values(&[c.label()]), k[c]),
            }
        }
    }

    pub(super) fn set_probe_attached(
        &self,
        probe: ProbeId,
        function: &str,
        kind: &str,
        attached: bool,
    ) {
        // One series per program: a function found later (`tsm_bind [module]`) replaces the
        // name it was looked for under.
        let mut last = self
            .probe_functions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = last.insert((probe, kind.to_string()), function.to_string())
            && old != function
        {
            let _ = self
                .probe_attached
                .remove_label_values(&[probe.as_str(), &old, kind]);
        }
        self.probe_attached
            .with_label_values(&[probe.as_str(), function, kind])
            .set(i64::from(attached));
    }

    pub(super) fn set_kernel_info(&self, tsm_patch: &str, pci_tsm: bool) {
        self.kernel_info.reset();
        self.kernel_info
            .with_label_values(&[tsm_patch, if pci_tsm { "yes" } else { "no" }])
            .set(1);
    }

    pub(super) fn set_btf_field(&self, field: &str, resolved: bool) {
        if let Ok(mut m) = self.btf_fields.lock() {
            m.insert(field.to_string(), resolved);
        }
        self.btf_field
            .with_label_values(&[field])
            .set(i64::from(resolved));
        self.recount_btf();
    }

    pub(super) fn set_btf_fields<'a>(&self, fields: impl IntoIterator<Item = (&'a str, bool)>) {
        for (field, resolved) in fields {
            if let Ok(mut m) = self.btf_fields.lock() {
                m.insert(field.to_string(), resolved);
            }
            self.btf_field
                .with_label_values(&[field])
                .set(i64::from(resolved));
        }
        self.recount_btf();
    }

    fn recount_btf(&self) {
        let unresolved = self
            .btf_fields
            .lock()
            .map_or(0, |m| m.values().filter(|r| !**r).count());
        self.btf_unresolved.set(unresolved as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::super::tests::{get, scenario};
    use crate::events::ProbeId;
    use crate::probes::KernelCounts;
    use tsm_trace_common::KernelCounter;

    #[test]
    fn itself_after_a_scenario() {
        let (_p, m) = scenario();
        let s = m.samples();
        assert_eq!(
            get(&s, "tsm_trace_events_processed_total{probe=\"tsm_bind\"}"),
            3.0
        );
        assert_eq!(
            get(
                &s,
                "tsm_trace_events_processed_total{probe=\"kvm_destroy_vm\"}"
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "tsm_trace_correlation_anomalies_total{kind=\"duplicate_event\"}"
            ),
            0.0
        );
        assert_eq!(
            get(
                &s,
                &format!(
                    "tsm_trace_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            1.0
        );
        assert!(
            s.keys()
                .any(|k| k.starts_with("process_resident_memory_bytes"))
        );
    }

    #[test]
    fn setters_for_the_daemon() {
        let m = Metrics::new();
        use KernelCounter::*;
        m.set_kernel_counters(&KernelCounts::from_values(&[
            (RingbufFull, 5),
            (InflightFull, 1),
            (OrphanReturn, 2),
            (ReadFault, 9),
            (ControlFull, 0),
            (AggregationFull, 0),
            (ReturnMissed, 4),
        ]));
        m.set_kernel_counters(&KernelCounts::from_values(&[
            (RingbufFull, 7),
            (InflightFull, 1),
            (OrphanReturn, 2),
            (ReadFault, 9),
            (ControlFull, 0),
            (AggregationFull, 0),
            (ReturnMissed, 4),
            (VmmTableFull, 1),
        ]));
        // A smaller absolute value (maps recreated) never makes a counter go down.
        m.set_kernel_counters(&KernelCounts::from_values(&[(RingbufFull, 3)]));
        m.decode_error();
        m.set_probe_attached(ProbeId::TsmBind, "tsm_bind", "kprobe", true);
        m.set_probe_attached(ProbeId::TsmBind, "tsm_bind", "kretprobe", false);
        m.set_btf_fields([("iommufd_vdevice.virt_id", true), ("kvm.stats_id", false)]);
        m.set_btf_field("iommu_vdevice_tsm_op.op", false);
        let s = m.samples();
        assert_eq!(
            get(&s, "tsm_trace_events_lost_total{reason=\"ringbuf_full\"}"),
            7.0
        );
        assert_eq!(
            get(&s, "tsm_trace_events_lost_total{reason=\"inflight_full\"}"),
            1.0
        );
        assert_eq!(
            get(&s, "tsm_trace_events_lost_total{reason=\"return_missed\"}"),
            4.0
        );
        assert_eq!(
            get(&s, "tsm_trace_events_lost_total{reason=\"vmm_table_full\"}"),
            1.0
        );
        assert_eq!(
            get(&s, "tsm_trace_events_lost_total{reason=\"orphan_return\"}"),
            2.0
        );
        assert_eq!(
            get(&s, "tsm_trace_events_lost_total{reason=\"decode_error\"}"),
            1.0
        );
        assert_eq!(get(&s, "tsm_trace_kernel_read_faults_total"), 9.0);
        assert_eq!(
            get(
                &s,
                "tsm_trace_probe_attached{function=\"tsm_bind\",kind=\"kprobe\",probe=\"tsm_bind\"}"
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "tsm_trace_probe_attached{function=\"tsm_bind\",kind=\"kretprobe\",probe=\"tsm_bind\"}"
            ),
            0.0
        );
        assert_eq!(
            get(&s, "tsm_trace_btf_field_resolved{field=\"kvm.stats_id\"}"),
            0.0
        );
        assert_eq!(
            get(
                &s,
                "tsm_trace_btf_field_resolved{field=\"iommufd_vdevice.virt_id\"}"
            ),
            1.0
        );
        assert_eq!(get(&s, "tsm_trace_btf_fields_unresolved"), 2.0);
        m.set_btf_field("kvm.stats_id", true);
        assert_eq!(get(&m.samples(), "tsm_trace_btf_fields_unresolved"), 1.0);
    }

    /// One series: a re-detection (another generation loaded) replaces the previous one.
    #[test]
    fn kernel_info_is_one_series() {
        let (_p, m) = scenario();
        m.set_kernel_info("v2", true);
        m.set_kernel_info("none", true);
        let info: Vec<(String, f64)> = m
            .samples()
            .into_iter()
            .filter(|(k, _)| k.starts_with("tsm_trace_kernel_info"))
            .collect();
        assert_eq!(
            info,
            [(
                "tsm_trace_kernel_info{pci_tsm=\"yes\",tsm_patch=\"none\"}".to_string(),
                1.0
            )]
        );
    }
}
