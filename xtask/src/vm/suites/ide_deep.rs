//! The ide suite's deep phase (`ide.sh`, `deep()`): a `tsm-trace trace --json --deep
//! 'tsm_linktsm:lt_spdm_*'` session over four connects of the endpoint, each with a failure
//! injected at another depth of the fixture's SPDM helpers (`tests/vm/linktsm/linktsm_spdm.c`:
//! session 1, exchange 2, recv 3, verify 4; `lt_spdm_notrace` is not attachable). Each
//! connect's `calls` and failure `origin` are compared with the fixture's own events of that
//! step (`deep_events`: one per helper call, logged at its return, with its depth and the
//! kernel's `%pe` name of its result), and the session's stderr with the kernel's view of
//! the functions the glob matches (`deep_syms`: kallsyms and available_filter_functions):
//! never with a list shared with tsm-trace.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::Value;

use crate::vm::checks::{Checks, json_lines, s};
use crate::vm::kv::{parse_kv, pe_name};
use crate::vm::qemu::VmOutput;

/// The link op the session probes as the driver's connect (`$LDRV`): the depth-1 helper's
/// caller, so the last of an origin's callers.
const DRIVER_CONNECT: &str = "linktsm_connect";
/// The script's second `--deep`, which matches nothing.
const NO_MATCH: &str = "tsm_linktsm:lt_nothing_matches_*";
/// What `--deep-known` asks for on a kernel with the drivers tsm-trace knows (the scenario
/// passes it; the compatibility table, tsm-trace's targets.rs, names the same globs).
const KNOWN: [&str; 2] = ["ccp:sev_tio_*", "*:tdx_spdm_*"];

type Kv = BTreeMap<String, String>;

fn t(kv: &Kv, k: &str) -> String {
    kv.get(k).cloned().unwrap_or_default()
}

/// What a deep call must be, the fixture's and tsm-trace's alike (`errno` "" = none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    function: String,
    module: String,
    depth: u64,
    ret: Option<i64>,
    errno: String,
}

/// One step of the script: the fixture's events of its connect.
#[derive(Default)]
struct Step {
    name: String,
    /// The link op's own `op=connect` event.
    connect: Kv,
    /// The SPDM helpers' events, in log (return) order.
    helpers: Vec<Kv>,
}

/// `deep_events` (`step=<x> <event>`) by step, in the script's order.
fn steps(events: &str) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for kv in events.lines().map(parse_kv) {
        let Some(name) = kv.get("step").cloned() else {
            continue;
        };
        if out.last().is_none_or(|st| st.name != name) {
            out.push(Step {
                name,
                ..Step::default()
            });
        }
        let st = out.last_mut().expect("pushed above");
        match kv.get("op").map(String::as_str) {
            Some(op) if op.starts_with("spdm_") => st.helpers.push(kv),
            Some("connect") => st.connect = kv,
            _ => {}
        }
    }
    out
}

/// `deep_syms`: each `lt_spdm_` function in kallsyms → (its module, whether ftrace lists it).
fn syms(text: &str) -> BTreeMap<String, (String, bool)> {
    text.lines()
        .map(parse_kv)
        .filter(|kv| kv.contains_key("sym"))
        .map(|kv| (t(&kv, "sym"), (t(&kv, "module"), t(&kv, "ftrace") == "1")))
        .collect()
}

/// A helper event as the call tsm-trace must report: function `lt_<op>`, the module kallsyms
/// names, the event's depth, its return value and `%pe` name.
fn fixture_call(ev: &Kv, syms: &BTreeMap<String, (String, bool)>) -> Call {
    let function = format!("lt_{}", t(ev, "op"));
    Call {
        module: syms.get(&function).map(|m| m.0.clone()).unwrap_or_default(),
        depth: t(ev, "depth").parse().unwrap_or(0),
        ret: t(ev, "rc").parse().ok(),
        errno: pe_name(&t(ev, "err")),
        function,
    }
}

/// Where the step's failure started (the deepest helper that failed) and its callers,
/// innermost first, down to the link op.
fn fixture_origin(helpers: &[Call]) -> Option<(Call, Vec<String>)> {
    let mut failed: Vec<&Call> = helpers.iter().filter(|c| !c.errno.is_empty()).collect();
    failed.sort_by_key(|c| std::cmp::Reverse(c.depth));
    let (origin, callers) = failed.split_first()?;
    let mut chain: Vec<String> = callers.iter().map(|c| c.function.clone()).collect();
    chain.push(DRIVER_CONNECT.to_string());
    Some(((*origin).clone(), chain))
}

