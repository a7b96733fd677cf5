//! The crash suite's faults phase (`crash.sh`, after the crash loop): each fault gives its
//! log line and its counter while the daemon keeps serving, and the daemon recovers when
//! the fault goes.
//!
//! | fault | checked |
//! |---|---|
//! | state directory full | saves fail (counted, logged with the errno) while `/bindings` still shows the bind made meanwhile; once space is freed a save succeeds (logged), and a daemon started after a SIGKILL restores that binding |
//! | corrupted state file | `tsm_trace_state_load_failures_total{reason="malformed"}` 1, the file moved aside (logged), serving |
//! | newer format | `…{reason="format"}` 1, serving |
//! | a pinned map removed | `tsm_trace_pins_missing` > 0 and the log line; the next daemon pins again (0) |
//! | bpffs unmounted | every pin missing, the binding still served; mounted again, the next daemon pins afresh and restores the binding from the state file |
//! | wall clock stepped an hour | `tsm_trace_wall_clock_steps_total` 1 and the log line |

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::Value;

use crate::vm::checks::{Checks, s};
use crate::vm::qemu::VmOutput;

struct Phase {
    bindings: Option<Value>,
    metrics: BTreeMap<String, f64>,
}

fn parse(text: &str) -> BTreeMap<String, Phase> {
    crate::vm::checks::blocks(text)
        .into_iter()
        .map(|(name, bindings, metrics)| (name.to_string(), Phase { bindings, metrics }))
        .collect()
}

fn get(m: &BTreeMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(f64::NAN)
}

pub fn check(out: &VmOutput, c: &mut Checks) -> Result<()> {
    let phases = parse(&out.section("cr_faults")?.text);
    let err = &out.section("cr_f.err")?.text;
    let empty = Phase {
        bindings: None,
        metrics: BTreeMap::new(),
    };
    let phase = |n: &str| phases.get(n).unwrap_or(&empty);
    for (name, p) in &phases {
        c.check(p.bindings.is_some(), || {
            format!("fault {name}: /bindings was not served (JSON)")
        });
    }
    let devices = |p: &Phase| -> Vec<String> {
        p.bindings
            .as_ref()
            .and_then(|b| b["bindings"].as_array())
            .map(|a| a.iter().map(|x| s(x, "device")).collect())
            .unwrap_or_default()
    };

    let full = phase("full serving");
    let failed = "tsm_trace_state_saves_total{result=\"failed\"}";
    let ok = "tsm_trace_state_saves_total{result=\"ok\"}";
    c.check(get(&full.metrics, failed) >= 1.0, || {
        format!("disk full: no failed save counted: {:?}", full.metrics)
    });
    c.eq(
        devices(full).len(),
        1,
        "disk full: the bind made meanwhile is served",
    );
    c.check(
        err.contains("state.json") && err.contains("No space left on device"),
        || format!("disk full: no log line naming the file and ENOSPC:\n{err}"),
    );
    let freed = phase("full freed");
    c.check(get(&freed.metrics, ok) > get(&full.metrics, ok), || {
        format!(
            "disk freed: no good save after ({} before, {} after)",
            get(&full.metrics, ok),
            get(&freed.metrics, ok)
        )
    });
    c.check(err.contains("again: a restart now loses nothing"), || {
        format!("disk freed: no log line saying the state is saved again:\n{err}")
    });
    let restored = phase("full restored");
    c.eq(
        devices(restored),
        devices(freed),
        "after the fault, a SIGKILL and a restart: the binding is restored",
    );
    c.eq(
        get(&restored.metrics, "tsm_trace_bindings_active"),
        1.0,
        "after the fault and a restart: tsm_trace_bindings_active",
    );

    c.eq(
        get(
            &phase("corrupt serving").metrics,
            "tsm_trace_state_load_failures_total{reason=\"malformed\"}",
        ),
        1.0,
        "corrupted state file: tsm_trace_state_load_failures_total{reason=\"malformed\"}",
    );
    c.check(err.contains("state.json.bad"), || {
        format!("corrupted state file: the log does not say where it was moved:\n{err}")
    });
    c.eq(
        get(
            &phase("newer serving").metrics,
            "tsm_trace_state_load_failures_total{reason=\"format\"}",
        ),
        1.0,
        "newer state file: tsm_trace_state_load_failures_total{reason=\"format\"}",
    );
    c.check(err.contains("has format 99"), || {
        format!("newer state file: no log line naming its format:\n{err}")
    });

    c.check(
        get(&phase("unpinned gone").metrics, "tsm_trace_pins_missing") >= 1.0,
        || "a pinned map removed: tsm_trace_pins_missing stayed 0".to_string(),
    );
    c.check(
        err.contains("pins of this daemon are gone from bpffs") && err.contains("LAST_RETURN"),
        || format!("a pinned map removed: no log line naming it:\n{err}"),
    );
    c.eq(
        get(&phase("unpinned back").metrics, "tsm_trace_pins_missing"),
        0.0,
        "after a restart: pins complete again",
    );

    let gone = phase("unmounted gone");
    c.check(get(&gone.metrics, "tsm_trace_pins_missing") >= 9.0, || {
        format!("bpffs unmounted: tsm_trace_pins_missing {:?}", gone.metrics)
    });
    c.eq(
        devices(gone).len(),
        1,
        "bpffs unmounted: the binding made before is still served",
    );
    let back = phase("unmounted back");
    c.eq(
        get(&back.metrics, "tsm_trace_pins_missing"),
        0.0,
        "bpffs mounted again and a restart: pinned again",
    );
    c.eq(
        devices(back),
        devices(gone),
        "bpffs mounted again and a restart: the binding restored from the state file",
    );

    c.eq(
        get(
            &phase("clock stepped").metrics,
            "tsm_trace_wall_clock_steps_total",
        ),
        1.0,
        "wall clock stepped: tsm_trace_wall_clock_steps_total",
    );
    // The script moved it by 3600 s; the daemon measures the step against the monotonic
    // clock, so the time the script took between reading and setting it is in it.
    let step = err
        .split("the wall clock stepped by ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|v| v.trim_start_matches('+').parse::<f64>().ok());
    c.check(step.is_some_and(|s| (3590.0..3610.0).contains(&s)), || {
        format!("wall clock stepped: no log line with a step of about +3600 s ({step:?}):\n{err}")
    });
    c.check(
        !err.to_lowercase().contains("panicked") && err.matches("exit=0").count() >= 4,
        || format!("a fault daemon panicked or did not exit 0 on SIGTERM:\n{err}"),
    );
    Ok(())
}
