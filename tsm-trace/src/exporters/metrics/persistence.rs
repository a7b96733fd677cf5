//! The state file (`correlate/state.rs`) and the ring buffer records held for it: saves by
//! result, the file's size, and how much of the ring is read but not committed (records kept
//! until what they changed is saved).

use prometheus::{IntCounterVec, IntGauge, Registry};

use super::{counter_vec, gauge};

/// `result` values of `tsm_trace_state_saves_total`.
pub const SAVE_RESULTS: [&str; 2] = ["ok", "failed"];

pub(super) struct Persistence {
    saves: IntCounterVec,
    bytes: IntGauge,
    uncommitted: IntGauge,
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
        Persistence {
            saves,
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

    pub(super) fn set_uncommitted(&self, bytes: u64) {
        self.uncommitted
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}
