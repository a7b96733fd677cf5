//! OTLP span export (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_*`): every operation as a trace
//! in the tracing backend an SRE already runs (see `docs/traces.md`).
//!
//! - `config.rs`: where to, from the flag and the standard variables.
//! - `spans.rs`: outputs → spans (names, attributes, parentage, links, times).
//! - `client.rs`: the HTTP client and the exporter wrapper that counts every request.
//!
//! The OpenTelemetry SDK's batch span processor sends them from its own thread: handing it a
//! span never blocks ([`Otlp::write`] is called on the event loop). Its queue is bounded, and
//! so is what we hand it: a span is queued only while fewer than `queue` spans are queued or
//! in a request under way ([`client::Ledger`]); past that it is dropped and counted
//! (`tsm_trace_otlp_spans_dropped_total{reason="queue_full"}`), so the processor's own queue
//! never overflows uncounted. A failed request's spans are counted (`export_failed`), and so
//! are spans still queued when the final flush runs out of time (`shutdown`).

pub mod client;
pub mod config;
pub mod spans;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};

use crate::correlate::Output;
use crate::exporters::metrics::{DROP_QUEUE_FULL, DROP_SHUTDOWN, OtlpCounters};
use client::{Counting, Ledger, UreqClient};
pub use config::{ConfigError, OtlpConfig};
use spans::Spans;

/// Spans queued or in a request under way at most (the SDK's default queue size).
pub const DEFAULT_QUEUE: usize = 2048;

/// The OTLP exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP export settings")]
    Config(#[from] ConfigError),
    #[error("setting up the OTLP exporter for {url}")]
    Build {
        url: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// What to do when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the span and count it (live: the event loop never waits).
    Drop,
    /// Wait up to this long for room, then drop and count it (replay: nothing to keep up with).
    Wait(Duration),
}

/// What the export did, at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtlpReport {
    pub url: String,
    pub spans: u64,
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    pub dropped_shutdown: u64,
    pub export_errors: u64,
    pub last_error: Option<String>,
    /// Devices forgotten by the link table (their later spans lack some links).
    pub links_forgotten: u64,
}

impl OtlpReport {
    /// One line for the log.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "OTLP export to {}: {} spans, {} exported",
            self.url, self.spans, self.exported
        );
        let dropped = self.dropped_queue_full + self.dropped_export_failed + self.dropped_shutdown;
        if dropped > 0 {
            s.push_str(&format!(
                ", {dropped} dropped ({} queue full, {} export failed, {} at shutdown)",
                self.dropped_queue_full, self.dropped_export_failed, self.dropped_shutdown
            ));
        }
        if self.export_errors > 0 {
            s.push_str(&format!("; {} failed requests", self.export_errors));
            if let Some(e) = &self.last_error {
                s.push_str(&format!(", the last: {e}"));
            }
        }
        s
    }
}

/// The live exporter: fed outputs, sends spans.
pub struct Otlp {
    processor: BatchSpanProcessor,
    ledger: Arc<Ledger>,
    counters: OtlpCounters,
    spans: Spans,
    queue: u64,
    when_full: WhenFull,
    timeout: Duration,
    url: String,
    submitted: u64,
    dropped_queue_full: u64,
    last_error: Arc<Mutex<Option<String>>>,
    errors: Arc<AtomicU64>,
    finished: Option<OtlpReport>,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("url", &self.url)
            .field("submitted", &self.submitted)
            .finish_non_exhaustive()
    }
}

/// The service's resource: `service.name` tsm-trace, its version, the host's name.
fn resource() -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", "tsm-trace"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        attrs.push(KeyValue::new("host.name", h.trim().to_string()));
    }
    Resource::builder_empty().with_attributes(attrs).build()
}

