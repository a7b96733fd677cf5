//! The storm suite: `/metrics` stays exact at any event rate (`tests/vm/scenarios/storm.sh`).
//!
//! Ground truth is the stand-in's own tally of each storm (`storm <vdev> <n>`: n bind+unbind
//! pairs in one write, counted by return code) and the script's count of failed writes.
//! Checked per phase, as deltas of the daemon's `/metrics`:
//! - `tsm_trace_operations_total` equals the fixture's counts (binds and unbinds, ok and
//!   failed), whatever the ring buffer dropped;
//! - every frame histogram grows by n times what one pair of the calibration phase added;
//! - per-event detail: events correlated + events counted lost = n times the events of one
//!   calibration pair (nothing lost without a count).
//!
//! The rate of each storm and the detail it lost are printed.
//!
//! `trace` under loss (`trace_under_loss`): two `tsm-trace trace` sessions (text and
//! `--json`) with a one-page ring buffer during a 1000-pair storm. The summary's total must
//! be the fixture's count (the kernel's exact counts, not the lines shown); the `LOST`
//! records must add up, by reason, to the kernel's loss counters the session printed last;
//! events in the operations shown + events in the `LOST` records = the events of n pairs
//! (calibration); each record is timed by an event handled before it; every JSON line
//! parses.
//!
//! Memory: the daemon's peak RSS (VmHWM, the bench's 4b measure) stays within
//! [`PEAK_RSS_KIB`], read once it is attached and idle and again after every storm (its
//! start-up peak is BTF: ours and aya's, see `tsm-trace/src/probes/loader.rs`).

use std::collections::BTreeMap;

use anyhow::Result;

use crate::vm::checks::{Checks, json_lines, parse_exposition};
use crate::vm::kv::parse_kv;
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/storm.sh";

/// The daemon's peak RSS budget (issue 14): 16 MiB.
const PEAK_RSS_KIB: f64 = 16.0 * 1024.0;

const PHASES: [&str; 4] = ["calib", "s1000", "s5000", "s20000"];

type Exposition = BTreeMap<String, f64>;

fn sum(m: &Exposition, prefix: &str, want: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && want.iter().all(|w| k.contains(w)))
        .map(|(_, v)| v)
        .sum()
}

