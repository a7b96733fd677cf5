//! JSON output: one object per line for `trace --json`, and the `/bindings` view.
//!
//! ```text
//! {"type":"operation","kind":"bind","start_ns":…,"device":"0000:01:00.0",…,"result":"error","errno":"EBUSY","layer":"pci_tsm","function":"pci_tsm_bind"}
//! {"type":"leak","event":"detected","device":"0000:01:00.0","reason":"vm_destroyed",…}
//! {"type":"leak","event":"cleared",…,"cleared_by":"unbound"}
//! {"type":"vm_event","event":"vm_destroyed",…}
//! {"type":"sysfs_mismatch","kind":"denies_binding","device":…}
//! {"type":"binding_closed","cause":"disconnect","binding":{"device":…},"closed_ns":…}
//! ```
//! Errnos are names (`EBUSY`, or `E<n>` for one without a name); times are CLOCK_MONOTONIC ns.

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
    };
    serde_json::to_string(&l).ok()
}

/// `/bindings`: what the correlator believes now.
#[derive(Clone, Debug, Serialize)]
pub struct BindingsView {
    pub bindings: Vec<Binding>,
    /// Devices per PCI TSM lifecycle state (connected, bound, disconnected).
    pub devices: std::collections::BTreeMap<crate::correlate::TsmState, usize>,
    pub leaks: Vec<Leak>,
    /// Frames waiting for their outer call.
    pub pending_frames: usize,
}

impl BindingsView {
    pub fn of(c: &Correlator) -> BindingsView {
        BindingsView {
            bindings: c.bindings().into_iter().cloned().collect(),
            devices: c.device_states(),
            leaks: c.leaks().cloned().collect(),
            pending_frames: c.pending_frames(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
