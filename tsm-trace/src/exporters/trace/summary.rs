//! The summary `trace` and `replay` print at the end: operations and their latency
//! histograms, failures by errno, layer and function, leaks (bindings and IDE streams),
//! bindings ended, sysfs mismatches, anomalies, losses and the operations still in flight.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::TraceFormatter;
use crate::correlate::{AnomalyKind, Leak, LeakReason, MismatchKind, OpKind, OpResult, Output};
use crate::errno;
use crate::events::{Layer, ProbeId};

/// A log2 histogram of microseconds, printed like bpftrace's `hist()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    /// Bucket i holds values in `[2^(i-1), 2^i)`; bucket 0 holds 0.
    buckets: [u64; 65],
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist {
            buckets: [0; 65],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

impl Log2Hist {
    pub fn add(&mut self, v: u64) {
        let i = if v == 0 {
            0
        } else {
            64 - v.leading_zeros() as usize
        };
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn render(&self, out: &mut String) {
        let Some(lo) = self.buckets.iter().position(|&c| c > 0) else {
            return;
        };
        let hi = self.buckets.iter().rposition(|&c| c > 0).unwrap_or(lo);
        let peak = self.buckets[lo..=hi]
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        for i in lo..=hi {
            let c = self.buckets[i];
            let range = if i == 0 {
                "[0]".to_string()
            } else if i == 1 {
                "[1]".to_string()
            } else {
                format!("[{}, {})", si(1u64 << (i - 1)), si_upper(i))
            };
            let bar = c.saturating_mul(52).div_ceil(peak) as usize;
            let _ = writeln!(out, "{range:<20}{c:>8} |{:<52}|", "@".repeat(bar));
        }
    }
}

fn si_upper(i: usize) -> String {
    if i >= 64 { "inf".into() } else { si(1u64 << i) }
}

/// 1024 → `1K`, as bpftrace prints bucket bounds.
fn si(v: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (n, u) in UNITS {
        if v >= n && v.is_multiple_of(n) {
            return format!("{}{u}", v / n);
        }
    }
    v.to_string()
}

const SUMMARY_LEAKS: usize = 100;

/// Accumulates outputs and prints a summary at exit.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// By [`OpKind`] (its index in `OpKind::ALL`): arrays, not maps, for what every
    /// operation updates.
    latency_us: [Option<Box<Log2Hist>>; OpKind::ALL.len()],
    /// Failed, then ok, by kind.
    ops: [[u64; 2]; OpKind::ALL.len()],
    errors: BTreeMap<(String, Layer, ProbeId, OpKind), u64>,
    leaks_detected: BTreeMap<LeakReason, u64>,
    leaks_cleared: u64,
    /// The first leaks detected (bounded), as trace lines.
    leak_lines: Vec<String>,
    anomalies: BTreeMap<AnomalyKind, u64>,
    mismatches: BTreeMap<MismatchKind, u64>,
    /// Bindings ended, by cause.
    closed: BTreeMap<&'static str, u64>,
    /// IDE stream leaks detected and cleared, and the first leak lines (bounded).
    ide_leaks: (u64, u64),
    ide_leak_lines: Vec<String>,
    /// Events lost, by reason, as the loss records said.
    lost: BTreeMap<&'static str, u64>,
    /// Operations still running at the end: how many, and each (bounded).
    in_flight: Option<(usize, String)>,
}

/// The kernel's exact operation counts (`OP_COUNTS`, what `run` serves as
/// `tsm_trace_operations_total`): the summary's totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// By kind and ok.
    pub ops: BTreeMap<(OpKind, bool), u64>,
    /// The lines were filtered (`--device`, `--vm`, `--failed`): the counts are not.
    pub filtered: bool,
}

impl Counted {
    pub fn from_kernel(k: &crate::aggregates::Aggregates, filtered: bool) -> Self {
        let mut ops = BTreeMap::new();
        for (&(kind, _layer, errno), &n) in &k.counts {
            *ops.entry((kind, errno == 0)).or_default() += n;
        }
        Counted { ops, filtered }
    }

    fn get(&self, kind: OpKind, ok: bool) -> u64 {
        self.ops.get(&(kind, ok)).copied().unwrap_or(0)
    }
}

/// `a of b <what> shown`, or, should the lines show more than the kernel counted (its counts
/// leave out operations whose outer return it never saw), both numbers as they are.
fn of(a: u64, b: u64, what: &str) -> String {
    if a <= b {
        format!("{a} of {b} {what} shown")
    } else {
        format!("{a} {what} shown, the kernel counted {b}")
    }
}

