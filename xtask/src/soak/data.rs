//! A soak run's sizes (the program's flags), its samples (the CSV) and the boundedness
//! check on them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// A run's sizes: the program's flags.
#[derive(Clone, Debug)]
pub(super) struct Sizes {
    pub(super) ops: u64,
    pub(super) devices: u64,
    pub(super) max_bindings: u64,
    pub(super) max_leaks: u64,
    pub(super) max_threads: u64,
    pub(super) max_vm_checks: u64,
    pub(super) sample_every: u64,
    pub(super) reconcile_every: u64,
    pub(super) module_every: u64,
}

impl Sizes {
    pub(super) fn full(ops: u64) -> Sizes {
        Sizes {
            ops,
            devices: 12_288,
            max_bindings: 4_096,
            max_leaks: 1_024,
            max_threads: 512,
            max_vm_checks: 256,
            sample_every: (ops / 100).max(1),
            reconcile_every: 50_000,
            module_every: 100_000,
        }
    }

    pub(super) fn smoke() -> Sizes {
        Sizes {
            ops: 20_000,
            devices: 2_048,
            max_bindings: 512,
            max_leaks: 128,
            max_threads: 128,
            max_vm_checks: 64,
            sample_every: 500,
            reconcile_every: 5_000,
            module_every: 4_000,
        }
    }

    pub(super) fn args(&self, out: &Path) -> Vec<String> {
        let mut v = Vec::new();
        for (k, n) in [
            ("--ops", self.ops),
            ("--devices", self.devices),
            ("--max-bindings", self.max_bindings),
            ("--max-leaks", self.max_leaks),
            ("--max-threads", self.max_threads),
            ("--max-vm-checks", self.max_vm_checks),
            ("--sample-every", self.sample_every),
            ("--reconcile-every", self.reconcile_every),
            ("--module-every", self.module_every),
        ] {
            v.push(k.to_string());
            v.push(n.to_string());
        }
        v.push("--out".into());
        v.push(out.display().to_string());
        v
    }
}

/// The CSV the program writes: one row per scrape.
pub(super) struct Samples {
    cols: BTreeMap<String, usize>,
    rows: Vec<Vec<f64>>,
}

