//! Exporters: Prometheus metrics, human trace lines and summary, JSON lines.
pub mod json;
pub mod loss;
pub mod metrics;
pub mod trace;
