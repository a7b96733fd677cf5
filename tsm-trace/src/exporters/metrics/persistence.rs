//! What lets the daemon's view survive faults and restarts: the state file
//! (`correlate/state.rs`: saves by result, its size, failed loads), the ring-buffer records
//! held until what they changed is saved, the pins in bpffs, and wall-clock steps.

use prometheus::{IntCounterVec, IntGauge, Registry};

use super::{counter_vec, gauge};

/// `result` values of `tsm_trace_state_saves_total`.
pub const SAVE_RESULTS: [&str; 2] = ["ok", "failed"];

/// `reason` values of `tsm_trace_state_load_failures_total`.
pub const LOAD_FAILURES: [&str; 3] = ["unreadable", "malformed", "format"];

pub(super) struct Persistence {
    saves: IntCounterVec,
    bytes: IntGauge,
    uncommitted: IntGauge,
    load_failures: IntCounterVec,
    pins_missing: IntGauge,
    clock_steps: prometheus::IntCounter,
}

impl Persistence {
    pub(super) fn register(r: &Registry) -> Persistence {
        let saves = counter_vec(
            r,
            "tsm_trace_state_saves_total",
            "Writes of the state file (--state-file), by result (ok, failed). A failed save is retried on the next change; until one succeeds a restart would start from the last saved tables.",
            &["result"],
        );
        for r in SAVE_RESULTS {
            saves.with_label_values(&[r]);
        }
        let load_failures = counter_vec(
            r,
            "tsm_trace_state_load_failures_total",
            "State files that could not be restored at start, by reason (unreadable, malformed, format: written by a newer tsm-trace); a malformed or newer file is moved aside (.json.bad) and the daemon starts from sysfs.",
            &["reason"],
        );
        for r in LOAD_FAILURES {
            load_failures.with_label_values(&[r]);
        }
        Persistence {
            saves,
            load_failures,
            clock_steps: super::counter(
                r,
                "tsm_trace_wall_clock_steps_total",
                "Steps of the wall clock (CLOCK_REALTIME against CLOCK_MONOTONIC, more than a second) seen by the daemon. Event times and durations are CLOCK_MONOTONIC and never step; wall-clock times in trace and JSON lines follow the new clock from the step on.",
            ),
            pins_missing: gauge(
                r,
                "tsm_trace_pins_missing",
                "Pinned maps and directories of this daemon that are gone from bpffs (unmounted, removed by hand). The probes keep running on this process's references; a restart would lose what happens while it is down. 0 when nothing is pinned.",
            ),
            bytes: gauge(
                r,
                "tsm_trace_state_file_bytes",
                "Size of the state file at its last successful save.",
            ),
            uncommitted: gauge(
                r,
                "tsm_trace_ring_uncommitted_bytes",
                "Ring-buffer bytes read but not yet released to the kernel (held until what they changed is saved).",
            ),
        }
    }

    pub(super) fn saved(&self, bytes: Result<u64, ()>) {
        match bytes {
            Ok(n) => {
                self.saves.with_label_values(&["ok"]).inc();
                self.bytes.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(()) => self.saves.with_label_values(&["failed"]).inc(),
        }
    }

    pub(super) fn load_failed(&self, reason: &str) {
        self.load_failures.with_label_values(&[reason]).inc();
    }

    pub(super) fn clock_stepped(&self) {
        self.clock_steps.inc();
    }

    pub(super) fn set_pins_missing(&self, n: usize) {
        self.pins_missing.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(super) fn set_uncommitted(&self, bytes: u64) {
        self.uncommitted
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
