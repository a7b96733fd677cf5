//! Self-metrics for what never reached our programs or never finished there: the kernel's own
//! miss counts, expired in-flight entries, operations left out of the exact counts.
//!
//! - `tsm_trace_kernel_misses_total{probe, kind, reason}`: `reason="kprobe"` is the kernel's
//!   count for the probe's link (entry: re-entered while another kprobe ran on that CPU;
//!   return: also `maxactive` exhausted), `reason="bpf_recursion"` the program's
//!   `recursion_misses`.
//! - `tsm_trace_kprobe_misses_reported`: 1 where the kernel reports kprobe misses (6.7+),
//!   0 where it cannot (then a zero above proves nothing; expiries still show missed
//!   returns).
//! - `tsm_trace_inflight_expired_total{probe, reason}`: entries whose return never came.
//! - `tsm_trace_operations_uncounted_total{reason}`: operations left out of
//!   `tsm_trace_operations_total`, so that counted + uncounted = issued.

use std::collections::HashMap;
use std::sync::Mutex;
use tsm_trace_common::KernelCounter;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::events::ProbeId;
use crate::probes::{
    Kind,
    expiry::{Expired, ExpiryReason},
    misses::{KprobeMissed, ProgramMisses, kprobe_reporting},
};

/// Why an operation is not in the exact counts.
pub const UNCOUNTED_REASONS: [&str; 2] =
    [KernelCounter::OperationUnfinished.label(), "thread_exited"];

pub struct MissMetrics {
    kernel_misses: IntCounterVec,
    kprobe_reported: IntGauge,
    inflight_expired: IntCounterVec,
    uncounted: IntCounterVec,
    /// Per program: the link its last kprobe count came from and that count, and the last
    /// recursion count (counters mirror absolute kernel values by their increase).
    last: Mutex<HashMap<(ProbeId, Kind), Last>>,
}

#[derive(Default)]
struct Last {
    link: Option<u32>,
    kprobe: u64,
    recursion: u64,
}

impl std::fmt::Debug for MissMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MissMetrics").finish_non_exhaustive()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

