//! The lifecycle suite: what `tsm-trace` reported about the REAL PCI TSM core (connect,
//! disconnect, removal, TSM unregistration, bind, unbind, guest requests) against the
//! fixtures' ground truth (`tests/vm/scenarios/lifecycle.sh` produces both).
//!
//! Expectations come only from the fixtures and from what the script did, never from a
//! table shared with tsm-trace:
//! - errno names: always the kernel's own `%pe` (`err=-EIO`): where a fixture op or ctl
//!   recorded the failure, its record; for a failed sysfs write, the errno the write returned
//!   (`tests/vm/tools/sysfs_write.c`) named by the kernel (`tsm_linktsm`'s `errname`);
//! - the layer (and function) an error is attributed to: the fixture link op that recorded
//!   the failure (`tsm_driver`, `driver_<op>`), else the function the script entered;
//! - decoded fields: sysfs writes, the link ops' `events` log, the fixtures' `last` records;
//! - latency: every driver frame against the duration the link op measured itself;
//! - the daemons: exact `/metrics` values, `/bindings` and `--print json` lines per phase.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::vm::checks::{Checks, parse_exposition};
use crate::vm::kv::{parse_kv, pe_name};
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/lifecycle.sh";

const A: &str = "0000:00:04.0";
const B: &str = "0000:00:04.1";
const C: &str = "0000:00:05.0";

/// The probes of the PCI TSM lifecycle (absent, with a reason, on kernels without PCI TSM).
const LIFECYCLE_PROBES: &[&str] = &[
    "connect",
    "disconnect",
    "pci_tsm_disconnect",
    "pci_tsm_unbind_any",
    "pci_tsm_destroy",
    "pci_tsm_guest_req",
    "driver_probe",
    "driver_connect",
    "driver_disconnect",
    "driver_bind",
    "driver_unbind",
    "driver_guest_req",
];

/// Every probe the trace session must attach on 7.x.
const TRACE_PROBES: &[&str] = &[
    "tsm_op_ioctl",
    "tsm_bind",
    "tsm_unbind",
    "vdevice_abort",
    "pci_tsm_bind",
    "pci_tsm_unbind",
    "connect",
    "disconnect",
    "pci_tsm_disconnect",
    "pci_tsm_unbind_any",
    "pci_tsm_destroy",
    "pci_tsm_guest_req",
    "driver_probe",
    "driver_connect",
    "driver_disconnect",
    "driver_bind",
    "driver_unbind",
    "driver_guest_req",
    "kvm_destroy_vm",
    "vmm_exit",
];

/// The latency tolerance of the probe suite's driver_bind check: 1% + 2 ms (TCG probe overhead).
fn tolerance(ns: f64) -> f64 {
    ns * 0.01 + 2_000_000.0
}

type Kv = BTreeMap<String, String>;

/// One ground-truth line: `step=<name> src=<source> ...`.
struct Rec {
    step: String,
    src: String,
    kv: Kv,
}

struct Truth(Vec<Rec>);

impl Truth {
    fn parse(text: &str) -> Truth {
        Truth(
            text.lines()
                .filter_map(|l| {
                    let kv = parse_kv(l);
                    // The step and source are the first two keys; the rest is a fixture line
                    // (whose own keys never include step or src).
                    let step = kv.get("step")?.clone();
                    let src = kv.get("src")?.clone();
                    Some(Rec { step, src, kv })
                })
                .collect(),
        )
    }

    fn all(&self, step: &str, src: &str) -> std::vec::IntoIter<&Kv> {
        self.0
            .iter()
            .filter(|r| r.step == step && r.src == src)
            .map(|r| &r.kv)
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The first record of `src` in `step` satisfying `pred`.
    fn find(&self, step: &str, src: &str, pred: impl Fn(&Kv) -> bool) -> Result<&Kv> {
        self.all(step, src)
            .find(|kv| pred(kv))
            .with_context(|| format!("ground truth: no {src} record in step {step}"))
    }

    fn one(&self, step: &str, src: &str) -> Result<&Kv> {
        self.find(step, src, |_| true)
    }

    /// The standin/linktsm record of command `cmd` in `step`.
    fn ctl(&self, step: &str, src: &str, cmd: &str) -> Result<&Kv> {
        self.find(step, src, |kv| t(kv, "cmd") == cmd)
    }

    /// The link ops' own records of `op` in `step`, in order.
    fn events(&self, step: &str, op: &str) -> Vec<&Kv> {
        self.all(step, "event")
            .filter(|kv| t(kv, "op") == op)
            .collect()
    }

    /// The step's records with only the link op events of `dev`.
    fn for_dev(&self, step: &str, dev: &str) -> Truth {
        Truth(
            self.0
                .iter()
                .filter(|r| r.step == step && (r.src != "event" || t(&r.kv, "dev") == dev))
                .map(|r| Rec {
                    step: r.step.clone(),
                    src: r.src.clone(),
                    kv: r.kv.clone(),
                })
                .collect(),
        )
    }

    fn state(&self, step: &str, dev: &str) -> Result<&Kv> {
        self.find(step, "state", |kv| t(kv, "dev") == dev)
    }
}

fn t(kv: &Kv, k: &str) -> String {
    kv.get(k).cloned().unwrap_or_default()
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A pointer as a number (`0x%px`, `{:#x}` and zero padding all agree).
fn ptr(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// A decoded VM (`{"id","pid","stats_id"}`) against the stand-in's record of it.
fn check_vm(c: &mut Checks, vm: &Value, kv: &Kv, what: &str) {
    c.vm_id(&s(vm, "id"), &t(kv, "kvm"), &format!("{what} vm.id"));
    c.eq(s(vm, "pid"), t(kv, "kvm_pid"), &format!("{what} vm.pid"));
    c.eq(
        s(vm, "stats_id"),
        t(kv, "stats_id"),
        &format!("{what} vm.stats_id"),
    );
}

fn json_lines(out: &VmOutput, name: &str) -> Result<Vec<Value>> {
    out.section(name)?
        .text
        .lines()
        .filter(|l| l.starts_with('{'))
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{name} line {}: {l}", i + 1))
        })
        .collect()
}

/// The record file: every raw event, by (probe, start, end) for frames.
struct Record {
    evs: Vec<Value>,
}

impl Record {
    fn frame(&self, f: &Value) -> Option<&Value> {
        self.evs.iter().find(|e| {
            e["probe"] == f["probe"] && e["start_ns"] == f["start_ns"] && e["end_ns"] == f["end_ns"]
        })
    }
}

/// The raw events of an operation's frames of `probe`, in frame order.
fn raw<'a>(rec: &'a Record, op: &Value, probe: &str) -> Vec<&'a Value> {
    op["frames"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| s(f, "probe") == probe)
                .filter_map(|f| rec.frame(f))
                .collect()
        })
        .unwrap_or_default()
}