/// Every series of `names` whose value changed from `a` to `b`, as deltas.
fn deltas(a: &Exposition, b: &Exposition, names: &[&str]) -> BTreeMap<String, f64> {
    b.iter()
        .filter(|(k, _)| names.iter().any(|n| k.starts_with(n)))
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// A number of the fixture's record; NaN (never equal to anything) if absent.
fn num(kv: &BTreeMap<String, String>, k: &str) -> f64 {
    kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

const OPS: &str = "tsm_trace_operations_total{";
const HIST: &str = "tsm_trace_operation_duration_seconds_count{";
const PROCESSED: &str = "tsm_trace_events_processed_total{";
const LOST: &str = "tsm_trace_events_lost_total{";
const EXPIRED: &str = "tsm_trace_inflight_expired_total{";
const UNCOUNTED: &str = "tsm_trace_operations_uncounted_total{";
const KMISSES: &str = "tsm_trace_kernel_misses_total{";

pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let truth = &out.section("storm_truth")?.text;
    let line = |name: &str| {
        truth
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(parse_kv)
            .unwrap_or_default()
    };
    let metrics = |phase: &str| -> Result<Exposition> {
        Ok(parse_exposition(
            &out.section(&format!("storm_metrics_{phase}"))?.text,
        ))
    };
    let mut prev = metrics("start")?;
    // What one pair adds, from the calibration phase (no loss at 10 pairs).
    let mut per_pair_hist: BTreeMap<String, f64> = BTreeMap::new();
    let mut per_pair_events = 0.0;
    for phase in PHASES {
        let kv = line(phase);
        c.eq(
            kv.get("rc").cloned(),
            Some("0".to_string()),
            &format!("{phase}: the stand-in ran the storm (an old tsm_standin.ko has no `storm`)"),
        );
        let cur = metrics(phase)?;
        let n = num(&kv, "n");
        let d = |prefix: &str, want: &[&str]| sum(&cur, prefix, want) - sum(&prev, prefix, want);
        for (op, ok_key, err_key) in [
            ("bind", "bind_ok", "bind_err"),
            ("unbind", "unbind_ok", "unbind_err"),
        ] {
            let o = format!("op=\"{op}\"");
            c.eq(
                d(OPS, &[&o, "result=\"ok\""]),
                num(&kv, ok_key),
                &format!("{phase}: {op} ok = the fixture's {ok_key}"),
            );
            c.eq(
                d(OPS, &[&o, "result=\"error\""]),
                num(&kv, err_key),
                &format!("{phase}: {op} failed = the fixture's {err_key}"),
            );
        }
        let hist = deltas(&prev, &cur, &[HIST]);
        let events = d(PROCESSED, &[]);
        let lost = d(LOST, &["reason=\"ringbuf_full\""]);
        if phase == "calib" {
            c.eq(lost, 0.0, "calib: no detail lost at 10 pairs");
            per_pair_hist = hist.iter().map(|(k, v)| (k.clone(), v / n)).collect();
            per_pair_events = events / n;
            c.check(!per_pair_hist.is_empty() && per_pair_events >= 4.0, || {
                format!("calib: no frames counted: {hist:?}, {events} events")
            });
        } else {
            let want: BTreeMap<String, f64> = per_pair_hist
                .iter()
                .map(|(k, v)| (k.clone(), v * n))
                .collect();
            c.eq(
                hist,
                want,
                &format!("{phase}: frame histograms = n x one pair's"),
            );
            c.eq(
                events + lost,
                per_pair_events * n,
                &format!("{phase}: events correlated + counted lost = generated"),
            );
            let secs = num(&kv, "duration_ns") / 1e9;
            println!(
                "storm {phase}: {n} pairs ({} operations) in {secs:.2}s = {:.0} operations/s; detail lost {lost} of {} events ({:.1}%); /metrics exact",
                2.0 * n,
                2.0 * n / secs,
                per_pair_events * n,
                100.0 * lost / (per_pair_events * n)
            );
        }
        c.eq(
            d(LOST, &["reason=\"aggregation_full\""]),
            0.0,
            &format!("{phase}: aggregation tables never full"),
        );
        prev = cur;
    }
    // The userspace loop of failing ioctls.
    let kv = line("fail_loop");
    let cur = metrics("fail")?;
    let failed = num(&kv, "failed");
    c.check(failed > 0.0, || {
        format!("fail_loop: no write failed: {kv:?}")
    });
    c.eq(
        sum(&cur, OPS, &["op=\"bind\"", "result=\"error\""])
            - sum(&prev, OPS, &["op=\"bind\"", "result=\"error\""]),
        failed,
        "fail_loop: failed binds = the writes that failed",
    );
    parallel(
        &mut c,
        &out.kernel_version,
        &line("parallel"),
        &cur,
        &metrics("parallel")?,
    );
    trace_under_loss(&mut c, out, &line("trace"), per_pair_events)?;
    let err = &out.section("storm_d.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("storm_d.err: no clean exit:\n{err}")
    });
    // A ring buffer that overflowed is said in the daemon's log too (no --print here).
    let last = crate::vm::checks::parse_exposition(&out.section("storm_metrics_parallel")?.text);
    let full = last
        .get("tsm_trace_events_lost_total{reason=\"ringbuf_full\"}")
        .copied()
        .unwrap_or(0.0);
    if full > 0.0 {
        c.check(
            err.contains("events lost") && err.contains("ringbuf_full"),
            || {
                format!(
                    "{full} events lost to a full ring buffer, and the log says nothing:\n{err}"
                )
            },
        );
    }
    memory(&mut c, &out.section("storm_memory")?.text);
    c.finish("storm", out)
}

