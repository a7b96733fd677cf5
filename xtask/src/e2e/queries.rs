//! The PromQL the e2e test evaluates: every rule Prometheus loaded, every dashboard panel,
//! annotation and variable query (variables substituted), each of which must return data
//! unless [`MAY_BE_EMPTY`] says why not; and every metric any of them reads must have series.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use serde_json::Value;

use super::prometheus::Api;
use super::report::Report;

/// Grafana variables of the dashboard and what stands in for them (dashboards/README.md).
/// `$layer`: the stand-in on 7.x probes tsm_bind, so `tsm_core` has bind frames (the run
/// prints every layer that has data).
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__range", "1h"),
    ("$instance", ".+"),
    ("$job", "tsm-trace"),
    ("$layer", "tsm_core"),
    ("$device", ".*"),
    ("$vm", ".*"),
];

/// Queries that may legitimately return no data after this short, healthy run, and why.
/// Keys: a dashboard expression as written in the JSON (whitespace-normalised), or
/// `alert <name> severity=<severity>` for an alerting rule. Everything else must have data.
/// For these, too, every metric the expression reads must have series (checked separately),
/// so a typo in a metric name still fails.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "max by (instance, field) (tsm_trace_btf_field_resolved{instance=~\"$instance\"}) == 0",
        "panel lists BTF fields that did NOT resolve; on the test kernel every field resolves",
    ),
    (
        "alert TsmLeakedBinding severity=warning",
        "reason=\"sysfs_bound_without_owner\" needs a device bound in sysfs (tsm/bound); the \
         stand-in's devices have no tsm/bound file (tsm_trace_sysfs_devices{state=\"unknown\"})",
    ),
    (
        "sum by (op, result) (instance_op_result:tsm_trace_operations:rate5m{op=~\"connect|disconnect|guest_request\", instance=~\"$instance\"})",
        "the e2e VM (pc machine, stand-in module) registers no link TSM, so nothing connects; \
         the lifecycle VM suite (xtask/src/vm/suites/lifecycle/) checks these operations' metrics",
    ),
    (
        "histogram_quantile(0.99, sum by (layer, le) (instance_op_layer:tsm_trace_operation_duration_seconds_bucket:rate5m{op=\"connect\", instance=~\"$instance\"}))",
        "no connect in the e2e run (see above)",
    ),
    (
        "alert TsmConnectFailureRateHigh",
        "no connect in the e2e run (see above)",
    ),
    (
        "alert TsmConnectLatencyHigh",
        "no connect in the e2e run (see above)",
    ),
    (
        "alert TsmBindLatencyHigh",
        "needs a bind p99 > 10s; the scenario's slowest bind takes 15 ms",
    ),
    (
        "alert TsmProbesNotAttached",
        "every probe is attached, and none was detached during the run",
    ),
    (
        "alert TsmEventsLost",
        "no event is lost (ringbuf not full, no orphan returns) in a healthy run",
    ),
    (
        "alert TsmTraceDown",
        "`up == 0 or absent(up)`: the target is up for the whole run",
    ),
    (
        "alert TsmSysfsMismatch",
        "needs sysfs tsm/bound denying a binding; the stand-in's devices have no tsm/bound file",
    ),
    (
        "alert TsmOperationStuck",
        "needs a call in flight for over 5 minutes; the scenario's slowest bind takes 15 ms \
         (the generations VM suite holds a bind 12 s and checks the in-flight series)",
    ),
    (
        "alert TsmTraceRestartUnsafe",
        "every save of the state file succeeds and every pin is in place in a healthy run (the \
         crash VM suite's faults phase makes both fail and checks the counters and gauge)",
    ),
    (
        "alert TsmIdeStreamNotSecure",
        "the e2e VM has no IDE endpoint (pc machine, stand-in module): no stream is set up; the \
         ide VM suite checks tsm_trace_ide_insecure_connects_total against the fixture and the \
         promtool scenario fires the alert from its capture",
    ),
    (
        "alert TsmLeakedIdeStream",
        "no IDE stream in the e2e VM (see above); the ide VM suite checks the leaked stream's \
         series against sysfs",
    ),
    (
        "max by (instance, device, stream, host_bridge, reason) (tsm_trace_leaked_ide_stream_info{instance=~\"$instance\", device=~\"$device\"})",
        "no IDE stream in the e2e VM (see above)",
    ),
    (
        "alert TsmSysfsReconcileFailing",
        "no sysfs read error, and reconcile runs every 2s (--reconcile-interval 2s), so \
         `increase(runs[30m]) == 0` is false",
    ),
];