fn frames<'a>(op: &'a Value, probe: &str) -> Vec<&'a Value> {
    op["frames"]
        .as_array()
        .map(|fs| fs.iter().filter(|f| s(f, "probe") == probe).collect())
        .unwrap_or_default()
}

/// What one operation must look like.
#[derive(Default)]
struct Want {
    kind: &'static str,
    device: String,
    tsm: Option<String>,
    /// "" = ok.
    errno: String,
    layer: &'static str,
    function: String,
    cause: Option<&'static str>,
}

/// The operations of the trace session, consumed in order.
struct Ops<'a> {
    ops: Vec<&'a Value>,
    cursor: usize,
}

impl<'a> Ops<'a> {
    /// The next operation of `kind` on `device` (at or after the cursor); checks the
    /// correlated fields against `w`.
    fn take(&mut self, c: &mut Checks, step: &str, w: &Want) -> Option<&'a Value> {
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

/// Which fixture op recorded a failure in `step`: its driver function (layer tsm_driver).
fn failing_link_op(truth: &Truth, step: &str) -> Option<String> {
    truth
        .all(step, "event")
        .rfind(|kv| t(kv, "err") != "0" || t(kv, "ret") == "null")
        .map(|kv| format!("driver_{}", t(kv, "op")))
}

/// The errno of a failed sysfs write, or None when it succeeded: the number the write
/// returned (`errno=`) and the kernel's name for it (`err=`, its `%pe`).
fn write_errno(kv: &Kv) -> Result<Option<(String, i64)>> {
    match t(kv, "write").as_str() {
        "ok" => Ok(None),
        "fail" => {
            let n: i64 = t(kv, "errno")
                .parse()
                .with_context(|| format!("a failed sysfs write without its errno: {kv:?}"))?;
            Ok(Some((pe_name(&t(kv, "err")), n)))
        }
        other => bail!("sysfs write result {other:?} is neither ok nor fail: {kv:?}"),
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
fn driver_frames(
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
fn unbind_any_frames(
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
fn closed(c: &mut Checks, trace: &[Value], step: &str, truth: &Truth, cause: &str, kvm: &str) {
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

/// Startup report and exit of the trace session.
fn health(c: &mut Checks, err: &str, what: &str, probes: &[&str]) {
    for p in probes {
        c.check(
            err.lines()
                .any(|l| l.contains("probe attached") && l.split_whitespace().any(|w| w == *p)),
            || format!("{what}: probe {p} not attached"),
        );
    }
    c.check(!err.contains("UNRESOLVED"), || {
        format!("{what}: BTF fields unresolved")
    });
}

/// The lifecycle suite on a kernel with PCI TSM (7.x).
pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let kernel = &out.section("lc_kernel")?.text;
    if !kernel.contains("pci_tsm=1") {
        bail!(
            "lifecycle: the kernel has CONFIG_PCI_TSM but the guest could not load tsm_linktsm ({}; logs in {})",
            kernel.trim(),
            out.run_dir.display()
        );
    }
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let check_out = &out.section("lc_check")?.text;
    health(&mut c, check_out, "tsm-trace check", TRACE_PROBES);
    c.check(check_out.lines().any(|l| l == "exit=0"), || {
        format!("tsm-trace check failed:\n{check_out}")
    });
    trace_session(&mut c, out)?;
    daemons(&mut c, out)?;
    c.finish("lifecycle", out)
}

/// Kernels without PCI TSM (6.1): `tsm-trace check` reports every lifecycle probe absent,
/// each with a reason, and still succeeds (the stand-in's bind path attaches).
pub fn check_absent(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    let kernel = &out.section("lc_kernel")?.text;
    c.eq(
        kernel.trim().to_string(),
        "pci_tsm=0".to_string(),
        "lc_kernel on a kernel without PCI TSM",
    );
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let text = &out.section("lc_check")?.text;
    c.check(text.lines().any(|l| l == "exit=0"), || {
        format!("tsm-trace check failed:\n{text}")
    });
    for p in LIFECYCLE_PROBES {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&"probe")
                    && w.contains(p)
                    && (w.get(1) == Some(&"attached") && w.get(2) == Some(p)
                        || w.get(1) == Some(&"NOT") && w.get(3) == Some(p)
                        || w.get(1) == Some(&"skipped") && w.get(2) == Some(p))
            })
            .collect();
        c.check(!lines.is_empty(), || {
            format!("check: no line for probe {p}:\n{text}")
        });
        for l in lines {
            c.check(
                (l.contains("NOT ATTACHED") || l.contains(" skipped "))
                    && l.contains('(')
                    && l.ends_with(')'),
                || format!("check: probe {p} must be absent with a reason: {l}"),
            );
        }
    }
    for absent in ["lc_trace.err", "lc_truth"] {
        c.check(!out.sections.contains_key(absent), || {
            format!("{absent} printed on a kernel without PCI TSM")
        });
    }
    c.finish("lifecycle", out)
}

fn trace_session(c: &mut Checks, out: &VmOutput) -> Result<()> {
    let truth = Truth::parse(&out.section("lc_truth")?.text);
    let err = &out.section("lc_trace.err")?.text;
    c.check(err.contains("tracing with"), || {
        format!("tsm-trace did not start:\n{err}")
    });
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("tsm-trace did not exit 0:\n{err}")
    });
    health(c, err, "trace", TRACE_PROBES);
    c.check(
        err.contains("lost events: 0 (ring buffer full), 0 (in-flight table full), 0 returns without entry, 0 returns never seen; 0 kernel read faults")
            && err.lines().any(|l| l.starts_with("kernel misses: 0 (kprobe") && l.ends_with(", 0 (BPF recursion)")),
        || format!("trace: events lost or reads faulted:\n{}", err.lines().filter(|l| l.contains("lost")).collect::<Vec<_>>().join("\n")),
    );
    let rec = Record {
        evs: json_lines(out, "lc_record.jsonl")?
            .into_iter()
            .filter(|v| v.get("probe").is_some())
            .collect(),
    };
    let trace = json_lines(out, "lc_trace.jsonl")?;
    let mut ops = Ops {
        ops: trace
            .iter()
            .filter(|v| s(v, "type") == "operation")
            .collect(),
        cursor: 0,
    };
    let tsm = t(truth.ctl("register", "linktsm", "register")?, "tsm");
    c.eq(
        t(truth.ctl("register", "linktsm", "register")?, "rc"),
        "0".into(),
        "register: rc",
    );

