//! `cargo xtask soak`: a month compressed. Runs `tsm-trace-bench/src/bin/soak` (release), a
//! synthetic host's kernel events through the daemon's userspace path with scrapes
//! throughout, then checks that nothing grew without bound, plots RSS, `/metrics` series,
//! state-file size and scrape time over operations into docs/soak.svg, and writes the
//! numbers into BENCHMARKS.md (its own section, which `cargo xtask bench` keeps).
//!
//! The smoke (`cargo xtask test`) runs the same program at 20,000 operations with smaller
//! bounds and writes nothing but target/soak-smoke/.

mod data;
mod plot;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use data::{Samples, Sizes, check};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::util::root;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Operations to run (bind, unbind, teardown, guest request, connect, disconnect). Two
    /// million by default: the heap's one step after the tables fill (a hash table rehashing
    /// into twice its buckets under churn) comes near the millionth operation, and the check
    /// compares the run's second half with its first.
    #[arg(long, default_value_t = 2_000_000)]
    pub ops: u64,
    /// Where the CSV and a copy of the picture go.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
    /// The smoke run of `cargo xtask test` (20,000 operations, smaller bounds; writes only
    /// target/soak-smoke/).
    #[arg(long)]
    pub smoke: bool,
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
    if args.smoke {
        return smoke();
    }
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
    let section = report::section(args.ops, &sz, &m, &s, &bad);
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