impl Summary {
    pub fn add(&mut self, out: &Output, fmt: &TraceFormatter) {
        match out {
            Output::Operation(op) => {
                if op.frames.first().is_some_and(|f| !f.entry_missing) {
                    self.latency_us[op.kind as usize]
                        .get_or_insert_default()
                        .add(op.end_ns.saturating_sub(op.start_ns) / 1_000);
                }
                self.ops[op.kind as usize][usize::from(op.ok())] += 1;
                if let OpResult::Err {
                    errno: e,
                    layer,
                    function,
                } = &op.result
                {
                    *self
                        .errors
                        .entry((errno::name(*e), *layer, *function, op.kind))
                        .or_default() += 1;
                }
            }
            Output::LeakDetected(l) => {
                *self.leaks_detected.entry(l.reason).or_default() += 1;
                if self.leak_lines.len() < SUMMARY_LEAKS
                    && let Some(line) = fmt.format(out)
                {
                    self.leak_lines.push(line);
                }
            }
            Output::LeakCleared(_) => self.leaks_cleared += 1,
            Output::Anomaly(a) => *self.anomalies.entry(a.kind).or_default() += 1,
            Output::Mismatch(m) => *self.mismatches.entry(m.kind).or_default() += 1,
            Output::VmEvent(_) => {}
            Output::BindingClosed(c) => *self.closed.entry(c.cause.as_str()).or_default() += 1,
            Output::IdeStreamLeaked(_) => {
                self.ide_leaks.0 += 1;
                if self.ide_leak_lines.len() < SUMMARY_LEAKS
                    && let Some(line) = fmt.format(out)
                {
                    self.ide_leak_lines.push(line);
                }
            }
            Output::IdeStreamLeakCleared(_) => self.ide_leaks.1 += 1,
        }
    }

    /// Operations still running when the summary is made (`in_flight.rs`).
    pub fn set_in_flight(&mut self, total: usize, what: String) {
        self.in_flight = Some((total, what));
    }

    /// A loss record written to the stream.
    pub fn add_lost(&mut self, l: &crate::exporters::loss::Lost) {
        *self.lost.entry(l.reason).or_default() += l.count;
    }

    /// The first line's totals: what the lines showed, and with the kernel's counts how many
    /// of the operations it counted that is.
    pub fn headline(&self, counted: Option<&Counted>) -> String {
        let (shown, failed) = (self.operations(), self.failures());
        let Some(c) = counted else {
            return format!("{shown} operations, {failed} failed");
        };
        let total: u64 = c.ops.values().sum();
        let kfailed: u64 = OpKind::ALL.iter().map(|&k| c.get(k, false)).sum();
        if c.filtered {
            return format!(
                "{shown} operations shown, {failed} failed (filtered; the kernel counted {total}, {kfailed} failed, in all)"
            );
        }
        let mut s = of(shown, total, "operations");
        if total > shown {
            let _ = write!(
                s,
                " ({} not shown: their events were lost, see the LOST lines)",
                total - shown
            );
        }
        let _ = write!(s, "; {}", of(failed, kfailed, "failed"));
        s
    }

    pub fn operations(&self) -> u64 {
        self.ops.iter().flatten().sum()
    }

    pub fn failures(&self) -> u64 {
        self.ops.iter().map(|[failed, _]| failed).sum()
    }

    /// The summary text. `still_leaked` lists leaks open at the end (one per device and
    /// reason); `fmt` prints them.
    pub fn render(&self, still_leaked: &[&Leak], fmt: &TraceFormatter) -> String {
        self.render_counted(still_leaked, fmt, None)
    }

