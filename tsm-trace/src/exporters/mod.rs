//! Exporters: Prometheus metrics, human trace lines and summary, JSON lines, the
//! Perfetto timeline.
pub mod json;
pub mod loss;
pub mod metrics;
pub mod timeline;
pub mod trace;
