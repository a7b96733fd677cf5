//! The trace session's operations, taken in order, and their frames against the link ops'
//! own records: device, return value, latency, the unbinds inside, the bindings closed.

use serde_json::Value;

use super::output::{Record, frames, raw};
use super::truth::{Kv, Truth, ptr, t};
use crate::vm::checks::{Checks, s};
use crate::vm::kv::pe_name;

/// The latency tolerance of the probe suite's driver_bind check: 1% + 2 ms (TCG probe overhead).
fn tolerance(ns: f64) -> f64 {
    ns * 0.01 + 2_000_000.0
}

/// A decoded VM (`{"id","pid","stats_id"}`) against the stand-in's record of it.
pub(super) fn check_vm(c: &mut Checks, vm: &Value, kv: &Kv, what: &str) {
    c.vm_id(&s(vm, "id"), &t(kv, "kvm"), &format!("{what} vm.id"));
    c.eq(s(vm, "pid"), t(kv, "kvm_pid"), &format!("{what} vm.pid"));
    c.eq(
        s(vm, "stats_id"),
        t(kv, "stats_id"),
        &format!("{what} vm.stats_id"),
    );
}

/// What one operation must look like.
#[derive(Default)]
pub(super) struct Want {
    pub(super) kind: &'static str,
    pub(super) device: String,
    pub(super) tsm: Option<String>,
    /// "" = ok.
    pub(super) errno: String,
    pub(super) layer: &'static str,
    pub(super) function: String,
    pub(super) cause: Option<&'static str>,
}

/// The operations of the trace session, consumed in order.
pub(super) struct Ops<'a> {
    pub(super) ops: Vec<&'a Value>,
    pub(super) cursor: usize,
}

impl<'a> Ops<'a> {
    /// The next operation of `kind` on `device` (at or after the cursor); checks the
    /// correlated fields against `w`.
    pub(super) fn take(&mut self, c: &mut Checks, step: &str, w: &Want) -> Option<&'a Value> {
        let found = (self.cursor..self.ops.len())
            .find(|&i| s(self.ops[i], "kind") == w.kind && s(self.ops[i], "device") == w.device);
        let Some(i) = found else {
            c.check(false, || {
                format!(
                    "{step}: no {} operation on {} after operation #{}",
                    w.kind, w.device, self.cursor
                )
            });
            return None;
        };
        c.eq(
            i,
            self.cursor,
            &format!(
                "{step}: {} operation is the next one (operations skipped before it)",
                w.kind
            ),
        );
        self.cursor = i + 1;
        let o = self.ops[i];
        let want_result = if w.errno.is_empty() { "ok" } else { "error" };
        c.eq(
            s(o, "result"),
            want_result.into(),
            &format!("{step}: result"),
        );
        c.eq(s(o, "errno"), w.errno.clone(), &format!("{step}: errno"));
        if !w.errno.is_empty() {
            c.eq(
                s(o, "layer"),
                w.layer.to_string(),
                &format!("{step}: {} attributed layer", w.errno),
            );
            c.eq(
                s(o, "function"),
                w.function.clone(),
                &format!("{step}: {} attributed function", w.errno),
            );
        }
        if let Some(tsm) = &w.tsm {
            c.eq(s(o, "tsm"), tsm.clone(), &format!("{step}: operation tsm"));
        }
        if let Some(cause) = w.cause {
            c.eq(
                s(o, "cause"),
                cause.to_string(),
                &format!("{step}: operation cause"),
            );
        }
        Some(o)
    }
}

/// Checks a driver frame's duration against the link op's own `ns=`: the frame contains the
/// op's own measurement; for the delayed ops (>= 15 ms) it is within the tolerance too
/// (shorter ops are dominated by probe overhead, which under TCG is milliseconds on a probe's
/// first hit).
fn latency(c: &mut Checks, what: &str, frame: &Value, ev: &Kv) {
    let measured = frame["duration_ns"].as_f64().unwrap_or(0.0);
    let own: f64 = t(ev, "ns").parse().unwrap_or(-1.0);
    c.check(own >= 0.0 && measured >= own, || {
        format!(
            "{what}: frame took {measured} ns, less than the {own} ns the link op measured itself"
        )
    });
    if own >= 15_000_000.0 {
        c.check(measured - own <= tolerance(own), || {
            format!(
                "{what}: frame took {measured} ns, the link op measured {own} ns itself (tolerance {})",
                tolerance(own)
            )
        });
    }
}