    /// [`Summary::render`], its totals from the kernel's exact counts where there are some.
    pub fn render_counted(
        &self,
        still_leaked: &[&Leak],
        fmt: &TraceFormatter,
        counted: Option<&Counted>,
    ) -> String {
        let mut s = String::new();
        let _ = write!(s, "\n=== tsm-trace summary: {}", self.headline(counted));
        match &self.in_flight {
            Some((n, what)) if *n > 0 => {
                let _ = writeln!(s, ", {n} still in flight ===\nstill in flight: {what}");
            }
            _ => {
                let _ = writeln!(s, " ===");
            }
        }
        for kind in OpKind::ALL {
            let [err, ok] = self.ops[kind as usize];
            let (kok, kerr) =
                counted.map_or((ok, err), |c| (c.get(kind, true), c.get(kind, false)));
            if ok + err + kok + kerr == 0 {
                continue;
            }
            if (ok, err) == (kok, kerr) {
                let _ = writeln!(s, "\n@{}_us: ({ok} ok, {err} failed)", kind.as_str());
            } else {
                let _ = writeln!(
                    s,
                    "\n@{}_us: ({ok} ok, {err} failed shown; the kernel counted {kok} ok, {kerr} failed)",
                    kind.as_str()
                );
            }
            if let Some(h) = &self.latency_us[kind as usize] {
                h.render(&mut s);
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nerrors by errno and layer:");
            let mut rows: Vec<_> = self.errors.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            // Columns as wide as their longest entry (`pci_tsm_unbind_any`, `EOPNOTSUPP`).
            let (mut ew, mut lw, mut fw) = (0, 0, 0);
            for ((e, layer, function, _), _) in &rows {
                ew = ew.max(e.len());
                lw = lw.max(layer.as_str().len());
                fw = fw.max(function.as_str().len());
            }
            for ((e, layer, function, kind), n) in rows {
                let _ = writeln!(
                    s,
                    "  {n:>8}  {e:<ew$} {:<lw$} {:<fw$} ({})",
                    layer.as_str(),
                    function.as_str(),
                    kind.as_str()
                );
            }
        }
        let detected: u64 = self.leaks_detected.values().sum();
        let unconfirmed = self
            .anomalies
            .get(&AnomalyKind::LeakUnconfirmed)
            .copied()
            .unwrap_or(0);
        if detected > 0 || !still_leaked.is_empty() || unconfirmed > 0 {
            // A leak is one device for one reason: a device can leak for two reasons.
            let devices: std::collections::BTreeSet<&str> =
                still_leaked.iter().map(|l| &*l.device).collect();
            let _ = writeln!(
                s,
                "\nleaks (one per device and reason): {detected} detected, {} cleared, \
                 {} still leaked, on {} device{}",
                self.leaks_cleared,
                still_leaked.len(),
                devices.len(),
                if devices.len() == 1 { "" } else { "s" }
            );
            for (r, n) in &self.leaks_detected {
                let _ = writeln!(s, "  {n:>8}  {}", r.as_str());
            }
            for l in still_leaked {
                if let Some(line) = fmt.format(&Output::LeakDetected((*l).clone())) {
                    let _ = writeln!(s, "  {line}");
                }
            }
            if unconfirmed > 0 {
                let _ = writeln!(
                    s,
                    "  {unconfirmed:>8} binding{} not judged: the input ended before their grace \
                     period ({})",
                    if unconfirmed == 1 { "" } else { "s" },
                    AnomalyKind::LeakUnconfirmed.as_str()
                );
            }
        }
        if self.ide_leaks.0 > 0 {
            let _ = writeln!(
                s,
                "\nIDE streams leaked (left registered or enabled after their endpoint's \
                 disconnect): {} detected, {} cleared",
                self.ide_leaks.0, self.ide_leaks.1
            );
            for line in &self.ide_leak_lines {
                let _ = writeln!(s, "  {line}");
            }
        }
        if !self.closed.is_empty() {
            let _ = writeln!(s, "\nbindings ended, by cause:");
            for (c, n) in &self.closed {
                let _ = writeln!(s, "  {n:>8}  {c}");
            }
        }
        if !self.mismatches.is_empty() {
            let _ = writeln!(s, "\nsysfs mismatches:");
            for (k, n) in &self.mismatches {
                let _ = writeln!(s, "  {n:>8}  {}", k.as_str());
            }
        }
        if !self.lost.is_empty() {
            let _ = writeln!(s, "\nevents lost (the LOST lines), by reason:");
            for (r, n) in &self.lost {
                let _ = writeln!(s, "  {n:>8}  {r}");
            }
        }
        if !self.anomalies.is_empty() {
            let _ = writeln!(s, "\ncorrelation anomalies:");
            for (k, n) in &self.anomalies {
                let _ = writeln!(s, "  {n:>8}  {}", k.as_str());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporters::trace::Clock;

    #[test]
    fn summary_totals_come_from_the_kernel_counts_when_there_are_some() {
        let mut s = Summary::default();
        s.ops[OpKind::Bind as usize][1] = 5_605;
        s.ops[OpKind::Unbind as usize][1] = 5_605;
        let kernel = |bind_ok, bind_err, unbind_ok, filtered| Counted {
            ops: [
                ((OpKind::Bind, true), bind_ok),
                ((OpKind::Bind, false), bind_err),
                ((OpKind::Unbind, true), unbind_ok),
            ]
            .into(),
            filtered,
        };
        // Without the kernel's counts (replay): what the lines showed, as before.
        assert_eq!(s.headline(None), "11210 operations, 0 failed");
        // The storm: never "11210 operations" when the kernel counted 40000.
        let k = kernel(20_000, 0, 20_000, false);
        assert_eq!(
            s.headline(Some(&k)),
            "11210 of 40000 operations shown (28790 not shown: their events were lost, see the LOST lines); 0 of 0 failed shown"
        );
        let fmt = TraceFormatter::new(Clock::Relative { base_ns: 0 });
        let text = s.render_counted(&[], &fmt, Some(&k));
        assert!(
            text.contains(
                "@bind_us: (5605 ok, 0 failed shown; the kernel counted 20000 ok, 0 failed)"
            ),
            "{text}"
        );
        // Nothing lost: both agree, no gap claimed.
        let all = kernel(5_605, 0, 5_605, false);
        assert_eq!(
            s.headline(Some(&all)),
            "11210 of 11210 operations shown; 0 of 0 failed shown"
        );
        assert!(
            s.render_counted(&[], &fmt, Some(&all))
                .contains("@bind_us: (5605 ok, 0 failed)\n")
        );
        // More shown than counted (operations whose outer return the kernel never saw are
        // left out of its counts): both numbers, no negative gap.
        let fewer = kernel(5_000, 2, 5_605, false);
        assert_eq!(
            s.headline(Some(&fewer)),
            "11210 operations shown, the kernel counted 10607; 0 of 2 failed shown"
        );
        // Filtered lines are not compared with unfiltered counts.
        assert_eq!(
            s.headline(Some(&kernel(20_000, 3, 20_000, true))),
            "11210 operations shown, 0 failed (filtered; the kernel counted 40003, 3 failed, in all)"
        );
        // Loss records are summed by reason.
        s.add_lost(&crate::exporters::loss::Lost {
            count: 7,
            reason: "ringbuf_full",
            time_ns: None,
        });
        s.add_lost(&crate::exporters::loss::Lost {
            count: 3,
            reason: "ringbuf_full",
            time_ns: Some(1),
        });
        let text = s.render(&[], &fmt);
        assert!(
            text.contains("events lost (the LOST lines), by reason:\n        10  ringbuf_full\n"),
            "{text}"
        );
    }

    #[test]
    fn errors_table_columns_line_up_for_the_longest_names() {
        let mut sum = Summary::default();
        for (e, layer, probe, kind, n) in [
            ("EBUSY", Layer::TsmCore, ProbeId::TsmBind, OpKind::Bind, 3),
            (
                "EOPNOTSUPP",
                Layer::TsmDriver,
                ProbeId::DriverGuestReq,
                OpKind::Bind,
                2,
            ),
            (
                "EIO",
                Layer::PciTsm,
                ProbeId::PciTsmDisconnect,
                OpKind::Disconnect,
                1,
            ),
        ] {
            sum.errors.insert((e.to_string(), layer, probe, kind), n);
        }
        let text = sum.render(&[], &TraceFormatter::new(Clock::Relative { base_ns: 0 }));
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("errors by errno"))
            .skip(1)
            .take(3)
            .collect();
        assert_eq!(table.len(), 3, "{text}");
        // The layer, function and operation columns each start at one offset.
        let starts = |l: &str| -> Vec<usize> {
            let b = l.as_bytes();
            (1..b.len())
                .filter(|&i| b[i] != b' ' && b[i - 1] == b' ')
                .collect()
        };
        let first = starts(table[0]);
        assert_eq!(first.len(), 5, "{table:#?}");
        for l in &table {
            assert_eq!(starts(l), first, "{table:#?}");
        }
    }

    #[test]
    fn log2_hist_like_bpftrace() {
        let mut h = Log2Hist::default();
        for v in [0, 1, 3, 700, 900, 1500] {
            h.add(v);
        }
        let mut s = String::new();
        h.render(&mut s);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().take(2).collect::<Vec<_>>(),
            ["[0]", "1"]
        );
        assert!(s.contains("[512, 1K)"), "{s}");
        assert!(s.contains("[1K, 2K)"), "{s}");
        // The fullest bucket gets the full 52-character bar.
        let full = lines.iter().find(|l| l.starts_with("[512, 1K)")).unwrap();
        assert!(full.contains(&format!("|{}|", "@".repeat(52))), "{full}");
        // Empty buckets in between are printed (continuous scale), none beyond the last.
        assert!(lines.last().unwrap().starts_with("[1K, 2K)"));
        assert_eq!(h.count(), 6);
    }
}