impl Samples {
    pub(super) fn parse(text: &str) -> Result<Samples> {
        let mut lines = text.lines();
        let head = lines.next().context("empty CSV")?;
        let cols = head
            .split(',')
            .enumerate()
            .map(|(i, c)| (c.to_string(), i))
            .collect();
        let rows = lines
            .map(|l| {
                l.split(',')
                    .map(|v| v.parse::<f64>().with_context(|| format!("{v:?} in {l}")))
                    .collect::<Result<Vec<f64>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        if rows.len() < 4 {
            bail!("{} samples: too few to judge", rows.len());
        }
        Ok(Samples { cols, rows })
    }

    pub(super) fn col(&self, name: &str) -> Vec<f64> {
        let i = self.cols[name];
        self.rows.iter().map(|r| r[i]).collect()
    }

    /// Peak of a column over the first and the second half of the run (by operations).
    pub(super) fn halves(&self, name: &str) -> (f64, f64) {
        let ops = self.col("ops");
        let half = ops[ops.len() - 1] / 2.0;
        let v = self.col(name);
        let mut a = 0f64;
        let mut b = 0f64;
        for (o, x) in ops.iter().zip(&v) {
            if *o <= half {
                a = a.max(*x);
            } else {
                b = b.max(*x);
            }
        }
        (a, b)
    }
}

/// Boundedness, as the run's samples show it: each table reached its bound in the first
/// half of the run and its counter counted what happened there; RSS, series and the state
/// file peaked in the second half within `slack` of their first-half peak. Returns the
/// failures.
pub(super) fn check(s: &Samples, sz: &Sizes, slack: f64) -> Vec<String> {
    let mut bad = Vec::new();
    for (table, bound, counter) in [
        ("bindings", sz.max_bindings, "binding_evicted"),
        ("leaks", sz.max_leaks, "leak_table_full"),
        ("devices", sz.max_bindings, "device_table_full"),
    ] {
        let (a, b) = s.halves(table);
        if a < bound as f64 {
            bad.push(format!(
                "{table}: peak {a} in the first half, never its bound {bound}: the run does not reach it"
            ));
        }
        if a.max(b) > bound as f64 {
            bad.push(format!("{table}: {} over its bound {bound}", a.max(b)));
        }
        let (_, c) = s.halves(counter);
        if c == 0.0 {
            bad.push(format!(
                "{table} at its bound, yet {counter} counted nothing"
            ));
        }
    }
    // The heap in use is the program's own; RSS adds what the allocator keeps (glibc's
    // retention creeps a little as free chunks fragment), hence its looser slack.
    for (what, col, rel, abs) in [
        // A hash table under churn may rehash once into twice its buckets (hashbrown grows
        // when tombstones fill it while it is more than half full): one step, then never.
        ("heap in use", "heap_kib", 2.5 * slack, 0.0),
        ("RSS", "rss_kib", 2.5 * slack, 2048.0),
        ("/metrics series", "series", slack, 0.0),
        ("state file", "state_bytes", slack, 0.0),
    ] {
        let (a, b) = s.halves(col);
        if b > a * (1.0 + rel) + abs {
            bad.push(format!(
                "{what} grows: peak {b} in the second half against {a} in the first (more than {:.0}%)",
                rel * 100.0
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rows: &[[f64; 9]]) -> Samples {
        let head = "ops,bindings,leaks,devices,binding_evicted,leak_table_full,device_table_full,rss_kib,series\n";
        let mut t = head.to_string();
        for r in rows {
            let v: Vec<String> = r.iter().map(|x| x.to_string()).collect();
            t.push_str(&v.join(","));
            t.push('\n');
        }
        // state_bytes and heap_kib follow RSS in these tests.
        let t = t.replace("series\n", "series,state_bytes,heap_kib\n");
        let t: String = t
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    format!("{l}\n")
                } else {
                    let rss = l.split(',').nth(7).unwrap();
                    format!("{l},{rss},{rss}\n")
                }
            })
            .collect();
        Samples::parse(&t).unwrap()
    }

    fn sz() -> Sizes {
        Sizes {
            max_bindings: 10,
            max_leaks: 5,
            ..Sizes::smoke()
        }
    }

    #[test]
    fn flat_after_the_bounds_passes() {
        let s = samples(&[
            [1.0, 10.0, 5.0, 10.0, 1.0, 1.0, 1.0, 4000.0, 100.0],
            [2.0, 10.0, 5.0, 10.0, 2.0, 2.0, 2.0, 4100.0, 100.0],
            [3.0, 9.0, 5.0, 10.0, 3.0, 3.0, 3.0, 4100.0, 100.0],
            [4.0, 10.0, 4.0, 10.0, 4.0, 4.0, 4.0, 4200.0, 100.0],
        ]);
        assert_eq!(check(&s, &sz(), 0.1), Vec::<String>::new());
    }

    #[test]
    fn growth_a_missed_bound_and_an_uncounted_one_fail() {
        let s = samples(&[
            [1.0, 10.0, 4.0, 10.0, 1.0, 0.0, 1.0, 4000.0, 100.0],
            [2.0, 10.0, 4.0, 10.0, 2.0, 0.0, 2.0, 4000.0, 100.0],
            [3.0, 11.0, 4.0, 10.0, 3.0, 0.0, 3.0, 9000.0, 100.0],
            [4.0, 10.0, 4.0, 10.0, 4.0, 0.0, 4.0, 12000.0, 130.0],
        ]);
        let bad = check(&s, &sz(), 0.1).join("\n");
        assert!(bad.contains("bindings: 11 over its bound 10"), "{bad}");
        assert!(bad.contains("leaks: peak 4 in the first half"), "{bad}");
        assert!(bad.contains("leak_table_full counted nothing"), "{bad}");
        assert!(bad.contains("RSS grows"), "{bad}");
        assert!(bad.contains("heap in use grows"), "{bad}");
        assert!(bad.contains("/metrics series grows"), "{bad}");
        assert!(bad.contains("state file grows"), "{bad}");
    }
}