/// Metrics a query reads that may have no series at all in the e2e run, and why.
const MAY_HAVE_NO_SERIES: &[(&str, &str)] = &[(
    "tsm_trace_leaked_ide_stream_info",
    "one series per leaked IDE stream, and the e2e VM has none (the ide VM suite checks it)",
)];

/// One PromQL query to check.
pub(super) struct Query {
    /// Where it comes from (for messages).
    what: String,
    /// The [`MAY_BE_EMPTY`] key.
    key: String,
    /// PromQL, variables substituted.
    expr: String,
    /// For `label_values(SELECTOR, label)`: the label the results must carry.
    label: Option<String>,
}

/// A query per rule Prometheus loaded (each with health ok), and how many it loaded (as many
/// as the rule files have: `expected`).
pub(super) fn rule_queries(
    api: &Api,
    expected: usize,
    report: &mut Report,
) -> Result<(Vec<Query>, usize)> {
    let rules = api.get("/api/v1/rules")?;
    let mut queries = Vec::new();
    let mut loaded = 0;
    for g in rules["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            loaded += 1;
            let name = r["name"].as_str().unwrap_or("?");
            let labels = r["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!(" {k}={}", v.as_str().unwrap_or("?")))
                        .collect::<String>()
                })
                .unwrap_or_default();
            let key = if r["type"] == "alerting" {
                format!("alert {name}{labels}")
            } else {
                format!("record {name}{labels}")
            };
            report.check(r["health"] == "ok", || {
                format!("rule {key}: health {} {}", r["health"], r["lastError"])
            });
            queries.push(Query {
                what: format!("rule {key}"),
                key,
                expr: r["query"].as_str().unwrap_or_default().to_owned(),
                label: None,
            });
        }
    }
    report.check(loaded == expected, || {
        format!("Prometheus loaded {loaded} rules, the rule files have {expected}")
    });
    Ok((queries, loaded))
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, val) in VARIABLES {
        e = e.replace(var, val);
    }
    e
}

/// The allow-list reason for `q`, if any (alert keys match with or without their labels).
fn may_be_empty(q: &Query) -> Option<&'static str> {
    MAY_BE_EMPTY.iter().find_map(|(k, why)| {
        let hit = normalise(k) == normalise(&q.key)
            || (k.starts_with("alert ") && q.key.starts_with(&format!("{k} ")));
        hit.then_some(*why)
    })
}

/// Panel targets (rows included), annotation queries and `label_values` variable queries.
pub(super) fn dashboard_queries(dash: &Value) -> Result<Vec<Query>> {
    fn panels(p: &Value, out: &mut Vec<Query>) {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(Query {
                    what: format!("panel {title:?} {}", t["refId"].as_str().unwrap_or("")),
                    key: normalise(e),
                    expr: substitute(e),
                    label: None,
                });
            }
        }
        for c in p["panels"].as_array().into_iter().flatten() {
            panels(c, out);
        }
    }
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        panels(p, &mut out);
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push(Query {
                what: format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                key: normalise(e),
                expr: substitute(e),
                label: None,
            });
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?");
        let def = v["definition"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        let Some((sel, label)) = def
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
        else {
            bail!(
                "variable ${name}: query {def:?} is not label_values(SELECTOR, label); teach xtask/src/e2e/queries.rs about it"
            );
        };
        out.push(Query {
            what: format!("variable ${name} ({def})"),
            key: normalise(def),
            expr: substitute(sel.trim()),
            label: Some(label.trim().to_owned()),
        });
    }
    if out.is_empty() {
        bail!("no queries found in dashboards/tsm-trace.json");
    }
    Ok(out)
}

