//! PCIe IDE streams: the stream table (streams by state, registered, leaked, one info series
//! per leaked stream) and the `pci_ide_stream_*` steps (by step, port, result and errno; the
//! enable latency; connects that returned success with a stream that never reached Secure).
//!
//! The step counters and the enable histogram count the IDE frames of correlated operations:
//! a step whose record the ring buffer lost is not in them (`tsm_trace_events_lost_total`
//! says how many records were lost); the table gauges are reconciled against sysfs.

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus::Registry;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::{counter, counter_vec, gauge, gauge_vec};
use crate::aggregates::DURATION_BUCKETS;
use crate::correlate::{Correlator, IdeLeakChange, IdeLeakReason, IdeState, OpKind, Operation};
use crate::errno;
use crate::events::ProbeId;

/// The step label of an IDE probe (`pci_ide_stream_<step>`).
pub fn step(p: ProbeId) -> Option<&'static str> {
    Some(match p {
        ProbeId::IdeStreamAlloc => "alloc",
        ProbeId::IdeStreamRegister => "register",
        ProbeId::IdeStreamSetup => "setup",
        ProbeId::IdeStreamEnable => "enable",
        ProbeId::IdeStreamDisable => "disable",
        ProbeId::IdeStreamTeardown => "teardown",
        ProbeId::IdeStreamUnregister => "unregister",
        ProbeId::IdeStreamRelease => "release",
        ProbeId::IdeStreamFree => "free",
        _ => return None,
    })
}

fn is_per_port(p: ProbeId) -> bool {
    matches!(
        p,
        ProbeId::IdeStreamSetup
            | ProbeId::IdeStreamEnable
            | ProbeId::IdeStreamDisable
            | ProbeId::IdeStreamTeardown
    )
}

/// The per-port steps act on the endpoint or on its root port; the others on the stream.
fn port_of(p: ProbeId, acted_on: Option<&str>, endpoint: Option<&str>) -> &'static str {
    if !is_per_port(p) {
        return "stream";
    }
    match (acted_on, endpoint) {
        (Some(a), Some(e)) if a == e => "endpoint",
        (Some(_), Some(_)) => "root_port",
        _ => "unknown",
    }
}

pub(super) struct Ide {
    streams: IntGaugeVec,
    registered: IntGauge,
    leaked: IntGaugeVec,
    leaks_detected: IntCounterVec,
    leaked_info: IntGaugeVec,
    /// The label sets of `leaked_info` shown now.
    shown: Mutex<BTreeSet<[String; 4]>>,
    steps: IntCounterVec,
    enable_duration: HistogramVec,
    insecure_connects: IntCounter,
}

