//! Prometheus metrics. Every name here is documented in `docs/metrics.md`; dashboards and
//! alert rules depend on them: add, never rename.
//!
//! Label cardinality is bounded: `op`, `layer`, `result`, `reason`, `kind`, `state`, `event`,
//! `probe`, `function`, `field` come from small fixed sets; `errno` from the kernel's errno
//! space; only `tsm_trace_leaked_binding_info` carries a device and VM, one series per
//! currently leaked binding (bounded by the leak table).
//!
//! This module owns the registry and the exposition; each family of series has a room of its
//! own, which defines its metrics and keeps them up to date:
//!
//! - `operations.rs`: operation counts and durations, from correlated operations or mirroring
//!   the kernel's exact aggregates (`histograms.rs`: the duration histograms' collector).
//! - `ide.rs`: PCIe IDE streams (the stream table, leaked streams) and their steps.
//! - `tables.rs`: what the correlator's tables hold (bindings, leaks, devices, pending frames)
//!   and the VM lifecycle events it saw.
//! - `reconcile.rs`: sysfs reconciliation runs and what they found.
//! - `self_metrics.rs`: tsm-trace itself (probes, events processed and lost, the kernel-side
//!   counters, anomalies, BTF, build and process); `misses.rs`: what never reached our
//!   programs or never finished there.
//! - `persistence.rs`: the state file's saves and the ring-buffer records held for them.
//! - `otlp.rs`: the OTLP span export (spans exported, dropped, failed requests).
//! - `initial.rs`: the series known up front, started at 0.
//! - `in_flight.rs`: operations still running and the oldest one's age.
//! - `openmetrics.rs`: the OpenMetrics exposition (served when the scraper asks for it), with
//!   the latency histograms' exemplars from `exemplars.rs` (filled by the OTLP exporter).

mod ide;
mod operations;
mod otlp;
mod persistence;
mod reconcile;
mod self_metrics;
mod tables;

pub mod exemplars;
pub mod histograms;
mod in_flight;
pub mod initial;
pub mod misses;
pub mod openmetrics;

use std::collections::BTreeMap;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::aggregates::Aggregates;
use crate::correlate::{Correlator, Leak, OpKind, Output};
use crate::events::{Layer, ProbeId};
use crate::probes::KernelCounts;
use crate::sysfs::Snapshot;

use ide::Ide;
use in_flight::InFlightMetrics;
use misses::MissMetrics;
use operations::Operations;
use persistence::Persistence;
use reconcile::Reconcile;
use self_metrics::SelfMetrics;
use tables::Tables;

pub use operations::AggregatesSource;
pub use otlp::{DROP_EXPORT_FAILED, DROP_QUEUE_FULL, DROP_REASONS, DROP_SHUTDOWN, OtlpCounters};
pub use self_metrics::{DECODE_ERROR, LOST_REASONS};

/// The classic exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub use openmetrics::{CONTENT_TYPE as OPENMETRICS_CONTENT_TYPE, Format};