    // ---- Connects through tsm/connect -----------------------------------------------
    for step in [
        "connect_badname",
        "connect_notsm",
        "connect_probe_fail",
        "connect_eio",
        "connect_A",
        "connect_twice",
        "connect_C",
        "reconnect_A",
    ] {
        let w = truth.one(step, "sysfs")?;
        let file = t(w, "file");
        let dev = file.split('/').nth(5).unwrap_or_default().to_string();
        let errno = write_errno(w)?;
        let driver_fail = failing_link_op(&truth, step);
        // The caller's errno; where a link op recorded its own failure with %pe and the core
        // passed it up unchanged (connect), its name must be the write's.
        if let (Some((name, _)), Some(f)) = (&errno, &driver_fail) {
            let ev = truth
                .all(step, "event")
                .rfind(|kv| format!("driver_{}", t(kv, "op")) == *f)
                .cloned()
                .unwrap_or_default();
            if f == "driver_connect" {
                c.eq(
                    pe_name(&t(&ev, "err")),
                    name.clone(),
                    &format!("{step}: the link op's %pe vs the write's errno"),
                );
            }
        }
        let want = Want {
            kind: "connect",
            device: dev.clone(),
            tsm: Some(t(w, "value")),
            errno: errno.as_ref().map(|e| e.0.clone()).unwrap_or_default(),
            layer: if driver_fail.is_some() {
                "tsm_driver"
            } else {
                "pci_tsm"
            },
            function: driver_fail.clone().unwrap_or_else(|| "connect".into()),
            cause: None,
        };
        let Some(o) = ops.take(c, step, &want) else {
            continue;
        };
        c.eq(
            s(o, "tgid"),
            t(w, "pid"),
            &format!("{step}: tgid (the writing process)"),
        );
        let rs = raw(&rec, o, "connect");
        c.eq(rs.len(), 1, &format!("{step}: one connect frame"));
        if let Some(r) = rs.first() {
            c.eq(
                s(r, "device"),
                dev.clone(),
                &format!("{step}: connect device"),
            );
            c.eq(
                s(r, "tsm"),
                t(w, "value"),
                &format!("{step}: connect tsm (the name written)"),
            );
            let want_ret = match errno {
                Some((_, n)) => -n,
                None => t(w, "len").parse().unwrap_or(-1),
            };
            c.eq(
                r["ret"].as_i64(),
                Some(want_ret),
                &format!("{step}: connect_store ret"),
            );
        }
        driver_frames(c, &rec, step, o, &truth, "probe");
        driver_frames(c, &rec, step, o, &truth, "connect");
        let n_frames = o["frames"].as_array().map_or(0, Vec::len);
        let n_events = truth.events(step, "probe").len() + truth.events(step, "connect").len();
        c.eq(
            n_frames,
            1 + n_events,
            &format!("{step}: frames = connect_store + one per link op call"),
        );
        if step == "connect_probe_fail" {
            c.eq(
                truth.events(step, "probe").first().map(|e| t(e, "err")),
                Some("-ENODEV".into()),
                "connect_probe_fail: injected probe failure recorded",
            );
        }
        if step == "connect_A" {
            let ev = truth.events(step, "connect");
            c.check(
                ev.first()
                    .is_some_and(|e| t(e, "ns").parse::<u64>().unwrap_or(0) >= 15_000_000),
                || "connect_A: the 20 ms connect delay did not happen".into(),
            );
            c.eq(
                truth
                    .events(step, "probe")
                    .iter()
                    .map(|e| t(e, "dev"))
                    .collect::<Vec<_>>(),
                vec![A.to_string(), B.to_string()],
                "connect_A: probes of A then B",
            );
        }
        // Ops the core ran in between (bind, guest requests, ...) are checked by their steps.
        match step {
            "connect_twice" => ops_after_connect(c, &truth, &rec, &trace, &mut ops, &tsm)?,
            "connect_C" => ops_after_connect_c(c, &truth, &rec, &trace, &mut ops, &tsm)?,
            "reconnect_A" => ops_after_reconnect(c, &truth, &rec, &trace, &mut ops, &tsm)?,
            _ => {}
        }
    }
    c.eq(
        ops.cursor,
        ops.ops.len(),
        "trace: operations beyond those the script made",
    );
    let leaks: Vec<&Value> = trace.iter().filter(|v| s(v, "type") == "leak").collect();
    c.check(leaks.is_empty(), || {
        format!("trace: leaks reported, none expected: {leaks:?}")
    });
    let mism: Vec<&Value> = trace
        .iter()
        .filter(|v| s(v, "type") == "sysfs_mismatch")
        .collect();
    c.check(mism.is_empty(), || {
        format!("trace: sysfs mismatches in trace mode: {mism:?}")
    });
    Ok(())
}

