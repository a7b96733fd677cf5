//! Operations still running (`crate::in_flight`): how many, and how long the oldest has run.
//! The event loop stores each read of the kernel's entries; the gauges are set from it at
//! every scrape, the age against CLOCK_MONOTONIC then (the kernel's clock for entry times).

use std::sync::Mutex;

use prometheus::{Gauge, IntGauge, Opts, Registry};

use crate::in_flight::InFlight;

pub(super) struct InFlightMetrics {
    count: IntGauge,
    oldest: Gauge,
    last: Mutex<InFlight>,
}

impl InFlightMetrics {
    pub(super) fn register(r: &Registry) -> InFlightMetrics {
        let count = IntGauge::with_opts(Opts::new(
            "tsm_trace_operations_in_flight",
            "TSM operations (one per thread: its outermost probed call) entered and not yet returned, as the kernel-side entries show them at the last read (every 5 s).",
        ))
        .expect("valid metric definition");
        let oldest = Gauge::with_opts(Opts::new(
            "tsm_trace_operation_in_flight_oldest_seconds",
            "How long the oldest operation in flight has run: from the kernel's entry timestamp to now (CLOCK_MONOTONIC); 0 when none is.",
        ))
        .expect("valid metric definition");
        r.register(Box::new(count.clone()))
            .expect("unique metric name");
        r.register(Box::new(oldest.clone()))
            .expect("unique metric name");
        InFlightMetrics {
            count,
            oldest,
            last: Mutex::new(InFlight::default()),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, f: InFlight) {
        *self.last() = f;
    }

    pub(super) fn get(&self) -> InFlight {
        self.last().clone()
    }

    pub(super) fn returned(&self, tid: u32, probe: crate::events::ProbeId, start_ns: u64) {
        let mut l = self.last();
        if !l.ops.is_empty() {
            l.returned(tid, probe, start_ns);
        }
    }

    /// Sets the gauges for a scrape at `now_ns`.
    pub(super) fn refresh(&self, now_ns: u64) {
        let l = self.last();
        self.count.set(i64::try_from(l.total).unwrap_or(i64::MAX));
        self.oldest.set(l.oldest_seconds(now_ns));
    }
}