/// Run every query; then check that each metric any of them reads has series.
pub(super) fn evaluate(api: &Api, queries: &[Query], report: &mut Report) -> Result<()> {
    let mut used = BTreeSet::new();
    let mut allowed_hits = BTreeSet::new();
    for q in queries {
        used.extend(metric_names(&q.expr));
        report.check(!q.expr.contains('$'), || {
            format!("{}: unsubstituted variable in {:?}", q.what, q.expr)
        });
        let r = match api.query(&q.expr) {
            Ok(r) => r,
            Err(e) => {
                report.fail(format!("{}: {e:#}\n    {}", q.what, q.expr));
                continue;
            }
        };
        let allowed = may_be_empty(q);
        if let Some(why) = allowed {
            allowed_hits.insert(
                MAY_BE_EMPTY
                    .iter()
                    .position(|(_, w)| *w == why)
                    .unwrap_or(0),
            );
        }
        match (r.has_data(), allowed) {
            (true, _) => report.check(true, String::new),
            (false, Some(why)) => {
                report.allowed_empty += 1;
                println!("e2e: empty (allowed: {why}): {}", q.what);
            }
            (false, None) => report.fail(format!("{}: no data\n    {}", q.what, q.expr)),
        }
        if let Some(label) = &q.label {
            let values: BTreeSet<String> = r
                .series()
                .iter()
                .filter_map(|s| s["metric"][label.as_str()].as_str().map(str::to_owned))
                .collect();
            println!("e2e: {} -> {values:?}", q.what);
            report.check(!values.is_empty(), || {
                format!("{}: no series carries label {label:?}", q.what)
            });
            let must = match label.as_str() {
                "job" => Some("tsm-trace"),
                "layer" => Some("tsm_core"),
                _ => None,
            };
            if let Some(m) = must {
                report.check(values.contains(m), || {
                    format!(
                        "{}: {m:?} (the value the test substitutes) not among {values:?}",
                        q.what
                    )
                });
            }
        }
    }
    for (i, (k, _)) in MAY_BE_EMPTY.iter().enumerate() {
        if !allowed_hits.contains(&i) {
            println!("e2e: note: allow-list entry {k:?} matches no query any more");
        }
    }
    for m in &used {
        if let Some((_, why)) = MAY_HAVE_NO_SERIES.iter().find(|(n, _)| n == m) {
            println!("e2e: metric {m} not required to have series ({why})");
            continue;
        }
        let r = api.query(&format!("count({{__name__=\"{m}\"}})"))?;
        report.check(r.has_data(), || {
            format!("metric {m} (read by a dashboard or rule query) has no series")
        });
    }
    println!(
        "e2e: {} metrics read by the queries all checked for series",
        used.len()
    );
    Ok(())
}

/// Metric names in an expression: `tsm_trace_*`, recording rules (`...:tsm_trace_...:...`),
/// `up` and `process_*`.
fn metric_names(expr: &str) -> Vec<String> {
    // Drop string literals (label values) first.
    let mut plain = String::new();
    let mut in_str = false;
    for c in expr.chars() {
        if c == '"' {
            in_str = !in_str;
            plain.push(' ');
        } else if !in_str {
            plain.push(c);
        }
    }
    plain
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.contains("tsm_trace_") || t.starts_with("process_") || *t == "up")
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_names() {
        let e = substitute(
            "sum(rate(tsm_trace_x_total{instance=~\"$instance\", layer=\"$layer\"}[$__rate_interval])) / up{job=~\"$job\"}",
        );
        assert!(!e.contains('$'));
        assert!(e.contains("[1m]") && e.contains("\"tsm_core\""));
        assert_eq!(metric_names(&e), vec!["tsm_trace_x_total", "up"]);
        assert_eq!(
            metric_names("instance_op:tsm_trace_a:rate5m{op=\"tsm_trace_not\"}"),
            vec!["instance_op:tsm_trace_a:rate5m"]
        );
    }

    #[test]
    fn allow_list_keys() {
        let q = |key: &str| Query {
            what: String::new(),
            key: key.into(),
            expr: String::new(),
            label: None,
        };
        assert!(may_be_empty(&q("alert TsmTraceDown severity=warning")).is_some());
        assert!(may_be_empty(&q("alert TsmLeakedBinding severity=critical")).is_none());
        assert!(may_be_empty(&q("alert TsmLeakedBinding severity=warning")).is_some());
        assert!(may_be_empty(&q("alert TsmTraceDownX severity=warning")).is_none());
    }
}