/// 64 calls of the driver's bind op in flight at once, from threads that exit afterwards: the
/// kretprobe misses returns (maxactive), and each one must be accounted for. Truth: the
/// fixture's count of calls made and returned.
fn parallel(
    c: &mut Checks,
    kernel: &str,
    kv: &BTreeMap<String, String>,
    before: &Exposition,
    after: &Exposition,
) {
    let num = |k: &str| num(kv, k);
    let n = num("n");
    c.eq(
        kv.get("rc").cloned(),
        Some("0".to_string()),
        "parallel: the stand-in ran it (an old tsm_standin.ko has no `parallel`)",
    );
    c.eq(num("started"), n, "parallel: every thread started");
    c.eq(
        num("returned"),
        n,
        "parallel: every call returned (fixture)",
    );
    let d = |prefix: &str, want: &[&str]| sum(after, prefix, want) - sum(before, prefix, want);
    let seen = d(PROCESSED, &["probe=\"driver_bind\""]);
    let expired = d(
        EXPIRED,
        &["probe=\"driver_bind\"", "reason=\"thread_exited\""],
    );
    c.check(expired > 0.0, || {
        format!("parallel: no return was missed ({seen} seen of {n}): the test proves nothing")
    });
    c.eq(
        seen + expired,
        n,
        "parallel: returns seen + entries expired (thread_exited) = calls made",
    );
    c.eq(
        d(OPS, &["op=\"bind\""]) + d(UNCOUNTED, &[]),
        n,
        "parallel: operations counted + uncounted = calls made",
    );
    c.eq(
        d(LOST, &["reason=\"ringbuf_full\""]),
        0.0,
        "parallel: nothing dropped by the ring buffer (64 records)",
    );
    let reported = after.get("tsm_trace_kprobe_misses_reported").copied();
    // The kernel fills kprobe miss counts into perf-link info since 6.7 (commit "bpf: Add
    // missed value to kprobe perf link info"): whether it must be reported is the kernel's
    // fact, not tsm-trace's.
    let must_report = kernel_at_least(kernel, (6, 7));
    c.eq(
        reported,
        Some(if must_report { 1.0 } else { 0.0 }),
        &format!("parallel: tsm_trace_kprobe_misses_reported on {kernel}"),
    );
    let kmissed = d(
        KMISSES,
        &[
            "probe=\"driver_bind\"",
            "kind=\"kretprobe\"",
            "reason=\"kprobe\"",
        ],
    );
    match reported {
        Some(1.0) => c.eq(
            kmissed,
            expired,
            "parallel: the kernel's kretprobe miss count = the entries that expired",
        ),
        Some(0.0) => c.eq(
            kmissed,
            0.0,
            "parallel: no kprobe count where the kernel reports none",
        ),
        other => c.check(false, || {
            format!("parallel: tsm_trace_kprobe_misses_reported is {other:?}, want 0 or 1")
        }),
    }
    println!(
        "parallel: {n} concurrent driver binds: {seen} returns seen, {expired} missed and expired; kernel kprobe misses {} ({})",
        kmissed,
        if reported == Some(1.0) {
            "reported"
        } else {
            "not reported by this kernel"
        }
    );
}

/// The numbers of `trace`'s last stderr line `lost events: A (ring buffer full), B (in-flight
/// table full), C returns without entry, D returns never seen; …`, by `reason` label.
fn kernel_lost(err: &str) -> BTreeMap<&'static str, f64> {
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("lost events: "))
        .unwrap_or("");
    let nums: Vec<f64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .filter_map(|t| t.parse().ok())
        .collect();
    [
        "ringbuf_full",
        "inflight_full",
        "orphan_return",
        "return_missed",
    ]
    .into_iter()
    .zip(nums)
    .collect()
}

