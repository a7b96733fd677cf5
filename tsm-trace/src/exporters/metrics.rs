//! Prometheus metrics. Every name here is documented in `docs/metrics.md`; dashboards and
//! alert rules depend on them: add, never rename.
//!
//! Label cardinality is bounded: `op`, `layer`, `result`, `reason`, `kind`, `state`, `event`,
//! `probe`, `function`, `field` come from small fixed sets; `errno` from the kernel's errno
//! space; only `tsm_trace_leaked_binding_info` carries a device and VM, one series per
//! currently leaked binding (bounded by the leak table).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::histograms::Durations;
use super::initial;

use crate::aggregates::{Aggregates, DURATION_BUCKETS};
use crate::correlate::{
    AnomalyKind, Correlator, Leak, LeakReason, MismatchKind, OpKind, Output, TsmState, VmEventKind,
};
use crate::errno;
use crate::events::{Layer, ProbeId, UnbindCause};
use crate::probes::KernelCounts;
use crate::sysfs::Snapshot;
use tsm_trace_common::KernelCounter;

use super::misses::MissMetrics;

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why events were lost (`tsm_trace_events_lost_total{reason}`).
pub const LOST_REASONS: [&str; 9] = [
    "ringbuf_full",
    "inflight_full",
    "orphan_return",
    "decode_error",
    "control_full",
    "aggregation_full",
    "return_missed",
    "vmm_table_full",
    "scratch_missing",
];

/// Reads the kernel's aggregates (from the session's maps); its error is the reader's own.
pub type AggregatesSource =
    Box<dyn Fn() -> Result<Aggregates, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// The registry owns a collector; the metrics keep a handle to set it.
struct SharedDurations(Arc<Durations>);

impl prometheus::core::Collector for SharedDurations {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

/// All of tsm-trace's metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    operations: IntCounterVec,
    duration: Arc<Durations>,
    /// Operations and durations come from the kernel's exact aggregation (live sessions), not
    /// from correlated operations (replay), which then only drive traces, bindings and leaks.
    kernel_aggregates: AtomicBool,
    aggregates_source: Mutex<Option<AggregatesSource>>,
    aggregate_read_errors: IntCounter,
    bindings_active: IntGauge,
    bindings_closed: IntCounterVec,
    devices: IntGaugeVec,
    leaks_detected: IntCounterVec,
    leaked_info: IntGaugeVec,
    reconcile_runs: IntCounter,
    reconcile_interval: prometheus::Gauge,
    sysfs_mismatches: IntCounterVec,
    sysfs_devices: IntGaugeVec,
    sysfs_errors: IntCounter,
    vm_events: IntCounterVec,
    probe_attached: IntGaugeVec,
    events_processed: IntCounterVec,
    events_lost: IntCounterVec,
    kernel_read_faults: IntCounter,
    anomalies: IntCounterVec,
    btf_field: IntGaugeVec,
    kernel_info: IntGaugeVec,
    btf_unresolved: IntGauge,
    pending_frames: IntGauge,
    misses: MissMetrics,
    btf_fields: Mutex<BTreeMap<String, bool>>,
    /// The function label last published per (probe, kind).
    probe_functions: Mutex<HashMap<(ProbeId, String), String>>,
    /// Label lookups resolved once (hot path: every event and every operation). Series are
    /// still created on first use, as `with_label_values` would.
    handles: Handles,
}

const N_OPS: usize = OpKind::ALL.len();
const N_LAYERS: usize = 5;
const N_PROBES: usize = ProbeId::ALL.len();

/// Pre-resolved metric handles.
struct Handles {
    /// `tsm_trace_operations_total{op, layer, result="ok", errno=""}`, by `[op][layer]`.
    ops_ok: [[OnceLock<IntCounter>; N_LAYERS]; N_OPS],
    /// `tsm_trace_operations_total{op, layer, result="error", errno}`.
    ops_err: Mutex<HashMap<(OpKind, Layer, i32), IntCounter>>,
    /// `tsm_trace_events_processed_total{probe}`, by probe.
    processed: [OnceLock<IntCounter>; N_PROBES],
    /// `tsm_trace_bindings_leaked{reason}`, in `LeakReason::ALL` order.
    leaked: [IntGauge; LeakReason::ALL.len()],
}

