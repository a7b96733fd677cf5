//! HTTP: /metrics, /healthz, /readyz, /bindings.