/// The calls the kernel says never reached our programs: the sum of `trace`'s stderr line
/// `kernel misses: K (kprobe…), R (BPF recursion)`. A recursion miss happens when one of our
/// programs fires on a CPU where BPF is marked busy, e.g. while a thread that reads a per-CPU
/// map through bpf(2) is preempted there (the syscall disables BPF on its CPU and can be
/// preempted): rare, never zero for sure, and every one is counted.
fn kernel_misses(err: &str) -> f64 {
    err.lines()
        .find_map(|l| l.strip_prefix("kernel misses: "))
        .map(|l| {
            // The numbers before `(kprobe` and `(BPF recursion)`; the kprobe remark may hold
            // version numbers, so take the first number of each part.
            l.split("), ")
                .filter_map(|part| {
                    part.split(|c: char| !c.is_ascii_digit())
                        .find(|t| !t.is_empty())
                        .and_then(|t| t.parse::<f64>().ok())
                })
                .sum()
        })
        .unwrap_or(f64::NAN)
}

/// The returns the kernel says never reached our programs: the kretprobe parts of `trace`'s
/// stderr line `kernel misses by program: NAME kretprobe: K kprobe, R BPF recursion; …`
/// (NaN without that line).
fn return_misses(err: &str) -> f64 {
    let Some(line) = err
        .lines()
        .find_map(|l| l.strip_prefix("kernel misses by program: "))
    else {
        return f64::NAN;
    };
    line.split("; ")
        .filter_map(|p| p.split_once(" kretprobe: ").map(|(_, n)| n))
        .flat_map(|n| n.split(", "))
        .filter_map(|part| {
            part.split(|c: char| !c.is_ascii_digit())
                .find(|t| !t.is_empty())
                .and_then(|t| t.parse::<f64>().ok())
        })
        .sum()
}

/// The `reason` label of a text LOST line, from what it says in parentheses.
fn text_lost_reason(line: &str) -> &'static str {
    [
        ("(ring buffer full;", "ringbuf_full"),
        ("(in-flight table full", "inflight_full"),
        ("(returns without their entry)", "orphan_return"),
        ("(entries replaced before their return", "return_missed"),
    ]
    .into_iter()
    .find(|(says, _)| line.contains(says))
    .map_or("other", |(_, reason)| reason)
}

/// `A of B operations shown` from the summary's first line: (A, B).
fn shown_of(err: &str) -> Option<(f64, f64)> {
    let rest = err
        .lines()
        .find_map(|l| l.strip_prefix("=== tsm-trace summary: "))?;
    let mut t = rest.split(' ');
    let a = t.next()?.parse().ok()?;
    (t.next()? == "of").then_some(())?;
    let b = t.next()?.parse().ok()?;
    (t.next()? == "operations").then_some((a, b))
}

