//! Exporters: Prometheus metrics, human trace lines and summary, JSON lines, the
//! Perfetto timeline, OTLP spans.
pub mod json;
pub mod loss;
pub mod metrics;
pub mod otlp;
pub mod timeline;
pub mod trace;
