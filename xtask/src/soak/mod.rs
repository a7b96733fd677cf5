//! `cargo xtask soak`: a month compressed. Runs `tsm-trace-bench/src/bin/soak` (release), a
//! synthetic host's kernel events through the daemon's userspace path with scrapes
//! throughout, then checks that nothing grew without bound, plots RSS, `/metrics` series,
//! state-file size and scrape time over operations into docs/soak.svg, and writes the
//! numbers into BENCHMARKS.md (its own section, which `cargo xtask bench` keeps).
//!
//! The smoke (`cargo xtask test`) runs the same program at 20,000 operations with smaller
//! bounds and writes nothing but target/soak-smoke/.

mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::util::root;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Operations to run (bind, unbind, teardown, guest request, connect, disconnect).
    #[arg(long, default_value_t = 1_000_000)]
    pub ops: u64,
    /// Where the CSV and a copy of the picture go.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
}

/// A run's sizes: the program's flags.
#[derive(Clone, Debug)]
struct Sizes {
    ops: u64,
    devices: u64,
    max_bindings: u64,
    max_leaks: u64,
    max_threads: u64,
    max_vm_checks: u64,
    sample_every: u64,
    reconcile_every: u64,
    module_every: u64,
}

impl Sizes {
    fn full(ops: u64) -> Sizes {
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

    fn smoke() -> Sizes {
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

    fn args(&self, out: &Path) -> Vec<String> {
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
struct Samples {
    cols: BTreeMap<String, usize>,
    rows: Vec<Vec<f64>>,
}

impl Samples {
    fn parse(text: &str) -> Result<Samples> {
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

    fn col(&self, name: &str) -> Vec<f64> {
        let i = self.cols[name];
        self.rows.iter().map(|r| r[i]).collect()
    }

    /// Peak of a column over the first and the second half of the run (by operations).
    fn halves(&self, name: &str) -> (f64, f64) {
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
fn check(s: &Samples, sz: &Sizes, slack: f64) -> Vec<String> {
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
        ("heap in use", "heap_kib", slack, 0.0),
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

fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Builds and runs the program; returns its summary and samples.
fn measure(
    sz: &Sizes,
    out: &Path,
    target: Option<&str>,
) -> Result<(BTreeMap<String, String>, Samples)> {
    let bin = crate::build::build_release(Some("soak"), target)?;
    std::fs::create_dir_all(out)?;
    let o = Command::new(&bin)
        .args(sz.args(out))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        bail!("soak failed ({}): {text}", o.status);
    }
    let csv = std::fs::read_to_string(out.join("soak.csv"))?;
    Ok((kv(&text), Samples::parse(&csv)?))
}

/// `cargo xtask test`'s smoke: 20,000 operations, bounds scaled down so every table is full
/// by half-way; fails when anything grew in the second half.
pub fn smoke() -> Result<()> {
    let t = std::time::Instant::now();
    let sz = Sizes::smoke();
    let out = root().join("target/soak-smoke");
    // The musl release library is the Debian package step's: only the program links.
    let (m, s) = measure(&sz, &out, Some(crate::build::MUSL))?;
    let bad = check(&s, &sz, 0.10);
    if !bad.is_empty() {
        bail!("soak smoke: not bounded:\n  {}", bad.join("\n  "));
    }
    println!(
        "soak smoke: {} operations, {} VMs, {} devices; every table at its bound and counted, RSS/series/state flat in the second half ({:.1}s)",
        m.get("ops").map_or("?", String::as_str),
        m.get("vms").map_or("?", String::as_str),
        m.get("devices_used").map_or("?", String::as_str),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run(args: &SoakArgs) -> Result<()> {
    let sz = Sizes::full(args.ops);
    let out = root().join(&args.out);
    let (m, s) = measure(&sz, &out, None)?;
    let bad = check(&s, &sz, 0.10);
    let ops = s.col("ops");
    let panel = |title, unit, col: &str, div: f64| plot::Panel {
        title,
        unit,
        points: ops
            .iter()
            .zip(s.col(col))
            .map(|(o, v)| (*o, v / div))
            .collect(),
        extra: None,
    };
    let picture = plot::svg(
        &format!(
            "cargo xtask soak --ops {}: {} VMs, {} devices",
            args.ops,
            m.get("vms").map_or("?", String::as_str),
            m.get("devices_used").map_or("?", String::as_str)
        ),
        &[
            plot::Panel {
                extra: Some(("heap in use", panel("", "", "heap_kib", 1024.0).points)),
                ..panel("RSS", "MiB", "rss_kib", 1024.0)
            },
            panel("/metrics series", "count", "series", 1.0),
            panel("state file", "KiB", "state_bytes", 1024.0),
            panel("/metrics render, CPU time", "ms", "scrape_ns", 1e6),
        ],
    );
    std::fs::write(out.join("soak.svg"), &picture)?;
    std::fs::write(root().join("docs/soak.svg"), &picture)?;
    let section = report::section(args, &sz, &m, &s, &bad);
    let path = root().join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, splice(&doc, &section))?;
    println!(
        "{section}\nwrote docs/soak.svg, BENCHMARKS.md, {}",
        out.join("soak.csv").display()
    );
    if !bad.is_empty() {
        bail!("soak: not bounded:\n  {}", bad.join("\n  "));
    }
    Ok(())
}

mod report;

const BEGIN: &str = "<!-- soak:begin (cargo xtask soak) -->";
const END: &str = "<!-- soak:end -->";

/// `doc` with its soak section replaced by `section` (appended if it has none).
fn splice(doc: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}\n", section.trim_end());
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{block}{}",
                &doc[..a],
                doc[b + END.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n\n{block}", doc.trim_end()),
    }
}

/// What `cargo xtask bench` writes, with the soak section of the file it replaces kept.
pub fn keep_section(old: &str, new: &str) -> String {
    match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => splice(new, old[a + BEGIN.len()..b].trim()),
        _ => new.to_string(),
    }
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

    #[test]
    fn the_section_is_replaced_in_place_and_kept_by_the_bench() {
        let doc = splice("# Benchmarks\n\n| table |\n", "## Soak\nold");
        assert!(doc.starts_with("# Benchmarks\n\n| table |\n\n<!-- soak:begin"));
        let again = splice(&format!("{doc}\ntrailer\n"), "## Soak\nnew");
        assert!(again.contains("## Soak\nnew") && !again.contains("old"));
        assert!(again.trim_end().ends_with("trailer"));
        let bench = keep_section(&again, "# Benchmarks\n\nnew table\n");
        assert!(bench.starts_with("# Benchmarks\n\nnew table\n"));
        assert!(bench.contains("## Soak\nnew"));
        assert_eq!(keep_section("no section", "x"), "x");
    }
}
