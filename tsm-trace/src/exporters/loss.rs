//! Loss records: where the trace stream has a gap, a line says so, with how many events of
//! which kind were lost there.
//!
//! ```text
//! 22:31:05.123456 LOST     2875 events (ring buffer full; raise --ringbuf-size)
//! {"time":"2026-…Z","type":"lost","count":2875,"reason":"ringbuf_full","time_ns":…}
//! ```
//!
//! The kernel counts what it could not deliver (the per-CPU `STATS` array: ring buffer full,
//! in-flight table full, …; `tsm_trace_events_lost_total` in `/metrics`). After each batch
//! of events read from the ring buffer the reader reads those counters again; each reason
//! whose counter grew since the previous record gets one record, with the growth as its
//! count. Undecodable records of the batch are counted the same way (`decode_error`).
//!
//! **Where and when.** A record follows the batch after which the loss was noticed: the
//! events it counts were dropped after the events before the previous record of its reason
//! and before the reader finished that batch (a ring buffer drops while it is full of
//! unread events, so the drops come after most of the batch's events; the kernel's counter
//! is read right after the ring buffer was found empty, so a loss in between is at most one
//! batch early). Its time is the time of the last event handled before it (the latest
//! return time read so far: the events' clock, never the reader's); before any event it has
//! none (the text column is blank, the JSON line has no `"time"`/`"time_ns"`).
//!
//! Filters (`--device`, `--vm`, `--failed`) do not apply: a loss cannot be told to concern
//! a device or not.

use serde::Serialize;

use tsm_trace_common::KernelCounter;

use crate::clock::{Clock, rfc3339};
use crate::probes::KernelCounts;

/// A kernel-side loss counter (its label is the `reason` of `tsm_trace_events_lost_total`)
/// and what the text line says about it.
struct KernelReason {
    counter: KernelCounter,
    says: &'static str,
}

/// The kernel's counters of lost events, in the order the records are written.
const KERNEL: [KernelReason; 12] = [
    KernelReason {
        counter: KernelCounter::RingbufFull,
        says: "ring buffer full; raise --ringbuf-size",
    },
    KernelReason {
        counter: KernelCounter::InflightFull,
        says: "in-flight table full: entries not recorded",
    },
    KernelReason {
        counter: KernelCounter::OrphanReturn,
        says: "returns without their entry",
    },
    KernelReason {
        counter: KernelCounter::ReturnMissed,
        says: "entries replaced before their return: returns never seen",
    },
    KernelReason {
        counter: KernelCounter::ControlFull,
        says: "control ring buffer full: module loads/unloads not seen",
    },
    KernelReason {
        counter: KernelCounter::AggregationFull,
        says: "aggregation table full: operations missing from the kernel's counts",
    },
    KernelReason {
        counter: KernelCounter::VmmTableFull,
        says: "VMM table full: VMM exits not seen",
    },
    KernelReason {
        counter: KernelCounter::ScratchMissing,
        says: "entries without a scratch record",
    },
    KernelReason {
        counter: KernelCounter::VmmNameFull,
        says: "VMM names not recorded, ring buffer full: those VMs named by stats_id",
    },
    KernelReason {
        counter: KernelCounter::DeepRingFull,
        says: "deep calls not recorded, ring buffer full (--deep; raise --ringbuf-size or narrow the globs)",
    },
    KernelReason {
        counter: KernelCounter::DeepFull,
        says: "deep calls not recorded: nested too deep or the thread table full (--deep)",
    },
    KernelReason {
        counter: KernelCounter::DeepUnmatched,
        says: "deep returns without their entry (--deep)",
    },
];

/// What a `decode_error` record says.
const DECODE_ERROR: &str = "undecodable ring-buffer records";

/// One loss record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// Events lost since the previous record of this reason.
    pub count: u64,
    /// The `reason` label of `tsm_trace_events_lost_total`.
    pub reason: &'static str,
    /// The time of the last event handled before the gap (CLOCK_MONOTONIC ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_ns: Option<u64>,
}

impl Lost {
    /// What the text line says about the reason.
    pub fn says(&self) -> &'static str {
        KERNEL
            .iter()
            .find(|r| r.counter.label() == self.reason)
            .map_or(DECODE_ERROR, |r| r.says)
    }

    /// `HH:MM:SS.ffffff LOST     <n> events (<why>)`.
    pub fn text(&self, clock: &Clock) -> String {
        let time = self
            .time_ns
            .map_or_else(|| " ".repeat(15), |t| clock.format(t));
        format!(
            "{time} LOST     {} event{} ({})",
            self.count,
            if self.count == 1 { "" } else { "s" },
            self.says()
        )
    }

    /// `{"time":…,"type":"lost","count":n,"reason":…,"time_ns":…}` (`"time"` where the
    /// wall clock is known and the record has a time).
    pub fn json(&self, realtime_offset_ns: Option<i64>) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            time: Option<String>,
            r#type: &'static str,
            #[serde(flatten)]
            lost: &'a Lost,
        }
        let time = self
            .time_ns
            .zip(realtime_offset_ns)
            .map(|(t, off)| rfc3339(t, off));
        serde_json::to_string(&Line {
            time,
            r#type: "lost",
            lost: self,
        })
        .unwrap_or_default()
    }
}

