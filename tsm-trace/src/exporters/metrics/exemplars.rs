//! The exemplars of `tsm_trace_operation_duration_seconds`: per series (op, layer, result) and
//! bucket, the last frame the OTLP exporter sent as a span: its trace and span id, its duration
//! (the value the histogram counts) and its end (wall clock). Filled by the OTLP exporter
//! (`exporters/otlp`) when it queues a frame's span, so an exemplar's ids are the very ids the
//! tracing backend receives; empty when OTLP export is off. Bounded by the series that can
//! exist: operation kinds × layers × 2 results × (buckets + 1), one entry each, replaced.
//!
//! The OpenMetrics exposition (`openmetrics.rs`) asks [`Exemplars::lookup`] for each bucket;
//! an entry whose series is not in the gathered histograms is never written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::proto::{Metric, MetricFamily};

use super::histograms;
use super::openmetrics::Exemplar;
use crate::aggregates::DURATION_BUCKETS;
use crate::correlate::OpKind;
use crate::events::Layer;

/// One bucket's exemplar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub duration_ns: u64,
    /// The span's end, ns since the Unix epoch.
    pub at_unix_ns: u64,
}

/// A series' exemplars by bucket index (the last is `+Inf`).
type Buckets = [Option<Entry>; DURATION_BUCKETS.len() + 1];

/// (`op`, `layer`, `result`) → buckets. Static keys: no allocation per frame.
type Table<'a> = HashMap<(&'a str, &'a str, &'a str), Buckets>;

#[derive(Debug, Default)]
pub struct Exemplars {
    table: Mutex<Table<'static>>,
}

/// The bucket a duration falls in, as `histograms::Durations::observe` places it.
fn bucket(duration_ns: u64) -> usize {
    let secs = duration_ns as f64 / 1e9;
    DURATION_BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(DURATION_BUCKETS.len())
}

fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Exemplars {
    /// A frame's span was queued for export: it becomes its bucket's exemplar.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        op: OpKind,
        layer: Layer,
        ok: bool,
        duration_ns: u64,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        end: SystemTime,
    ) {
        let at_unix_ns = end
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let key = (op.as_str(), layer.as_str(), result(ok));
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.entry(key).or_default()[bucket(duration_ns)] = Some(Entry {
            trace_id,
            span_id,
            duration_ns,
            at_unix_ns,
        });
    }

    /// How many buckets have an exemplar (tests, bounds).
    pub fn len(&self) -> usize {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.values().map(|b| b.iter().flatten().count()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The exemplar of one bucket of a gathered histogram, if it is the durations' and has one.
    pub fn lookup(&self, mf: &MetricFamily, m: &Metric, upper_bound: f64) -> Option<Exemplar> {
        if mf.name() != histograms::NAME {
            return None;
        }
        let label = |n: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == n)
                .map(|l| l.value())
        };
        let (op, layer, res) = (label("op")?, label("layer")?, label("result")?);
        let idx = if upper_bound.is_infinite() {
            DURATION_BUCKETS.len()
        } else {
            DURATION_BUCKETS.iter().position(|b| *b == upper_bound)?
        };
        let guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let t: &Table<'_> = &guard;
        let e = t.get(&(op, layer, res))?.get(idx).copied().flatten()?;
        Some(Exemplar {
            labels: vec![("trace_id", hex(&e.trace_id)), ("span_id", hex(&e.span_id))],
            value: e.duration_ns as f64 / 1e9,
            timestamp_ns: Some(e.at_unix_ns),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_frame_per_bucket_and_the_bucket_it_is_counted_in() {
        let x = Exemplars::default();
        let t = UNIX_EPOCH + std::time::Duration::from_nanos(1_765_100_000_000_000_001);
        // 15 ms: the 25 ms bucket.
        x.record(
            OpKind::Bind,
            Layer::TsmDriver,
            true,
            15_000_000,
            [1; 16],
            [2; 8],
            t,
        );
        x.record(
            OpKind::Bind,
            Layer::TsmDriver,
            true,
            14_000_000,
            [3; 16],
            [4; 8],
            t,
        );
        // 10 ms exactly: the 10 ms bucket (le is inclusive).
        x.record(
            OpKind::Bind,
            Layer::TsmDriver,
            true,
            10_000_000,
            [5; 16],
            [6; 8],
            t,
        );
        // Over 30 s: +Inf.
        x.record(
            OpKind::Bind,
            Layer::TsmDriver,
            false,
            31_000_000_000,
            [7; 16],
            [8; 8],
            t,
        );
        assert_eq!(x.len(), 3);

        let mut mf = MetricFamily::default();
        mf.set_name(histograms::NAME.into());
        let pair = |k: &str, v: &str| {
            let mut l = prometheus::proto::LabelPair::default();
            l.set_name(k.into());
            l.set_value(v.into());
            l
        };
        let m = Metric::from_label(vec![
            pair("layer", "tsm_driver"),
            pair("op", "bind"),
            pair("result", "ok"),
        ]);
        let e = x.lookup(&mf, &m, 25e-3).unwrap();
        assert_eq!(e.labels[0], ("trace_id", "03".repeat(16)));
        assert_eq!(e.labels[1], ("span_id", "04".repeat(8)));
        assert_eq!(e.value, 0.014);
        assert_eq!(e.timestamp_ns, Some(1_765_100_000_000_000_001));
        assert_eq!(x.lookup(&mf, &m, 10e-3).unwrap().value, 0.01);
        assert!(x.lookup(&mf, &m, 50e-3).is_none());
        assert!(x.lookup(&mf, &m, f64::INFINITY).is_none());
        let err = Metric::from_label(vec![
            pair("layer", "tsm_driver"),
            pair("op", "bind"),
            pair("result", "error"),
        ]);
        assert_eq!(x.lookup(&mf, &err, f64::INFINITY).unwrap().value, 31.0);
        // Another family, a bound that is not one of ours: nothing.
        assert!(x.lookup(&mf, &m, 0.0125).is_none());
        mf.set_name("tsm_trace_other".into());
        assert!(x.lookup(&mf, &m, 25e-3).is_none());
    }
}
