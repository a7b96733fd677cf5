//! Figure 1, cost per probed call (sections of `tests/vm/scenarios/bench_cost.sh`): for each
//! tool block, the minimum of its armed rounds minus the minimum of its own interleaved
//! baseline rounds (kprobes disarmed; medians and maxima reported beside), per bind+unbind pair and per probed call, with the number of
//! probed calls per pair counted from the ftrace events' hits; then tsm-trace's added cost as
//! ratios to the other tools' (floors against the tools reading the same fields).

use std::collections::BTreeMap;

use super::figures::{Row, kv, percentile};
use crate::vm::VmOutput;

/// The floor: tsm-trace's added cost at most this times ftrace's / bpftrace's with fields.
pub const FLOOR: f64 = 1.0;

const LABEL: &str = "1. cost per probed call";

/// One block's timing over its rounds.
#[derive(Clone, Debug)]
pub struct Block {
    pub rounds: usize,
    pub base: Spread,
    pub tool: Spread,
}

/// A block's round durations: minimum, median, maximum (ns of the guest's clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread {
            min: v.first().copied().unwrap_or(f64::NAN),
            median: percentile(&v, 50.0),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl Block {
    /// Added ns per bind+unbind pair: the minimum armed round minus the minimum baseline
    /// round. On the deterministic clock a round's time is the instructions it executed;
    /// anything else that ran in it (the tool's process, a kernel thread) only adds, so the
    /// minimum over many rounds is the round nothing disturbed, and it repeats run to run
    /// (medians move with what lands where).
    pub fn added_per_pair(&self, pairs: u64) -> f64 {
        (self.tool.min - self.base.min) / pairs as f64
    }
}

/// `round block=… base_ns=… tool_ns=…` lines → the rounds' spread per block.
pub fn blocks(text: &str) -> BTreeMap<String, Block> {
    let mut raw: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with("round ")) {
        let m = kv(l);
        let (Some(b), Some(base), Some(tool)) = (
            m.get("block"),
            m.get("base_ns").and_then(|v| v.parse::<f64>().ok()),
            m.get("tool_ns").and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        let e = raw.entry(b.clone()).or_default();
        e.0.push(base);
        e.1.push(tool);
    }
    raw.into_iter()
        .map(|(k, (b, t))| {
            (
                k,
                Block {
                    rounds: b.len(),
                    base: Spread::of(b),
                    tool: Spread::of(t),
                },
            )
        })
        .collect()
}

/// `tool_cpu block=… cpu_ns=… rounds=…` lines → the CPU time the tool's process used over
/// its block's rounds (all of them, baseline and armed, each waited out until the process
/// settled), per block.
pub fn tool_cpu(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| l.starts_with("tool_cpu "))
        .filter_map(|l| {
            let m = kv(l);
            Some((m.get("block")?.clone(), m.get("cpu_ns")?.parse().ok()?))
        })
        .collect()
}

/// ftrace hits: `start|disarmed|end <event> <hits> <misses>` → (entry hits during the disarmed
/// Records the daemon lost over its block (`tsm_trace_events_lost_total`, every reason), from
/// the metrics in its `cost_out_<block>` section; `None` when the section has no such lines.
pub fn lost(text: &str) -> Option<u64> {
    let mut seen = false;
    let mut n = 0;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("tsm_trace_events_lost_total") {
            seen = true;
            n += rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
        }
    }
    seen.then_some(n)
}

/// round, entry hits during the timed rounds, misses during the timed rounds).
pub fn hits(text: &str) -> Option<(u64, u64, u64)> {
    let mut at: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || !f[1].starts_with('e') {
            continue;
        }
        let (Ok(h), Ok(m)) = (f[2].parse::<u64>(), f[3].parse::<u64>()) else {
            continue;
        };
        let e = at.entry(f[0]).or_default();
        e.0 += h;
        e.1 += m;
    }
    let (s, d, e) = (at.get("start")?, at.get("disarmed")?, at.get("end")?);
    Some((d.0 - s.0, e.0 - d.0, e.1 - d.1))
}