/// A bind through the standin's ioctl (realpci 1 → the real pci_tsm_bind → linktsm_bind).
fn bind(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    ops: &mut Ops,
    step: &str,
    vdev: &str,
    tsm: &str,
) -> Result<()> {
    let kv = truth.find(step, "standin", |kv| {
        t(kv, "cmd") == "ioctl" && t(kv, "vdevice_id") == vdev && t(kv, "op") == "1"
    })?;
    c.eq(t(kv, "rc"), "0".into(), &format!("{step}: ioctl bind rc"));
    c.eq(
        t(kv, "layer"),
        "pci_tsm_bind".into(),
        &format!("{step}: the standin called the real pci_tsm_bind"),
    );
    let dev = t(kv, "dev");
    c.eq(
        t(truth.state(step, &dev)?, "bound"),
        tsm.to_string(),
        &format!("{step}: sysfs tsm/bound of {dev}"),
    );
    let w = Want {
        kind: "bind",
        device: dev.clone(),
        ..Want::default()
    };
    let Some(o) = ops.take(c, step, &w) else {
        return Ok(());
    };
    c.eq(s(o, "tgid"), t(kv, "pid"), &format!("{step}: tgid"));
    c.eq(
        s(o, "vdevice_id"),
        vdev.to_string(),
        &format!("{step}: vdevice_id"),
    );
    c.eq(
        s(o, "tdi_id"),
        t(kv, "tdi_id"),
        &format!("{step}: operation tdi_id"),
    );
    check_vm(c, &o["vm"], kv, &format!("{step}: operation"));
    let fs: Vec<String> = o["frames"]
        .as_array()
        .map(|f| f.iter().map(|f| s(f, "probe")).collect())
        .unwrap_or_default();
    c.eq(
        fs,
        vec![
            "tsm_op_ioctl".to_string(),
            "tsm_bind".into(),
            "pci_tsm_bind".into(),
            "driver_bind".into(),
        ],
        &format!("{step}: frames"),
    );
    // tsm_bind's struct kvm is the stand-in's (its BTF): identity decoded there.
    if let Some(r) = raw(rec, o, "tsm_bind").first() {
        c.eq(
            s(r, "device"),
            dev.clone(),
            &format!("{step}: tsm_bind device"),
        );
        check_vm(c, &r["vm"], kv, &format!("{step}: tsm_bind"));
        c.eq(
            s(r, "tdi_id"),
            t(kv, "tdi_id"),
            &format!("{step}: tsm_bind tdi_id"),
        );
        c.eq(s(r, "ret"), "0".into(), &format!("{step}: tsm_bind ret"));
    } else {
        c.check(false, || format!("{step}: no tsm_bind frame"));
    }
    // pci_tsm_bind reads vmlinux's struct kvm layout, which the stand-in object does not
    // have: only the pointer's name is comparable.
    if let Some(r) = raw(rec, o, "pci_tsm_bind").first() {
        c.eq(
            s(r, "device"),
            dev.clone(),
            &format!("{step}: pci_tsm_bind device"),
        );
        c.vm_id(
            &s(&r["vm"], "id"),
            &t(kv, "kvm"),
            &format!("{step}: pci_tsm_bind vm.id"),
        );
        c.eq(
            s(r, "tdi_id"),
            t(kv, "tdi_id"),
            &format!("{step}: pci_tsm_bind tdi_id"),
        );
        c.eq(
            s(r, "ret"),
            t(kv, "rc"),
            &format!("{step}: pci_tsm_bind ret"),
        );
    } else {
        c.check(false, || format!("{step}: no pci_tsm_bind frame"));
    }
    let sub = truth.for_dev(step, &dev);
    let ev = sub.events(step, "bind");
    c.eq(
        ev.len(),
        1,
        &format!("{step}: the link op bound {dev} once"),
    );
    c.eq(
        ev.first().map(|e| ptr(&t(e, "kvm"))),
        Some(ptr(&t(kv, "kvm"))),
        &format!("{step}: the link op got the standin's kvm"),
    );
    driver_frames(c, rec, step, o, &sub, "bind");
    Ok(())
}

