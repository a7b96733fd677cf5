//! No kernel address in anything tsm-trace printed inside a VM.
//!
//! Every section a scenario captured is tsm-trace output (trace lines, JSON lines, record
//! files, `/metrics`, `/bindings`, its logs) unless it is listed in [`FIXTURE_SECTIONS`]
//! (the fixtures' ground truth and kernel facts, which print pointers with `%px` on purpose).
//! Each is searched for anything that looks like a kernel address (`0x?ff` + 14 hex digits,
//! `ffff` + 12 hex digits, either case) and for every pointer the fixtures printed, in hex
//! and in decimal (signed and unsigned). A new fixture section that prints pointers must be
//! added to the list; a new tsm-trace output is covered without a change.

use anyhow::{Result, bail};

use crate::vm::qemu::VmOutput;

/// Sections written by the fixtures, the kernel or the scenario scripts, not by tsm-trace.
const FIXTURE_SECTIONS: &[&str] = &[
    "uname",
    "cmdline",
    "insmod",
    "module",
    "btf",
    "btf_names",
    "standin_info",
    "lspci",
    "lc_kernel",
    "lc_truth",
    "rs_truth",
    "dmesg",
    "kallsyms",
    "steps",
    "checks",
    // The ide suite: the fixture's own events (its probe op prints the context pointer).
    "ide_events",
    // Its deep phase's events of the same fixture (ide.sh deep()).
    "deep_events",
    "bound",
    "net",
    "story",
    "bench_env",
    "idle",
    "pairs",
    "cost_before",
    "cost_stats",
    "daemon_fdinfo",
    "hotpath",
    "latency",
    "acc_truth",
    "mod_truth",
    "storm_truth",
    // The restart suite: the stand-in's own record of each bind (restart.sh).
    "rs_truth",
];

fn is_fixture(name: &str) -> bool {
    FIXTURE_SECTIONS.contains(&name) || name.starts_with("truth_")
}

fn at(text: &[u8], i: usize, pattern: &[u8]) -> bool {
    text.len() >= i + pattern.len()
        && pattern.iter().zip(&text[i..]).all(|(&p, &t)| match p {
            b'h' => t.is_ascii_hexdigit(),
            _ => t.eq_ignore_ascii_case(&p),
        })
}

/// Everything in `text` that looks like a kernel address: `0x?ff[0-9a-f]{14}` and
/// `ffff[0-9a-f]{12}`, case-insensitive.
pub fn kernel_addresses(text: &str) -> Vec<String> {
    let patterns = [
        b"0xffhhhhhhhhhhhhhh".as_slice(),
        b"0ffhhhhhhhhhhhhhh".as_slice(),
        b"ffffhhhhhhhhhhhh".as_slice(),
    ];
    let b = text.as_bytes();
    let mut found = Vec::new();
    for i in 0..b.len() {
        for p in patterns {
            if at(b, i, p) {
                found.push(text[i..i + p.len()].to_string());
            }
        }
    }
    found
}

/// Every kernel pointer (`0xff…`, 16 hex digits) the fixtures printed.
fn fixture_pointers(out: &VmOutput) -> Vec<u64> {
    let mut ptrs = Vec::new();
    for (name, sec) in &out.sections {
        if !is_fixture(name) || name == "dmesg" {
            continue;
        }
        for word in sec.text.split(|c: char| !c.is_ascii_alphanumeric()) {
            if let Some(h) = word.strip_prefix("0x")
                && h.len() == 16
                && let Ok(v) = u64::from_str_radix(h, 16)
                && v >= 0xff00_0000_0000_0000
            {
                ptrs.push(v);
            }
        }
    }
    ptrs.sort_unstable();
    ptrs.dedup();
    ptrs
}

/// Checks every tsm-trace section of `out`; returns how many were searched.
pub fn check(out: &VmOutput) -> Result<usize> {
    let ptrs = fixture_pointers(out);
    let forms: Vec<String> = ptrs
        .iter()
        .flat_map(|&p| [format!("{p:x}"), p.to_string(), (p as i64).to_string()])
        .collect();
    let mut failed = Vec::new();
    let mut n = 0;
    for (name, sec) in &out.sections {
        if is_fixture(name) {
            continue;
        }
        n += 1;
        let mut found = kernel_addresses(&sec.text);
        found.extend(
            forms
                .iter()
                .filter(|f| sec.text.contains(f.as_str()))
                .cloned(),
        );
        if !found.is_empty() {
            found.truncate(5);
            failed.push(format!("section {name}: {}", found.join(", ")));
        }
    }
    if !failed.is_empty() {
        bail!(
            "kernel addresses in tsm-trace output (logs in {}; if a section is fixture ground truth, add it to FIXTURE_SECTIONS in xtask/src/vm/suites/leaks.rs):\n  {}",
            out.run_dir.display(),
            failed.join("\n  ")
        );
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_addresses_in_any_spelling() {
        assert_eq!(
            kernel_addresses("\"kvm\":\"0xff3abd9644194400\" FFFF888012340000 x"),
            vec!["0xff3abd9644194400", "FFFF888012340000"]
        );
        assert!(kernel_addresses("vm#3f9a0c51e2b7 tsm_code=0xabc ret=1").is_empty());
    }
}