/// bpf program stats `pre|mid|post id=… name=… type=… run_time_ns=… run_cnt=…` of the kprobe
/// programs (raw tracepoints fire on process exits, armed or not) → runs while disarmed, runs
/// in the armed round, ns of those runs, per program (name, runs, ns).
pub struct Val {
    pub disarmed_runs: u64,
    pub armed_runs: u64,
    pub armed_ns: u64,
    pub progs: Vec<(String, u64, u64)>,
}

/// The kprobe programs' bpf_stats in the `<phase> id=… name=… type=… run_time_ns=… run_cnt=…`
/// lines of `phase` (bench_vm's `stats`, prefixed by the scenario): id → (name, run_cnt,
/// run_time_ns).
pub fn stats_snapshot(text: &str, phase: &str) -> BTreeMap<u32, (String, u64, u64)> {
    text.lines()
        .filter(|l| l.strip_prefix(phase).is_some_and(|r| r.starts_with(' ')))
        .filter_map(|l| {
            let m = kv(l);
            if m.get("type").is_some_and(|t| !t.contains("KPROBE")) {
                return None;
            }
            Some((
                m.get("id")?.parse().ok()?,
                (
                    m.get("name")?.clone(),
                    m.get("run_cnt")?.parse().ok()?,
                    m.get("run_time_ns")?.parse().ok()?,
                ),
            ))
        })
        .collect()
}

pub fn val(text: &str) -> Val {
    let (pre, mid, post) = (
        stats_snapshot(text, "pre"),
        stats_snapshot(text, "mid"),
        stats_snapshot(text, "post"),
    );
    let mut v = Val {
        disarmed_runs: 0,
        armed_runs: 0,
        armed_ns: 0,
        progs: Vec::new(),
    };
    for (id, (name, c, ns)) in &post {
        let (mc, mns) = mid.get(id).map_or((0, 0), |m| (m.1, m.2));
        let pc = pre.get(id).map_or(0, |p| p.1);
        v.disarmed_runs += mc.saturating_sub(pc);
        let runs = c.saturating_sub(mc);
        v.armed_runs += runs;
        v.armed_ns += ns.saturating_sub(mns);
        if runs > 0 {
            v.progs.push((name.clone(), runs, ns.saturating_sub(mns)));
        }
    }
    v
}