/// See the module doc: `trace` (text and `--json`) during a storm into a one-page ring buffer.
fn trace_under_loss(
    c: &mut Checks,
    out: &VmOutput,
    kv: &BTreeMap<String, String>,
    per_pair_events: f64,
) -> Result<()> {
    c.eq(
        kv.get("rc").cloned(),
        Some("0".to_string()),
        "trace: the stand-in ran the storm",
    );
    let n = num(kv, "n");
    let total: f64 = ["bind_ok", "bind_err", "unbind_ok", "unbind_err"]
        .iter()
        .map(|k| num(kv, k))
        .sum();
    for f in ["json", "text"] {
        let err = &out.section(&format!("storm_trace_{f}.err"))?.text;
        let stream = &out.section(&format!("storm_trace_{f}"))?.text;
        c.check(err.lines().any(|l| l == "exit=0"), || {
            format!("trace {f}: no clean exit:\n{err}")
        });
        let kernel = kernel_lost(err);
        let misses = kernel_misses(err);
        c.check(misses >= 0.0, || {
            format!("trace {f}: no `kernel misses:` line on stderr:\n{err}")
        });
        let drops = kernel.get("ringbuf_full").copied().unwrap_or(f64::NAN);
        c.check(drops > 0.0, || {
            format!("trace {f}: nothing dropped by a one-page ring buffer: the test proves nothing\n{err}")
        });
        // (operations shown, frames in them, LOST counts by reason)
        let mut ops = 0.0;
        let mut frames = 0.0;
        let mut lost: BTreeMap<String, f64> = BTreeMap::new();
        if f == "json" {
            let lines = json_lines(out, "storm_trace_json", false);
            c.check(lines.is_ok(), || {
                format!(
                    "trace json: a line does not parse: {:?}",
                    lines.as_ref().err()
                )
            });
            let lines = lines.unwrap_or_default();
            let last_end = lines
                .iter()
                .filter_map(|l| l["end_ns"].as_u64())
                .max()
                .unwrap_or(0);
            // The latest return among the operations written so far.
            let mut seen_end = 0;
            let mut prev_t = 0;
            for l in &lines {
                match l["type"].as_str() {
                    Some("operation") => {
                        ops += 1.0;
                        frames += l["frames"].as_array().map_or(0, |a| a.len()) as f64;
                        seen_end = seen_end.max(l["end_ns"].as_u64().unwrap_or(0));
                    }
                    Some("lost") => {
                        let count = l["count"].as_f64().unwrap_or(0.0);
                        c.check(count > 0.0 && l["time"].is_string(), || {
                            format!("trace json: a lost record without count or time: {l}")
                        });
                        let t = l["time_ns"].as_u64().unwrap_or(0);
                        // Timed by an event handled before it: not before the returns of
                        // the operations written before it, not after the last event (the
                        // reader's clock would be).
                        c.check(t >= seen_end && t >= prev_t && t <= last_end, || {
                            format!(
                                "trace json: lost record at {t} ns: before an earlier operation's return ({seen_end}), an earlier record ({prev_t}) or after the last event ({last_end}): {l}"
                            )
                        });
                        prev_t = t;
                        *lost
                            .entry(l["reason"].as_str().unwrap_or("?").to_string())
                            .or_default() += count;
                    }
                    _ => {}
                }
            }
            // Each event is shown in an operation, counted in a LOST record, or never
            // produced because the kernel did not run our program for its return (a return
            // miss; the entry's too, or not). An entry missed alone still shows the call (a
            // record marked entry-missing), unless the same thread's previous call of that
            // function returned on that CPU just before (taken for a handover between two
            // daemons). So: return misses <= unaccounted <= all misses.
            let unaccounted =
                per_pair_events * n - frames - lost.get("ringbuf_full").copied().unwrap_or(0.0);
            let returns_missed = return_misses(err);
            if misses == 0.0 {
                c.eq(
                    unaccounted,
                    0.0,
                    "trace json: events in the operations shown + events in LOST records = the events of n pairs",
                );
            } else {
                c.check(
                    unaccounted >= returns_missed && unaccounted <= misses,
                    || {
                        format!(
                            "trace json: {unaccounted} events neither shown nor in LOST records; the kernel missed {returns_missed} returns and {misses} calls in all, which bound that many events from below and above"
                        )
                    },
                );
            }
        } else {
            for l in stream.lines() {
                let t: Vec<&str> = l.split_whitespace().collect();
                match t.iter().position(|w| *w == "LOST") {
                    Some(i) if i <= 1 => {
                        let count: f64 = t.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                        let reason = text_lost_reason(l);
                        c.check(count > 0.0 && i == 1, || {
                            format!("trace text: a LOST line without count or time: {l}")
                        });
                        *lost.entry(reason.to_string()).or_default() += count;
                    }
                    _ => {
                        if matches!(t.get(1), Some(&"bind") | Some(&"unbind")) {
                            ops += 1.0;
                        }
                    }
                }
            }
        }
        // Nothing lost silently: the records add up to the kernel's counters, by reason.
        for (reason, k) in &kernel {
            c.eq(
                lost.get(*reason).copied().unwrap_or(0.0),
                *k,
                &format!("trace {f}: LOST records ({reason}) = the kernel's count"),
            );
        }
        let headline = shown_of(err);
        if misses == 0.0 {
            c.eq(
                headline,
                Some((ops, total)),
                &format!("trace {f}: summary `<shown> of <the fixture's count> operations shown`"),
            );
        } else {
            // An operation whose outer return a kernel miss hid is in no count; each such
            // operation takes at least one miss.
            c.check(
                headline.is_some_and(|(a, b)| a == ops && b <= total && total - b <= misses),
                || {
                    format!(
                        "trace {f}: summary {headline:?}: want ({ops}, at most {total} and at least {total} - {misses} kernel misses)"
                    )
                },
            );
        }
        c.check(ops < total, || {
            format!("trace {f}: every operation shown despite {drops} drops")
        });
        println!(
            "trace {f}: {n} pairs: {ops} of {total} operations shown (fixture {total}); LOST records {lost:?} = kernel {kernel:?}; kernel misses {misses}{}",
            if f == "json" {
                format!(
                    "; events: {frames} in operations + {} lost = {} generated",
                    lost.get("ringbuf_full").copied().unwrap_or(0.0),
                    per_pair_events * n
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// VmHWM at both points within [`PEAK_RSS_KIB`]; printed.
fn memory(c: &mut Checks, text: &str) {
    for when in ["attached", "end"] {
        let kv = text
            .lines()
            .find(|l| l.starts_with(&format!("{when} ")))
            .map(parse_kv)
            .unwrap_or_default();
        let (hwm, rss) = (num(&kv, "VmHWM"), num(&kv, "VmRSS"));
        c.check(hwm <= PEAK_RSS_KIB, || {
            format!(
                "memory {when}: the daemon's peak RSS (VmHWM) is {hwm} KiB, above {PEAK_RSS_KIB} KiB (16 MiB); `tsm-trace run --log-level debug` logs the peak after each start-up phase (storm_memory: {text:?})"
            )
        });
        println!(
            "memory {when}: daemon peak RSS (VmHWM) {:.1} MiB, RSS {:.1} MiB (budget 16 MiB)",
            hwm / 1024.0,
            rss / 1024.0
        );
    }
}

/// Whether a release such as `7.3.4+deb13-amd64` is at least `want` (major, minor).
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut it = release
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= want
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_misses_and_text_lost_reasons_parse() {
        let err = "x\nkernel misses: 3 (kprobe), 233 (BPF recursion)\n";
        assert_eq!(super::kernel_misses(err), 236.0);
        let err = "kernel misses: 0 (kprobe: not reported, needs 6.7+), 5 (BPF recursion)";
        assert_eq!(super::kernel_misses(err), 5.0);
        assert!(super::kernel_misses("nothing").is_nan());
        let err = "kernel misses by program: tsm_bind kprobe: 0 kprobe, 27 BPF recursion; tsm_bind kretprobe: 1 kprobe, 26 BPF recursion; driver_unbind kretprobe: 0 kprobe (not reported), 5 BPF recursion\n";
        assert_eq!(super::return_misses(err), 32.0);
        assert!(super::return_misses("kernel misses: 3 (kprobe)").is_nan());
        assert_eq!(
            super::text_lost_reason(
                "12:00:00.000001 LOST     1 event (returns without their entry)"
            ),
            "orphan_return"
        );
        assert_eq!(
            super::text_lost_reason(
                "12:00:00.000001 LOST     9 events (ring buffer full; raise --ringbuf-size)"
            ),
            "ringbuf_full"
        );
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(super::kernel_at_least("7.3.4+deb13-amd64", (6, 7)));
        assert!(super::kernel_at_least("6.12.41+deb13-amd64", (6, 7)));
        assert!(!super::kernel_at_least("6.1.0-40-amd64", (6, 7)));
    }
}