/// All of tsm-trace's metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    operations: Operations,
    tables: Tables,
    ide: Ide,
    reconcile: Reconcile,
    self_metrics: SelfMetrics,
    persistence: Persistence,
    in_flight: InFlightMetrics,
    otlp: OtlpCounters,
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
    /// on any input), with the process collector and `tsm_trace_build_info`. Known label sets
    /// start at zero, so rates and absent-alerts work from the start.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let operations = Operations::register(&registry);
        let tables = Tables::register(&registry);
        let ide = Ide::register(&registry);
        let reconcile = Reconcile::register(&registry);
        let self_metrics = SelfMetrics::register(&registry);
        let persistence = Persistence::register(&registry);
        let in_flight = InFlightMetrics::register(&registry);
        let otlp = OtlpCounters::register(&registry);
        // Operations, durations, events and expiries known up front start at 0 too.
        initial::declare(
            &operations.operations,
            &operations.duration,
            &self_metrics.events_processed,
            &self_metrics.misses,
        );
        Metrics {
            registry,
            operations,
            tables,
            ide,
            reconcile,
            self_metrics,
            persistence,
            in_flight,
            otlp,
        }
    }

    /// The OTLP export's counters (`otlp.rs`), for the exporter to update.
    pub fn otlp(&self) -> &OtlpCounters {
        &self.otlp
    }

    /// The last read of the operations in flight (`crate::in_flight`).
    pub fn set_in_flight(&self, f: crate::in_flight::InFlight) {
        self.in_flight.set(f);
    }

    pub fn in_flight(&self) -> crate::in_flight::InFlight {
        self.in_flight.get()
    }

    /// A call returned: the operation it was the outermost call of leaves the last read.
    pub fn call_returned(&self, tid: u32, probe: ProbeId, start_ns: u64) {
        self.in_flight.returned(tid, probe, start_ns);
    }

    /// Kernel miss counts, expiries and uncounted operations (`misses.rs`).
    pub fn misses(&self) -> &MissMetrics {
        &self.self_metrics.misses
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        Self::text(&self.gather())
    }

    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.refresh_aggregates();
        self.in_flight.refresh(crate::clock::monotonic_ns());
        self.registry.gather()
    }

    fn text(families: &[prometheus::proto::MetricFamily]) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(families, &mut buf) {
            log::warn!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The OpenMetrics 1.0 exposition, with the latency histograms' exemplars.
    pub fn render_openmetrics(&self) -> Result<String, openmetrics::EncodeError> {
        self.render_openmetrics_with(&self.otlp.exemplars)
    }

    /// The OpenMetrics 1.0 exposition with the exemplars of another table (`replay`, whose
    /// exporter fills a table of its own).
    pub fn render_openmetrics_with(
        &self,
        ex: &exemplars::Exemplars,
    ) -> Result<String, openmetrics::EncodeError> {
        openmetrics::encode(&self.gather(), &|mf, m, le| ex.lookup(mf, m, le))
    }

    /// The exposition in `format`, and its content type. An exposition OpenMetrics cannot
    /// express (a family with an invalid name: not one of ours) is served as the classic text,
    /// with a warning.
    pub fn render_as(&self, format: Format) -> (&'static str, String) {
        match format {
            Format::Text => (CONTENT_TYPE, self.render()),
            Format::OpenMetrics => {
                let families = self.gather();
                let ex = &self.otlp.exemplars;
                match openmetrics::encode(&families, &|mf, m, le| ex.lookup(mf, m, le)) {
                    Ok(s) => (OPENMETRICS_CONTENT_TYPE, s),
                    Err(e) => {
                        log::warn!("the OpenMetrics exposition: {e}; serving the classic text");
                        (CONTENT_TYPE, Self::text(&families))
                    }
                }
            }
        }
    }

    /// The latency histograms' exemplars (filled by the OTLP exporter).
    pub fn exemplars(&self) -> &exemplars::Exemplars {
        &self.otlp.exemplars
    }

    /// Updates counters from one correlator output.
    pub fn observe(&self, out: &Output) {
        match out {
            Output::Operation(op) => {
                self.operations.observe(op);
                self.ide.observe(op);
            }
            Output::LeakDetected(leak) => self.tables.leak_detected(leak),
            Output::LeakCleared(leak) => self.tables.leak_cleared(leak),
            Output::Anomaly(a) => self.self_metrics.anomaly(a.kind),
            Output::Mismatch(m) => self.reconcile.mismatch(m.kind),
            Output::VmEvent(v) => self.tables.vm_event(v.event),
            Output::BindingClosed(c) => self.tables.binding_closed(c.cause),
            Output::IdeStreamLeaked(l) => self.ide.leak_detected(l),
            Output::IdeStreamLeakCleared(_) => {}
        }
    }

    /// The leak's own series (`tsm_trace_leaked_binding_info`), as a detection sets it; also
    /// for each leak restored at start, which is not detected again (its counter stays).
    pub fn show_leak(&self, leak: &Leak) {
        self.tables.show_leak(leak);
    }

    /// Sets the gauges that mirror the correlator's tables.
    pub fn sync(&self, c: &Correlator) {
        self.tables.sync(c);
        self.ide.sync(c);
    }

    /// `--reconcile-interval` (zero: reconciliation runs once, at start; alerts must not wait
    /// for more runs).
    pub fn set_reconcile_interval(&self, every: std::time::Duration) {
        self.reconcile.set_interval(every);
    }

    /// Records one reconciliation run (call with every snapshot, before or after
    /// [`Correlator::reconcile`]).
    pub fn observe_snapshot(&self, s: &Snapshot) {
        self.reconcile.observe_snapshot(s);
    }

    /// One decoded event (the pipeline calls this for every event).
    pub fn event_processed(&self, probe: ProbeId) {
        self.self_metrics.event_processed(probe);
    }

    /// A save of the state file: its size, or that it failed.
    pub fn state_saved(&self, bytes: Result<u64, ()>) {
        self.persistence.saved(bytes);
    }

    /// A state file that could not be restored at start (`reason`: see
    /// `persistence::LOAD_FAILURES`).
    pub fn state_load_failed(&self, reason: &str) {
        self.persistence.load_failed(reason);
    }

    /// The wall clock stepped.
    pub fn wall_clock_stepped(&self) {
        self.persistence.clock_stepped();
    }

    /// How many of this daemon's pins are gone from bpffs.
    pub fn set_pins_missing(&self, n: usize) {
        self.persistence.set_pins_missing(n);
    }

    /// Ring-buffer bytes read and not yet committed.
    pub fn set_ring_uncommitted(&self, bytes: u64) {
        self.persistence.set_uncommitted(bytes);
    }

    /// A ring-buffer record that could not be decoded.
    pub fn decode_error(&self) {
        self.self_metrics.decode_error();
    }

    /// From now on, operations and durations are the kernel's exact aggregates, read from
    /// `source` whenever the metrics are rendered; correlated operations no longer count
    /// them.
    pub fn use_kernel_aggregates(&self, source: AggregatesSource) {
        self.operations.use_kernel_aggregates(source);
    }

    /// Reads the kernel's aggregates now (also done by [`Metrics::render`]).
    pub fn refresh_aggregates(&self) {
        self.operations.refresh_aggregates();
    }

    /// Mirrors the kernel's aggregates (absolute values read from the eBPF maps).
    pub fn set_aggregates(&self, k: &Aggregates) {
        self.operations.set_aggregates(k);
    }

    /// Mirrors the kernel-side counters (absolute values from the eBPF maps): each loss
    /// under its label in `tsm_trace_events_lost_total{reason}`, the operations left
    /// unfinished in `tsm_trace_operations_uncounted_total`, the read faults alone.
    pub fn set_kernel_counters(&self, k: &KernelCounts) {
        self.self_metrics.set_kernel_counters(k);
    }

    /// `kind` is `kprobe`, `kretprobe` or `raw_tracepoint`; `function` the kernel symbol (or
    /// tracepoint) it was attached to, or wanted to be.
    pub fn set_probe_attached(&self, probe: ProbeId, function: &str, kind: &str, attached: bool) {
        self.self_metrics
            .set_probe_attached(probe, function, kind, attached);
    }

    /// The kernel's generation (one series: the previous one is removed).
    pub fn set_kernel_info(&self, tsm_patch: &str, pci_tsm: bool) {
        self.self_metrics.set_kernel_info(tsm_patch, pci_tsm);
    }

    /// One BTF field (e.g. `iommufd_vdevice.virt_id`); also recomputes the unresolved count.
    pub fn set_btf_field(&self, field: &str, resolved: bool) {
        self.self_metrics.set_btf_field(field, resolved);
    }

    /// All BTF fields at once.
    pub fn set_btf_fields<'a>(&self, fields: impl IntoIterator<Item = (&'a str, bool)>) {
        self.self_metrics.set_btf_fields(fields);
    }

    /// Current value of `tsm_trace_operations_total` for one label set (tests, summaries).
    pub fn operations_count(&self, op: OpKind, layer: Layer, result: &str, errno: &str) -> u64 {
        self.operations.count(op, layer, result, errno)
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
pub(super) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::correlate::Config;
    use crate::correlate::tests::{
        EBUSY, EFAULT, bind_stack, bind_via_ioctl, kvm_destroy, teardown,
    };
    use crate::events::Event;
    use crate::pipeline::Pipeline;

    pub const D1: &str = "0000:01:00.0";
    const D2: &str = "0000:02:00.0";
    pub const D3: &str = "0000:03:00.0";
    const GRACE: u64 = 5_000_000_000;

    /// One batch, as the daemon's loop feeds it: every event, then a tick (which brings the
    /// table gauges up to date).
    pub fn feed(p: &mut Pipeline, evs: Vec<Event>) {
        let mut now = 0;
        for e in evs {
            now = e.end_ns;
            p.handle(e, now);
        }
        p.tick(now);
    }

    /// bind ok (D1), bind EBUSY at pci_tsm (D2), bind + EFAULT (D3), teardown of D1 without
    /// unbind, VM destroyed with D1 and D3 bound, grace expiry.
    pub fn scenario() -> (Pipeline, Arc<Metrics>) {
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

    pub fn get(s: &BTreeMap<String, f64>, k: &str) -> f64 {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k}; have:\n{s:#?}"))
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
        let doc = include_str!("../../../../docs/metrics.md");
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

    /// The OpenMetrics exposition of the same state: a real parser accepts it, with
    /// exemplars, and its samples are the classic text's (the same names, label sets and
    /// values; `le` compared as numbers).
    #[test]
    fn openmetrics_exposition_has_the_classic_samples() {
        let (_p, m) = scenario();
        m.set_probe_attached(ProbeId::TsmBind, "tsm_bind", "kprobe", true);
        m.set_kernel_info("v5", true);
        m.exemplars().record(
            OpKind::Bind,
            Layer::Iommufd,
            true,
            2_000,
            [0xab; 16],
            [0xcd; 8],
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_765_000_000),
        );
        let om = m.render_openmetrics().unwrap();
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE tsm_trace_operations counter\n"), "{om}");
        assert!(om.contains("# TYPE tsm_trace_kernel info\n"), "{om}");
        assert!(
            om.contains(
                "tsm_trace_operation_duration_seconds_bucket{layer=\"iommufd\",op=\"bind\",result=\"ok\",le=\"1e-05\"} 0 # {trace_id=\"abababababababababababababababab\",span_id=\"cdcdcdcdcdcdcdcd\"} 0.000002 1765000000.000000000\n"
            ),
            "{om}"
        );
        if let Some(r) = crate::test_support::openmetrics_parse(&om) {
            r.unwrap_or_else(|e| panic!("the OpenMetrics parser refused it: {e}"));
        }
        // Same samples (the process collector's change between renders: left out).
        let norm = |text: &str| -> BTreeMap<String, String> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
                .map(|l| {
                    let l = l.split(" # {").next().unwrap_or(l);
                    let (k, v) = l.rsplit_once(' ').unwrap();
                    let k = match k.split_once("le=\"") {
                        Some((a, b)) => {
                            let (le, rest) = b.split_once('"').unwrap();
                            let le: f64 = le.replace("+Inf", "inf").parse().unwrap();
                            format!("{a}le={le}{rest}")
                        }
                        None => k.to_string(),
                    };
                    (k, v.to_string())
                })
                .collect()
        };
        let classic = norm(&m.render());
        let open = norm(&om);
        assert_eq!(classic.len(), open.len());
        for (k, v) in &classic {
            let w = open
                .get(k)
                .unwrap_or_else(|| panic!("{k} not in OpenMetrics"));
            assert_eq!(v.parse::<f64>().unwrap(), w.parse::<f64>().unwrap(), "{k}");
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