impl Otlp {
    /// Starts the export thread. `offset_ns`: CLOCK_REALTIME − CLOCK_MONOTONIC, added to every
    /// event time once.
    pub fn start(
        cfg: &OtlpConfig,
        counters: OtlpCounters,
        offset_ns: i64,
        queue: usize,
        when_full: WhenFull,
    ) -> Result<Otlp, OtlpError> {
        let transport_error = Arc::new(Mutex::new(None));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(UreqClient::new(cfg.timeout, transport_error.clone()))
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.url.clone())
            .with_timeout(cfg.timeout)
            .with_headers(cfg.headers.clone())
            .build()
            .map_err(|source| OtlpError::Build {
                url: cfg.url.clone(),
                source,
            })?;
        let ledger = Arc::new(Ledger::default());
        let last_error = Arc::new(Mutex::new(None));
        let errors = Arc::new(AtomicU64::new(0));
        let mut counting = Counting {
            inner: exporter,
            ledger: ledger.clone(),
            counters: counters.clone(),
            last_error: last_error.clone(),
            errors: errors.clone(),
            transport_error,
        };
        counting.set_resource(&resource());
        let queue = queue.max(1);
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(queue)
            .with_max_export_batch_size(512.min(queue))
            .with_scheduled_delay(Duration::from_secs(1))
            .build();
        let processor = BatchSpanProcessor::new(counting, batch);
        Ok(Otlp {
            processor,
            ledger,
            counters,
            spans: Spans::new(offset_ns),
            queue: queue as u64,
            when_full,
            timeout: cfg.timeout,
            url: cfg.url.clone(),
            submitted: 0,
            dropped_queue_full: 0,
            last_error,
            errors,
            finished: None,
        })
    }

    /// One output's spans, queued (never blocks in [`WhenFull::Drop`] mode). Each frame span
    /// queued becomes the exemplar of the latency histogram bucket its duration is counted in
    /// (`OtlpCounters::exemplars`): the ids the backend gets are the ids Prometheus gets.
    pub fn write(&mut self, o: &Output) {
        if self.finished.is_some() {
            return;
        }
        let op = match o {
            Output::Operation(op) => Some(op),
            _ => None,
        };
        // An operation's spans: the root, then one per frame in order (`Spans::of`).
        for (i, span) in self.spans.of(o).into_iter().enumerate() {
            let ctx = span.span_context.clone();
            let end = span.end_time;
            if self.submit(span)
                && let Some(op) = op
                && let Some(f) = i.checked_sub(1).and_then(|j| op.frames.get(j))
                && !f.entry_missing
            {
                self.counters.exemplars.record(
                    op.kind,
                    f.layer,
                    f.ok(),
                    f.duration_ns,
                    ctx.trace_id().to_bytes(),
                    ctx.span_id().to_bytes(),
                    end,
                );
            }
        }
    }

    /// The exemplar table this exporter fills.
    pub fn exemplars(&self) -> std::sync::Arc<crate::exporters::metrics::exemplars::Exemplars> {
        self.counters.exemplars.clone()
    }

    /// Queues a span; false if it was dropped.
    fn submit(&mut self, span: SpanData) -> bool {
        self.submitted += 1;
        if self.ledger.in_flight() >= self.queue {
            let room = match self.when_full {
                WhenFull::Drop => false,
                WhenFull::Wait(d) => {
                    let until = Instant::now() + d;
                    while self.ledger.in_flight() >= self.queue && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    self.ledger.in_flight() < self.queue
                }
            };
            if !room {
                self.dropped_queue_full += 1;
                self.counters
                    .dropped
                    .with_label_values(&[DROP_QUEUE_FULL])
                    .inc();
                return false;
            }
        }
        self.ledger.queued.fetch_add(1, Ordering::AcqRel);
        self.processor.on_end(span);
        true
    }

    /// Sends what is queued (waiting at most the export timeout plus a second for it) and stops
    /// the export thread; spans still queued then are counted as dropped (`shutdown`).
    /// Idempotent: later calls return the same report.
    pub fn finish(&mut self) -> OtlpReport {
        if let Some(r) = &self.finished {
            return r.clone();
        }
        let _ = self
            .processor
            .shutdown_with_timeout(self.timeout + Duration::from_secs(1));
        let left = self.ledger.in_flight();
        if left > 0 {
            self.ledger.failed.fetch_add(left, Ordering::AcqRel);
            self.counters
                .dropped
                .with_label_values(&[DROP_SHUTDOWN])
                .inc_by(left);
        }
        let report = OtlpReport {
            url: self.url.clone(),
            spans: self.submitted,
            exported: self.ledger.delivered.load(Ordering::Acquire),
            dropped_queue_full: self.dropped_queue_full,
            dropped_export_failed: self
                .ledger
                .failed
                .load(Ordering::Acquire)
                .saturating_sub(left),
            dropped_shutdown: left,
            export_errors: self.errors.load(Ordering::Acquire),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
            links_forgotten: self.spans.forgotten,
        };
        self.finished = Some(report.clone());
        report
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        if self.finished.is_none() {
            self.finish();
        }
    }
}