impl Ide {
    /// Creates and registers the metrics (static definitions: the `expect`s cannot fail); the
    /// known label sets start at 0.
    pub(super) fn register(r: &Registry) -> Ide {
        let streams = gauge_vec(
            r,
            "tsm_trace_ide_streams",
            "PCIe IDE streams allocated and not yet freed, by state: allocated, set_up, enabled (Secure on every port enabled), not_secure (an enable failed: the stream did not reach Secure), disabled, torn_down, unknown (registered before the daemon watched).",
            &["state"],
        );
        let registered = gauge(
            r,
            "tsm_trace_ide_streams_registered",
            "PCIe IDE streams registered (holding a stream id on their host bridge: the sysfs stream<H>.<R>.<E> link).",
        );
        let leaked = gauge_vec(
            r,
            "tsm_trace_ide_streams_leaked",
            "PCIe IDE streams still registered or enabled after their endpoint was disconnected or removed or its TSM unregistered, by reason.",
            &["reason"],
        );
        let leaks_detected = counter_vec(
            r,
            "tsm_trace_ide_stream_leaks_detected_total",
            "Leaked PCIe IDE streams detected, by reason (stays when the leak clears).",
            &["reason"],
        );
        let leaked_info = gauge_vec(
            r,
            "tsm_trace_leaked_ide_stream_info",
            "1 for each currently leaked PCIe IDE stream.",
            &["device", "stream", "host_bridge", "reason"],
        );
        let steps = counter_vec(
            r,
            "tsm_trace_ide_stream_operations_total",
            "Calls of pci_ide_stream_<step> by step, port (endpoint, root_port, or stream for the calls on the whole stream), result and errno.",
            &["step", "port", "result", "errno"],
        );
        let enable_duration = HistogramVec::new(
            HistogramOpts::new(
                "tsm_trace_ide_stream_enable_duration_seconds",
                "Duration of pci_ide_stream_enable (enable the port and wait for Secure), by port and result.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["port", "result"],
        )
        .expect("valid metric definition");
        r.register(Box::new(enable_duration.clone()))
            .expect("unique metric name");
        let insecure_connects = counter(
            r,
            "tsm_trace_ide_insecure_connects_total",
            "Connects that returned success although a pci_ide_stream_enable in them failed: the link goes on without a Secure IDE stream (SEV-TIO tolerates the -ENXIO).",
        );
        for s in IdeState::ALL {
            streams.with_label_values(&[s.as_str()]).set(0);
        }
        // Every step's successes on the ports it acts on, and the enable latency per port.
        for p in ProbeId::ALL.into_iter().filter(|p| p.is_ide()) {
            let step = step(p).expect("an IDE probe");
            if is_per_port(p) {
                for port in ["endpoint", "root_port"] {
                    steps.with_label_values(&[step, port, "ok", ""]);
                }
            } else {
                steps.with_label_values(&[step, "stream", "ok", ""]);
            }
        }
        for port in ["endpoint", "root_port"] {
            enable_duration.with_label_values(&[port, "ok"]);
        }
        for r in IdeLeakReason::ALL {
            leaked.with_label_values(&[r.as_str()]).set(0);
            leaks_detected.with_label_values(&[r.as_str()]);
        }
        Ide {
            streams,
            registered,
            leaked,
            leaks_detected,
            leaked_info,
            shown: Mutex::new(BTreeSet::new()),
            steps,
            enable_duration,
            insecure_connects,
        }
    }

    /// Counts an operation's IDE steps.
    pub(super) fn observe(&self, op: &Operation) {
        let mut enable_failed = false;
        for f in op.frames.iter().filter(|f| f.probe.is_ide()) {
            let Some(step) = step(f.probe) else { continue };
            let endpoint = f.ide.as_ref().and_then(|i| i.endpoint.as_deref());
            let port = port_of(f.probe, f.device.as_deref(), endpoint);
            let (result, e) = match f.errno {
                Some(e) => ("error", errno::name(e)),
                None if f.null_return => ("error", "NULL".to_string()),
                None => ("ok", String::new()),
            };
            self.steps
                .with_label_values(&[step, port, result, &e])
                .inc();
            if f.probe == ProbeId::IdeStreamEnable {
                enable_failed |= result == "error";
                if !f.entry_missing {
                    self.enable_duration
                        .with_label_values(&[port, result])
                        .observe(f.duration_ns as f64 / 1e9);
                }
            }
        }
        if enable_failed && op.kind == OpKind::Connect && op.ok() {
            self.insecure_connects.inc();
        }
    }

    pub(super) fn leak_detected(&self, l: &IdeLeakChange) {
        self.leaks_detected
            .with_label_values(&[l.reason.as_str()])
            .inc();
    }

    /// Sets the gauges and the leaked streams' info series from the stream table.
    pub(super) fn sync(&self, c: &Correlator) {
        let n = c.ide_counts();
        for (s, v) in IdeState::ALL.iter().zip(n.by_state) {
            self.streams.with_label_values(&[s.as_str()]).set(v as i64);
        }
        self.registered.set(n.registered as i64);
        for (r, v) in IdeLeakReason::ALL.iter().zip(n.leaked) {
            self.leaked.with_label_values(&[r.as_str()]).set(v as i64);
        }
        let now: BTreeSet<[String; 4]> = c
            .ide_streams()
            .filter_map(|s| {
                let l = s.leak.as_ref()?;
                Some([
                    s.endpoint.clone(),
                    s.label().to_string(),
                    s.host_bridge.clone().unwrap_or_default(),
                    l.reason.as_str().to_string(),
                ])
            })
            .collect();
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for gone in shown.difference(&now) {
            let labels: Vec<&str> = gone.iter().map(String::as_str).collect();
            let _ = self.leaked_info.remove_label_values(&labels);
        }
        for new in now.difference(&shown) {
            let labels: Vec<&str> = new.iter().map(String::as_str).collect();
            self.leaked_info.with_label_values(&labels).set(1);
        }
        *shown = now;
    }
}
