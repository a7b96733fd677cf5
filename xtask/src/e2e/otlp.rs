//! The live daemon's OTLP spans against the fixture's truth: an OTLP/HTTP receiver on the host
//! (the guest reaches it as 10.0.2.2; `tsm-trace run --otlp-endpoint`) decodes each request
//! with the official protobuf definitions (`opentelemetry-proto`), and [`check`] compares the
//! spans with the stand-in's ground truth of every ioctl step: one root span per operation
//! with the step's device, errno, layer of origin and caller, error status, every layer span
//! inside its parent in the same trace, the 15 ms driver bind's span within the frame
//! tolerance of the module's own measurement, and the two leaks.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use prost::Message;

use super::report::Report;
use crate::vm::{self, kv::pe_name};

/// The receiver: spans decoded so far, and requests it could not decode.
pub(super) struct Receiver {
    pub(super) port: u16,
    got: Arc<Mutex<(Vec<Span>, Vec<String>)>>,
}

impl Receiver {
    pub(super) fn start() -> Result<Receiver> {
        let l = TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")?;
        let port = l.local_addr()?.port();
        let got = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let g = got.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let g = g.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &g) {
                        g.lock().unwrap().1.push(format!("{e:#}"));
                    }
                });
            }
        });
        Ok(Receiver { port, got })
    }

    pub(super) fn spans(&self) -> (Vec<Span>, Vec<String>) {
        self.got.lock().unwrap().clone()
    }
}

