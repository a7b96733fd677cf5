//! The kernel's exact aggregates, as the probes read them from their maps and the exporters
//! publish them: operation counts, frame-duration bucket counts and the bucket bounds both
//! sides share.

use std::collections::BTreeMap;

use crate::correlate::OpKind;
use crate::events::Layer;

/// Histogram buckets for frame durations, seconds: 10 µs … 30 s, 1-2.5-5 steps.
pub const DURATION_BUCKETS: [f64; 20] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket counts (not cumulative; the last is `+Inf`) and the sum of durations in ns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

/// The kernel's exact aggregates: operations by (kind, attributed layer, errno; 0: ok) and
/// frame durations by (kind, layer, ok).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Aggregates {
    pub counts: BTreeMap<(OpKind, Layer, u32), u64>,
    pub durations: BTreeMap<(OpKind, Layer, bool), Counts>,
}
