//! `tsm_trace_operation_duration_seconds`: a histogram whose buckets can be *set* to the
//! absolute counts the kernel aggregated (exact at any event rate), or fed frame by frame
//! from correlated operations (replay, tests). The prometheus crate's `Histogram` can only
//! observe, so this is a collector of its own.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::aggregates::Counts;
use crate::correlate::OpKind;
use crate::events::Layer;

pub const NAME: &str = "tsm_trace_operation_duration_seconds";
const HELP: &str = "Duration of each function call (frame) of TSM operations, per layer.";

/// Histograms by (op, layer, ok).
pub struct Durations {
    desc: Desc,
    bounds: Vec<f64>,
    /// The series at [`index`]: a fixed slot per key (no search per frame), in the keys' sort
    /// order, so the exposition lists them as a map sorted by key would.
    series: Mutex<Vec<Option<Counts>>>,
}

const SERIES: usize = OpKind::ALL.len() * Layer::BY_INDEX.len() * 2;

/// The slot of (op, layer, ok): ordered as the derived `Ord` of the key orders it (both
/// enums by declaration order, `false` before `true`).
fn index(op: OpKind, layer: Layer, ok: bool) -> usize {
    (op as usize * Layer::BY_INDEX.len() + layer as usize) * 2 + ok as usize
}

/// The key of slot `i` ([`index`]'s inverse).
fn key(i: usize) -> (OpKind, Layer, bool) {
    let layers = Layer::BY_INDEX.len();
    (
        OpKind::ALL[i / (2 * layers)],
        Layer::BY_INDEX[(i / 2) % layers],
        i % 2 == 1,
    )
}

impl Durations {
    pub fn new(bounds: &[f64]) -> Durations {
        let desc = Desc::new(
            NAME.to_string(),
            HELP.to_string(),
            vec!["op".into(), "layer".into(), "result".into()],
            Default::default(),
        )
        .expect("valid metric definition");
        Durations {
            desc,
            bounds: bounds.to_vec(),
            series: Mutex::new((0..SERIES).map(|_| None).collect()),
        }
    }

    /// One frame (correlated path).
    pub fn observe(&self, op: OpKind, layer: Layer, ok: bool, duration_ns: u64) {
        self.observe_all(op, [(layer, ok, duration_ns)]);
    }

    /// The frames of one operation of kind `op`, each as (layer, ok, duration), under one
    /// lock.
    pub fn observe_all(&self, op: OpKind, frames: impl IntoIterator<Item = (Layer, bool, u64)>) {
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for (layer, ok, duration_ns) in frames {
            let secs = duration_ns as f64 / 1e9;
            let slot = self
                .bounds
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(self.bounds.len());
            let c = self.series_mut(&mut m, op, layer, ok);
            // Saturating: a malformed record (or a replayed file) must not overflow the sum.
            c.buckets[slot] = c.buckets[slot].saturating_add(1);
            c.sum_ns = c.sum_ns.saturating_add(duration_ns);
        }
    }

    /// The series of (op, layer, ok), started at zero if new.
    fn series_mut<'a>(
        &self,
        series: &'a mut [Option<Counts>],
        op: OpKind,
        layer: Layer,
        ok: bool,
    ) -> &'a mut Counts {
        series[index(op, layer, ok)].get_or_insert_with(|| Counts {
            buckets: vec![0; self.bounds.len() + 1],
            sum_ns: 0,
        })
    }

    /// Starts a series at zero (so `rate()` and `histogram_quantile()` see it from start-up);
    /// one that exists already is left as it is.
    pub fn declare(&self, op: OpKind, layer: Layer, ok: bool) {
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        self.series_mut(&mut m, op, layer, ok);
    }

    /// Absolute counts from the kernel's aggregation. A series never goes down: a smaller
    /// value (maps recreated) is ignored.
    pub fn set(&self, op: OpKind, layer: Layer, ok: bool, counts: Counts) {
        if counts.buckets.len() != self.bounds.len() + 1 {
            return;
        }
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let e = m[index(op, layer, ok)].get_or_insert_with(Counts::default);
        if total(&counts.buckets) >= total(&e.buckets) {
            *e = counts;
        }
    }

    /// Observations of one series (tests, summaries).
    pub fn count(&self, op: OpKind, layer: Layer, ok: bool) -> u64 {
        let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        m[index(op, layer, ok)]
            .as_ref()
            .map_or(0, |c| total(&c.buckets))
    }
}

fn total(buckets: &[u64]) -> u64 {
    buckets.iter().fold(0u64, |a, &b| a.saturating_add(b))
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

impl Collector for Durations {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut metrics = Vec::new();
        for (i, c) in m.iter().enumerate() {
            let Some(c) = c else { continue };
            let (op, layer, ok) = key(i);
            let mut h = Histogram::default();
            let mut cum: u64 = 0;
            let mut buckets = Vec::with_capacity(self.bounds.len());
            for (i, b) in self.bounds.iter().enumerate() {
                cum = cum.saturating_add(c.buckets.get(i).copied().unwrap_or(0));
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*b);
                bucket.set_cumulative_count(cum);
                buckets.push(bucket);
            }
            cum = cum.saturating_add(c.buckets.last().copied().unwrap_or(0));
            h.set_bucket(buckets);
            h.set_sample_count(cum);
            h.set_sample_sum(c.sum_ns as f64 / 1e9);
            let mut metric = Metric::default();
            // Sorted by name, as the text encoder expects.
            metric.set_label(vec![
                label("layer", layer.as_str()),
                label("op", op.as_str()),
                label("result", if ok { "ok" } else { "error" }),
            ]);
            metric.set_histogram(h);
            metrics.push(metric);
        }
        let mut f = MetricFamily::default();
        f.set_name(NAME.to_string());
        f.set_help(HELP.to_string());
        f.set_field_type(MetricType::HISTOGRAM);
        f.set_metric(metrics);
        vec![f]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key has its own slot, and the slots are in the keys' sort order (the order
    /// the series were listed in when a sorted map held them).
    #[test]
    fn slots_follow_the_key_order() {
        let mut keys = Vec::new();
        for op in OpKind::ALL {
            for layer in Layer::BY_INDEX {
                for ok in [false, true] {
                    assert_eq!(key(index(op, layer, ok)), (op, layer, ok));
                    keys.push((op, layer, ok));
                }
            }
        }
        assert_eq!(keys.len(), SERIES);
        keys.sort();
        assert_eq!((0..SERIES).map(key).collect::<Vec<_>>(), keys);
    }
}
