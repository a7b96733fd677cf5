//! The ring-buffer record decoder and everything downstream of it: the input is cut into
//! records of `RawEvent::SIZE` bytes (a shorter tail is decoded too, and must be refused);
//! each is decoded and the decoded stream goes through the correlator, the metrics and a
//! trace format (text or JSON, by the input's length). Nothing may panic, whatever the
//! kernel side (or a corrupted map) sends.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tsm_trace::correlate::Config;
use tsm_trace::events::{Event, VmKey};
use tsm_trace::exporters::{json::BindingsView, metrics::Metrics, trace::Clock};
use tsm_trace::pipeline::{Pipeline, TraceFormat, TraceSink};
use tsm_trace_common::RawEvent;

fuzz_target!(|data: &[u8]| {
    let key = VmKey::from_bytes([0x42; 32]);
    let mut events = Vec::new();
    for chunk in data.chunks(RawEvent::SIZE) {
        match Event::from_bytes(chunk, &key) {
            Ok(ev) => {
                assert_eq!(chunk.len(), RawEvent::SIZE);
                let _ = (ev.duration_ns(), ev.known_start_ns(), ev.ok(), ev.errno());
                events.push(ev);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let format = if data.len() % 2 == 0 {
        TraceFormat::Text
    } else {
        TraceFormat::Json
    };
    {
        let metrics = Arc::new(Metrics::new());
        let mut sink = TraceSink::new(
            Box::new(std::io::sink()),
            format,
            Default::default(),
            Clock::Relative { base_ns: 0 },
        );
        sink.anomalies = true;
        let cfg = Config {
            leak_grace_ns: 1_000,
            max_bindings: 64,
            ..Config::default()
        };
        let mut p = Pipeline::new(cfg, metrics.clone(), Some(sink));
        let mut now = 0u64;
        for ev in events.iter().cloned() {
            now = now.max(ev.end_ns);
            p.handle(ev, now);
        }
        let _ = BindingsView::of(p.correlator()).to_json();
        p.finish(now);
        let _ = p.render_summary();
        let _ = metrics.render();
    }
});
