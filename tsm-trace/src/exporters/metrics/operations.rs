//! `tsm_trace_operations_total` and `tsm_trace_operation_duration_seconds`: counted from
//! correlated operations (replay, tests), or, in a live session, mirroring the kernel's exact
//! aggregates read at every scrape (`tsm_trace_kernel_aggregate_read_errors_total` counts the
//! reads that failed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{IntCounter, IntCounterVec, Registry};

use super::histograms::Durations;
use super::{counter, counter_to, counter_vec};
use crate::aggregates::{Aggregates, DURATION_BUCKETS};
use crate::correlate::{OpKind, Operation};
use crate::errno;
use crate::events::Layer;

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

const N_OPS: usize = OpKind::ALL.len();
const N_LAYERS: usize = 5;

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

/// The operation counts and durations.
pub(super) struct Operations {
    pub(super) operations: IntCounterVec,
    pub(super) duration: Arc<Durations>,
    /// Operations and durations come from the kernel's exact aggregation (live sessions), not
    /// from correlated operations (replay), which then only drive traces, bindings and leaks.
    kernel_aggregates: AtomicBool,
    aggregates_source: Mutex<Option<AggregatesSource>>,
    aggregate_read_errors: IntCounter,
    // Label lookups resolved once (hot path: every operation). Series are still created on
    // first use, as `with_label_values` would.
    /// `tsm_trace_operations_total{op, layer, result="ok", errno=""}`, by `[op][layer]`.
    ok: [[OnceLock<IntCounter>; N_LAYERS]; N_OPS],
    /// `tsm_trace_operations_total{op, layer, result="error", errno}`.
    errors: Mutex<HashMap<(OpKind, Layer, i32), IntCounter>>,
}

impl Operations {
    /// Creates and registers the metrics (static definitions: the `expect`s cannot fail).
    pub(super) fn register(r: &Registry) -> Operations {
        let operations = counter_vec(
            r,
            "tsm_trace_operations_total",
            "TSM operations (bind, unbind, vdevice teardown, connect, disconnect, guest_request) by outcome; layer is the layer that produced the errno, or the outermost layer for successes.",
            &["op", "layer", "result", "errno"],
        );
        let aggregate_read_errors = counter(
            r,
            "tsm_trace_kernel_aggregate_read_errors_total",
            "Reads of the kernel's exact operation counts that failed (the values shown are then those of the last good read).",
        );
        let duration = Arc::new(Durations::new(&DURATION_BUCKETS));
        r.register(Box::new(SharedDurations(duration.clone())))
            .expect("unique metric name");
        Operations {
            operations,
            duration,
            kernel_aggregates: AtomicBool::new(false),
            aggregates_source: Mutex::new(None),
            aggregate_read_errors,
            ok: Default::default(),
            errors: Mutex::new(HashMap::new()),
        }
    }

    /// One correlated operation: its count, and one duration per frame (unless the kernel's
    /// aggregates count them).
    pub(super) fn observe(&self, op: &Operation) {
        if self.kernel_aggregates.load(Ordering::Relaxed) {
            return;
        }
        let layer = op.layer();
        match op.errno() {
            None => self.ok(op.kind, layer).inc(),
            Some(e) => self.error(op.kind, layer, e).inc(),
        }
        let known = op.frames.iter().filter(|f| !f.entry_missing); // else: duration unknown
        self.duration
            .observe_all(op.kind, known.map(|f| (f.layer, f.ok(), f.duration_ns)));
    }

    fn ok(&self, kind: OpKind, layer: Layer) -> &IntCounter {
        self.ok[op_index(kind)][layer_index(layer)].get_or_init(|| {
            self.operations
                .with_label_values(&[kind.as_str(), layer.as_str(), "ok", ""])
        })
    }

    fn error(&self, kind: OpKind, layer: Layer, e: i32) -> IntCounter {
        let mut m = self.errors.lock().unwrap_or_else(|p| p.into_inner());
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

    /// See [`super::Metrics::use_kernel_aggregates`].
    pub(super) fn use_kernel_aggregates(&self, source: AggregatesSource) {
        *self
            .aggregates_source
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(source);
        self.kernel_aggregates.store(true, Ordering::Relaxed);
    }

    /// Reads the kernel's aggregates now, if they are the source.
    pub(super) fn refresh_aggregates(&self) {
        let src = self
            .aggregates_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(read) = src.as_ref() {
            match read() {
                Ok(k) => self.set_aggregates(&k),
                Err(e) => {
                    log::warn!(
                        "reading the kernel's operation counts failed: {}",
                        crate::probes::chain(&*e)
                    );
                    self.aggregate_read_errors.inc();
                }
            }
        }
    }

    /// Mirrors the kernel's aggregates (absolute values read from the eBPF maps).
    pub(super) fn set_aggregates(&self, k: &Aggregates) {
        for (&(op, layer, errno), &n) in &k.counts {
            let c = match errno {
                0 => self.ok(op, layer).clone(),
                e => self.error(op, layer, e as i32),
            };
            counter_to(&c, n);
        }
        for (&(op, layer, ok), c) in &k.durations {
            self.duration.set(op, layer, ok, c.clone());
        }
    }

    /// Current value of `tsm_trace_operations_total` for one label set.
    pub(super) fn count(&self, op: OpKind, layer: Layer, result: &str, errno: &str) -> u64 {
        self.operations
            .get_metric_with_label_values(&[op.as_str(), layer.as_str(), result, errno])
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{get, scenario};
    use crate::correlate::OpKind;
    use crate::events::Layer;

    #[test]
    fn operations_after_a_scenario() {
        let (_p, m) = scenario();
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
    }
}