/// Turns the kernel's loss counters into records: remembers what was already reported.
#[derive(Clone, Debug, Default)]
pub struct LossTracker {
    reported: KernelCounts,
    /// Undecodable records since the last record.
    decode_errors: u64,
}

impl LossTracker {
    /// Counts up to `k` are not reported (a daemon taking over pinned maps: their counts are
    /// an earlier process's).
    pub fn since(k: KernelCounts) -> Self {
        LossTracker {
            reported: k,
            decode_errors: 0,
        }
    }

    /// One undecodable record (reported with the next [`LossTracker::records`]).
    pub fn decode_error(&mut self) {
        self.decode_errors += 1;
    }

    /// A record for each reason that grew since the last call, timed `time_ns`.
    pub fn records(&mut self, k: &KernelCounts, time_ns: Option<u64>) -> Vec<Lost> {
        let mut out = Vec::new();
        for r in &KERNEL {
            let (now, before) = (k[r.counter], self.reported[r.counter]);
            // A counter never goes down; one that did (maps replaced) restarts from it.
            if now > before {
                out.push(Lost {
                    count: now - before,
                    reason: r.counter.label(),
                    time_ns,
                });
            }
        }
        if self.decode_errors > 0 {
            out.push(Lost {
                count: std::mem::take(&mut self.decode_errors),
                reason: crate::exporters::metrics::DECODE_ERROR,
                time_ns,
            });
        }
        self.reported = *k;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loss_counter_has_one_reason() {
        for c in KernelCounter::ALL {
            let n = KERNEL.iter().filter(|r| r.counter == c).count();
            assert_eq!(n, usize::from(c.is_loss()), "{c:?}");
        }
    }

    #[test]
    fn a_record_per_reason_that_grew_with_the_growth_since_the_last() {
        let mut t = LossTracker::default();
        let k = KernelCounts::from_values(&[
            (KernelCounter::RingbufFull, 100),
            (KernelCounter::OrphanReturn, 2),
            // Not a loss: a field is missing, the event is delivered.
            (KernelCounter::ReadFault, 7),
        ]);
        t.decode_error();
        let r = t.records(&k, Some(5_000));
        assert_eq!(
            r,
            [
                Lost {
                    count: 100,
                    reason: "ringbuf_full",
                    time_ns: Some(5_000)
                },
                Lost {
                    count: 2,
                    reason: "orphan_return",
                    time_ns: Some(5_000)
                },
                Lost {
                    count: 1,
                    reason: crate::exporters::metrics::DECODE_ERROR,
                    time_ns: Some(5_000)
                },
            ]
        );
        // Nothing grew: no record.
        assert!(t.records(&k, Some(6_000)).is_empty());
        let mut k2 = k;
        k2[KernelCounter::RingbufFull] = 130;
        assert_eq!(
            t.records(&k2, Some(7_000)),
            [Lost {
                count: 30,
                reason: "ringbuf_full",
                time_ns: Some(7_000)
            }]
        );
        // A takeover's counts are not this process's.
        let mut t = LossTracker::since(k2);
        assert!(t.records(&k2, None).is_empty());
    }

    #[test]
    fn loss_records_render_as_text_and_json() {
        let l = Lost {
            count: 2875,
            reason: "ringbuf_full",
            time_ns: Some(1_500_001_000),
        };
        let c = Clock::Relative { base_ns: 1_000 };
        assert_eq!(
            l.text(&c),
            "    1.500000 LOST     2875 events (ring buffer full; raise --ringbuf-size)"
        );
        let one = Lost {
            count: 1,
            reason: crate::exporters::metrics::DECODE_ERROR,
            time_ns: None,
        };
        // No event before it: no time, not a made-up one.
        assert_eq!(
            one.text(&c),
            format!(
                "{} LOST     1 event (undecodable ring-buffer records)",
                " ".repeat(15)
            )
        );
        let j: serde_json::Value = serde_json::from_str(&l.json(Some(0))).unwrap();
        assert_eq!(j["type"], "lost");
        assert_eq!(j["count"], 2875);
        assert_eq!(j["reason"], "ringbuf_full");
        assert_eq!(j["time_ns"], 1_500_001_000u64);
        assert_eq!(j["time"], "1970-01-01T00:00:01.500001Z");
        // `"time"` first, like every other line.
        assert!(
            l.json(Some(0)).starts_with("{\"time\":"),
            "{}",
            l.json(Some(0))
        );
        let j: serde_json::Value = serde_json::from_str(&one.json(Some(0))).unwrap();
        assert!(j.get("time").is_none() && j.get("time_ns").is_none(), "{j}");
        assert_eq!(
            one.json(None),
            r#"{"type":"lost","count":1,"reason":"decode_error"}"#
        );
        // Every kernel reason is a `tsm_trace_events_lost_total` reason.
        for r in &KERNEL {
            assert!(
                crate::exporters::metrics::LOST_REASONS.contains(&r.counter.label()),
                "{}",
                r.counter.label()
            );
        }
    }
}