/// Keep-alive HTTP/1.1 POSTs, each body an `ExportTraceServiceRequest`.
fn serve(conn: TcpStream, got: &Mutex<(Vec<Span>, Vec<String>)>) -> Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().context("content-length")?;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let req = ExportTraceServiceRequest::decode(body.as_slice())
            .with_context(|| format!("decoding {} ({len} bytes)", line.trim()))?;
        let mut g = got.lock().unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                g.0.extend(ss.spans);
            }
        }
        drop(g);
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(s: &Span) -> HashMap<String, String> {
    s.attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// The ioctl steps' truth: (kind, device, errno, caller pid) → how many, and the layer each
/// failing one's error was born in.
type Key = (String, String, String, String);

/// Checks the spans against the guest's `steps` section.
pub(super) fn check(out: &vm::VmOutput, spans: &[Span], errors: &[String], report: &mut Report) {
    report.check(errors.is_empty(), || {
        format!("the OTLP receiver could not decode: {errors:?}")
    });
    let Ok(steps) = out.section("steps") else {
        report.fail("no steps section for the OTLP check".into());
        return;
    };
    let mut want: BTreeMap<Key, usize> = BTreeMap::new();
    let mut layers: BTreeMap<Key, String> = BTreeMap::new();
    let mut driver_ns = Vec::new();
    for line in steps.text.lines() {
        let kv = vm::parse_kv(line);
        let Some(step) = kv.get("step") else { continue };
        let short = step.rsplit('.').next().unwrap_or("");
        let kind = if short.starts_with("bind_") {
            "bind"
        } else if short == "unbind" {
            "unbind"
        } else {
            continue;
        };
        let rc = kv.get("rc").map(String::as_str).unwrap_or("?");
        let errno = if rc == "0" {
            String::new()
        } else {
            pe_name(kv.get("err").map(String::as_str).unwrap_or("?"))
        };
        let key: Key = (
            kind.into(),
            kv.get("dev").cloned().unwrap_or_default(),
            errno.clone(),
            kv.get("pid").cloned().unwrap_or_default(),
        );
        *want.entry(key.clone()).or_default() += 1;
        if !errno.is_empty() {
            layers.insert(key, kv.get("fail_layer").cloned().unwrap_or_default());
        }
        if short == "bind_ok"
            && let Some(ns) = kv.get("driver_ns").and_then(|v| v.parse::<f64>().ok())
        {
            driver_ns.push(ns);
        }
    }
    report.check(!want.is_empty(), || "no ioctl step in the truth".into());

    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    let mut got: BTreeMap<Key, usize> = BTreeMap::new();
    for r in &roots {
        let a = attrs(r);
        if !matches!(r.name.as_str(), "bind" | "unbind") {
            continue;
        }
        let key: Key = (
            r.name.clone(),
            a.get("tsm.device").cloned().unwrap_or_default(),
            a.get("tsm.errno").cloned().unwrap_or_default(),
            a.get("tsm.caller.pid").cloned().unwrap_or_default(),
        );
        if let Some(layer) = layers.get(&key) {
            report.check(a.get("tsm.origin.layer") == Some(layer), || {
                format!(
                    "OTLP: {key:?}: tsm.origin.layer {:?}, the fixture says {layer}",
                    a.get("tsm.origin.layer")
                )
            });
            let status = r.status.as_ref().map(|s| (s.code, s.message.as_str()));
            report.check(
                status == Some((StatusCode::Error as i32, key.2.as_str())),
                || format!("OTLP: {key:?}: status {status:?}, want Error {}", key.2),
            );
        }
        *got.entry(key).or_default() += 1;
    }
    report.check(got == want, || {
        format!(
            "OTLP: root spans by (op, device, errno, caller) {got:?}, the fixture's steps {want:?}"
        )
    });

    // Every layer span lies inside its parent, in the same trace.
    let mut children = 0;
    for s in spans.iter().filter(|s| !s.parent_span_id.is_empty()) {
        children += 1;
        let ok = by_id.get(s.parent_span_id.as_slice()).is_some_and(|p| {
            p.trace_id == s.trace_id
                && p.start_time_unix_nano <= s.start_time_unix_nano
                && s.end_time_unix_nano <= p.end_time_unix_nano
        });
        report.check(ok, || {
            format!("OTLP: span {} is not inside a parent of its trace", s.name)
        });
    }
    report.check(children >= roots.len(), || {
        format!("OTLP: {children} layer spans for {} roots", roots.len())
    });

    // The 15 ms driver binds: each within 1% + 5 ms of the module's own measurement. The
    // check is that each span carries its driver call's duration (the other driver_bind
    // spans last ~20 µs), not the accuracy of that duration: this VM runs on the wall clock
    // under TCG, where a stall of the emulator's thread between the probe's timestamp and
    // the module's lands in the span (4.7 ms once in a CI run, 2026-12-08). Accuracy is
    // bench row 7's, on the deterministic clock (1% + 50 µs).
    let mut durations: Vec<f64> = spans
        .iter()
        .filter(|s| s.name == "driver_bind" && !attrs(s).contains_key("tsm.errno"))
        .map(|s| s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64)
        .collect();
    report.check(!driver_ns.is_empty(), || {
        "no bind_ok driver_ns in the truth".into()
    });
    for ns in &driver_ns {
        let tolerance = ns * 0.01 + 5_000_000.0;
        let hit = durations.iter().position(|d| (d - ns).abs() <= tolerance);
        report.check(hit.is_some(), || {
            format!("OTLP: no driver_bind span within {tolerance} ns of the module's {ns} ns: {durations:?}")
        });
        if let Some(i) = hit {
            durations.remove(i);
        }
    }

    // The two leaks of round 2.
    for (reason, dev) in [
        ("ioctl_failed_after_bind", "0000:00:01.0"),
        ("vdevice_teardown_without_unbind", "0000:00:01.1"),
    ] {
        let n = spans
            .iter()
            .filter(|s| s.name == "leak")
            .filter(|s| {
                let a = attrs(s);
                a.get("tsm.leak.reason").map(String::as_str) == Some(reason)
                    && a.get("tsm.device").map(String::as_str) == Some(dev)
            })
            .count();
        report.check(n == 1, || {
            format!("OTLP: {n} leak spans for {reason} on {dev}, want 1")
        });
    }
    println!(
        "e2e: OTLP: {} spans received ({} roots, {children} layer spans), {} ioctl steps and {} driver timings checked",
        spans.len(),
        roots.len(),
        want.values().sum::<usize>(),
        driver_ns.len()
    );
}
