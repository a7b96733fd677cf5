//! What keeps the daemon's view safe across restarts and faults: the state file saved and
//! the ring-buffer records released only once it covers them, the pins in bpffs, steps of the
//! wall clock, and loss said in the log. Each fault is logged once, counted in `/metrics`
//! (`exporters/metrics/persistence.rs`), and recovered from when it goes (docs/runbook.md,
//! "Faults and what they look like").

use std::{sync::Mutex, time::Duration};

use super::StateFile;
use crate::{
    correlate, exporters::metrics::Metrics, pipeline::Pipeline, probes::chain, session::LiveSession,
};

/// What a save covered: the correlator's state version and the ring position.
type SavedKey = (
    (u64, u64, usize, usize, usize),
    crate::probes::ring::Position,
);

/// The state file's saves: what the last one covered, and whether saves are failing.
#[derive(Default)]
pub(super) struct Saver {
    saved: Option<SavedKey>,
    failing: bool,
}

/// Saves the state (tables, operations in progress, the ring position they cover) if it
/// changed since the last save, then lets the kernel reuse the ring space of the records it
/// covers: a record is released only once what it changed is in the file. Without a state
/// file (`trace`, `--no-persist`) records are released as they are read.
pub(super) fn save_state(
    live: &mut LiveSession,
    pipeline: &Mutex<Pipeline>,
    metrics: &Metrics,
    state: Option<&StateFile>,
    saver: &mut Saver,
) {
    let Some(f) = state else { return };
    let pos = live.ring_position();
    let p = pipeline.lock().expect("pipeline lock");
    let key = (p.correlator().state_version(), pos);
    if saver.saved != Some(key) {
        let mut snapshot = p.correlator().saved_state(&f.boot_id);
        drop(p);
        snapshot.ring = Some(correlate::state::RingMark {
            map_id: pos.map_id,
            pos: pos.pos,
        });
        match correlate::state::save(&f.path, &snapshot) {
            Ok(n) => {
                metrics.state_saved(Ok(n));
                saver.saved = Some(key);
                if std::mem::take(&mut saver.failing) {
                    log::info!(
                        "saved {} again: a restart now loses nothing",
                        f.path.display()
                    );
                }
            }
            Err(e) => {
                // Tried again on every pass of the loop until it works; said once. The
                // records are released anyway (held, they would fill the ring and be lost
                // for sure); a restart before the next good save starts from the last one.
                metrics.state_saved(Err(()));
                if !std::mem::replace(&mut saver.failing, true) {
                    log::warn!(
                        "{}: a restart now would not know the bindings made since the last save; check the directory (--state-file) and its free space (tried again until it works)",
                        chain(&e)
                    );
                }
            }
        }
    }
    live.commit(pos);
    metrics.set_ring_uncommitted(live.uncommitted());
}

/// A step of the wall clock larger than this is reported (NTP slews by far less).
const CLOCK_STEP_NS: i64 = 1_000_000_000;

/// Has the wall clock stepped since the last look (`offset`: CLOCK_REALTIME −
/// CLOCK_MONOTONIC then)? Event times are CLOCK_MONOTONIC: only printed wall-clock times
/// depend on it; they follow the new clock.
pub(super) fn check_wall_clock(pipeline: &Mutex<Pipeline>, metrics: &Metrics, offset: &mut i64) {
    let now = crate::clock::realtime_offset_ns();
    let step = now - *offset;
    if step.abs() <= CLOCK_STEP_NS {
        return;
    }
    metrics.wall_clock_stepped();
    log::warn!(
        "the wall clock stepped by {:+.3}s: event times and durations are monotonic and unaffected; wall-clock times in trace and JSON lines follow the new clock from now on",
        step as f64 / 1e9
    );
    *offset = now;
    if let Some(s) = pipeline.lock().expect("pipeline lock").sink_mut() {
        s.follow_wall_clock(now);
    }
}

/// Are this daemon's pins still in bpffs? Says so when that changes (`missing`: how many
/// were missing at the last look).
pub(super) fn check_pins(live: &LiveSession, metrics: &Metrics, missing: &mut usize) {
    let Some(gone) = live.session().pins_missing() else {
        return;
    };
    metrics.set_pins_missing(gone.len());
    if gone.len() == *missing {
        return;
    }
    if gone.is_empty() {
        log::info!("this daemon's pins are back in bpffs");
    } else if *missing == 0 {
        let names: Vec<String> = gone.iter().map(|p| p.display().to_string()).collect();
        log::warn!(
            "pins of this daemon are gone from bpffs ({}): the probes keep running, but a restart would start a new epoch without the events of the restart. Remount bpffs if it was unmounted, then restart tsm-trace with SIGTERM (it saves everything it read first) to pin again",
            names.join(", ")
        );
    }
    *missing = gone.len();
}

/// How often at most the log says that events are being lost (a ring buffer full for
/// minutes gives one line a minute, with the count since the last).
const LOSS_LOG_EVERY: Duration = Duration::from_secs(60);

pub(super) static LOSS_LOG: Mutex<LossLog> = Mutex::new(LossLog {
    pending: std::collections::BTreeMap::new(),
    last: None,
});

/// Loss said in the log, at most every [`LOSS_LOG_EVERY`].
pub(super) struct LossLog {
    pending: std::collections::BTreeMap<&'static str, u64>,
    last: Option<std::time::Instant>,
}

impl LossLog {
    pub(super) fn add(&mut self, lost: &[crate::exporters::loss::Lost], now: std::time::Instant) {
        for l in lost {
            *self.pending.entry(l.reason).or_default() += l.count;
        }
        if self.pending.is_empty() || self.last.is_some_and(|t| now - t < LOSS_LOG_EVERY) {
            return;
        }
        let what: Vec<String> = self
            .pending
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        log::warn!(
            "events lost{}: {} (tsm_trace_events_lost_total). Operation counts stay exact; traces, bindings and leaks may miss what they carried. ringbuf_full: raise --ringbuf-size (after `tsm-trace unpin`, which the pinned ring needs to be resized)",
            if self.last.is_some() {
                " since the last report"
            } else {
                ""
            },
            what.join(", ")
        );
        self.pending.clear();
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_said_at_once_then_at_most_once_a_minute() {
        use crate::exporters::loss::Lost;
        let lost = |n| Lost {
            count: n,
            reason: "ringbuf_full",
            time_ns: None,
        };
        let mut log = LossLog {
            pending: Default::default(),
            last: None,
        };
        let t0 = std::time::Instant::now();
        log.add(&[], t0);
        assert!(log.last.is_none(), "nothing lost, nothing said");
        log.add(&[lost(5)], t0);
        assert_eq!(log.last, Some(t0), "the first loss is said at once");
        log.add(&[lost(7)], t0 + Duration::from_secs(30));
        log.add(&[lost(1)], t0 + Duration::from_secs(59));
        assert_eq!(
            log.pending.get("ringbuf_full"),
            Some(&8),
            "held within the minute"
        );
        log.add(&[lost(2)], t0 + LOSS_LOG_EVERY);
        assert!(log.pending.is_empty(), "said with the count since the last");
        assert_eq!(log.last, Some(t0 + LOSS_LOG_EVERY));
    }
}
