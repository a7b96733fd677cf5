//! Exporters: Prometheus metrics, trace lines, JSON.
