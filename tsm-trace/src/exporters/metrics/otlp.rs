//! The OTLP span export (`--otlp-endpoint`, `exporters/otlp/`): spans exported, dropped and
//! why, failed export requests. Registered whether or not export is on (all 0 when off).

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, Registry};

use super::exemplars::Exemplars;

use super::{counter, counter_vec};

/// Why a span was not delivered (`tsm_trace_otlp_spans_dropped_total{reason}`).
pub const DROP_REASONS: [&str; 3] = [DROP_QUEUE_FULL, DROP_EXPORT_FAILED, DROP_SHUTDOWN];
/// The export queue was full (a slow or dead collector): the span was never queued.
pub const DROP_QUEUE_FULL: &str = "queue_full";
/// The export request carrying it failed (after the exporter's retries).
pub const DROP_EXPORT_FAILED: &str = "export_failed";
/// Still queued when tsm-trace stopped and the final flush ran out of time.
pub const DROP_SHUTDOWN: &str = "shutdown";

/// The counters the OTLP exporter updates (clones share the series).
#[derive(Clone)]
pub struct OtlpCounters {
    pub exported: IntCounter,
    pub dropped: IntCounterVec,
    pub export_errors: IntCounter,
    /// The latency histograms' exemplars: each frame span queued is its bucket's.
    pub exemplars: Arc<Exemplars>,
}

impl OtlpCounters {
    pub(super) fn register(r: &Registry) -> OtlpCounters {
        let c = OtlpCounters {
            exported: counter(
                r,
                "tsm_trace_otlp_spans_exported_total",
                "Spans the OTLP collector accepted.",
            ),
            dropped: counter_vec(
                r,
                "tsm_trace_otlp_spans_dropped_total",
                "Spans never delivered to the OTLP collector, by reason: queue_full (the bounded \
                 export queue was full), export_failed (the request failed after retries), \
                 shutdown (still queued when the final flush timed out).",
                &["reason"],
            ),
            export_errors: counter(
                r,
                "tsm_trace_otlp_export_errors_total",
                "OTLP export requests that failed (each drops its whole batch).",
            ),
            exemplars: Arc::new(Exemplars::default()),
        };
        for reason in DROP_REASONS {
            c.dropped.with_label_values(&[reason]);
        }
        c
    }

    /// Counters in a registry of their own (tests, a pipeline without metrics).
    pub fn unregistered() -> OtlpCounters {
        OtlpCounters::register(&Registry::new())
    }
}

impl std::fmt::Debug for OtlpCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpCounters")
            .field("exported", &self.exported.get())
            .field("export_errors", &self.export_errors.get())
            .finish_non_exhaustive()
    }
}