/// Checks the driver frames of `probe` against the link op events `op` of the step, in order:
/// device, return value, latency.
pub(super) fn driver_frames(
    c: &mut Checks,
    rec: &Record,
    step: &str,
    o: &Value,
    truth: &Truth,
    op: &str,
) -> usize {
    let probe = format!("driver_{op}");
    let evs = truth.events(step, op);
    let fs = frames(o, &probe);
    let raws = raw(rec, o, &probe);
    c.eq(
        fs.len(),
        evs.len(),
        &format!("{step}: {probe} frames vs the link op's {op} records"),
    );
    c.eq(
        raws.len(),
        fs.len(),
        &format!("{step}: {probe} frames found in the record file"),
    );
    for (i, ((f, r), ev)) in fs.iter().zip(&raws).zip(&evs).enumerate() {
        let what = format!("{step}: {probe} #{i}");
        c.eq(s(r, "device"), t(ev, "dev"), &format!("{what} device"));
        latency(c, &what, f, ev);
        match op {
            "probe" => {
                let null = t(ev, "ret") == "null";
                c.eq(
                    f["null_return"].as_bool().unwrap_or(false),
                    null,
                    &format!("{what} null_return"),
                );
                c.eq(
                    r["ret"].as_i64() == Some(0),
                    null,
                    &format!("{what} ret NULL"),
                );
                c.eq(s(r, "tsm"), t(ev, "tsm"), &format!("{what} tsm"));
            }
            "connect" => {
                c.eq(s(r, "ret"), t(ev, "rc"), &format!("{what} ret"));
                c.eq(
                    s(f, "errno"),
                    pe_name(&t(ev, "err")),
                    &format!("{what} errno"),
                );
            }
            "bind" => {
                c.eq(s(r, "tdi_id"), t(ev, "tdi_id"), &format!("{what} tdi_id"));
                c.vm_id(&s(&r["vm"], "id"), &t(ev, "kvm"), &format!("{what} vm.id"));
                // A valid pointer is reported as 1, never as its address.
                c.check(
                    r["ret_is_ptr"] == true && r["ret"].as_i64() == Some(1),
                    || {
                        format!(
                            "{what}: ret {:?} is not a valid struct pci_tdi pointer (1)",
                            r["ret"]
                        )
                    },
                );
            }
            "guest_req" => {
                for k in ["scope", "in_len", "out_len", "tdi_id"] {
                    c.eq(s(r, k), t(ev, k), &format!("{what} {k}"));
                }
                c.eq(
                    r["tsm_code"].as_u64(),
                    ptr(&t(ev, "tsm_code")),
                    &format!("{what} tsm_code"),
                );
                c.eq(s(r, "ret"), t(ev, "ret"), &format!("{what} ret"));
            }
            _ => {}
        }
    }
    fs.len()
}

/// Checks the `__pci_tsm_unbind` frames of an operation against the link op's unbind records:
/// every function the core unbound (device, kvm, tdi, tsm), and those it found unbound.
pub(super) fn unbind_any_frames(
    c: &mut Checks,
    rec: &Record,
    step: &str,
    o: &Value,
    truth: &Truth,
    tsm: &str,
) {
    let unbinds = truth.events(step, "unbind");
    let raws = raw(rec, o, "pci_tsm_unbind_any");
    c.eq(
        raws.len(),
        frames(o, "pci_tsm_unbind_any").len(),
        &format!("{step}: pci_tsm_unbind_any frames in the record file"),
    );
    let bound: Vec<&&Value> = raws.iter().filter(|r| r["nothing_bound"] != true).collect();
    c.eq(
        bound.len(),
        unbinds.len(),
        &format!("{step}: pci_tsm_unbind_any that unbound vs the link op's unbind records"),
    );
    for ev in &unbinds {
        let dev = t(ev, "dev");
        match bound.iter().find(|r| s(r, "device") == dev) {
            Some(r) => {
                c.vm_id(
                    &s(&r["vm"], "id"),
                    &t(ev, "kvm"),
                    &format!("{step}: pci_tsm_unbind_any {dev} vm.id"),
                );
                c.eq(
                    s(r, "tdi_id"),
                    t(ev, "tdi_id"),
                    &format!("{step}: pci_tsm_unbind_any {dev} tdi_id"),
                );
                c.eq(
                    s(r, "tsm"),
                    tsm.to_string(),
                    &format!("{step}: pci_tsm_unbind_any {dev} tsm"),
                );
                c.eq(
                    s(r, "ret"),
                    "0".to_string(),
                    &format!("{step}: pci_tsm_unbind_any {dev} ret"),
                );
            }
            None => c.check(false, || {
                format!("{step}: no pci_tsm_unbind_any of {dev} (which the link op unbound)")
            }),
        }
    }
    for r in raws.iter().filter(|r| r["nothing_bound"] == true) {
        let dev = s(r, "device");
        c.check(!unbinds.iter().any(|ev| t(ev, "dev") == dev), || {
            format!(
                "{step}: pci_tsm_unbind_any of {dev} says nothing_bound, but the link op unbound it"
            )
        });
    }
}

/// `binding_closed` lines for each device the step's link op unbound, with `cause`.
pub(super) fn closed(
    c: &mut Checks,
    trace: &[Value],
    step: &str,
    truth: &Truth,
    cause: &str,
    kvm: &str,
) {
    let name = c.vm_name_of(kvm);
    for ev in truth.events(step, "unbind") {
        let dev = t(ev, "dev");
        let n = trace
            .iter()
            .filter(|l| {
                s(l, "type") == "binding_closed"
                    && s(&l["binding"], "device") == dev
                    && s(l, "cause") == cause
                    && s(&l["binding"], "tdi_id") == t(ev, "tdi_id")
                    && name.as_deref() == Some(s(&l["binding"]["vm"], "id").as_str())
            })
            .count();
        c.check(n >= 1, || {
            format!(
                "{step}: no binding_closed of {dev} (tdi {}) with cause {cause}",
                t(ev, "tdi_id")
            )
        });
    }
}
