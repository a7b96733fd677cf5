//! Figure 9, detail under storms: the highest steady rate of bind+unbind pairs at which the
//! daemon, at its default ring buffer size, lost no record, and how much of a back-to-back
//! storm's detail it lost; per block (this tree, each `--compare` revision). Parses the
//! `rate_steps` section of tests/vm/scenarios/bench_rate.sh. Rates are on the guest's clock
//! (on the deterministic clock: per 10⁹ guest instructions).

use std::collections::BTreeMap;

use super::figures::{Row, kv};
use crate::vm::VmOutput;

const LABEL: &str = "9. detail under storms";

/// One step: `pairs` pairs, `gap_us` asleep after each, and what the daemon's counters moved.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub pairs: u64,
    pub gap_us: u64,
    pub duration_ns: u64,
    pub bind_ok: u64,
    /// Records lost and processed during the step (differences of the cumulative counters).
    pub lost: u64,
    pub processed: u64,
}

impl Step {
    /// Pairs per second of the guest's clock.
    pub fn rate(&self) -> f64 {
        self.pairs as f64 * 1e9 / self.duration_ns.max(1) as f64
    }

    pub fn records(&self) -> u64 {
        self.lost + self.processed
    }
}

/// `rate_steps` → steps per block, in the order run; a line that does not parse is an error
/// naming it (a step without its counters would read as lossless).
pub fn steps(text: &str) -> Result<BTreeMap<String, Vec<Step>>, String> {
    let mut out: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let m = kv(l);
        let num = |k: &str| -> Result<u64, String> {
            m.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no number {k}= in rate_steps line {l:?}"))
        };
        let block = m
            .get("block")
            .cloned()
            .ok_or_else(|| format!("no block= in rate_steps line {l:?}"))?;
        let counters = (num("lost")?, num("processed")?);
        if l.starts_with("base ") {
            last.insert(block, counters);
            continue;
        }
        if !l.starts_with("step ") {
            return Err(format!("unknown rate_steps line {l:?}"));
        }
        let Some(&(lost0, processed0)) = last.get(&block) else {
            return Err(format!(
                "a step before the base line of block {block}: {l:?}"
            ));
        };
        if counters.0 < lost0 || counters.1 < processed0 {
            return Err(format!("counters went backwards in {l:?}"));
        }
        last.insert(block.clone(), counters);
        out.entry(block).or_default().push(Step {
            pairs: num("pairs")?,
            gap_us: num("gap_us")?,
            duration_ns: num("duration_ns")?,
            bind_ok: num("bind_ok")?,
            lost: counters.0 - lost0,
            processed: counters.1 - processed0,
        });
    }
    Ok(out)
}

/// The fastest step that lost nothing, and the slowest that lost something (the bracket).
pub fn bracket(steps: &[Step]) -> (Option<&Step>, Option<&Step>) {
    let fastest_clean = steps
        .iter()
        .filter(|s| s.lost == 0 && s.processed > 0)
        .max_by(|a, b| a.rate().total_cmp(&b.rate()));
    let slowest_lossy = steps
        .iter()
        .filter(|s| s.lost > 0)
        .min_by(|a, b| a.rate().total_cmp(&b.rate()));
    (fastest_clean, slowest_lossy)
}

/// Blocks that framed their output (`rate_out_<block>`) but have no steps.
fn without_steps<'a>(
    sections: impl Iterator<Item = &'a str>,
    blocks: &BTreeMap<String, Vec<Step>>,
) -> Vec<&'a str> {
    sections
        .filter_map(|name| name.strip_prefix("rate_out_"))
        .filter(|b| blocks.get(*b).is_none_or(Vec::is_empty))
        .collect()
}