impl MissMetrics {
    /// Creates and registers the metrics (static definitions: the `expect`s cannot fail).
    pub fn register(r: &Registry) -> MissMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let m = MissMetrics {
            kernel_misses: vec(
                "tsm_trace_kernel_misses_total",
                "Calls the kernel counted as not reaching a program: reason=kprobe (the probe's own miss count; for a return probe also maxactive exhausted), reason=bpf_recursion (another BPF program was running on that CPU).",
                &["probe", "kind", "reason"],
            ),
            kprobe_reported: register(
                r,
                IntGauge::with_opts(Opts::new(
                    "tsm_trace_kprobe_misses_reported",
                    "1 if this kernel reports kprobe miss counts for our links (Linux 6.7+), 0 if it cannot (then missed returns show only as expired in-flight entries).",
                ))
                .expect("valid metric"),
            ),
            inflight_expired: vec(
                "tsm_trace_inflight_expired_total",
                "Entry records removed because their return will never come: reason=thread_exited, or timeout (older than --inflight-timeout).",
                &["probe", "reason"],
            ),
            uncounted: vec(
                "tsm_trace_operations_uncounted_total",
                "Operations left out of tsm_trace_operations_total because their outer return was never seen: reason=return_missed (the thread began another), thread_exited.",
                &["reason"],
            ),
            last: Mutex::new(HashMap::new()),
        };
        for reason in UNCOUNTED_REASONS {
            m.uncounted.with_label_values(&[reason]);
        }
        m
    }

    /// The kernel's counts for each attached program (absolute values).
    pub fn observe_programs(&self, programs: &[ProgramMisses]) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        for p in programs {
            let l = last.entry((p.probe, p.kind)).or_default();
            let labels = |reason| [p.probe.as_str(), p.kind.as_str(), reason];
            if let Some(KprobeMissed::Count(n)) = p.kprobe {
                // A new link (re-attached after a module reload) counts from 0 again.
                if l.link != p.link_id {
                    l.link = p.link_id;
                    l.kprobe = 0;
                }
                let c = self.kernel_misses.with_label_values(&labels("kprobe"));
                if n > l.kprobe {
                    c.inc_by(n - l.kprobe);
                    l.kprobe = n;
                }
            }
            if let Some(n) = p.recursion {
                let c = self
                    .kernel_misses
                    .with_label_values(&labels("bpf_recursion"));
                if n > l.recursion {
                    c.inc_by(n - l.recursion);
                    l.recursion = n;
                }
            }
        }
        if let Some(r) = kprobe_reporting(programs) {
            self.kprobe_reported.set(i64::from(r));
        }
    }

    /// What one expiry sweep removed.
    pub fn observe_expired(&self, e: &Expired) {
        for (probe, reason) in &e.inflight {
            let probe = probe.map_or("unknown", |p| p.as_str());
            self.inflight_expired
                .with_label_values(&[probe, reason.as_str()])
                .inc();
        }
        self.uncounted
            .with_label_values(&["thread_exited"])
            .inc_by(e.unfinished_operations);
    }

    /// The kernel's count of operations dropped when their thread began the next one.
    pub fn set_return_missed_operations(&self, n: u64) {
        let c = self
            .uncounted
            .with_label_values(&[KernelCounter::OperationUnfinished.label()]);
        if n > c.get() {
            c.inc_by(n - c.get());
        }
    }

    /// Starts the expiry series of `probe` at 0, for every reason (at start-up, before any
    /// probe is attached: see `initial.rs`).
    pub fn declare_expiries(&self, probe: ProbeId) {
        for reason in ExpiryReason::ALL {
            self.inflight_expired
                .with_label_values(&[probe.as_str(), reason.as_str()]);
        }
    }

    /// Starts the series of an attached probe at 0 (absent-alerts and rates from the start).
    pub fn declare(&self, probe: ProbeId, kind: Kind) {
        for reason in ExpiryReason::ALL {
            if kind == Kind::Kprobe {
                self.inflight_expired
                    .with_label_values(&[probe.as_str(), reason.as_str()]);
            }
        }
        if kind != Kind::RawTracepoint {
            self.kernel_misses
                .with_label_values(&[probe.as_str(), kind.as_str(), "kprobe"]);
        }
        self.kernel_misses
            .with_label_values(&[probe.as_str(), kind.as_str(), "bpf_recursion"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(r: &Registry) -> String {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn prog(link: u32, kprobe: u64, recursion: u64) -> ProgramMisses {
        ProgramMisses {
            probe: ProbeId::DriverBind,
            kind: Kind::Kretprobe,
            link_id: Some(link),
            kprobe: Some(KprobeMissed::Count(kprobe)),
            recursion: Some(recursion),
        }
    }

    #[test]
    fn counts_grow_by_the_kernels_increase_and_a_new_link_starts_over() {
        let r = Registry::new();
        let m = MissMetrics::register(&r);
        m.observe_programs(&[prog(5, 54, 1)]);
        m.observe_programs(&[prog(5, 54, 1)]);
        m.observe_programs(&[prog(5, 60, 1)]);
        // Re-attached: link 9 counts from 0; its 3 are new misses.
        m.observe_programs(&[prog(9, 3, 2)]);
        let s = render(&r);
        assert!(
            s.contains(r#"tsm_trace_kernel_misses_total{kind="kretprobe",probe="driver_bind",reason="kprobe"} 63"#),
            "{s}"
        );
        assert!(s.contains(r#"reason="bpf_recursion"} 2"#), "{s}");
        assert!(s.contains("tsm_trace_kprobe_misses_reported 1"), "{s}");
    }

    #[test]
    fn a_kernel_that_cannot_report_says_so() {
        let r = Registry::new();
        let m = MissMetrics::register(&r);
        let mut p = prog(5, 0, 0);
        p.kprobe = Some(KprobeMissed::NotReported);
        m.observe_programs(&[p]);
        assert!(render(&r).contains("tsm_trace_kprobe_misses_reported 0"));
    }

    #[test]
    fn expiries_and_uncounted_operations_are_counted_by_reason() {
        let r = Registry::new();
        let m = MissMetrics::register(&r);
        m.observe_expired(&Expired {
            inflight: vec![
                (Some(ProbeId::DriverBind), ExpiryReason::ThreadExited),
                (Some(ProbeId::DriverBind), ExpiryReason::ThreadExited),
                (None, ExpiryReason::Timeout),
            ],
            unfinished_operations: 2,
            still_in_flight: 0,
        });
        m.set_return_missed_operations(4);
        m.set_return_missed_operations(3);
        let s = render(&r);
        assert!(
            s.contains(
                r#"tsm_trace_inflight_expired_total{probe="driver_bind",reason="thread_exited"} 2"#
            ),
            "{s}"
        );
        assert!(
            s.contains(r#"tsm_trace_inflight_expired_total{probe="unknown",reason="timeout"} 1"#),
            "{s}"
        );
        assert!(
            s.contains(r#"tsm_trace_operations_uncounted_total{reason="thread_exited"} 2"#),
            "{s}"
        );
        assert!(
            s.contains(r#"tsm_trace_operations_uncounted_total{reason="return_missed"} 4"#),
            "{s}"
        );
    }
}
