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

#[cfg(test)]
mod tests {
    use tsm_trace_common::aggregates::{BOUNDS, bucket};

    use super::DURATION_BUCKETS;

    /// The bounds as `probes::load` writes them for the kernel.
    fn kernel_bounds() -> [u64; BOUNDS] {
        let mut b = [u64::MAX; BOUNDS];
        for (b, s) in b.iter_mut().zip(DURATION_BUCKETS) {
            *b = (s * 1e9).round() as u64;
        }
        b
    }

    #[test]
    fn the_bounds_ascend_as_the_kernels_binary_search_needs() {
        let b = kernel_bounds();
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
    }

    #[test]
    fn the_kernels_bucket_is_the_first_bound_that_holds_the_duration() {
        let b = kernel_bounds();
        let scan = |d: u64| b.iter().position(|&x| d <= x).unwrap_or(BOUNDS) as u32;
        let mut durations = vec![0, 1, u64::MAX - 1, u64::MAX];
        for &x in &b {
            durations.extend([x - 1, x, x.saturating_add(1)]);
        }
        for d in durations {
            assert_eq!(bucket(&b, d), scan(d), "duration {d} ns");
        }
        // A duration past the last bound (30 s) is in the +Inf bucket.
        let mut short = [u64::MAX; BOUNDS];
        short[..3].copy_from_slice(&[10, 20, 30]);
        assert_eq!(bucket(&short, 31), 3);
        assert_eq!(bucket(&[5; BOUNDS], 6), BOUNDS as u32);
    }
}
