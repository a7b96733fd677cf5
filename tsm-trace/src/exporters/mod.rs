//! Exporters: Prometheus metrics, human trace lines and summary, JSON lines.
pub mod histograms;
pub mod initial;
pub mod json;
pub mod loss;
pub mod metrics;
pub mod misses;
pub mod trace;
