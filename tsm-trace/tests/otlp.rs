//! OTLP export against a real receiver: a small HTTP server here decodes each request with the
//! official OpenTelemetry protobuf definitions (`opentelemetry-proto`'s
//! `ExportTraceServiceRequest`), and the spans are checked against what `replay --json` says
//! the capture holds: one root span per operation with the operation's kind, times, attributes
//! and status, one child per frame parented to the frame that contains it, the leaks and the
//! closed bindings. Then a dead and a stalled collector: the export gives up in bounded time,
//! never holds the caller, and counts every span it did not deliver.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use prost::Message;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tsm-trace");

/// The spans a receiver got, and the requests' paths and headers.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    resources: Vec<HashMap<String, String>>,
    requests: Vec<(String, HashMap<String, String>)>,
}

/// An OTLP/HTTP receiver on 127.0.0.1; `stall` accepts and never answers.
fn receiver(stall: bool) -> (String, Arc<Mutex<Received>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Received::default()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let g = g.clone();
            std::thread::spawn(move || {
                if stall {
                    std::thread::sleep(Duration::from_secs(600));
                    drop(conn);
                    return;
                }
                let _ = serve(conn, &g);
            });
        }
    });
    (url, got)
}

/// HTTP/1.1 requests on one connection (keep-alive), each body decoded.
fn serve(conn: TcpStream, got: &Mutex<Received>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let req = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("the body is an ExportTraceServiceRequest");
        {
            let mut g = got.lock().unwrap();
            for rs in req.resource_spans {
                if let Some(res) = &rs.resource {
                    g.resources.push(
                        res.attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
                            .collect(),
                    );
                }
                for ss in rs.scope_spans {
                    g.spans.extend(ss.spans);
                }
            }
            g.requests.push((path, headers));
        }
        w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )?;
    }
}

fn value_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(s: &Span) -> HashMap<String, String> {
    s.attributes
        .iter()
        .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
        .collect()
}

/// Every capture that replays.
fn captures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut v = vec![root.join("tsm-trace/tests/fixtures/standin-6.1.jsonl")];
    for e in std::fs::read_dir(root.join("fuzz/corpus/record")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".jsonl") && !name.contains("refused") {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// The capture recorded from the stand-in module in the VM (binds, failures, leaks).
fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/standin-6.1.jsonl")
}

