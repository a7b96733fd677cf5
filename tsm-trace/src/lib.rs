//! tsm-trace: observe TEE device assignment (TSM bind/unbind) on confidential-VM hosts.
//!
//! The data flows through the modules in this order:
//!
//! ```text
//! btf ──offsets──▶ probes (load + attach eBPF) ──RawEvent──▶ events (decode, record/replay)
//!     ──Event──▶ correlate (operations, layers, bindings, leaks) ◀── sysfs (reconcile)
//!     ──▶ exporters (Prometheus metrics, trace lines, JSON) ──▶ http (/metrics, /bindings)
//! ```
pub mod aggregates;
pub mod btf;
pub mod cli;
pub mod clock;
pub mod correlate;
pub mod doctor;
pub mod errno;
#[cfg(test)]
mod error_chains;
pub mod event_loop;
pub mod events;
pub mod exporters;
pub mod files;
pub mod generation;
pub mod http;
pub mod in_flight;
pub mod logger;
pub mod memory;
pub mod notices;
pub mod pipeline;
pub mod privileges;
pub mod probes;
pub mod session;
pub mod sysfs;
pub mod targets;
#[doc(hidden)]
pub mod test_support;
