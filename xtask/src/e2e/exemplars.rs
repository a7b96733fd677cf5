//! Exemplars end to end: the daemon serves OpenMetrics to a scraper that asks for it, with each
//! latency bucket's last frame span (trace and span id); Prometheus (`--enable-feature=
//! exemplar-storage`) stores them; `/api/v1/query_exemplars` returns them. Each exemplar must
//! name a span the OTLP receiver got (the ground truth is the receiver's, not the daemon's
//! table) of the series' operation, layer and result, with the exemplar's value as its
//! duration.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use serde_json::Value;

use super::http;
use super::prometheus::Api;
use super::report::Report;

/// What Prometheus 2.x sends (`scrape.go`'s default Accept header).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const BUCKETS: &str = "tsm_trace_operation_duration_seconds_bucket";

/// One exemplar as Prometheus returns it.
#[derive(Debug)]
pub(super) struct Stored {
    series: HashMap<String, String>,
    trace_id: String,
    span_id: String,
    value: f64,
}

pub(super) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The live OpenMetrics exposition: its content type, `# EOF`, exemplars on latency buckets,
/// and the Python client's strict OpenMetrics parser accepts it.
pub(super) fn check_exposition(target_port: u16, report: &mut Report) -> Result<()> {
    let (code, ct, body) = http::get_accept(target_port, "/metrics", PROMETHEUS_ACCEPT)?;
    report.check(
        code == 200 && ct.starts_with("application/openmetrics-text; version=1.0.0"),
        || format!("GET /metrics as Prometheus asks: {code} {ct}"),
    );
    report.check(body.ends_with("# EOF\n"), || {
        "the OpenMetrics exposition does not end with # EOF".into()
    });
    let with = body
        .lines()
        .filter(|l| l.starts_with(BUCKETS) && l.contains(" # {trace_id=\""))
        .count();
    report.check(with > 0, || {
        "the OpenMetrics exposition has no exemplar on a latency bucket".into()
    });
    match python_parse(&body) {
        Ok(()) => report.check(true, String::new),
        Err(e) => report.fail(format!(
            "the OpenMetrics parser refused the live exposition: {e:#}"
        )),
    }
    println!("e2e: OpenMetrics exposition: {with} latency buckets with an exemplar");
    Ok(())
}

/// The Python client's OpenMetrics parser (python3-prometheus-client, `cargo xtask setup`).
fn python_parse(text: &str) -> Result<()> {
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nlist(p(sys.stdin.read()))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running /usr/bin/python3 (apt-get install python3-prometheus-client)")?;
    child
        .stdin
        .take()
        .context("python3's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The exemplars Prometheus stored since `start` (waits up to 10 s for the first).
pub(super) fn query(api: &Api, start: f64) -> Result<Vec<Stored>> {
    let t = Instant::now();
    loop {
        let data = api.query_exemplars(BUCKETS, start, now() + 1.0)?;
        let mut out = Vec::new();
        for s in &data {
            let series: HashMap<String, String> = s["seriesLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            for e in s["exemplars"].as_array().cloned().unwrap_or_default() {
                let label = |k: &str| e["labels"][k].as_str().unwrap_or("").to_owned();
                out.push(Stored {
                    series: series.clone(),
                    trace_id: label("trace_id"),
                    span_id: label("span_id"),
                    value: parse_value(&e["value"]),
                });
            }
        }
        if !out.is_empty() || t.elapsed() > Duration::from_secs(10) {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn parse_value(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, k: &str) -> String {
    s.attributes
        .iter()
        .find(|kv| kv.key == k)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

/// Every stored exemplar against the spans the OTLP receiver got.
pub(super) fn check(stored: &[Stored], spans: &[Span], report: &mut Report) {
    report.check(!stored.is_empty(), || {
        "Prometheus stored no exemplar for the latency histograms".into()
    });
    let by_id: HashMap<(String, String), &Span> = spans
        .iter()
        .map(|s| ((hex(&s.trace_id), hex(&s.span_id)), s))
        .collect();
    let roots: HashMap<String, &Span> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .map(|s| (hex(&s.trace_id), s))
        .collect();
    let mut ops = std::collections::BTreeSet::new();
    for e in stored {
        let l = |k: &str| e.series.get(k).cloned().unwrap_or_default();
        let what = || {
            format!(
                "exemplar {}/{} {} on {{op={},layer={},result={},le={}}}",
                e.trace_id,
                e.span_id,
                e.value,
                l("op"),
                l("layer"),
                l("result"),
                l("le")
            )
        };
        let Some(s) = by_id.get(&(e.trace_id.clone(), e.span_id.clone())) else {
            report.fail(format!("{}: the OTLP receiver got no such span", what()));
            continue;
        };
        let root_op = roots
            .get(&e.trace_id)
            .map(|r| attr(r, "tsm.op"))
            .unwrap_or_default();
        let failed = s
            .status
            .as_ref()
            .is_some_and(|st| st.code == StatusCode::Error as i32);
        let dur_ns = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
        let le: f64 = l("le").replace("+Inf", "inf").parse().unwrap_or(f64::NAN);
        report.check(
            attr(s, "tsm.layer") == l("layer")
                && root_op == l("op")
                && failed == (l("result") == "error")
                && (e.value * 1e9).round() as u64 == dur_ns
                && e.value <= le,
            || {
                format!(
                    "{}: the receiver's span is {} layer={} op={root_op} failed={failed} {dur_ns} ns",
                    what(),
                    s.name,
                    attr(s, "tsm.layer")
                )
            },
        );
        ops.insert(l("op"));
    }
    report.check(ops.contains("bind"), || {
        format!("no exemplar on a bind latency bucket (ops with exemplars: {ops:?})")
    });
    println!(
        "e2e: exemplars: {} stored by Prometheus (ops {ops:?}), each a span the OTLP receiver got",
        stored.len()
    );
}