fn who(block: &str) -> String {
    match block.strip_prefix("tsm-trace@") {
        Some(rev) => format!("tsm-trace built from git revision {rev} (--compare)"),
        None => "tsm-trace (this tree)".into(),
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn describe(s: &Step) -> String {
    format!(
        "{:.0} pairs/s ({} pairs, {} µs asleep after each, {:.1} ms on the guest clock; {:.1} records per pair)",
        s.rate(),
        s.pairs,
        s.gap_us,
        s.duration_ns as f64 / 1e6,
        s.records() as f64 / s.pairs.max(1) as f64
    )
}

pub fn rows(out: &VmOutput) -> Vec<Row> {
    let text = match out.section("rate_steps") {
        Ok(s) => s.text.clone(),
        Err(e) => return vec![Row::missing(LABEL, format!("{e:#}"))],
    };
    let blocks = match steps(&text) {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => {
            return vec![Row::missing(
                LABEL,
                "no steps ran (section rate_out_*)".into(),
            )];
        }
        Err(e) => return vec![Row::missing(LABEL, e)],
    };
    let mut rows = Vec::new();
    // A block whose daemon never got to its steps left only its output section: say so, or
    // it would be missing from the table without a word.
    for block in without_steps(out.sections.keys().map(String::as_str), &blocks) {
        let tail = out
            .section(&format!("rate_out_{block}"))
            .map(|s| s.text.trim().lines().last().unwrap_or("").to_owned())
            .unwrap_or_default();
        rows.push(Row::missing(
            format!("{LABEL}: {}", who(block)),
            format!("no steps ran (section rate_out_{block}: {tail})"),
        ));
    }
    let mut best: BTreeMap<&str, f64> = BTreeMap::new();
    for (block, steps) in &blocks {
        let figure = format!(
            "{LABEL}: {}, the highest steady rate with no record lost (default ring buffer, 256 KiB)",
            who(block)
        );
        if let Some(s) = steps.iter().find(|s| s.processed == 0) {
            rows.push(Row::missing(
                figure,
                format!("the daemon processed nothing during {}", describe(s)),
            ));
            continue;
        }
        let (clean, lossy) = bracket(steps);
        let next = match lossy {
            Some(s) => format!(
                "; the slowest step that lost detail: {}, {} of {} records lost ({:.1}%)",
                describe(s),
                s.lost,
                s.records(),
                pct(s.lost, s.records())
            ),
            None => "; no step lost any".into(),
        };
        let value = match clean {
            Some(s) => {
                best.insert(block, s.rate());
                format!("{}{next}", describe(s))
            }
            None => format!("none of the {} steps was lossless{next}", steps.len()),
        };
        rows.push(Row::report(figure, value));
        // The held-out storm: the largest back-to-back step.
        if let Some(s) = steps
            .iter()
            .filter(|s| s.gap_us == 0)
            .max_by_key(|s| s.pairs)
        {
            rows.push(Row::report(
                format!(
                    "{LABEL}: {}, {} pairs back to back (one write): per-event detail lost",
                    who(block),
                    s.pairs
                ),
                format!(
                    "{} of {} records lost ({:.1}%) at {:.0} pairs/s; {} binds succeeded (the operation counts in /metrics come from the kernel and stay exact)",
                    s.lost,
                    s.records(),
                    pct(s.lost, s.records()),
                    s.rate(),
                    s.bind_ok
                ),
            ));
        }
    }
    if let Some(now) = best.get("tsm-trace") {
        for (block, then) in best.iter().filter(|(b, _)| b.starts_with("tsm-trace@")) {
            rows.push(Row::report(
                format!("{LABEL}: highest lossless rate, this tree / {}", who(block)),
                format!("{now:.0} / {then:.0} pairs/s = ×{:.2}", now / then),
            ));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "base block=tsm-trace lost=5 processed=100
step block=tsm-trace pairs=1000 gap_us=0 duration_ns=50000000 bind_ok=1000 lost=105 processed=16000
step block=tsm-trace pairs=1000 gap_us=20 duration_ns=100000000 bind_ok=1000 lost=105 processed=32100
step block=tsm-trace pairs=1000 gap_us=10 duration_ns=80000000 bind_ok=1000 lost=155 processed=48050
";

    #[test]
    fn steps_are_differences_of_the_counters() {
        let b = steps(TEXT).unwrap();
        let s = &b["tsm-trace"];
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].lost, s[0].processed), (100, 15900));
        assert_eq!((s[1].lost, s[1].processed), (0, 16100));
        assert_eq!((s[2].lost, s[2].processed), (50, 15950));
        assert_eq!(s[1].rate(), 10_000.0);
    }

    #[test]
    fn the_bracket_is_the_fastest_clean_and_the_slowest_lossy_step() {
        let b = steps(TEXT).unwrap();
        let (clean, lossy) = bracket(&b["tsm-trace"]);
        assert_eq!(clean.unwrap().gap_us, 20);
        assert_eq!(lossy.unwrap().gap_us, 10);
    }

    #[test]
    fn a_block_that_ran_no_steps_is_named() {
        let b = steps(TEXT).unwrap();
        let names = ["rate_out_tsm-trace", "rate_out_tsm-trace@abc", "rate_steps"];
        assert_eq!(without_steps(names.into_iter(), &b), vec!["tsm-trace@abc"]);
    }

    #[test]
    fn a_step_without_counters_or_base_is_an_error() {
        assert!(
            steps("step block=a pairs=1 gap_us=0 duration_ns=1 bind_ok=1 lost=0 processed=1")
                .is_err()
        );
        assert!(
            steps("base block=a lost=0 processed=0\nstep block=a pairs=1 gap_us=0 duration_ns=1 bind_ok=1 processed=1")
                .unwrap_err()
                .contains("lost=")
        );
        assert!(
            steps("base block=a lost=9 processed=0\nstep block=a pairs=1 gap_us=0 duration_ns=1 bind_ok=1 lost=0 processed=1")
                .unwrap_err()
                .contains("backwards")
        );
    }
}
