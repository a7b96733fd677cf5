//! The HTTP side of the export: a blocking ureq client behind `opentelemetry-http`'s
//! [`HttpClient`] (the batch span processor runs its exports on its own thread, never on the
//! event loop), and a wrapper of the OTLP exporter that counts what each request delivered
//! or lost ([`Ledger`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::exporters::metrics::{DROP_EXPORT_FAILED, OtlpCounters};

/// Plain-HTTP client, every request bounded by `timeout` (connect, send and read).
#[derive(Debug)]
pub struct UreqClient {
    agent: ureq::Agent,
    /// The last transport error's text (the exporter reports only "network error").
    pub transport_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl UreqClient {
    pub fn new(
        timeout: Duration,
        transport_error: Arc<std::sync::Mutex<Option<String>>>,
    ) -> UreqClient {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // The exporter reads the status itself (retryable or not).
            .http_status_as_error(false)
            .build();
        UreqClient {
            agent: ureq::Agent::new_with_config(config),
            transport_error,
        }
    }
}

/// The most of a collector's response read (its body is a small protobuf message).
const MAX_RESPONSE: u64 = 1 << 20;

#[async_trait::async_trait]
impl HttpClient for UreqClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let req = Request::from_parts(parts, body.to_vec());
        let resp = self.agent.run(req).inspect_err(|e| {
            if let Ok(mut t) = self.transport_error.lock() {
                *t = Some(e.to_string());
            }
        })?;
        let (parts, mut body) = resp.into_parts();
        let bytes = body
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .unwrap_or_default();
        Ok(Response::from_parts(parts, Bytes::from(bytes)))
    }
}

/// What became of the spans handed to the processor. `queued − delivered − failed` are in
/// its queue or in a request under way: what [`Ledger::in_flight`] bounds.
#[derive(Debug, Default)]
pub struct Ledger {
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

impl Ledger {
    pub fn in_flight(&self) -> u64 {
        let done = self.delivered.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire);
        self.queued.load(Ordering::Acquire).saturating_sub(done)
    }
}

/// The OTLP exporter, counting each request's spans as exported or dropped (`export_failed`).
#[derive(Debug)]
pub struct Counting<E> {
    pub inner: E,
    pub ledger: Arc<Ledger>,
    pub counters: OtlpCounters,
    /// The last export error's text, for the log at the end.
    pub last_error: Arc<std::sync::Mutex<Option<String>>>,
    pub errors: Arc<AtomicU64>,
    /// [`UreqClient::transport_error`], shared: the cause of a "network error".
    pub transport_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => {
                self.counters.exported.inc_by(n);
                self.ledger.delivered.fetch_add(n, Ordering::AcqRel);
            }
            Err(e) => {
                self.counters.export_errors.inc();
                self.counters
                    .dropped
                    .with_label_values(&[DROP_EXPORT_FAILED])
                    .inc_by(n);
                let nth = self.errors.fetch_add(1, Ordering::AcqRel) + 1;
                let cause = self.transport_error.lock().ok().and_then(|mut t| t.take());
                if let Ok(mut l) = self.last_error.lock() {
                    *l = Some(match cause {
                        Some(c) => format!("{e} ({c})"),
                        None => e.to_string(),
                    });
                }
                // The 1st, 2nd, 4th, 8th, ... failure: a dead collector cannot flood the log
                // (the counters stay exact).
                if nth.is_power_of_two()
                    && let Ok(l) = self.last_error.lock()
                {
                    log::warn!(
                        "OTLP export failed ({nth} failed so far), {n} spans dropped: {}",
                        l.as_deref().unwrap_or("?")
                    );
                }
                self.ledger.failed.fetch_add(n, Ordering::AcqRel);
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