/// bind A, bind B, guest requests, unbind, rebind, disconnect while bound.
fn ops_after_connect(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    trace: &[Value],
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
    bind(c, truth, rec, ops, "bind_A", "1", tsm)?;
    bind(c, truth, rec, ops, "bind_B", "2", tsm)?;
    c.check(
        truth
            .events("bind_B", "bind")
            .first()
            // msleep(20) as the fixture's own clock sees it: under TCG the jiffies timer can
            // end a little early against ktime (19.95 ms seen once); an undelayed bind is µs.
            .is_some_and(|e| t(e, "ns").parse::<u64>().unwrap_or(0) >= 15_000_000),
        || "bind_B: the 20 ms bind delay did not happen".into(),
    );

    // Guest requests through the real pci_tsm_guest_req.
    for step in ["guest_req", "guest_req_scope", "guest_req_eio"] {
        let kv = truth.ctl(step, "standin", "guest_req")?;
        c.eq(
            t(kv, "layer"),
            "pci_tsm_guest_req".into(),
            &format!("{step}: the standin called the real pci_tsm_guest_req"),
        );
        let errno = pe_name(&t(kv, "err"));
        let driver_fail = failing_link_op(truth, step);
        let want = Want {
            kind: "guest_request",
            device: t(kv, "dev"),
            tsm: Some(tsm.to_string()),
            errno: errno.clone(),
            layer: if driver_fail.is_some() {
                "tsm_driver"
            } else {
                "pci_tsm"
            },
            function: driver_fail.unwrap_or_else(|| t(kv, "layer")),
            cause: None,
        };
        let Some(o) = ops.take(c, step, &want) else {
            continue;
        };
        let gr = &o["guest_request"];
        for k in ["scope", "in_len", "out_len"] {
            c.eq(s(gr, k), t(kv, k), &format!("{step}: guest_request.{k}"));
        }
        c.eq(
            gr["tsm_code"].as_u64(),
            ptr(&t(kv, "tsm_code")),
            &format!("{step}: guest_request.tsm_code"),
        );
        let residue = if errno.is_empty() {
            t(kv, "residue")
        } else {
            String::new()
        };
        c.eq(
            s(gr, "residue"),
            residue,
            &format!("{step}: guest_request.residue"),
        );
        let evs = truth.events(step, "guest_req");
        if let Some(ev) = evs.first() {
            c.eq(
                s(o, "tdi_id"),
                t(ev, "tdi_id"),
                &format!("{step}: operation tdi_id"),
            );
        }
        if let Some(r) = raw(rec, o, "pci_tsm_guest_req").first() {
            c.eq(
                s(r, "device"),
                t(kv, "dev"),
                &format!("{step}: pci_tsm_guest_req device"),
            );
            for k in ["scope", "in_len", "out_len"] {
                c.eq(s(r, k), t(kv, k), &format!("{step}: pci_tsm_guest_req {k}"));
            }
            c.eq(
                r["tsm_code"].as_u64(),
                ptr(&t(kv, "tsm_code")),
                &format!("{step}: pci_tsm_guest_req tsm_code"),
            );
            c.eq(
                s(r, "ret"),
                t(kv, "guest_rc"),
                &format!("{step}: pci_tsm_guest_req ret"),
            );
        } else {
            c.check(false, || format!("{step}: no pci_tsm_guest_req frame"));
        }
        driver_frames(c, rec, step, o, truth, "guest_req");
    }
    let g = truth.ctl("guest_req", "standin", "guest_req")?;
    c.eq(
        (t(g, "residue"), t(g, "tsm_code")),
        ("5".into(), "0xabc".into()),
        "guest_req: the fixture applied residue 5 and tsm_code 0xabc",
    );

    // Unbind through the ioctl: the core's __pci_tsm_unbind and the driver inside.
    let step = "unbind_A";
    let kv = truth.find(step, "standin", |kv| t(kv, "cmd") == "ioctl")?;
    c.eq(t(kv, "rc"), "0".into(), "unbind_A: ioctl unbind rc");
    c.eq(
        t(truth.state(step, A)?, "bound"),
        String::new(),
        "unbind_A: sysfs tsm/bound empty",
    );
    let ev = truth
        .events(step, "unbind")
        .first()
        .copied()
        .cloned()
        .unwrap_or_default();
    c.eq(
        t(&ev, "dev"),
        A.to_string(),
        "unbind_A: the link op unbound A",
    );
    let w = Want {
        kind: "unbind",
        device: A.into(),
        cause: Some("unbind"),
        tsm: Some(tsm.into()),
        ..Want::default()
    };
    if let Some(o) = ops.take(c, step, &w) {
        c.eq(
            s(o, "tdi_id"),
            t(&ev, "tdi_id"),
            "unbind_A: operation tdi_id",
        );
        c.vm_id(
            &s(&o["vm"], "id"),
            &t(&ev, "kvm"),
            "unbind_A: operation vm.id",
        );
        c.eq(
            s(o, "vdevice_id"),
            t(kv, "vdevice_id"),
            "unbind_A: operation vdevice_id",
        );
        unbind_any_frames(c, rec, step, o, truth, tsm);
        driver_frames(c, rec, step, o, truth, "unbind");
        closed(c, trace, step, truth, "unbind", &t(&ev, "kvm"));
    }
    bind(c, truth, rec, ops, "rebind_A", "1", tsm)?;

    // Disconnect while A and B are bound: one operation, every function unbound inside.
    let step = "disconnect_bound";
    let w0 = truth.one(step, "sysfs")?;
    c.eq(t(w0, "write"), "ok".into(), "disconnect_bound: write");
    for d in [A, B] {
        c.eq(
            t(truth.state(step, d)?, "bound"),
            if d == A {
                String::new()
            } else {
                "absent".into()
            },
            &format!("disconnect_bound: sysfs tsm/bound of {d}"),
        );
    }
    let kvm = t(truth.ctl("vms", "standin", "vm_create")?, "kvm");
    let w = Want {
        kind: "disconnect",
        device: A.into(),
        cause: Some("disconnect"),
        tsm: Some(t(w0, "value")),
        ..Want::default()
    };
    if let Some(o) = ops.take(c, step, &w) {
        c.eq(
            truth
                .events(step, "unbind")
                .iter()
                .map(|e| t(e, "dev"))
                .collect::<Vec<_>>(),
            vec![B.to_string(), A.to_string()],
            "disconnect_bound: the core unbound B then A",
        );
        if let Some(r) = raw(rec, o, "disconnect").first() {
            c.eq(
                s(r, "device"),
                A.to_string(),
                "disconnect_bound: disconnect device",
            );
            c.eq(
                s(r, "tsm"),
                t(w0, "value"),
                "disconnect_bound: disconnect tsm",
            );
            c.eq(
                r["ret"].as_i64(),
                t(w0, "len").parse().ok(),
                "disconnect_bound: disconnect_store ret (len)",
            );
        } else {
            c.check(false, || "disconnect_bound: no disconnect frame".into());
        }
        if let Some(r) = raw(rec, o, "pci_tsm_disconnect").first() {
            c.eq(
                (s(r, "device"), s(r, "tsm")),
                (A.to_string(), tsm.to_string()),
                "disconnect_bound: __pci_tsm_disconnect device, tsm",
            );
        } else {
            c.check(false, || {
                "disconnect_bound: no pci_tsm_disconnect frame".into()
            });
        }
        // The operation is about A: its tdi is A's.
        let a_tdi = truth
            .events(step, "unbind")
            .iter()
            .find(|e| t(e, "dev") == A)
            .map(|e| t(e, "tdi_id"));
        c.eq(
            Some(s(o, "tdi_id")),
            a_tdi,
            "disconnect_bound: operation tdi_id (device A's)",
        );
        c.vm_id(
            &s(&o["vm"], "id"),
            &kvm,
            "disconnect_bound: operation vm.id",
        );
        unbind_any_frames(c, rec, step, o, truth, tsm);
        driver_frames(c, rec, step, o, truth, "unbind");
        driver_frames(c, rec, step, o, truth, "disconnect");
        closed(c, trace, step, truth, "disconnect", &kvm);
    }
    let info = truth.one(step, "info")?;
    c.eq(
        (t(info, "contexts"), t(info, "tdis")),
        ("0".into(), "0".into()),
        "disconnect_bound: fixture contexts and tdis after",
    );
    Ok(())
}

/// bind C, then remove C while bound.
fn ops_after_connect_c(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    trace: &[Value],
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
    bind(c, truth, rec, ops, "connect_C", "4", tsm)?;
    let step = "remove_C";
    c.eq(
        t(truth.one(step, "sysfs")?, "write"),
        "ok".into(),
        "remove_C: write",
    );
    c.eq(
        t(truth.one(step, "gone")?, "present"),
        "no".into(),
        "remove_C: device gone",
    );
    let kvm = t(truth.ctl("vms", "standin", "vm_create")?, "kvm");
    let w = Want {
        kind: "disconnect",
        device: C.into(),
        cause: Some("device_removal"),
        tsm: Some(tsm.into()),
        ..Want::default()
    };
    if let Some(o) = ops.take(c, step, &w) {
        let r = raw(rec, o, "pci_tsm_destroy");
        c.eq(r.len(), 1, "remove_C: one pci_tsm_destroy frame");
        if let Some(r) = r.first() {
            c.eq(
                s(r, "device"),
                C.to_string(),
                "remove_C: __pci_tsm_destroy device",
            );
            c.eq(
                r["tsm_unregister"].as_bool().unwrap_or(false),
                false,
                "remove_C: __pci_tsm_destroy tsm_unregister",
            );
        }
        let c_tdi = truth.events(step, "unbind").first().map(|e| t(e, "tdi_id"));
        c.eq(Some(s(o, "tdi_id")), c_tdi, "remove_C: operation tdi_id");
        c.vm_id(&s(&o["vm"], "id"), &kvm, "remove_C: operation vm.id");
        unbind_any_frames(c, rec, step, o, truth, tsm);
        driver_frames(c, rec, step, o, truth, "unbind");
        driver_frames(c, rec, step, o, truth, "disconnect");
        c.check(
            truth
                .events(step, "disconnect")
                .first()
                .is_some_and(|e| t(e, "ns").parse::<u64>().unwrap_or(0) >= 15_000_000),
            || "remove_C: the 20 ms disconnect delay did not happen".into(),
        );
        closed(c, trace, step, truth, "device_removal", &kvm);
    }
    Ok(())
}