fn replay(cap: &Path, extra: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("replay")
        .arg(cap)
        .args(extra)
        .env_remove("TSM_TRACE_LOG");
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        c.env_remove(k);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Checks one capture's spans against its JSON lines; returns the number of spans checked.
fn check_capture(cap: &Path, offset_ns: i64, spans: &[Span], json: &str) -> usize {
    let name = cap.display().to_string();
    let t = |ns: u64| (i128::from(ns) + i128::from(offset_ns)) as u64;
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let mut roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .filter(|s| {
            !matches!(
                s.name.as_str(),
                "leak" | "leak_cleared" | "binding" | "ide_stream_leak" | "ide_stream_leak_cleared"
            )
        })
        .collect();
    roots.sort_by_key(|s| (s.start_time_unix_nano, s.end_time_unix_nano, s.name.clone()));
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ops: Vec<&Value> = lines.iter().filter(|l| l["type"] == "operation").collect();
    ops.sort_by_key(|o| {
        (
            o["start_ns"].as_u64().unwrap(),
            o["end_ns"].as_u64().unwrap(),
            o["kind"].as_str().unwrap().to_string(),
        )
    });
    assert_eq!(
        roots.len(),
        ops.len(),
        "{name}: one root span per operation"
    );
    for (root, op) in roots.iter().zip(&ops) {
        assert_eq!(root.name, op["kind"].as_str().unwrap(), "{name}");
        assert_eq!(
            root.start_time_unix_nano,
            t(op["start_ns"].as_u64().unwrap()),
            "{name}"
        );
        assert_eq!(
            root.end_time_unix_nano,
            t(op["end_ns"].as_u64().unwrap()),
            "{name}"
        );
        let a = attrs(root);
        assert_eq!(a["tsm.op"], op["kind"].as_str().unwrap());
        assert_eq!(
            a["tsm.result"],
            op["result"].as_str().unwrap(),
            "{name}: {a:?}"
        );
        for (attr, field) in [
            ("tsm.device", "device"),
            ("tsm.name", "tsm"),
            ("tsm.errno", "errno"),
            ("tsm.origin.layer", "layer"),
            ("tsm.origin.function", "function"),
        ] {
            assert_eq!(
                a.get(attr).map(String::as_str),
                op[field].as_str(),
                "{name}: {attr}"
            );
        }
        for (attr, field) in [("tsm.vdevice", "vdevice_id"), ("tsm.tdi", "tdi_id")] {
            assert_eq!(
                a.get(attr).cloned(),
                op[field].as_u64().map(|v| v.to_string()),
                "{name}: {attr}"
            );
        }
        assert_eq!(a["tsm.caller.pid"], op["tgid"].to_string());
        assert_eq!(a["tsm.caller.comm"], op["comm"].as_str().unwrap());
        if let Some(s) = op["vm"]["stats_id"].as_str() {
            assert_eq!(a["tsm.vm.stats_id"], s);
        }
        let status = root.status.as_ref().map(|s| (s.code, s.message.clone()));
        if op["result"] == "error" {
            assert_eq!(
                status,
                Some((
                    StatusCode::Error as i32,
                    op["errno"].as_str().unwrap().to_string()
                )),
                "{name}: error status with the errno"
            );
        } else {
            assert_ne!(
                status.map(|s| s.0),
                Some(StatusCode::Error as i32),
                "{name}"
            );
        }
        // The frames: one child span each, in the root's trace, parented inside it; deep
        // calls (`trace --deep`, named by `code.function`): one span each, inside a frame.
        let in_trace = |s: &&Span| s.trace_id == root.trace_id && s.span_id != root.span_id;
        let is_call = |s: &&Span| attrs(s).contains_key("code.function");
        let calls: Vec<&Span> = spans.iter().filter(in_trace).filter(is_call).collect();
        let want_calls = op["calls"].as_array().map_or(0, Vec::len);
        assert_eq!(calls.len(), want_calls, "{name}: one span per deep call");
        for c in &calls {
            let parent = by_id
                .get(c.parent_span_id.as_slice())
                .unwrap_or_else(|| panic!("{name}: deep call {} has no parent", c.name));
            assert!(
                parent.start_time_unix_nano <= c.start_time_unix_nano
                    && c.end_time_unix_nano <= parent.end_time_unix_nano
                    && parent.span_id != root.span_id,
                "{name}: deep call {} lies inside a frame or call ({})",
                c.name,
                parent.name
            );
        }
        let mut kids: Vec<&Span> = spans
            .iter()
            .filter(in_trace)
            .filter(|s| !is_call(s))
            .collect();
        kids.sort_by_key(|s| {
            (
                s.start_time_unix_nano,
                std::cmp::Reverse(s.end_time_unix_nano),
            )
        });
        let mut frames: Vec<&Value> = op["frames"].as_array().unwrap().iter().collect();
        let times = |f: &Value| {
            let end = f["end_ns"].as_u64().unwrap();
            if f["entry_missing"] == true {
                (end, end)
            } else {
                (f["start_ns"].as_u64().unwrap(), end)
            }
        };
        frames.sort_by_key(|f| {
            let (s, e) = times(f);
            (s, std::cmp::Reverse(e))
        });
        assert_eq!(kids.len(), frames.len(), "{name}: one span per frame");
        for (k, f) in kids.iter().zip(&frames) {
            let (s, e) = times(f);
            assert_eq!(k.name, f["probe"].as_str().unwrap(), "{name}");
            assert_eq!(
                (k.start_time_unix_nano, k.end_time_unix_nano),
                (t(s), t(e)),
                "{name}"
            );
            let ka = attrs(k);
            assert_eq!(ka["tsm.layer"], f["layer"].as_str().unwrap());
            assert_eq!(ka.get("tsm.errno").map(String::as_str), f["errno"].as_str());
            let parent = by_id
                .get(k.parent_span_id.as_slice())
                .unwrap_or_else(|| panic!("{name}: {} has no parent among the spans", k.name));
            assert_eq!(
                parent.trace_id, root.trace_id,
                "{name}: parent in the same trace"
            );
            assert!(
                parent.start_time_unix_nano <= k.start_time_unix_nano
                    && k.end_time_unix_nano <= parent.end_time_unix_nano,
                "{name}: {} lies inside its parent {}",
                k.name,
                parent.name
            );
        }
    }
    let count = |ty: &str| lines.iter().filter(|l| l["type"] == ty).count();
    let detected = lines
        .iter()
        .filter(|l| l["type"] == "leak" && l["event"] == "detected")
        .count();
    let named = |n: &str| spans.iter().filter(|s| s.name == n).count();
    assert_eq!(named("leak"), detected, "{name}: a span per leak");
    assert_eq!(
        named("binding"),
        count("binding_closed"),
        "{name}: a span per ended binding"
    );
    for s in spans.iter().filter(|s| s.name == "binding") {
        let a = attrs(s);
        assert!(a.contains_key("tsm.unbind.cause"), "{a:?}");
        assert!(
            s.links.iter().any(|l| l
                .attributes
                .iter()
                .any(|kv| value_text(kv.value.as_ref()) == "bind")),
            "{name}: a binding links its bind"
        );
    }
    spans.len()
}

#[test]
fn replay_to_a_receiver_sends_the_captures_operations() {
    let mut total = 0;
    let mut n = 0;
    for cap in captures() {
        let (url, got) = receiver(false);
        let json = replay(&cap, &["--json"], &[]);
        assert!(json.status.success());
        let out = replay(
            &cap,
            &["--json", "--otlp-endpoint", &url],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a%20b")],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(
            out.stdout, json.stdout,
            "the lines are the same with export on"
        );
        let g = got.lock().unwrap();
        let stdout = String::from_utf8(json.stdout).unwrap();
        if !stdout.contains("\"type\":\"operation\"") {
            assert!(
                g.spans.is_empty(),
                "{}: no operation, no span",
                cap.display()
            );
            continue;
        }
        assert!(
            !g.requests.is_empty(),
            "{}: nothing received; {err}",
            cap.display()
        );
        for (path, headers) in &g.requests {
            assert_eq!(path, "/v1/traces");
            assert_eq!(headers["content-type"], "application/x-protobuf");
            assert_eq!(headers["x-tenant"], "a b");
        }
        assert_eq!(g.resources[0]["service.name"], "tsm-trace");
        // A capture that recorded the wall clock: span times are its events' plus that offset.
        let offset = std::fs::read_to_string(&cap)
            .ok()
            .and_then(|t| {
                let header: Value = serde_json::from_str(t.lines().next()?).ok()?;
                header["realtime_offset_ns"].as_i64()
            })
            .unwrap_or(0);
        total += check_capture(&cap, offset, &g.spans, &stdout);
        assert!(
            err.contains(&format!(
                "{} spans, {} exported",
                g.spans.len(),
                g.spans.len()
            )),
            "{err}"
        );
        n += 1;
    }
    assert!(n >= 5 && total > 150, "{n} captures, {total} spans");
    eprintln!("{n} captures, {total} spans checked");
}

/// A capture that recorded the wall clock: span times are its events' plus that offset, and
/// the standard variable works in place of the flag.
#[test]
fn span_times_use_the_captures_wall_clock() {
    let cap = captures()
        .into_iter()
        .find(|p| p.ends_with("vm-7.3-lifecycle.jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&cap).unwrap();
    let (head, rest) = text.split_once('\n').unwrap();
    let offset: i64 = 1_765_000_000_123_456_789;
    let head = format!(
        "{},\"realtime_offset_ns\":{offset}}}",
        head.trim_end().trim_end_matches('}')
    );
    let dir = tempfile::tempdir().unwrap();
    let shifted = dir.path().join("wall.jsonl");
    std::fs::write(&shifted, format!("{head}\n{rest}")).unwrap();
    let (url, got) = receiver(false);
    let json = replay(&shifted, &["--json"], &[]);
    let out = replay(
        &shifted,
        &["--json"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = got.lock().unwrap();
    let n = check_capture(
        &shifted,
        offset,
        &g.spans,
        &String::from_utf8(json.stdout).unwrap(),
    );
    assert!(n > 20, "{n}");
}

/// Nothing listens: the replay still finishes promptly, its output intact, and says how many
/// spans it could not deliver and why.
#[test]
fn a_dead_collector_costs_bounded_time_and_is_counted() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cap = &standin();
    let t0 = Instant::now();
    let out = replay(
        cap,
        &[
            "--json",
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
        ],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")],
    );
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!out.stdout.is_empty());
    assert!(err.contains(" 0 exported"), "{err}");
    assert!(
        err.contains("export failed") && err.contains("failed requests"),
        "{err}"
    );
}

/// A collector that accepts and never answers, with a queue of 4: handing spans over never
/// waits, the overflow is counted as queue_full, the rest as export_failed or shutdown, and
/// every span is accounted for once.
#[test]
fn a_stalled_collector_never_blocks_and_every_span_is_accounted() {
    use tsm_trace::exporters::metrics::OtlpCounters;
    use tsm_trace::exporters::otlp::{Otlp, OtlpConfig, WhenFull};
    let (url, _got) = receiver(true);
    let cfg = OtlpConfig {
        url: format!("{url}/v1/traces"),
        headers: HashMap::new(),
        timeout: Duration::from_millis(500),
    };
    let counters = OtlpCounters::unregistered();
    let mut otlp = Otlp::start(&cfg, counters.clone(), 0, 4, WhenFull::Drop).unwrap();
    let cap = &standin();
    let f = std::fs::File::open(cap).unwrap();
    let (_h, events) =
        tsm_trace::events::record::read_all(BufReader::new(f), &cap.display().to_string()).unwrap();
    let mut c = tsm_trace::correlate::Correlator::new(Default::default());
    let mut outs = Vec::new();
    for e in events {
        let now = e.end_ns;
        c.handle_into(e, now, &mut outs);
    }
    outs.extend(c.finish(u64::MAX / 2));
    let t0 = Instant::now();
    for o in &outs {
        otlp.write(o);
    }
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "write waited: {:?}",
        t0.elapsed()
    );
    let t1 = Instant::now();
    let r = otlp.finish();
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "finish took {:?}",
        t1.elapsed()
    );
    assert!(r.spans > 20, "{r:?}");
    assert!(r.dropped_queue_full > 0, "{r:?}");
    assert_eq!(r.exported, 0, "{r:?}");
    assert_eq!(
        r.dropped_queue_full + r.dropped_export_failed + r.dropped_shutdown,
        r.spans,
        "every span accounted once: {r:?}"
    );
    let dropped = |reason: &str| counters.dropped.with_label_values(&[reason]).get();
    assert_eq!(dropped("queue_full"), r.dropped_queue_full);
    assert_eq!(dropped("export_failed"), r.dropped_export_failed);
    assert_eq!(dropped("shutdown"), r.dropped_shutdown);
}

#[test]
fn bad_otlp_settings_are_clear_errors_before_any_work() {
    let cap = &standin();
    for (args, envs, want) in [
        (
            vec!["--otlp-endpoint", "localhost:4318"],
            vec![],
            "--otlp-endpoint: \"localhost:4318\"",
        ),
        (
            vec!["--otlp-endpoint", "http://127.0.0.1:9"],
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            "OTEL_EXPORTER_OTLP_PROTOCOL: protocol \"grpc\" is not supported",
        ),
        (
            vec![],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")],
            "https needs TLS",
        ),
    ] {
        let out = replay(cap, &args, &envs);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(out.stdout.is_empty(), "nothing replayed");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `replay --metrics --openmetrics` with export on: every latency bucket's exemplar names a
/// frame span the receiver got (ground truth: the receiver, not our table), of that series'
/// operation, layer and result, whose duration is the exemplar's value, within the bucket, at
/// the span's end; the exposition passes a real OpenMetrics parser.
#[test]
fn exemplars_link_latency_buckets_to_the_spans_the_receiver_got() {
    let (url, got) = receiver(false);
    let out = replay(
        &standin(),
        &["--metrics", "--openmetrics", "--otlp-endpoint", &url],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    if let Some(r) = tsm_trace::test_support::openmetrics_parse(&text) {
        r.unwrap_or_else(|e| panic!("the OpenMetrics parser refused it: {e}"));
    }
    let g = got.lock().unwrap();
    let by_id: HashMap<(String, String), &Span> = g
        .spans
        .iter()
        .map(|s| ((hex(&s.trace_id), hex(&s.span_id)), s))
        .collect();
    let roots: HashMap<String, &Span> = g
        .spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .map(|s| (hex(&s.trace_id), s))
        .collect();
    let mut n = 0;
    let mut prev_le: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("tsm_trace_operation_duration_seconds_bucket{") else {
            continue;
        };
        let (labels, tail) = rest.split_once('}').unwrap();
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap()
        };
        let series = format!("{}/{}/{}", label("op"), label("layer"), label("result"));
        let le: f64 = label("le").replace("+Inf", "inf").parse().unwrap();
        let lower = prev_le.insert(series.clone(), le).unwrap_or(0.0);
        let Some((_, ex)) = tail.split_once(" # {") else {
            continue;
        };
        let (ex_labels, ex_rest) = ex.split_once("} ").unwrap();
        let mut kv = ex_labels.split(',').map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k, v.trim_matches('"').to_string())
        });
        let (k1, trace) = kv.next().unwrap();
        let (k2, span) = kv.next().unwrap();
        assert_eq!((k1, k2), ("trace_id", "span_id"), "{line}");
        let mut nums = ex_rest.split(' ');
        let value: f64 = nums.next().unwrap().parse().unwrap();
        let ts: f64 = nums.next().unwrap().parse().unwrap();
        assert!(
            lower < value && value <= le,
            "not within its bucket: {line}"
        );
        let s = by_id
            .get(&(trace.clone(), span.clone()))
            .unwrap_or_else(|| panic!("the receiver got no span {trace}/{span}: {line}"));
        let a = attrs(s);
        assert_eq!(a["tsm.layer"], label("layer"), "{line}");
        assert_eq!(
            s.status
                .as_ref()
                .is_some_and(|st| st.code == StatusCode::Error as i32),
            label("result") == "error",
            "{line}"
        );
        let root = roots[&trace];
        assert_eq!(attrs(root)["tsm.op"], label("op"), "{line}");
        let dur_ns = s.end_time_unix_nano - s.start_time_unix_nano;
        assert_eq!((value * 1e9).round() as u64, dur_ns, "{line}");
        assert!(
            (ts - s.end_time_unix_nano as f64 / 1e9).abs() < 1e-6,
            "exemplar time is the span's end: {line}"
        );
        n += 1;
    }
    assert!(n >= 10, "{n} exemplars:\n{text}");
    eprintln!("{n} exemplars checked against the receiver's spans");
}