/// One entry of `calls` with its times.
struct Reported {
    call: Call,
    start: u64,
    end: u64,
    duration: u64,
}

fn reported(op: &Value) -> Vec<Reported> {
    op["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| Reported {
            call: Call {
                function: s(v, "function"),
                module: s(v, "module"),
                depth: v["depth"].as_u64().unwrap_or(0),
                ret: v["ret"].as_i64(),
                errno: s(v, "errno"),
            },
            start: v["start_ns"].as_u64().unwrap_or(0),
            end: v["end_ns"].as_u64().unwrap_or(0),
            duration: v["duration_ns"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// A stack entry's function: `lt_spdm_recv+0x1e` → `lt_spdm_recv`; None unless it is
/// `name` or `name+0x<hex>` (never an address).
fn frame_name(e: &str) -> Option<&str> {
    let (name, off) = e.split_once('+').unwrap_or((e, ""));
    let name_ok = !name.is_empty()
        && !name.starts_with("0x")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    let off_ok = off.is_empty()
        || off
            .strip_prefix("0x")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
    (name_ok && off_ok).then_some(name)
}

/// What the session's stderr says about the deep globs.
#[derive(Debug, Default, PartialEq)]
struct DeepErr {
    /// `deep: NOT ATTACHED <function> [<module>]: <reason>` → (module, reason).
    not_attached: BTreeMap<String, (String, String)>,
    /// `deep: attached N functions: f [m], ...`: N, and the names listed.
    attached: Option<usize>,
    attached_names: Vec<String>,
    /// `deep: N calls recorded, ...` (the summary).
    recorded: Option<usize>,
    /// `... entry program ran N times, ...` (the summary's cost line).
    entry_runs: Option<usize>,
    /// The spec after `deep: no function matches ` (a reason may follow it).
    no_match: Vec<String>,
}

fn deep_err(text: &str) -> DeepErr {
    let mut d = DeepErr::default();
    for line in text.lines() {
        let Some(i) = line.find("deep: ") else {
            continue;
        };
        let rest = &line[i + "deep: ".len()..];
        if let Some(r) = rest.strip_prefix("NOT ATTACHED ") {
            let (head, reason) = r.split_once(": ").unwrap_or((r, ""));
            let (function, module) = head.split_once(" [").unwrap_or((head, ""));
            d.not_attached.insert(
                function.to_string(),
                (module.trim_end_matches(']').to_string(), reason.to_string()),
            );
        } else if let Some(r) = rest.strip_prefix("attached ") {
            d.attached = r.split_whitespace().next().and_then(|n| n.parse().ok());
            if let Some((_, list)) = r.split_once(": ") {
                d.attached_names = list
                    .split(", ")
                    .filter_map(|f| f.split_whitespace().next())
                    .map(str::to_string)
                    .collect();
            }
        } else if let Some((n, _)) = rest.split_once(" calls recorded") {
            d.recorded = n.trim().parse().ok();
        } else if let Some((_, r)) = rest.split_once("entry program ran ") {
            d.entry_runs = r.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(r) = rest.strip_prefix("no function matches ") {
            d.no_match
                .extend(r.split_whitespace().next().map(str::to_string));
        }
    }
    d
}

pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let trace = json_lines(out, "deep_trace.jsonl", false)?;
    check_deep(
        &mut c,
        &out.section("deep_events")?.text,
        &out.section("deep_syms")?.text,
        &trace,
        &out.section("deep_trace.err")?.text,
    );
    // The entry program ran on every call of an attached function, the chain run outside
    // a TSM operation included (what the cost line prices), and recorded only those inside.
    let outside: Option<usize> = parse_kv(&out.section("deep_outside")?.text)
        .get("calls")
        .and_then(|n| n.parse().ok());
    let d = deep_err(&out.section("deep_trace.err")?.text);
    c.eq(
        d.entry_runs,
        d.recorded.zip(outside).map(|(r, o)| r + o),
        "deep: entry program runs (BPF stats) = calls recorded + the fixture's calls outside TSM operations",
    );
    let replay = json_lines(out, "deep_replay.jsonl", false)?;
    check_replay(
        &mut c,
        &trace,
        &replay,
        &out.section("deep_replay.err")?.text,
    );
    c.finish("ide (deep)", out)
}

fn check_deep(c: &mut Checks, events: &str, syms_text: &str, trace: &[Value], err: &str) {
    let syms = syms(syms_text);
    check_err(c, &syms, err);
    let steps = steps(events);
    c.check(!steps.is_empty(), || "deep_events: no step".into());
    let dev = steps
        .first()
        .map(|st| t(&st.connect, "dev"))
        .unwrap_or_default();
    let ops: Vec<&Value> = trace
        .iter()
        .filter(|v| s(v, "type") == "operation" && s(v, "kind") == "connect")
        .filter(|v| s(v, "device") == dev)
        .collect();
    c.eq(
        ops.len(),
        steps.len(),
        &format!("deep: connect operations on {dev} (one per step)"),
    );
    for (st, op) in steps.iter().zip(ops) {
        check_step(c, st, op, &syms);
    }
    // Every helper call of steps a..d was recorded, and none of the chain run outside a TSM
    // operation afterwards (the gate): the session's count is exactly the steps' calls.
    let in_ops: usize = steps.iter().map(|st| st.helpers.len()).sum();
    c.eq(
        deep_err(err).recorded,
        Some(in_ops),
        "deep: calls recorded (summary) = the fixture's helper calls inside connects",
    );
}

/// `replay --json` of the session's capture: the same operations with the same calls and
/// origins (the capture keeps each call by name).
fn check_replay(c: &mut Checks, live: &[Value], replay: &[Value], err: &str) {
    c.check(err.contains("exit=0"), || {
        format!("deep: tsm-trace replay of the capture did not exit 0:\n{err}")
    });
    let deep = |v: &[Value]| -> Vec<(String, Value, Value)> {
        v.iter()
            .filter(|o| s(o, "type") == "operation" && o.get("calls").is_some())
            .map(|o| {
                (
                    s(o, "kind").to_string(),
                    o["calls"].clone(),
                    o.get("origin").cloned().unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    let (l, r) = (deep(live), deep(replay));
    c.check(!l.is_empty(), || {
        "deep: no operation with calls in the live session".into()
    });
    c.eq(
        r,
        l,
        "deep: replay of the capture: operations with calls (kind, calls, origin)",
    );
}

/// The session's report of what it attached, against kallsyms and ftrace's list.
fn check_err(c: &mut Checks, syms: &BTreeMap<String, (String, bool)>, err: &str) {
    c.check(err.contains("exit=0"), || {
        format!("deep: tsm-trace trace did not exit 0:\n{err}")
    });
    c.check(!syms.is_empty(), || {
        "deep_syms: no lt_spdm_ function in kallsyms".into()
    });
    let d = deep_err(err);
    let untraceable: Vec<&String> = syms.iter().filter(|(_, m)| !m.1).map(|(f, _)| f).collect();
    c.eq(
        d.not_attached.keys().collect::<Vec<_>>(),
        untraceable.clone(),
        "deep: NOT ATTACHED functions = the matches ftrace does not list",
    );
    for f in untraceable {
        let (module, reason) = d.not_attached.get(f).cloned().unwrap_or_default();
        c.eq(
            module,
            syms[f].0.clone(),
            &format!("deep: NOT ATTACHED {f}: module"),
        );
        // The fixture's only such function is notrace (linktsm_spdm.c).
        c.check(reason.to_lowercase().contains("notrace"), || {
            format!("deep: NOT ATTACHED {f}: reason {reason:?} does not say notrace")
        });
    }
    let traceable: Vec<&String> = syms.iter().filter(|(_, m)| m.1).map(|(f, _)| f).collect();
    let mut ours: Vec<&String> = d
        .attached_names
        .iter()
        .filter(|f| syms.contains_key(*f))
        .collect();
    ours.sort();
    c.eq(
        ours,
        traceable,
        "deep: the lt_spdm_ functions attached = the matches ftrace lists",
    );
    c.eq(
        d.attached,
        Some(d.attached_names.len()),
        "deep: attached N functions (N = the functions listed)",
    );
    // --deep-known: each spec of the compatibility table is reported, attached or not.
    for spec in KNOWN {
        let (module, glob) = spec.split_once(':').expect("MODULE:GLOB");
        let prefix = glob.trim_end_matches('*');
        let reported = d.no_match.iter().any(|g| g == spec)
            || d.attached_names.iter().any(|f| f.starts_with(prefix))
            || d.not_attached
                .iter()
                .any(|(f, (m, _))| f.starts_with(prefix) && (module == "*" || m == module));
        c.check(reported, || {
            format!("deep: --deep-known spec {spec} is neither attached nor reported in:\n{err}")
        });
    }
    c.check(d.no_match.iter().any(|g| g == NO_MATCH), || {
        format!("deep: no line `deep: no function matches {NO_MATCH}` in:\n{err}")
    });
}

fn check_step(c: &mut Checks, st: &Step, op: &Value, syms: &BTreeMap<String, (String, bool)>) {
    let what = |k: &str| format!("deep step {}: {k}", st.name);
    c.eq(
        s(op, "errno"),
        pe_name(&t(&st.connect, "err")),
        &what("connect errno"),
    );
    let want: Vec<Call> = st.helpers.iter().map(|e| fixture_call(e, syms)).collect();
    let calls = reported(op);
    let mut got: Vec<Call> = calls.iter().map(|r| r.call.clone()).collect();
    let mut want_sorted = want.clone();
    got.sort();
    want_sorted.sort();
    c.eq(got, want_sorted, &what("calls (as a multiset)"));
    c.check(calls.windows(2).all(|w| w[0].start <= w[1].start), || {
        what("calls not in order of start_ns")
    });

    // Times: each call inside the connect's driver frame, each deeper one inside a call one
    // level up (the fixture's own ns covers a wider window: not comparable).
    let frame = op["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| s(f, "probe") == "driver_connect");
    c.check(frame.is_some(), || what("no driver_connect frame"));
    let span = |f: &Value| {
        (
            f["start_ns"].as_u64().unwrap_or(0),
            f["end_ns"].as_u64().unwrap_or(0),
            f["duration_ns"].as_u64().unwrap_or(0),
        )
    };
    let (f_start, f_end, f_dur) = frame.map(span).unwrap_or_default();
    for (i, r) in calls.iter().enumerate() {
        let w = what(&format!(
            "call #{i} {} (depth {})",
            r.call.function, r.call.depth
        ));
        c.check(r.duration > 0, || format!("{w}: duration_ns 0"));
        c.eq(
            r.end.checked_sub(r.start),
            Some(r.duration),
            &format!("{w}: end_ns - start_ns = duration_ns"),
        );
        c.check(r.duration <= f_dur, || {
            format!(
                "{w}: duration_ns {} > the connect frame's {f_dur}",
                r.duration
            )
        });
        let inside = |a: u64, b: u64| a <= r.start && r.end <= b;
        let parent_ok = if r.call.depth <= 1 {
            inside(f_start, f_end)
        } else {
            calls
                .iter()
                .any(|p| p.call.depth + 1 == r.call.depth && inside(p.start, p.end))
        };
        c.check(parent_ok, || {
            format!(
                "{w}: [{}, {}] not inside a call of depth {} (or the connect frame for depth 1)",
                r.start,
                r.end,
                r.call.depth.saturating_sub(1)
            )
        });
    }

    // The origin: the deepest helper that failed, its callers on its stack in order.
    let origin = &op["origin"];
    let Some((want_o, chain)) = fixture_origin(&want) else {
        c.check(origin.is_null(), || {
            format!("{}: {origin} on a connect no helper failed", what("origin"))
        });
        return;
    };
    c.check(origin.is_object(), || {
        format!("{}: none, want {}", what("origin"), want_o.function)
    });
    c.eq(
        s(origin, "function"),
        want_o.function.clone(),
        &what("origin.function"),
    );
    c.eq(
        s(origin, "module"),
        want_o.module.clone(),
        &what("origin.module"),
    );
    c.eq(
        origin["depth"].as_u64(),
        Some(want_o.depth),
        &what("origin.depth"),
    );
    c.eq(
        s(origin, "errno"),
        want_o.errno.clone(),
        &what("origin.errno"),
    );
    let stack: Vec<String> = origin["stack"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e.as_str().unwrap_or_default().to_string())
        .collect();
    let names: Vec<Option<&str>> = stack.iter().map(|e| frame_name(e)).collect();
    c.check(names.iter().all(Option::is_some), || {
        format!(
            "{}: entries not `name` or `name+0xHEX`: {stack:?}",
            what("origin.stack")
        )
    });
    c.eq(
        names.first().copied().flatten(),
        Some(want_o.function.as_str()),
        &what("origin.stack[0]"),
    );
    // Each caller after the previous one (other frames may sit between them).
    let mut at = 0;
    for f in &chain {
        let found = (at + 1..names.len()).find(|&i| names[i] == Some(f.as_str()));
        c.check(found.is_some(), || {
            format!(
                "{}: {f} not after {:?} (stack {stack:?})",
                what("origin.stack"),
                stack.get(at)
            )
        });
        at = found.unwrap_or(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EP: &str = "0000:01:00.0";

    fn ev(step: &str, op: &str, rc: i64, err: &str, depth: u64, msg: u64) -> String {
        format!(
            "step={step} seq=1 op={op} dev={EP} tsm=tsm0 rc={rc} err={err} ns=9 pid=1 comm=sh depth={depth} msg={msg}\n"
        )
    }

    fn call(f: &str, depth: u64, span: (u64, u64), ret: i64, errno: &str) -> Value {
        let mut v = json!({"function": f, "module": "tsm_linktsm", "depth": depth,
            "start_ns": span.0, "end_ns": span.1, "duration_ns": span.1 - span.0, "ret": ret});
        if !errno.is_empty() {
            v["errno"] = json!(errno);
        }
        v
    }

    fn connect(errno: &str, calls: Vec<Value>, origin: Option<Value>) -> Value {
        let mut v = json!({"type": "operation", "kind": "connect", "device": EP,
            "frames": [{"probe": "driver_connect", "start_ns": 100, "end_ns": 1000,
                        "duration_ns": 900}],
            "calls": calls});
        if !errno.is_empty() {
            v["errno"] = json!(errno);
            v["result"] = json!("error");
        }
        if let Some(o) = origin {
            v["origin"] = o;
        }
        v
    }

    /// Steps a (no failure) and b (verify fails -EPROTO) as the fixture and tsm-trace
    /// print them.
    fn sample() -> (String, String, Vec<Value>, String) {
        let mut events = format!(
            "step=a seq=1 op=probe dev={EP} tsm=tsm0 rc=0 err=0 ns=1 pid=1 comm=sh role=pf0\n"
        );
        for m in [1, 2] {
            events += &ev("a", "spdm_verify", 0, "0", 4, m);
            events += &ev("a", "spdm_recv", 0, "0", 3, m);
            events += &ev("a", "spdm_exchange", 0, "0", 2, m);
        }
        events += &ev("a", "spdm_session", 0, "0", 1, 0);
        events += &format!("step=a seq=9 op=connect dev={EP} tsm=tsm0 rc=0 err=0 ns=50\n");
        for (op, d) in [("spdm_verify", 4), ("spdm_recv", 3), ("spdm_exchange", 2)] {
            events += &ev("b", op, -71, "-EPROTO", d, 1);
        }
        events += &ev("b", "spdm_session", -71, "-EPROTO", 1, 0);
        events += &format!("step=b seq=20 op=connect dev={EP} tsm=tsm0 rc=-71 err=-EPROTO ns=50\n");
        let syms = ["session", "exchange", "recv", "verify"]
            .iter()
            .map(|f| format!("sym=lt_spdm_{f} type=t module=tsm_linktsm ftrace=1\n"))
            .collect::<String>()
            + "sym=lt_spdm_notrace type=t module=tsm_linktsm ftrace=0\n";
        let a = connect(
            "",
            vec![
                call("lt_spdm_session", 1, (200, 900), 0, ""),
                call("lt_spdm_exchange", 2, (210, 400), 0, ""),
                call("lt_spdm_recv", 3, (220, 390), 0, ""),
                call("lt_spdm_verify", 4, (230, 380), 0, ""),
                call("lt_spdm_exchange", 2, (500, 800), 0, ""),
                call("lt_spdm_recv", 3, (510, 790), 0, ""),
                call("lt_spdm_verify", 4, (520, 780), 0, ""),
            ],
            None,
        );
        let b = connect(
            "EPROTO",
            vec![
                call("lt_spdm_session", 1, (200, 900), -71, "EPROTO"),
                call("lt_spdm_exchange", 2, (210, 400), -71, "EPROTO"),
                call("lt_spdm_recv", 3, (220, 390), -71, "EPROTO"),
                call("lt_spdm_verify", 4, (230, 380), -71, "EPROTO"),
            ],
            Some(
                json!({"function": "lt_spdm_verify", "module": "tsm_linktsm", "depth": 4,
                "errno": "EPROTO", "stack": ["lt_spdm_verify", "lt_spdm_recv+0x1e",
                "lt_spdm_exchange+0x3a", "lt_spdm_session+0x52", "linktsm_connect+0x2b",
                "pci_tsm_connect+0x90"]}),
            ),
        );
        let disconnect = json!({"type": "operation", "kind": "disconnect", "device": EP});
        let err = "tsm-trace: tracing with 9 probes\n\
                   deep: NOT ATTACHED lt_spdm_notrace [tsm_linktsm]: not in available_filter_functions (notrace)\n\
                   deep: no function matches tsm_linktsm:lt_nothing_matches_* (nothing in kallsyms)\n\
                   deep: no function matches ccp:sev_tio_* (module ccp is not loaded)\n\
                   deep: no function matches *:tdx_spdm_* (no function of that module has such a name)\n\
                   deep: attached 4 functions: lt_spdm_session [tsm_linktsm], lt_spdm_exchange [tsm_linktsm], lt_spdm_recv [tsm_linktsm], lt_spdm_verify [tsm_linktsm]\n\
                   deep: 11 calls recorded, 0 never claimed by an operation\n\
                   exit=0\n";
        (events, syms, vec![a, disconnect, b], err.to_string())
    }

    fn run(events: &str, syms: &str, trace: &[Value], err: &str) -> Checks {
        let mut c = Checks::default();
        check_deep(&mut c, events, syms, trace, err);
        c
    }

    #[test]
    fn the_sample_passes_every_check() {
        let (events, syms, trace, err) = sample();
        let c = run(&events, &syms, &trace, &err);
        assert_eq!(c.failed, Vec::<String>::new());
        assert!(c.count > 50, "{} checks", c.count);
    }

    #[test]
    fn a_wrong_call_origin_or_stderr_is_named_with_its_step_and_field() {
        let (events, syms, mut trace, err) = sample();
        trace[2]["calls"][3]["errno"] = json!("EIO");
        trace[2]["origin"]["stack"] = json!([
            "lt_spdm_verify",
            "lt_spdm_session+0x52",
            "0xffffffffc0001234"
        ]);
        trace[0]["calls"][2]["end_ns"] = json!(450);
        let err = err
            .replace("attached 4", "attached 5")
            .replace("(notrace)", "(blocked)")
            .replace("11 calls recorded", "18 calls recorded")
            .replace("no function matches ccp:sev_tio_*", "no such line");
        let f = run(&events, &syms, &trace, &err).failed.join("\n");
        for want in [
            "deep step b: calls (as a multiset)",
            "deep step b: origin.stack: entries not",
            "deep step b: origin.stack: lt_spdm_recv not after",
            "deep step b: origin.stack: linktsm_connect not after",
            "deep step a: call #2 lt_spdm_recv (depth 3): end_ns - start_ns",
            "deep step a: call #2 lt_spdm_recv (depth 3): [220, 450] not inside",
            "deep: attached N functions",
            "reason \"not in available_filter_functions (blocked)\" does not say notrace",
            "deep: calls recorded (summary) = the fixture's helper calls inside connects",
            "--deep-known spec ccp:sev_tio_* is neither attached nor reported",
        ] {
            assert!(f.contains(want), "missing {want:?} in:\n{f}");
        }
        assert!(!f.contains("deep step a: origin"), "{f}");
    }

    #[test]
    fn stderr_lines_and_stack_entries_parse() {
        let d = deep_err(
            "x deep: NOT ATTACHED f [m]: why: because\ndeep: attached 3 functions: a [m]\n\
             deep: no function matches m:g* (none)\n",
        );
        assert_eq!(d.no_match, ["m:g*"]);
        assert_eq!(d.not_attached["f"], ("m".into(), "why: because".into()));
        assert_eq!(d.attached, Some(3));
        assert_eq!(frame_name("lt_spdm_recv+0x1e"), Some("lt_spdm_recv"));
        assert_eq!(frame_name("lt_spdm_verify"), Some("lt_spdm_verify"));
        assert_eq!(frame_name("0xffffffffc0001234"), None);
        assert_eq!(frame_name("f+12"), None);
    }

    #[test]
    fn the_origin_is_the_deepest_failure_with_its_callers() {
        let (events, syms, _, _) = sample();
        let syms = super::syms(&syms);
        let b = &steps(&events)[1];
        let calls: Vec<Call> = b.helpers.iter().map(|e| fixture_call(e, &syms)).collect();
        let (o, chain) = fixture_origin(&calls).unwrap();
        assert_eq!(
            (o.function.as_str(), o.depth, o.errno.as_str()),
            ("lt_spdm_verify", 4, "EPROTO")
        );
        assert_eq!(
            chain,
            [
                "lt_spdm_recv",
                "lt_spdm_exchange",
                "lt_spdm_session",
                "linktsm_connect"
            ]
        );
        assert!(fixture_origin(&[]).is_none());
    }
}