/// rebind A and B, then unregister the TSM while both are bound.
fn ops_after_reconnect(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    trace: &[Value],
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
    // The reconnect step's binds (the standin records are in the same step).
    let step = "reconnect_A";
    for vdev in ["1", "2"] {
        bind(c, truth, rec, ops, step, vdev, tsm)?;
    }
    let step = "unregister";
    c.eq(
        t(truth.ctl(step, "linktsm", "unregister")?, "rc"),
        "0".into(),
        "unregister: rc",
    );
    let kvm = t(truth.ctl("vms", "standin", "vm_create")?, "kvm");
    // One teardown per device the core destroyed (the link op's remove records, in order).
    let removed: Vec<String> = truth
        .events(step, "remove")
        .iter()
        .map(|e| t(e, "dev"))
        .collect();
    c.eq(
        removed.clone(),
        vec![B.to_string(), A.to_string()],
        "unregister: the core destroyed B then A",
    );
    for dev in &removed {
        let w = Want {
            kind: "disconnect",
            device: dev.clone(),
            cause: Some("tsm_unregister"),
            tsm: Some(tsm.into()),
            ..Want::default()
        };
        let Some(o) = ops.take(c, step, &w) else {
            continue;
        };
        let r = raw(rec, o, "pci_tsm_destroy");
        c.eq(
            r.len(),
            1,
            &format!("unregister {dev}: one pci_tsm_destroy frame"),
        );
        if let Some(r) = r.first() {
            c.eq(
                s(r, "device"),
                dev.clone(),
                &format!("unregister {dev}: __pci_tsm_destroy device"),
            );
            c.eq(
                r["tsm_unregister"].as_bool().unwrap_or(false),
                true,
                &format!("unregister {dev}: __pci_tsm_destroy tsm_unregister"),
            );
        }
        let tdi = truth
            .events(step, "unbind")
            .iter()
            .find(|e| t(e, "dev") == *dev)
            .map(|e| t(e, "tdi_id"));
        c.eq(
            Some(s(o, "tdi_id")),
            tdi,
            &format!("unregister {dev}: operation tdi_id"),
        );
        // The events of this device only (the core handles B, then A).
        let sub = truth.for_dev(step, dev);
        unbind_any_frames(c, rec, step, o, &sub, tsm);
        driver_frames(c, rec, step, o, &sub, "unbind");
        driver_frames(c, rec, step, o, &sub, "disconnect");
    }
    closed(c, trace, step, truth, "tsm_unregister", &kvm);
    let info = truth.one(step, "info")?;
    c.eq(
        (t(info, "registered"), t(info, "contexts"), t(info, "tdis")),
        ("0".into(), "0".into(), "0".into()),
        "unregister: fixture state after",
    );
    Ok(())
}

/// The daemons' phases: `(name, phase)` → lines of `--print json` output up to that phase.
fn daemon_lines(
    out: &VmOutput,
    truth: &Truth,
    n: &str,
) -> Result<(Vec<Value>, BTreeMap<String, usize>)> {
    let lines = json_lines(out, &format!("lc_d{n}.out"))?;
    let marks = truth
        .0
        .iter()
        .filter(|r| r.src == "mark" && t(&r.kv, "daemon") == n)
        .map(|r| {
            (
                t(&r.kv, "phase"),
                t(&r.kv, "lines").trim().parse().unwrap_or(0),
            )
        })
        .collect();
    Ok((lines, marks))
}

