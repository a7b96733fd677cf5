//! JSON output: one object per line for `trace --json`, and the `/bindings` view.
//!
//! ```text
//! {"type":"operation","kind":"bind","start_ns":…,"device":"0000:01:00.0",…,"result":"error","errno":"EBUSY","layer":"pci_tsm","function":"pci_tsm_bind"}
//! {"type":"leak","event":"detected","device":"0000:01:00.0","reason":"vm_destroyed",…}
//! {"type":"leak","event":"cleared",…,"cleared_by":"unbound"}
//! {"type":"vm_event","event":"vm_destroyed",…}
//! {"type":"sysfs_mismatch","kind":"denies_binding","device":…}
//! {"type":"binding_closed","cause":"disconnect","binding":{"device":…},"closed_ns":…}
//! {"type":"lost","count":2875,"reason":"ringbuf_full","time_ns":…}
//! ```
//! `lost` lines (events the kernel could not deliver, where the gap is) are written by
//! `exporters/loss.rs`.
//! Errnos are names (`EBUSY`, or `E<n>` for one without a name); `*_ns` times are
//! CLOCK_MONOTONIC ns (dmesg's clock, in ns); where the wall clock is known (a live session,
//! a capture that recorded it) each line starts with `"time"`, RFC 3339 UTC, of its event.

use serde::Serialize;

use crate::correlate::{Binding, Correlator, Leak, Output};

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Operation(&'a crate::correlate::Operation),
    Leak {
        event: &'static str,
        #[serde(flatten)]
        leak: &'a Leak,
    },
    VmEvent(&'a crate::correlate::VmEvent),
    SysfsMismatch(&'a crate::correlate::Mismatch),
    Anomaly(&'a crate::correlate::Anomaly),
    BindingClosed(&'a crate::correlate::BindingClosed),
    IdeStreamLeak {
        event: &'static str,
        #[serde(flatten)]
        leak: &'a crate::correlate::IdeLeakChange,
    },
}

/// [`line`] with `"time"` (RFC 3339 UTC) first when the CLOCK_REALTIME − CLOCK_MONOTONIC
/// offset is known.
pub fn line_at(out: &Output, anomalies: bool, realtime_offset_ns: Option<i64>) -> Option<String> {
    let l = line(out, anomalies)?;
    match (realtime_offset_ns, out.time_ns()) {
        // `l` is a JSON object: `{"type":…`.
        (Some(off), Some(t)) if l.starts_with('{') => Some(format!(
            "{{\"time\":\"{}\",{}",
            crate::clock::rfc3339(t, off),
            &l[1..]
        )),
        _ => Some(l),
    }
}

/// The JSON line for an output (without the newline). Anomalies are included only when
/// `anomalies` is set.
pub fn line(out: &Output, anomalies: bool) -> Option<String> {
    let l = match out {
        Output::Operation(op) => Line::Operation(op),
        Output::LeakDetected(leak) => Line::Leak {
            event: "detected",
            leak,
        },
        Output::LeakCleared(leak) => Line::Leak {
            event: "cleared",
            leak,
        },
        Output::VmEvent(v) => Line::VmEvent(v),
        Output::Mismatch(m) => Line::SysfsMismatch(m),
        Output::Anomaly(a) if anomalies => Line::Anomaly(a),
        Output::Anomaly(_) => return None,
        Output::BindingClosed(c) => Line::BindingClosed(c),
        Output::IdeStreamLeaked(leak) => Line::IdeStreamLeak {
            event: "detected",
            leak,
        },
        Output::IdeStreamLeakCleared(leak) => Line::IdeStreamLeak {
            event: "cleared",
            leak,
        },
    };
    serde_json::to_string(&l).ok()
}

/// `/bindings`: what the correlator believes now. Each binding and leak carries its `*_ns`
/// times (CLOCK_MONOTONIC, dmesg's clock) and the same instants as RFC 3339 UTC (`*_time`);
/// `boot_id` says which boot the `*_ns` belong to.
#[derive(Clone, Debug, Serialize)]
pub struct BindingsView {
    pub boot_id: String,
    pub bindings: Vec<Timed<Binding>>,
    /// Devices per PCI TSM lifecycle state (connected, bound, disconnected).
    pub devices: std::collections::BTreeMap<crate::correlate::TsmState, usize>,
    pub leaks: Vec<Timed<Leak>>,
    /// PCIe IDE streams allocated and not freed (state per port, registered, leak).
    pub ide_streams: Vec<Timed<crate::correlate::IdeStreamRecord>>,
    /// Frames waiting for their outer call.
    pub pending_frames: usize,
    /// Operations entered and not returned (all of them), and the oldest of them (bounded):
    /// device, VM, the function each is in, its age from the kernel's entry timestamp.
    pub operations_in_flight: usize,
    pub in_flight: Vec<crate::in_flight::InFlightView>,
}

/// A binding or leak with its times as wall-clock RFC 3339 beside the `*_ns`.
#[derive(Clone, Debug, Serialize)]
pub struct Timed<T> {
    #[serde(flatten)]
    pub item: T,
    #[serde(flatten)]
    pub times: std::collections::BTreeMap<&'static str, String>,
}

impl BindingsView {
    pub fn of(c: &Correlator) -> BindingsView {
        let off = crate::clock::realtime_offset_ns();
        let at = |ns: u64| crate::clock::rfc3339(ns, off);
        BindingsView {
            boot_id: crate::clock::boot_id(),
            bindings: c
                .bindings()
                .into_iter()
                .map(|b| Timed {
                    times: [("since_time", at(b.since_ns))].into(),
                    item: b.clone(),
                })
                .collect(),
            devices: c.device_states(),
            leaks: c
                .leaks()
                .map(|l| {
                    let mut times =
                        std::collections::BTreeMap::from([("detected_time", at(l.detected_ns))]);
                    if let Some(t) = l.bound_since_ns {
                        times.insert("bound_since_time", at(t));
                    }
                    if let Some(t) = l.cleared_ns {
                        times.insert("cleared_time", at(t));
                    }
                    Timed {
                        item: l.clone(),
                        times,
                    }
                })
                .collect(),
            ide_streams: c
                .ide_streams()
                .map(|s| {
                    let mut times = std::collections::BTreeMap::from([
                        ("since_time", at(s.since_ns)),
                        ("changed_time", at(s.changed_ns)),
                    ]);
                    if let Some(l) = &s.leak {
                        times.insert("leak_detected_time", at(l.detected_ns));
                    }
                    Timed {
                        item: s.clone(),
                        times,
                    }
                })
                .collect(),
            pending_frames: c.pending_frames(),
            operations_in_flight: 0,
            in_flight: Vec::new(),
        }
    }

    /// With the operations in flight as last read, aged at CLOCK_MONOTONIC now.
    pub fn with_in_flight(mut self, f: &crate::in_flight::InFlight) -> BindingsView {
        self.operations_in_flight = f.total;
        self.in_flight = f.view(crate::clock::monotonic_ns());
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{Config, Correlator};

    #[test]
    fn bindings_view_names_the_boot() {
        let c = Correlator::new(Config::default());
        let v: serde_json::Value = serde_json::from_str(&BindingsView::of(&c).to_json()).unwrap();
        assert_eq!(v["boot_id"], crate::clock::boot_id());
        assert!(v["bindings"].as_array().unwrap().is_empty());
    }
}