/// A duration of the guest's clock: instructions on the deterministic clock (1 ns = 1
/// instruction), µs on a wall clock.
fn us(ns: f64) -> String {
    if DETERMINISTIC.load(std::sync::atomic::Ordering::Relaxed) {
        format!("{} instructions", thousands(ns))
    } else {
        format!("{:.2} µs", ns / 1e3)
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The VM ran on the deterministic clock (`RunOptions::icount`): set by the caller of
/// [`rows`].
pub static DETERMINISTIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What each block is, for the table.
fn describe(block: &str) -> String {
    match block {
        "empty" => "(b) empty kprobe+kretprobe pair (bench_vm, BPF)".into(),
        "ftrace0" => "ftrace dynamic events p:/r:, no fields".into(),
        "ftrace" => "(c) ftrace dynamic events p:/r: fetching the fields tsm-trace reads".into(),
        "tsm-trace" => "(d) tsm-trace (the daemon, `tsm-trace run`)".into(),
        "tsm-trace-paused" => "(d′) tsm-trace, its daemon stopped (SIGSTOP) through each armed round: the in-kernel path alone, as a host with a core to spare for the daemon pays it".into(),
        "bpftrace0" => {
            "(e) bpftrace one-liner: latency histogram + return-value counts, no fields".into()
        }
        "bpftrace" => "(f) the same bpftrace reading the fields tsm-trace reads into maps".into(),
        b => match b.strip_prefix("tsm-trace@") {
            Some(rev) => format!("(d) tsm-trace built from git revision {rev} (--compare)"),
            None => b.to_owned(),
        },
    }
}

pub fn rows(out: &VmOutput) -> Vec<Row> {
    let env = out
        .section("cost_env")
        .map(|s| kv(&s.text))
        .unwrap_or_default();
    let pairs: u64 = env.get("pairs").and_then(|v| v.parse().ok()).unwrap_or(0);
    let rounds = match out.section("cost_rounds") {
        Ok(s) => s.text.clone(),
        Err(e) => return vec![Row::missing(LABEL, format!("{e:#}"))],
    };
    let blocks = blocks(&rounds);
    let cpu = tool_cpu(&rounds);
    // ns of the tool's own CPU time per bind+unbind pair over its block's rounds.
    let cpu_per_pair = |name: &str| -> Option<f64> {
        let b = blocks.get(name)?;
        Some(*cpu.get(name)? as f64 / (b.rounds as u64 * pairs) as f64)
    };
    if pairs == 0 || blocks.is_empty() {
        return vec![Row::missing(
            LABEL,
            format!("no timed rounds (pairs={pairs}): {}", rounds.trim()),
        )];
    }
    // Probed calls per pair, counted: ftrace entry-event hits over the timed rounds.
    let mut calls: Option<f64> = None;
    let mut fired: BTreeMap<String, Result<String, String>> = BTreeMap::new();
    for b in ["ftrace0", "ftrace"] {
        let Ok(s) = out.section(&format!("cost_hits_{b}")) else {
            continue;
        };
        let Some((dis, timed, miss)) = hits(&s.text) else {
            fired.insert(b.into(), Err("kprobe_profile unreadable".into()));
            continue;
        };
        let n = blocks.get(b).map_or(0, |x| x.rounds) as u64 * pairs;
        if timed == 0 || dis != 0 || n == 0 {
            fired.insert(
                b.into(),
                Err(format!(
                    "{timed} hits in the armed rounds, {dis} in a disarmed round (must be > 0 and 0)"
                )),
            );
            continue;
        }
        let per = timed as f64 / n as f64;
        calls.get_or_insert(per);
        fired.insert(
            b.into(),
            Ok(format!(
                "{timed} entry hits, {miss} misses = {per:.2} probed calls per pair"
            )),
        );
    }
    for (name, s) in &out.sections {
        let Some(b) = name.strip_prefix("cost_val_") else {
            continue;
        };
        let v = val(&s.text);
        let r = if v.armed_runs == 0 || v.disarmed_runs != 0 {
            Err(format!(
                "{} BPF program runs in an armed round, {} in a disarmed one (must be > 0 and 0)",
                v.armed_runs, v.disarmed_runs
            ))
        } else {
            Ok(format!(
                "{} BPF program runs per pair ({:.0} ns each on average, bpf_stats)",
                v.armed_runs as f64 / pairs as f64,
                v.armed_ns as f64 / v.armed_runs as f64
            ))
        };
        fired.insert(b.to_owned(), r);
    }
    // The fields behind the ioctl's `void *` are read at BTF's offsets; all zero means
    // `tsm-trace check` did not give them, and both tools read the wrong bytes.
    if env.get("offsets").is_none_or(|o| o == "0,0,0,0") {
        for b in ["ftrace", "bpftrace"] {
            fired.insert(
                b.into(),
                Err("no BTF offsets for the ioctl's fields (section cost_check)".into()),
            );
        }
    }
    // ftrace must have taken every event definition it was given (else it did less work).
    if let Ok(s) = out.section("ftrace_defs") {
        let rejected: Vec<&str> = s
            .text
            .lines()
            .filter(|l| l.starts_with("rejected"))
            .collect();
        if !rejected.is_empty() {
            fired.insert(
                "ftrace".into(),
                Err(format!("tracefs rejected: {}", rejected.join("; "))),
            );
        }
    }
    // bpftrace output must not be empty: its maps are printed on exit.
    for b in ["bpftrace0", "bpftrace"] {
        if let Ok(s) = out.section(&format!("cost_out_{b}")) {
            let output = s
                .text
                .split("--- output")
                .nth(1)
                .unwrap_or("")
                .split("--- status")
                .next()
                .unwrap_or("");
            if !output.contains("@lat[") || !output.contains("@ret[") {
                fired.insert(
                    b.into(),
                    Err(format!(
                        "no @lat/@ret maps in bpftrace's output: {}",
                        output.trim().chars().take(300).collect::<String>()
                    )),
                );
            }
        }
    }
    // A daemon that lost records did less work than the calls asked of it: the paused block's
    // figure would be too cheap, so a loss there is a failure; elsewhere it is reported.
    let mut losses: BTreeMap<String, u64> = BTreeMap::new();
    for b in blocks.keys().filter(|b| b.starts_with("tsm-trace")) {
        match out
            .section(&format!("cost_out_{b}"))
            .ok()
            .and_then(|s| lost(&s.text))
        {
            Some(n) => {
                losses.insert(b.clone(), n);
                if n > 0 && b == "tsm-trace-paused" {
                    fired.insert(
                        b.clone(),
                        Err(format!(
                            "the daemon lost {n} records (tsm_trace_events_lost_total)"
                        )),
                    );
                }
            }
            None => {
                fired.insert(
                    b.clone(),
                    Err("no tsm_trace_events_lost_total on its /metrics (section cost_out)".into()),
                );
            }
        }
    }
    let calls = calls.filter(|c| *c > 0.0);
    let mut rows = Vec::new();
    let mut per_call: BTreeMap<String, f64> = BTreeMap::new();
    let order = [
        "empty",
        "ftrace0",
        "ftrace",
        "tsm-trace",
        "tsm-trace-paused",
        "bpftrace0",
        "bpftrace",
    ];
    let mut names: Vec<&String> = blocks.keys().collect();
    names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
    for name in names {
        let b = &blocks[name];
        let figure = format!("{LABEL}: {}", describe(name));
        let added = b.added_per_pair(pairs);
        let call = calls.map(|c| added / c);
        let how = match fired.get(name.as_str()) {
            Some(Ok(s)) => s.clone(),
            Some(Err(e)) => {
                rows.push(
                    Row::floor(
                        figure,
                        format!("did not fire as it must: {e}"),
                        "the tool fired (and only when armed)",
                        false,
                    )
                    .smoke(),
                );
                continue;
            }
            None => "not validated".into(),
        };
        if let Some(c) = call {
            per_call.insert(name.clone(), c);
        }
        let spread = |x: &Spread| {
            format!(
                "min {}, median {}, max {}",
                us(x.min),
                us(x.median),
                us(x.max)
            )
        };
        let value = format!(
            "+{} per bind+unbind pair, {} per probed call (minimum of {} rounds of {pairs} pairs: armed {}; baseline {}); {how}",
            us(added),
            call.map_or("? (no probed-call count)".into(), us),
            b.rounds,
            spread(&b.tool),
            spread(&b.base)
        );
        let value = match losses.get(name.as_str()) {
            Some(n) => format!("{value}; {n} records lost"),
            None => value,
        };
        let value = match cpu_per_pair(name) {
            // Its process's own work (the daemon decoding and correlating): beside the
            // probed calls' wall time, not in it, unless it overlapped a round.
            Some(ns) => format!(
                "{value}; the tool's process used {} CPU per pair over the rounds (schedstat, each round waited out until it settled)",
                us(ns)
            ),
            None => value,
        };
        let ok = added.is_finite() && added > 0.0 && call.is_some_and(|c| c.is_finite());
        rows.push(Row::floor(figure, value, "fired; added cost finite and > 0", ok).smoke());
    }
    let calls_text = calls.map_or("?".into(), |c| format!("{c:.2}"));
    let ratio = |a: &str, b: &str| -> Option<(f64, f64, f64)> {
        let (x, y) = (per_call.get(a)?, per_call.get(b)?);
        Some((*x, *y, x / y))
    };
    for (other, floor) in [
        ("ftrace", true),
        ("bpftrace", true),
        ("empty", false),
        ("bpftrace0", false),
    ] {
        let figure = format!(
            "{LABEL}: tsm-trace's added cost / {}'s ({calls_text} probed calls per pair)",
            describe(other)
        );
        match ratio("tsm-trace", other) {
            Some((x, y, r)) if x.is_finite() && y > 0.0 => {
                let value = format!("{} / {} = ×{r:.2}", us(x), us(y));
                rows.push(if floor {
                    let row = Row::floor(figure, value, &format!("≤ {FLOOR}"), r <= FLOOR);
                    // On the deterministic clock a smoke run's minimum is the full run's
                    // figure (25,784 vs 25,788 instructions per pair for tsm-trace), so
                    // `cargo xtask test` holds the floor too.
                    if DETERMINISTIC.load(std::sync::atomic::Ordering::Relaxed) {
                        row.smoke()
                    } else {
                        row
                    }
                } else {
                    Row::report(figure, value)
                });
            }
            Some((x, y, _)) => rows.push(if floor {
                Row::floor(
                    figure,
                    format!(
                        "{} / {}: the baseline tool added nothing measurable",
                        us(x),
                        us(y)
                    ),
                    &format!("≤ {FLOOR}"),
                    false,
                )
            } else {
                Row::report(figure, format!("{} / {}: no ratio", us(x), us(y)))
            }),
            None => {
                let why = match (fired.get(other), blocks.contains_key(other)) {
                    (Some(Err(e)), _) => e.clone(),
                    (_, false) => format!(
                        "block {other} did not run ({})",
                        env.get("bpftrace").map_or("?", String::as_str)
                    ),
                    _ => "no per-call figure".into(),
                };
                rows.push(Row::missing(figure, why));
            }
        }
    }
    // An ordering that holds at any size: tsm-trace's programs do more than an empty pair.
    if let Some((x, y, _)) = ratio("tsm-trace", "empty") {
        rows.push(
            Row::floor(
                format!("{LABEL}: ordering, tsm-trace costs more than the empty pair"),
                format!("{} vs {} per probed call", us(x), us(y)),
                "tsm-trace > empty",
                x > y,
            )
            .smoke(),
        );
    }
    // The in-kernel path alone against the peers, and the daemon's share of (d): report only,
    // the floors are on (d), the daemon as it runs.
    for other in ["ftrace", "bpftrace"] {
        if let Some((x, y, r)) = ratio("tsm-trace-paused", other) {
            rows.push(Row::report(
                format!(
                    "{LABEL}: (d′) the in-kernel path alone / {}'s",
                    describe(other)
                ),
                format!("{} / {} = ×{r:.2}", us(x), us(y)),
            ));
        }
    }
    if let Some((x, y, _)) = ratio("tsm-trace", "tsm-trace-paused") {
        rows.push(Row::report(
            format!("{LABEL}: the daemon's share of (d): (d) − (d′), on the clock only because the emulator runs every vCPU on one host thread"),
            format!(
                "{} − {} = {} per probed call ({:.0}% of (d))",
                us(x),
                us(y),
                us(x - y),
                100.0 * (x - y) / x
            ),
        ));
    }
    for (name, _) in per_call.iter().filter(|(n, _)| n.starts_with("tsm-trace@")) {
        if let Some((x, y, r)) = ratio(name, "tsm-trace") {
            rows.push(Row::report(
                format!("{LABEL}: {} / the current tree's", describe(name)),
                format!("{} / {} = ×{r:.2}", us(x), us(y)),
            ));
        }
    }
    // Per-program run time of tsm-trace's programs (bpf_stats, the validation round).
    if let Ok(s) = out.section("cost_val_tsm-trace") {
        let v = val(&s.text);
        let list: Vec<String> = v
            .progs
            .iter()
            .map(|(n, c, ns)| format!("{n} {:.0} ns×{}", *ns as f64 / *c as f64, c))
            .collect();
        if !list.is_empty() {
            rows.push(Row::report(
                format!("{LABEL}: tsm-trace's programs, run time per run (bpf_stats, one armed round of {pairs} pairs)"),
                list.join(", "),
            ));
        }
        // Where tsm-trace's added cost goes: its programs' bodies (bpf_stats, which itself
        // adds two clock reads per run) against the whole added wall time of the timed rounds;
        // the rest is the kprobe machinery, ring-buffer wakeups and the daemon's own CPU time
        // (under TCG every vCPU shares one host thread, so the daemon's work is on the clock).
        if let (Some(b), true) = (blocks.get("tsm-trace"), v.armed_ns > 0) {
            let body = v.armed_ns as f64 / pairs as f64;
            let added = b.added_per_pair(pairs);
            if added > 0.0 {
                let daemon = cpu_per_pair("tsm-trace").map_or(String::new(), |ns| {
                    format!(
                        "; beside it, the daemon's own CPU time {} per pair (decoding, correlating; on the clock only where it overlapped a round)",
                        us(ns)
                    )
                });
                rows.push(Row::report(
                    format!("{LABEL}: where tsm-trace's added cost goes, per bind+unbind pair"),
                    format!(
                        "programs' bodies {} ({:.0}%), the rest {} (kprobe machinery, wakeups, the daemon where it overlapped) of {}{daemon}",
                        us(body),
                        100.0 * body / added,
                        us(added - body),
                        us(added)
                    ),
                ));
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_median_and_maximum_per_block() {
        let b = blocks(
            "round block=a r=1 base_ns=100 tool_ns=300\nround block=a r=2 base_ns=120 tool_ns=280\nround block=a r=3 base_ns=110 tool_ns=1000\n",
        );
        let a = &b["a"];
        assert_eq!(a.rounds, 3);
        assert_eq!(
            (a.base.min, a.base.median, a.base.max),
            (100.0, 110.0, 120.0)
        );
        assert_eq!(
            (a.tool.min, a.tool.median, a.tool.max),
            (280.0, 300.0, 1000.0)
        );
        // A round something else landed in (1000) does not move the figure.
        assert_eq!(a.added_per_pair(10), 18.0);
    }

    #[test]
    fn instruction_counts_read_as_numbers() {
        assert_eq!(thousands(5_630.4), "5,630");
        assert_eq!(thousands(7_572_739.0), "7,572,739");
        assert_eq!(thousands(-12.0), "-12");
        assert_eq!(thousands(999.0), "999");
    }

    #[test]
    fn tool_cpu_per_block() {
        let c = tool_cpu(
            "round block=a r=1 base_ns=1 tool_ns=2\ntool_cpu block=a cpu_ns=5000 rounds=1\ntool_cpu block=b cpu_ns=x rounds=1\n",
        );
        assert_eq!(c.get("a"), Some(&5000));
        assert!(!c.contains_key("b"), "unparsable cpu_ns is left out");
    }

    #[test]
    fn ftrace_hits() {
        let t = "pairs=2\nstart e1 0 0\nstart r1 0 0\ndisarmed e1 0 0\ndisarmed r1 0 0\nend e1 40 1\nend r1 40 0\n";
        assert_eq!(hits(t), Some((0, 40, 1)));
        assert_eq!(hits("start e1 0 0\n"), None);
    }

    #[test]
    fn bpf_stats_deltas() {
        let t = "pre id=1 name=a run_time_ns=10 run_cnt=1\nmid id=1 name=a run_time_ns=10 run_cnt=1\npost id=1 name=a run_time_ns=110 run_cnt=5\npre id=2 name=t type=BPF_PROG_TYPE_RAW_TRACEPOINT run_time_ns=0 run_cnt=0\npost id=2 name=t type=BPF_PROG_TYPE_RAW_TRACEPOINT run_time_ns=9 run_cnt=9\n";
        let v = val(t);
        assert_eq!((v.disarmed_runs, v.armed_runs, v.armed_ns), (0, 4, 100));
    }

    #[test]
    fn lost_records_summed() {
        let t = "exit=0\n--- metrics\ntsm_trace_operations_total{op=\"bind\"} 3\ntsm_trace_events_lost_total{reason=\"ringbuf_full\"} 7\ntsm_trace_events_lost_total{reason=\"inflight_full\"} 0\n";
        assert_eq!(lost(t), Some(7));
        assert_eq!(
            lost("exit=0\n--- metrics\n"),
            None,
            "no counter is not zero"
        );
    }
}