fn daemons(c: &mut Checks, out: &VmOutput) -> Result<()> {
    let truth = Truth::parse(&out.section("lc_truth")?.text);
    let metrics = |name: &str| -> Result<BTreeMap<String, f64>> {
        let m = parse_exposition(&out.section(name)?.text);
        if m.is_empty() {
            bail!("{name} is empty");
        }
        Ok(m)
    };
    let bindings = |name: &str| -> Result<Value> {
        serde_json::from_str(&out.section(name)?.text)
            .with_context(|| format!("{name} is not JSON"))
    };
    let mism = |kind: &str| format!("tsm_trace_sysfs_mismatches_total{{kind=\"{kind}\"}}");
    let leaked = |reason: &str| format!("tsm_trace_bindings_leaked{{reason=\"{reason}\"}}");
    let devices = |state: &str| format!("tsm_trace_devices{{state=\"{state}\"}}");
    let closed = |cause: &str| format!("tsm_trace_bindings_closed_total{{cause=\"{cause}\"}}");
    let ops = |op: &str, layer: &str| {
        format!(
            "tsm_trace_operations_total{{errno=\"\",layer=\"{layer}\",op=\"{op}\",result=\"ok\"}}"
        )
    };
    let tsm = t(truth.ctl("d1_prebind", "linktsm", "register")?, "tsm");
    let vm = truth.ctl("vms", "standin", "vm_create")?.clone();
    // Every value of a phase, exactly: (series, value).
    let exact = |c: &mut Checks, m: &BTreeMap<String, f64>, phase: &str, want: &[(String, f64)]| {
        for (k, v) in want {
            c.eq(
                m.get(k).copied(),
                Some(*v),
                &format!("daemon phase {phase}: {k}"),
            );
        }
        for reason in [
            "ringbuf_full",
            "inflight_full",
            "orphan_return",
            "decode_error",
        ] {
            c.eq(
                m.get(&format!(
                    "tsm_trace_events_lost_total{{reason=\"{reason}\"}}"
                ))
                .copied(),
                Some(0.0),
                &format!("daemon phase {phase}: events lost ({reason})"),
            );
        }
        c.eq(
            m.get("tsm_trace_sysfs_errors_total").copied(),
            Some(0.0),
            &format!("daemon phase {phase}: sysfs errors"),
        );
        c.check(
            m.get("tsm_trace_sysfs_reconcile_runs_total")
                .is_some_and(|v| *v >= 1.0),
            || format!("daemon phase {phase}: no reconcile run"),
        );
    };
    let all_leaks_zero = |except: Option<&str>| -> Vec<(String, f64)> {
        [
            "ioctl_failed_after_bind",
            "sysfs_bound_without_owner",
            "vdevice_teardown_without_unbind",
            "vm_destroyed",
            "vmm_exited",
        ]
        .iter()
        .map(|r| (leaked(r), if Some(*r) == except { 1.0 } else { 0.0 }))
        .collect()
    };

    // ---- Daemon 1: (a) bound before it started, (c) disconnect while bound ----------
    let err = &out.section("lc_d1.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("daemon 1 did not exit 0:\n{err}")
    });
    c.check(!err.contains(": warn: "), || {
        format!("daemon 1 logged warnings:\n{err}")
    });
    health(c, err, "daemon 1", TRACE_PROBES);
    let (lines, marks) = daemon_lines(out, &truth, "1")?;
    let upto = |phase: &str| marks.get(phase).copied().unwrap_or(0).min(lines.len());
    c.eq(
        t(truth.state("d1_prebind", A)?, "bound"),
        tsm.clone(),
        "d1 (a): A bound in sysfs before the daemon started",
    );
    let a = &lines[..upto("a")];
    c.eq(
        a.iter()
            .filter(|l| s(l, "type") == "sysfs_mismatch")
            .map(|l| (s(l, "kind"), s(l, "device")))
            .collect::<Vec<_>>(),
        vec![("bound_without_owner".to_string(), A.to_string())],
        "d1 (a): mismatch lines",
    );
    c.check(
        a.iter().any(|l| {
            s(l, "type") == "leak"
                && s(l, "event") == "detected"
                && s(l, "reason") == "sysfs_bound_without_owner"
                && s(l, "device") == A
                && s(l, "tsm") == tsm
        }),
        || format!("d1 (a): no sysfs_bound_without_owner leak of {A} naming {tsm}: {a:?}"),
    );
    let m = metrics("lc_d1_metrics_a")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (
            "tsm_trace_leaks_detected_total{reason=\"sysfs_bound_without_owner\"}".to_string(),
            1.0,
        ),
        (
            format!(
                "tsm_trace_leaked_binding_info{{device=\"{A}\",reason=\"sysfs_bound_without_owner\",vm=\"\"}}"
            ),
            1.0,
        ),
        ("tsm_trace_bindings_active".to_string(), 0.0),
        (devices("bound"), 0.0),
        (devices("connected"), 0.0),
        (devices("disconnected"), 0.0),
    ];
    want.extend(all_leaks_zero(Some("sysfs_bound_without_owner")));
    exact(c, &m, "a", &want);
    let v = bindings("lc_d1_bindings_a")?;
    c.eq(
        v["bindings"].as_array().map(Vec::len),
        Some(0),
        "d1 (a): /bindings bindings",
    );
    let lk = v["leaks"].as_array().cloned().unwrap_or_default();
    c.eq(
        lk.iter()
            .map(|l| (s(l, "device"), s(l, "reason"), s(l, "tsm")))
            .collect::<Vec<_>>(),
        vec![(
            A.to_string(),
            "sysfs_bound_without_owner".to_string(),
            tsm.clone(),
        )],
        "d1 (a): /bindings leaks",
    );

    // Its unbind, seen: the leak is cleared.
    c.eq(
        t(truth.state("d1_unbind", A)?, "bound"),
        String::new(),
        "d1 (a2): A unbound in sysfs",
    );
    let a2 = &lines[upto("a")..upto("a2")];
    c.check(
        a2.iter().any(|l| {
            s(l, "type") == "leak"
                && s(l, "event") == "cleared"
                && s(l, "reason") == "sysfs_bound_without_owner"
                && s(l, "device") == A
        }),
        || format!("d1 (a2): the sysfs_bound_without_owner leak of {A} was not cleared: {a2:?}"),
    );
    let m = metrics("lc_d1_metrics_a2")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (ops("unbind", "iommufd"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 0.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "a2", &want);

    // (c) bound while watched, then disconnected: bindings closed, no mismatch.
    for d in [A, B] {
        c.eq(
            t(truth.state("d1_bind", d)?, "bound"),
            tsm.clone(),
            &format!("d1 (c1): {d} bound in sysfs"),
        );
    }
    let m = metrics("lc_d1_metrics_c1")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (ops("bind", "iommufd"), 2.0),
        ("tsm_trace_bindings_active".to_string(), 2.0),
        (devices("bound"), 2.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "c1", &want);
    let v = bindings("lc_d1_bindings_c1")?;
    let mut bs: Vec<(String, String, String)> = v["bindings"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| (s(b, "device"), s(b, "tdi_id"), s(&b["vm"], "stats_id")))
                .collect()
        })
        .unwrap_or_default();
    bs.sort();
    c.eq(
        bs,
        vec![
            (A.to_string(), "77".to_string(), t(&vm, "stats_id")),
            (B.to_string(), "78".to_string(), t(&vm, "stats_id")),
        ],
        "d1 (c1): /bindings",
    );
    for d in [A, B] {
        c.eq(
            t(truth.state("d1_disconnect", d)?, "bound"),
            if d == A {
                String::new()
            } else {
                "absent".into()
            },
            &format!("d1 (c2): {d} after the disconnect"),
        );
    }
    let c2 = &lines[upto("a2")..upto("c2")];
    let closed_devs: Vec<String> = {
        let mut v: Vec<String> = c2
            .iter()
            .filter(|l| s(l, "type") == "binding_closed" && s(l, "cause") == "disconnect")
            .map(|l| s(&l["binding"], "device"))
            .collect();
        v.sort();
        v
    };
    c.eq(
        closed_devs,
        vec![A.to_string(), B.to_string()],
        "d1 (c2): binding_closed (cause disconnect)",
    );
    c.eq(
        c2.iter()
            .filter(|l| s(l, "type") == "sysfs_mismatch")
            .count(),
        0,
        "d1 (c): sysfs mismatches after a disconnect while bound",
    );
    let m = metrics("lc_d1_metrics_c2")?;
    let mut want = vec![
        (mism("bound_without_owner"), 1.0),
        (mism("denies_binding"), 0.0),
        (closed("disconnect"), 2.0),
        (closed("unbind"), 0.0),
        (closed("device_removal"), 0.0),
        (closed("tsm_unregister"), 0.0),
        (ops("disconnect", "pci_tsm"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 0.0),
        (devices("bound"), 0.0),
        (devices("connected"), 0.0),
        (devices("disconnected"), 1.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "c2", &want);
    c.eq(lines.len(), upto("c2"), "d1: output after the last phase");

    // ---- Daemon 2: (b) a missed unbind ---------------------------------------------
    let err = &out.section("lc_d2.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!("daemon 2 did not exit 0:\n{err}")
    });
    for p in ["pci_tsm_unbind", "pci_tsm_unbind_any", "driver_unbind"] {
        c.check(
            !err.lines()
                .any(|l| l.contains("probe attached") && l.split_whitespace().any(|w| w == p)),
            || format!("daemon 2: {p} attached although disabled"),
        );
    }
    let (lines, marks) = daemon_lines(out, &truth, "2")?;
    let upto = |phase: &str| marks.get(phase).copied().unwrap_or(0).min(lines.len());
    c.eq(
        t(truth.state("d2_bind", A)?, "bound"),
        tsm.clone(),
        "d2 (b1): A bound in sysfs",
    );
    let m = metrics("lc_d2_metrics_b1")?;
    let mut want = vec![
        (mism("bound_without_owner"), 0.0),
        (mism("denies_binding"), 0.0),
        (ops("connect", "pci_tsm"), 1.0),
        (ops("bind", "iommufd"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 1.0),
        (devices("bound"), 1.0),
        (devices("connected"), 0.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "b1", &want);
    c.eq(
        lines[..upto("b1")]
            .iter()
            .filter(|l| s(l, "type") == "sysfs_mismatch")
            .count(),
        0,
        "d2 (b1): no mismatch while sysfs agrees",
    );
    let ub = truth.ctl("d2_unbind_unseen", "linktsm", "unbind")?;
    c.eq(t(ub, "rc"), "0".into(), "d2 (b2): the fixture's unbind");
    c.eq(
        t(truth.state("d2_unbind_unseen", A)?, "bound"),
        String::new(),
        "d2 (b2): A unbound in sysfs",
    );
    let b2 = &lines[upto("b1")..upto("b2")];
    let denies: Vec<&Value> = b2
        .iter()
        .filter(|l| s(l, "type") == "sysfs_mismatch")
        .collect();
    c.eq(denies.len(), 1, "d2 (b2): one mismatch");
    if let Some(d) = denies.first() {
        c.eq(
            (s(d, "kind"), s(d, "device")),
            ("denies_binding".to_string(), A.to_string()),
            "d2 (b2): mismatch kind, device",
        );
        let bkv = truth.find("d2_bind", "standin", |kv| t(kv, "cmd") == "ioctl")?;
        c.eq(
            s(&d["binding"], "tdi_id"),
            t(bkv, "tdi_id"),
            "d2 (b2): dropped binding tdi_id",
        );
        c.vm_id(
            &s(&d["binding"]["vm"], "id"),
            &t(bkv, "kvm"),
            "d2 (b2): dropped binding vm.id",
        );
        c.eq(
            s(&d["binding"], "tsm"),
            tsm.clone(),
            "d2 (b2): dropped binding tsm",
        );
    }
    let m = metrics("lc_d2_metrics_b2")?;
    let mut want = vec![
        (mism("bound_without_owner"), 0.0),
        (mism("denies_binding"), 1.0),
        ("tsm_trace_bindings_active".to_string(), 0.0),
        (devices("bound"), 0.0),
        (devices("connected"), 1.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "b2", &want);
    let v = bindings("lc_d2_bindings_b2")?;
    c.eq(
        v["bindings"].as_array().map(Vec::len),
        Some(0),
        "d2 (b2): /bindings after the drop",
    );
    c.eq(lines.len(), upto("b2"), "d2: output after the last phase");

    // ---- Daemon 3: (d) sysfs shows a bind whose call has not returned ----------------
    let err = &out.section("lc_d3.err")?.text;
    c.check(err.lines().any(|l| l == "exit=0"), || {
        format!(
            "daemon 3 did not exit 0:
{err}"
        )
    });
    let slow = truth.find("d3_slow_bind", "standin", |kv| t(kv, "cmd") == "ioctl")?;
    c.eq(t(slow, "rc"), "0".into(), "d3: the slow bind's rc");
    let ns: u64 = t(slow, "duration_ns").parse().unwrap_or(0);
    c.check(ns >= 2_700_000_000, || {
        format!("d3: the fixture's ioctl took {ns} ns, not the 3 s asked for")
    });
    c.eq(
        t(truth.state("d3_slow_bind", A)?, "bound"),
        tsm.clone(),
        "d3: A bound in sysfs",
    );
    let m = metrics("lc_d3_metrics_d")?;
    let runs = m
        .get("tsm_trace_sysfs_reconcile_runs_total")
        .copied()
        .unwrap_or(0.0);
    c.check(runs >= 25.0, || {
        format!("d3: only {runs} reconciliations ran during the 3 s bind (every 100 ms)")
    });
    let mut want = vec![
        (mism("bound_without_owner"), 0.0),
        (mism("denies_binding"), 0.0),
        ("tsm_trace_bindings_active".to_string(), 1.0),
    ];
    want.extend(all_leaks_zero(None));
    exact(c, &m, "d", &want);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_lines_keep_step_and_source() {
        let t = Truth::parse(
            "step=x src=event seq=1 op=probe dev=0000:00:04.0 err=-ENODEV ret=null\nnoise\n",
        );
        assert_eq!(t.events("x", "probe").len(), 1);
        assert_eq!(failing_link_op(&t, "x").as_deref(), Some("driver_probe"));
        assert_eq!(ptr("0x0000000000001234"), Some(0x1234));
        assert_eq!(pe_name("-EIO"), "EIO");
    }

    /// Re-checks a saved run: `TSM_LC_DATA=.vm-cache/runs/<run>/data.log cargo test -p xtask
    /// lifecycle::tests::replay -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn replay() {
        let path = std::env::var("TSM_LC_DATA").expect("TSM_LC_DATA");
        let data = std::fs::read_to_string(&path).expect("data.log");
        let (sections, run_rc, _) = crate::vm::qemu::parse_data(&data);
        let out = VmOutput {
            kernel_version: String::new(),
            console: String::new(),
            sections,
            run_rc,
            warnings: Vec::new(),
            run_dir: path.into(),
            elapsed: std::time::Duration::ZERO,
        };
        let r = if out.sections["lc_kernel"].text.contains("pci_tsm=1") {
            check(&out)
        } else {
            check_absent(&out)
        };
        match r {
            Ok(n) => println!("{n} checks ok"),
            Err(e) => panic!("{e:#}"),
        }
    }
}

/// Re-checks a saved run: `TSM_VM_RECHECK=<run dir> cargo test -p xtask recheck_saved_run --
/// --ignored --nocapture` (for a failure whose message scrolled away).
#[cfg(test)]
mod recheck {
    #[test]
    #[ignore]
    fn recheck_saved_run() {
        let dir =
            std::path::PathBuf::from(std::env::var("TSM_VM_RECHECK").expect("TSM_VM_RECHECK"));
        let data = std::fs::read_to_string(dir.join("data.log")).unwrap();
        let (sections, run_rc, _) = crate::vm::qemu::parse_data(&data);
        let out = super::VmOutput {
            kernel_version: String::new(),
            console: String::new(),
            sections,
            run_rc,
            warnings: Vec::new(),
            run_dir: dir,
            elapsed: Default::default(),
        };
        match super::check(&out) {
            Ok(n) => println!("{n} checks passed"),
            Err(e) => println!("{e:#}"),
        }
    }
}