const fn layer_index(l: Layer) -> usize {
    match l {
        Layer::Iommufd => 0,
        Layer::TsmCore => 1,
        Layer::PciTsm => 2,
        Layer::TsmDriver => 3,
        Layer::Vm => 4,
    }
}

fn op_index(k: OpKind) -> usize {
    k as usize
}

fn probe_index(p: ProbeId) -> usize {
    p as usize
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

/// Adds `target - current` to a counter that mirrors an absolute kernel value (a value that
/// went down, e.g. after the maps were recreated, adds nothing).
fn counter_to(c: &IntCounter, target: u64) {
    let cur = c.get();
    if target > cur {
        c.inc_by(target - cur);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric (definitions are static: the `expect`s cannot fail
    /// on any input), with the process collector and `tsm_trace_build_info`.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let operations = counter_vec(
            &r,
            "tsm_trace_operations_total",
            "TSM operations (bind, unbind, vdevice teardown, connect, disconnect, guest_request) by outcome; layer is the layer that produced the errno, or the outermost layer for successes.",
            &["op", "layer", "result", "errno"],
        );
        let aggregate_read_errors = counter(
            &r,
            "tsm_trace_kernel_aggregate_read_errors_total",
            "Reads of the kernel's exact operation counts that failed (the values shown are then those of the last good read).",
        );
        let duration = Arc::new(Durations::new(&DURATION_BUCKETS));
        r.register(Box::new(SharedDurations(duration.clone())))
            .expect("unique metric name");
        let bindings_active = gauge(
            &r,
            "tsm_trace_bindings_active",
            "Devices currently believed bound to a VM (including leaked ones).",
        );
        let bindings_closed = counter_vec(
            &r,
            "tsm_trace_bindings_closed_total",
            "Bindings that ended, by cause: unbind (pci_tsm_unbind), the PCI TSM core unbinding on disconnect, device_removal or tsm_unregister, or module_unloaded (the module whose function made the binding was unloaded with no unbind seen).",
            &["cause"],
        );
        let devices = gauge_vec(
            &r,
            "tsm_trace_devices",
            "Devices by PCI TSM lifecycle state as the probes saw it: connected (not bound), bound, disconnected (since start).",
            &["state"],
        );
        let bindings_leaked = gauge_vec(
            &r,
            "tsm_trace_bindings_leaked",
            "Bindings currently believed leaked, by reason.",
            &["reason"],
        );
        let leaks_detected = counter_vec(
            &r,
            "tsm_trace_leaks_detected_total",
            "Leaked bindings detected, by reason (stays when the leak clears).",
            &["reason"],
        );
        let leaked_info = gauge_vec(
            &r,
            "tsm_trace_leaked_binding_info",
            "1 for each currently leaked binding.",
            &["device", "vm", "reason"],
        );
        let reconcile_runs = counter(
            &r,
            "tsm_trace_sysfs_reconcile_runs_total",
            "sysfs reconciliation runs.",
        );
        let reconcile_interval = prometheus::Gauge::new(
            "tsm_trace_sysfs_reconcile_interval_seconds",
            "Seconds between sysfs reconciliation runs (--reconcile-interval); 0: only one, at start.",
        )
        .expect("valid metric definition");
        r.register(Box::new(reconcile_interval.clone()))
            .expect("unique metric name");
        let sysfs_mismatches = counter_vec(
            &r,
            "tsm_trace_sysfs_mismatches_total",
            "Disagreements between sysfs tsm/bound and the binding table.",
            &["kind"],
        );
        let sysfs_devices = gauge_vec(
            &r,
            "tsm_trace_sysfs_devices",
            "PCI devices by tsm/bound state at the last reconciliation.",
            &["state"],
        );
        let sysfs_errors = counter(
            &r,
            "tsm_trace_sysfs_errors_total",
            "Errors reading sysfs during reconciliation.",
        );
        let vm_events = counter_vec(
            &r,
            "tsm_trace_vm_events_total",
            "VM lifecycle events seen (VM destroyed, VMM exited).",
            &["event"],
        );
        let probe_attached = gauge_vec(
            &r,
            "tsm_trace_probe_attached",
            "1 if the probe is attached, 0 if it could not be.",
            &["probe", "function", "kind"],
        );
        let events_processed = counter_vec(
            &r,
            "tsm_trace_events_processed_total",
            "Events decoded and correlated, by probe.",
            &["probe"],
        );
        let events_lost = counter_vec(
            &r,
            "tsm_trace_events_lost_total",
            "Events lost, by reason.",
            &["reason"],
        );
        let kernel_read_faults = counter(
            &r,
            "tsm_trace_kernel_read_faults_total",
            "Kernel memory reads by the eBPF programs that faulted (fields reported unknown).",
        );
        let anomalies = counter_vec(
            &r,
            "tsm_trace_correlation_anomalies_total",
            "Events that did not fit the expected call structure, by kind.",
            &["kind"],
        );
        let btf_field = gauge_vec(
            &r,
            "tsm_trace_btf_field_resolved",
            "1 if the kernel struct field was found in BTF, else 0.",
            &["field"],
        );
        let kernel_info = gauge_vec(
            &r,
            "tsm_trace_kernel_info",
            "What the kernel carries, detected from kallsyms and BTF: tsm_patch (v2, v5, post-v5, none, unknown), pci_tsm (yes, no); value 1.",
            &["tsm_patch", "pci_tsm"],
        );
        let btf_unresolved = gauge(
            &r,
            "tsm_trace_btf_fields_unresolved",
            "Kernel struct fields that BTF could not resolve.",
        );
        let pending_frames = gauge(
            &r,
            "tsm_trace_pending_frames",
            "Completed inner calls waiting for their outer call.",
        );
        let build_info = gauge_vec(
            &r,
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

        // Known label sets start at zero, so rates and absent-alerts work from the start.
        for reason in LeakReason::ALL {
            bindings_leaked.with_label_values(&[reason.as_str()]).set(0);
            leaks_detected.with_label_values(&[reason.as_str()]);
        }
        for kind in MismatchKind::ALL {
            sysfs_mismatches.with_label_values(&[kind.as_str()]);
        }
        for cause in UnbindCause::ALL {
            bindings_closed.with_label_values(&[cause.as_str()]);
        }
        for state in TsmState::ALL {
            devices.with_label_values(&[state.as_str()]).set(0);
        }
        for state in ["bound", "unbound", "unknown"] {
            sysfs_devices.with_label_values(&[state]).set(0);
        }
        for ev in VmEventKind::ALL {
            vm_events.with_label_values(&[ev.as_str()]);
        }
        for reason in LOST_REASONS {
            events_lost.with_label_values(&[reason]);
        }
        for kind in AnomalyKind::ALL {
            anomalies.with_label_values(&[kind.as_str()]);
        }

        let misses = MissMetrics::register(&r);
        // Operations, durations, events and expiries known up front start at 0 too.
        initial::declare(&operations, &duration, &events_processed, &misses);
        let handles = Handles {
            ops_ok: Default::default(),
            ops_err: Mutex::new(HashMap::new()),
            processed: Default::default(),
            leaked: LeakReason::ALL
                .map(|reason| bindings_leaked.with_label_values(&[reason.as_str()])),
        };

        Metrics {
            handles,
            registry: r,
            operations,
            duration,
            kernel_aggregates: AtomicBool::new(false),
            aggregates_source: Mutex::new(None),
            aggregate_read_errors,
            bindings_active,
            bindings_closed,
            devices,
            leaks_detected,
            leaked_info,
            reconcile_runs,
            reconcile_interval,
            sysfs_mismatches,
            sysfs_devices,
            sysfs_errors,
            vm_events,
            probe_attached,
            events_processed,
            events_lost,
            kernel_read_faults,
            anomalies,
            btf_field,
            kernel_info,
            btf_unresolved,
            pending_frames,
            misses,
            btf_fields: Mutex::new(BTreeMap::new()),
            probe_functions: Mutex::new(HashMap::new()),
        }
    }

    /// Kernel miss counts, expiries and uncounted operations (`misses.rs`).
    pub fn misses(&self) -> &MissMetrics {
        &self.misses
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.refresh_aggregates();
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            log::warn!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Updates counters from one correlator output.
    pub fn observe(&self, out: &Output) {
        match out {
            Output::Operation(op) => {
                if self.kernel_aggregates.load(Ordering::Relaxed) {
                    return;
                }
                let h = &self.handles;
                let layer = op.layer();
                match op.errno() {
                    None => h.ops_ok[op_index(op.kind)][layer_index(layer)]
                        .get_or_init(|| {
                            self.operations.with_label_values(&[
                                op.kind.as_str(),
                                layer.as_str(),
                                "ok",
                                "",
                            ])
                        })
                        .inc(),
                    Some(e) => self.op_error(op.kind, layer, e).inc(),
                }
                for f in &op.frames {
                    if f.entry_missing {
                        continue; // duration unknown
                    }
                    self.duration
                        .observe(op.kind, f.layer, f.ok(), f.duration_ns);
                }
            }
            Output::LeakDetected(leak) => {
                self.leaks_detected
                    .with_label_values(&[leak.reason.as_str()])
                    .inc();
                self.show_leak(leak);
            }
            Output::LeakCleared(leak) => {
                let _ = self.leaked_info.remove_label_values(&[
                    &leak.device,
                    &leak.vm_name(),
                    leak.reason.as_str(),
                ]);
            }
            Output::Anomaly(a) => self.anomalies.with_label_values(&[a.kind.as_str()]).inc(),
            Output::Mismatch(m) => self
                .sysfs_mismatches
                .with_label_values(&[m.kind.as_str()])
                .inc(),
            Output::VmEvent(v) => self.vm_events.with_label_values(&[v.event.as_str()]).inc(),
            Output::BindingClosed(c) => self
                .bindings_closed
                .with_label_values(&[c.cause.as_str()])
                .inc(),
        }
    }

    /// The leak's own series (`tsm_trace_leaked_binding_info`), as a detection sets it; also
    /// for each leak restored at start, which is not detected again (its counter stays).
    pub fn show_leak(&self, leak: &Leak) {
        self.leaked_info
            .with_label_values(&[&leak.device, &leak.vm_name(), leak.reason.as_str()])
            .set(1);
    }

    /// Sets the gauges that mirror the correlator's tables.
    pub fn sync(&self, c: &Correlator) {
        self.bindings_active.set(c.binding_count() as i64);
        for (state, n) in c.device_states() {
            self.devices
                .with_label_values(&[state.as_str()])
                .set(n as i64);
        }
        for (g, reason) in self.handles.leaked.iter().zip(LeakReason::ALL) {
            g.set(c.leak_count(reason) as i64);
        }
        self.pending_frames.set(c.pending_frames() as i64);
    }

    /// `--reconcile-interval` (zero: reconciliation runs once, at start; alerts must not wait
    /// for more runs).
    pub fn set_reconcile_interval(&self, every: std::time::Duration) {
        self.reconcile_interval.set(every.as_secs_f64());
    }

    /// Records one reconciliation run (call with every snapshot, before or after
    /// [`Correlator::reconcile`]).
    pub fn observe_snapshot(&self, s: &Snapshot) {
        self.reconcile_runs.inc();
        let c = s.counts();
        self.sysfs_devices
            .with_label_values(&["bound"])
            .set(c.bound as i64);
        self.sysfs_devices
            .with_label_values(&["unbound"])
            .set(c.unbound as i64);
        self.sysfs_devices
            .with_label_values(&["unknown"])
            .set(c.unknown as i64);
        self.sysfs_errors.inc_by(s.error_count() as u64);
    }

    /// One decoded event (the pipeline calls this for every event).
    pub fn event_processed(&self, probe: ProbeId) {
        self.handles.processed[probe_index(probe)]
            .get_or_init(|| self.events_processed.with_label_values(&[probe.as_str()]))
            .inc();
    }

    /// A ring-buffer record that could not be decoded.
    pub fn decode_error(&self) {
        self.events_lost.with_label_values(&["decode_error"]).inc();
    }

    fn op_error(&self, kind: OpKind, layer: Layer, e: i32) -> IntCounter {
        let mut m = self
            .handles
            .ops_err
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.entry((kind, layer, e))
            .or_insert_with(|| {
                self.operations.with_label_values(&[
                    kind.as_str(),
                    layer.as_str(),
                    "error",
                    &errno::name(e),
                ])
            })
            .clone()
    }

    /// From now on, operations and durations are the kernel's exact aggregates, read from
    /// `source` whenever the metrics are rendered; correlated operations no longer count
    /// them.
    pub fn use_kernel_aggregates(&self, source: AggregatesSource) {
        *self
            .aggregates_source
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(source);
        self.kernel_aggregates.store(true, Ordering::Relaxed);
    }

    /// Reads the kernel's aggregates now (also done by [`Metrics::render`]).
    pub fn refresh_aggregates(&self) {
        let src = self
            .aggregates_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(read) = src.as_ref() {
            match read() {
                Ok(k) => self.set_aggregates(&k),
                Err(e) => {
                    let mut why = e.to_string();
                    let mut cause = e.source();
                    while let Some(c) = cause {
                        why = format!("{why}: {c}");
                        cause = c.source();
                    }
                    log::warn!("reading the kernel's operation counts failed: {why}");
                    self.aggregate_read_errors.inc();
                }
            }
        }
    }

    /// Mirrors the kernel's aggregates (absolute values read from the eBPF maps).
    pub fn set_aggregates(&self, k: &Aggregates) {
        for (&(op, layer, errno), &n) in &k.counts {
            let c = match errno {
                0 => self.handles.ops_ok[op_index(op)][layer_index(layer)]
                    .get_or_init(|| {
                        self.operations
                            .with_label_values(&[op.as_str(), layer.as_str(), "ok", ""])
                    })
                    .clone(),
                e => self.op_error(op, layer, e as i32),
            };
            counter_to(&c, n);
        }
        for (&(op, layer, ok), c) in &k.durations {
            self.duration.set(op, layer, ok, c.clone());
        }
    }

    /// Mirrors the kernel-side counters (absolute values from the eBPF maps): each loss
    /// under its label in `tsm_trace_events_lost_total{reason}`, the operations left
    /// unfinished in `tsm_trace_operations_uncounted_total`, the read faults alone.
    pub fn set_kernel_counters(&self, k: &KernelCounts) {
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

    /// `kind` is `kprobe`, `kretprobe` or `raw_tracepoint`; `function` the kernel symbol (or
    /// tracepoint) it was attached to, or wanted to be.
    pub fn set_probe_attached(&self, probe: ProbeId, function: &str, kind: &str, attached: bool) {
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

    /// The kernel's generation (one series: the previous one is removed).
    pub fn set_kernel_info(&self, tsm_patch: &str, pci_tsm: bool) {
        self.kernel_info.reset();
        self.kernel_info
            .with_label_values(&[tsm_patch, if pci_tsm { "yes" } else { "no" }])
            .set(1);
    }

    /// One BTF field (e.g. `iommufd_vdevice.virt_id`); also recomputes the unresolved count.
    pub fn set_btf_field(&self, field: &str, resolved: bool) {
        if let Ok(mut m) = self.btf_fields.lock() {
            m.insert(field.to_string(), resolved);
        }
        self.btf_field
            .with_label_values(&[field])
            .set(i64::from(resolved));
        self.recount_btf();
    }

    /// All BTF fields at once.
    pub fn set_btf_fields<'a>(&self, fields: impl IntoIterator<Item = (&'a str, bool)>) {
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

    /// Current value of `tsm_trace_operations_total` for one label set (tests, summaries).
    pub fn operations_count(&self, op: OpKind, layer: Layer, result: &str, errno: &str) -> u64 {
        self.operations
            .get_metric_with_label_values(&[op.as_str(), layer.as_str(), result, errno])
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Every sample as `name{labels} value` lines, sorted (tests).
    pub fn samples(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for line in self.render().lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ')
                && let Ok(v) = v.parse::<f64>()
            {
                m.insert(k.to_string(), v);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::correlate::Config;
    use crate::correlate::tests::{
        EBUSY, EFAULT, TGID, bind_stack, bind_via_ioctl, kvm_destroy, teardown, unbind_via_ioctl,
    };
    use crate::events::Event;
    use crate::pipeline::Pipeline;
    use crate::sysfs::fake;

    const D1: &str = "0000:01:00.0";
    const D2: &str = "0000:02:00.0";
    const D3: &str = "0000:03:00.0";
    const GRACE: u64 = 5_000_000_000;

    /// One batch, as the daemon's loop feeds it: every event, then a tick (which brings the
    /// table gauges up to date).
    fn feed(p: &mut Pipeline, evs: Vec<Event>) {
        let mut now = 0;
        for e in evs {
            now = e.end_ns;
            p.handle(e, now);
        }
        p.tick(now);
    }

    /// bind ok (D1), bind EBUSY at pci_tsm (D2), bind + EFAULT (D3), teardown of D1 without
    /// unbind, VM destroyed with D1 and D3 bound, grace expiry.
    fn scenario() -> (Pipeline, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        let mut p = Pipeline::new(Config::default(), m.clone(), None);
        feed(&mut p, bind_via_ioctl(10, 1_000_000, D1, 0));
        feed(
            &mut p,
            bind_stack(
                11,
                3_000_000,
                D2,
                Some(EBUSY),
                Some(EBUSY),
                Some(EBUSY),
                None,
            ),
        );
        feed(&mut p, bind_via_ioctl(12, 5_000_000, D3, EFAULT));
        feed(&mut p, teardown(13, 7_000_000, D1, false));
        p.handle(kvm_destroy(9_000_000), 9_000_000);
        p.tick(9_000_000 + GRACE);
        (p, m)
    }

    fn get(s: &BTreeMap<String, f64>, k: &str) -> f64 {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k}; have:\n{s:#?}"))
    }

    #[test]
    fn exposition_after_a_scenario() {
        let (mut p, m) = scenario();
        let s = m.samples();
        let ops = "tsm_trace_operations_total";
        assert_eq!(
            get(
                &s,
                &format!("{ops}{{errno=\"\",layer=\"iommufd\",op=\"bind\",result=\"ok\"}}")
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                &format!("{ops}{{errno=\"EBUSY\",layer=\"pci_tsm\",op=\"bind\",result=\"error\"}}")
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                &format!(
                    "{ops}{{errno=\"EFAULT\",layer=\"iommufd\",op=\"bind\",result=\"error\"}}"
                )
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                &format!("{ops}{{errno=\"\",layer=\"iommufd\",op=\"teardown\",result=\"ok\"}}")
            ),
            1.0
        );
        // Four label sets counted; the others known up front stay at 0 (`initial.rs`).
        assert_eq!(
            s.iter()
                .filter(|(k, v)| k.starts_with(ops) && **v > 0.0)
                .count(),
            4
        );
        assert_eq!(
            m.operations_count(OpKind::Bind, Layer::PciTsm, "error", "EBUSY"),
            1
        );

        // One histogram observation per frame, labelled with the frame's layer and result.
        let d = "tsm_trace_operation_duration_seconds";
        assert_eq!(
            get(
                &s,
                &format!("{d}_count{{layer=\"pci_tsm\",op=\"bind\",result=\"error\"}}")
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                &format!("{d}_count{{layer=\"pci_tsm\",op=\"bind\",result=\"ok\"}}")
            ),
            2.0
        );
        assert_eq!(
            get(
                &s,
                &format!("{d}_count{{layer=\"iommufd\",op=\"bind\",result=\"error\"}}")
            ),
            2.0
        );
        assert_eq!(
            get(
                &s,
                &format!("{d}_count{{layer=\"iommufd\",op=\"bind\",result=\"ok\"}}")
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                &format!("{d}_count{{layer=\"tsm_driver\",op=\"bind\",result=\"ok\"}}")
            ),
            2.0
        );
        assert!(
            (get(
                &s,
                &format!("{d}_sum{{layer=\"tsm_driver\",op=\"bind\",result=\"ok\"}}")
            ) - 0.0008)
                .abs()
                < 1e-12
        );
        // 400 µs frames: not in the 250 µs bucket, in the 500 µs one.
        assert_eq!(
            get(
                &s,
                &format!(
                    "{d}_bucket{{layer=\"tsm_driver\",op=\"bind\",result=\"ok\",le=\"0.00025\"}}"
                )
            ),
            0.0
        );
        assert_eq!(
            get(
                &s,
                &format!(
                    "{d}_bucket{{layer=\"tsm_driver\",op=\"bind\",result=\"ok\",le=\"0.0005\"}}"
                )
            ),
            2.0
        );
        assert_eq!(
            get(
                &s,
                &format!("{d}_bucket{{layer=\"tsm_driver\",op=\"bind\",result=\"ok\",le=\"30\"}}")
            ),
            2.0
        );

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
        let _ = TGID;
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

    #[test]
    fn every_documented_metric_is_exposed_and_every_exposed_one_documented() {
        let (_p, m) = scenario();
        m.set_probe_attached(ProbeId::TsmBind, "tsm_bind", "kprobe", true);
        m.set_btf_field("kvm.stats_id", true);
        m.set_kernel_info("v5", true);
        let text = m.render();
        let exposed: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|n| n.starts_with("tsm_trace_"))
            .collect();
        let doc = include_str!("../../../docs/metrics.md");
        for name in &exposed {
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is not in docs/metrics.md"
            );
        }
        for name in [
            "tsm_trace_operations_total",
            "tsm_trace_operation_duration_seconds",
            "tsm_trace_bindings_active",
            "tsm_trace_bindings_leaked",
            "tsm_trace_leaks_detected_total",
            "tsm_trace_leaked_binding_info",
            "tsm_trace_sysfs_reconcile_runs_total",
            "tsm_trace_sysfs_mismatches_total",
            "tsm_trace_sysfs_devices",
            "tsm_trace_sysfs_errors_total",
            "tsm_trace_vm_events_total",
            "tsm_trace_probe_attached",
            "tsm_trace_events_processed_total",
            "tsm_trace_events_lost_total",
            "tsm_trace_kernel_read_faults_total",
            "tsm_trace_correlation_anomalies_total",
            "tsm_trace_btf_field_resolved",
            "tsm_trace_btf_fields_unresolved",
            "tsm_trace_build_info",
        ] {
            assert!(exposed.contains(name), "{name} missing from the exposition");
        }
    }

    /// `promtool check metrics` (Debian's prometheus package) must have nothing to say.
    #[test]
    fn promtool_accepts_the_exposition() {
        let (_p, m) = scenario();
        m.set_probe_attached(ProbeId::TsmBind, "tsm_bind", "kprobe", true);
        m.set_btf_field("kvm.stats_id", false);
        m.decode_error();
        let text = m.render();
        if let Some(r) = crate::test_support::promtool_check_metrics(&text) {
            r.unwrap_or_else(|e| panic!("promtool check metrics: {e}"));
        }
    }
}
