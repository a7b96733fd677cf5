//! The restart suite: a daemon restart, clean or not, neither raises a false leak nor misses
//! a real one (`tests/vm/scenarios/restart.sh`).
//!
//! Ground truth is the fixture's: each bind's record from `tsm_standin` (its rc, VM pid,
//! stats id, vdevice and tdi), the VMM's pid, and on kernels with the PCI TSM core what sysfs
//! `tsm/bound` says after the actions. Five bindings; the daemon is SIGKILLed; while it is
//! down one is unbound, one's vdevice is destroyed without unbind, one's VM is destroyed, one's
//! VMM exits, one is left alone. Checked after the restart (daemon 2) and after a clean
//! restart on top (daemon 3):
//! - `/bindings` holds exactly the four still bound, each with the VM, VMM, vdevice and tdi
//!   the fixture recorded when it was bound (before the kill);
//! - each while-down fate is reported as what it was (the unbind closes its binding; the
//!   teardown, the VM and the VMM become leaks of their reason), by daemon 2, from the events
//!   the pinned programs kept while no daemon ran, and daemon 3 reports no new one;
//! - no `sysfs_bound_without_owner` anywhere, although sysfs shows the untouched device bound;
//! - `tsm_trace_operations_total` counts every bind and the unbind made while down (the kernel
//!   counters are pinned), and nothing was lost;
//! - `tsm-trace unpin` removes every pin and the state file.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::vm::checks::{Checks, json_lines, parse_exposition, s};
use crate::vm::kv::parse_kv;
use crate::vm::qemu::VmOutput;

pub const SCRIPT: &str = "tests/vm/scenarios/restart.sh";

/// Each case's bind, and the reason it must be leaked for after the restart (`None`: still
/// bound and fine, or gone).
const CASES: [(&str, Option<&str>); 5] = [
    ("nothing", None),
    ("teardown", Some("vdevice_teardown_without_unbind")),
    ("unbind", None),
    ("vmdestroy", Some("vm_destroyed")),
    ("vmmexit", Some("vmm_exited")),
];

/// Sum of the samples of `name` whose labels include every `want` (`k="v"`).
pub fn sum(m: &BTreeMap<String, f64>, name: &str, want: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && want.iter().all(|w| k.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}

pub fn check(out: &VmOutput) -> Result<usize> {
    let mut c = Checks::default();
    c.eq(out.run_rc, Some(0), "run.sh exit code");
    let truth_text = &out.section("rs_truth")?.text;
    let truth: BTreeMap<String, BTreeMap<String, String>> = truth_text
        .lines()
        .filter_map(|l| {
            let (case, rest) = l.split_once(' ')?;
            Some((case.to_string(), parse_kv(rest)))
        })
        .collect();
    let get = |case: &str| -> Result<&BTreeMap<String, String>> {
        truth
            .get(case)
            .with_context(|| format!("no {case:?} record in rs_truth:\n{truth_text}"))
    };
    let shell_pid = get("shell")?.get("pid").cloned().unwrap_or_default();
    let vmm_pid = get("vmm")?.get("pid").cloned().unwrap_or_default();
    for (case, _) in CASES {
        c.eq(
            get(case)?.get("rc").map(String::as_str),
            Some("0"),
            &format!("{case}: the fixture's bind rc"),
        );
    }
    for case in ["down_unbind", "down_teardown", "down_vmdestroy"] {
        c.eq(
            get(case)?.get("rc").map(String::as_str),
            Some("0"),
            &format!("{case}: the fixture's rc"),
        );
    }
    let dev = |case: &str| -> String {
        truth
            .get(case)
            .and_then(|kv| kv.get("dev"))
            .cloned()
            .unwrap_or_default()
    };
    // On kernels with the PCI TSM core: sysfs still names the TSM for the untouched device.
    let sysfs_bound: BTreeMap<String, String> = truth_text
        .lines()
        .filter(|l| l.starts_with("sysfs "))
        .map(parse_kv)
        .filter_map(|kv| Some((kv.get("dev")?.clone(), kv.get("bound")?.clone())))
        .collect();
    if let Some(b) = sysfs_bound.get(&dev("nothing")) {
        c.check(!b.is_empty() && b != "absent", || {
            format!("sysfs: the untouched device should read bound, got {b:?}")
        });
    }

    for n in 1..=3 {
        let err = &out.section(&format!("rs_d{n}.err"))?.text;
        c.check(
            !err.contains(" ERROR ") && !err.to_lowercase().contains("panicked"),
            || format!("daemon {n} logged an error:\n{err}"),
        );
    }
    for n in 1..=3 {
        // Its own pinned epoch (taken over) is not another session.
        let err = &out.section(&format!("rs_d{n}.err"))?.text;
        c.check(!err.contains("other tsm-trace program"), || {
            format!("daemon {n} took its own pinned programs for another session's:\n{err}")
        });
    }
    let other = &out.section("rs_other")?.text;
    c.check(
        other.contains("other tsm-trace programs are already attached (held by tsm-trace/")
            && other.contains("latencies measured here include their cost"),
        || format!("check beside daemon 3 did not warn of its programs:\n{other}"),
    );
    // SIGTERM leaves the pinned probes running for the next daemon, and says so.
    let d2 = &out.section("rs_d2.err")?.text;
    c.check(
        d2.contains("SIGTERM: exiting; the pinned probes of epoch")
            && !d2.contains("detaching probes"),
        || format!("daemon 2's SIGTERM line must say its pinned probes keep running:\n{d2}"),
    );
    let d1 = &out.section("rs_d1.err")?.text;
    c.check(d1.contains("pinned in /sys/fs/bpf/tsm-trace/"), || {
        format!("daemon 1: no 'pinned in' line:\n{d1}")
    });
    for (n, prev) in [(2, 1), (3, 2)] {
        let err = &out.section(&format!("rs_d{n}.err"))?.text;
        c.check(
            err.contains(&format!(
                "took over from the pinned programs of epoch {prev}"
            )),
            || format!("daemon {n}: did not take over from epoch {prev}:\n{err}"),
        );
        c.check(err.contains("restored "), || {
            format!("daemon {n}: restored nothing:\n{err}")
        });
        c.check(err.lines().any(|l| l == "exit=0"), || {
            format!("daemon {n}: no clean exit:\n{err}")
        });
    }

    // Daemon 1 saw all five bindings.
    let b1: Value = serde_json::from_str(&out.section("rs_d1_bindings")?.text)
        .context("rs_d1_bindings is not JSON")?;
    let devices = |v: &Value| -> BTreeSet<String> {
        v["bindings"]
            .as_array()
            .map(|a| a.iter().map(|b| s(b, "device")).collect())
            .unwrap_or_default()
    };
    let all: BTreeSet<String> = CASES.iter().map(|(k, _)| dev(k)).collect();
    c.eq(devices(&b1), all.clone(), "daemon 1: /bindings devices");

    let still: BTreeSet<String> = all
        .iter()
        .filter(|d| **d != dev("unbind"))
        .cloned()
        .collect();
    let d2_out = json_lines(out, "rs_d2.out", false)?;
    let d3_out = json_lines(out, "rs_d3.out", false)?;
    for n in [2, 3] {
        let text = &out.section(&format!("rs_d{n}_bindings"))?.text;
        let v: Value =
            serde_json::from_str(text).with_context(|| format!("rs_d{n}_bindings: {text}"))?;
        c.eq(
            devices(&v),
            still.clone(),
            &format!("daemon {n}: /bindings devices (all but the one unbound while down)"),
        );
        // Each binding as the fixture made it.
        for (case, _) in CASES.iter().filter(|(k, _)| *k != "unbind") {
            let t = get(case)?;
            let Some(b) = v["bindings"]
                .as_array()
                .and_then(|a| a.iter().find(|b| s(b, "device") == dev(case)))
            else {
                continue;
            };
            let what = |f: &str| format!("daemon {n}: {case} binding's {f}");
            c.eq(
                b["tdi_id"].as_u64().map(|x| x.to_string()),
                t.get("tdi_id").cloned(),
                &what("tdi_id"),
            );
            if *case != "vmdestroy" {
                c.eq(
                    b["vdevice_id"].as_u64().map(|x| x.to_string()),
                    t.get("vdevice_id").or(t.get("obj_id")).cloned(),
                    &what("vdevice_id"),
                );
            }
            c.eq(
                b["vm"]["stats_id"].as_str().map(str::to_string),
                t.get("stats_id").cloned(),
                &what("vm stats_id"),
            );
            let want_vmm = if *case == "vmmexit" {
                &vmm_pid
            } else {
                &shell_pid
            };
            c.eq(
                b["vmm_tgid"].as_u64().map(|x| x.to_string()),
                Some(want_vmm.clone()),
                &what("vmm_tgid"),
            );
        }
        // Leaks: exactly the three fates, nothing else.
        let leaks: BTreeSet<(String, String)> = v["leaks"]
            .as_array()
            .map(|a| a.iter().map(|l| (s(l, "device"), s(l, "reason"))).collect())
            .unwrap_or_default();
        let want: BTreeSet<(String, String)> = CASES
            .iter()
            .filter_map(|(k, r)| r.map(|r| (dev(k), r.to_string())))
            .collect();
        c.eq(leaks, want, &format!("daemon {n}: /bindings leaks"));

        let m = parse_exposition(&out.section(&format!("rs_d{n}_metrics"))?.text);
        for (_, r) in CASES.iter().filter(|(_, r)| r.is_some()) {
            let r = r.unwrap_or_default();
            c.eq(
                sum(
                    &m,
                    "tsm_trace_bindings_leaked",
                    &[&format!("reason=\"{r}\"")],
                ),
                1.0,
                &format!("daemon {n}: tsm_trace_bindings_leaked{{reason={r}}}"),
            );
        }
        // Each leak's own series is back after every restart (clean or not) as the binding
        // table is: a per-device leak alert must not resolve because the daemon restarted.
        for (k, r) in CASES.iter().filter_map(|(k, r)| r.map(|r| (k, r))) {
            c.eq(
                sum(
                    &m,
                    "tsm_trace_leaked_binding_info",
                    &[
                        &format!("device=\"{}\"", dev(k)),
                        &format!("reason=\"{r}\""),
                    ],
                ),
                1.0,
                &format!(
                    "daemon {n}: tsm_trace_leaked_binding_info{{device={},reason={r}}}",
                    dev(k)
                ),
            );
        }
        c.eq(
            sum(&m, "tsm_trace_leaked_binding_info", &[]),
            3.0,
            &format!("daemon {n}: tsm_trace_leaked_binding_info series (one per leak)"),
        );
        c.eq(
            sum(
                &m,
                "tsm_trace_bindings_leaked",
                &["reason=\"sysfs_bound_without_owner\""],
            ),
            0.0,
            &format!("daemon {n}: no sysfs_bound_without_owner"),
        );
        c.eq(
            sum(&m, "tsm_trace_bindings_active", &[]),
            still.len() as f64,
            &format!("daemon {n}: tsm_trace_bindings_active"),
        );
        // Devices connected to a TSM and not bound, as the kernel's tsm/connect and
        // tsm/bound say at the scrape (none where no device has a tsm/ directory): the
        // device table is rebuilt from sysfs on every start, clean or not.
        let links = &out.section(&format!("rs_d{n}_sysfs"))?.text;
        let connected = links
            .lines()
            .filter(|l| {
                let f = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap_or("")
                        .to_string()
                };
                !f("connect=").is_empty() && f("bound=").is_empty()
            })
            .count();
        c.eq(
            sum(&m, "tsm_trace_devices", &["state=\"connected\""]),
            connected as f64,
            &format!("daemon {n}: tsm_trace_devices{{state=connected}} against sysfs:\n{links}"),
        );
        // The kernel counters are pinned: five binds, and the unbind made while down.
        let ops = "tsm_trace_operations_total";
        c.eq(
            sum(&m, ops, &["op=\"bind\"", "result=\"ok\""]),
            5.0,
            &format!("daemon {n}: binds ok (all five, counted across the restarts)"),
        );
        c.eq(
            sum(&m, ops, &["op=\"unbind\"", "result=\"ok\""]),
            1.0,
            &format!("daemon {n}: unbinds ok (the one while down)"),
        );
        c.eq(
            sum(&m, ops, &["result=\"error\""]),
            0.0,
            &format!("daemon {n}: no failed operation"),
        );
        c.eq(
            sum(&m, "tsm_trace_events_lost_total", &[]),
            0.0,
            &format!("daemon {n}: events lost"),
        );
    }
    // Daemon 2 reported each while-down fate; daemon 3 (a clean restart) nothing new.
    let detected = |lines: &[Value]| -> BTreeSet<(String, String)> {
        lines
            .iter()
            .filter(|l| s(l, "type") == "leak" && s(l, "event") == "detected")
            .map(|l| (s(l, "device"), s(l, "reason")))
            .collect()
    };
    let want: BTreeSet<(String, String)> = CASES
        .iter()
        .filter_map(|(k, r)| r.map(|r| (dev(k), r.to_string())))
        .collect();
    c.eq(
        detected(&d2_out),
        want,
        "daemon 2: leaks detected from what happened while it was down",
    );
    c.eq(
        detected(&d3_out),
        BTreeSet::new(),
        "daemon 3: no leak detected again",
    );
    c.check(
        d2_out.iter().any(|l| {
            s(l, "type") == "binding_closed" && s(&l["binding"], "device") == dev("unbind")
        }),
        || "daemon 2: the unbind made while it was down did not close its binding".into(),
    );
    for (n, lines) in [(2, &d2_out), (3, &d3_out)] {
        c.check(
            !lines.iter().any(|l| {
                s(l, "type") == "sysfs_mismatch" || s(l, "reason") == "sysfs_bound_without_owner"
            }),
            || format!("daemon {n}: a sysfs mismatch was reported"),
        );
    }

    // Daemon 3 ran as nobody: the state it saved is its own and knows the unbind.
    let d3_err = &out.section("rs_d3.err")?.text;
    c.check(d3_err.contains("now running as uid 65534"), || {
        format!("daemon 3 did not switch to uid 65534:\n{d3_err}")
    });
    for bad in [
        "could not hand",
        "will not be saved",
        "would not know the bindings",
    ] {
        c.check(!d3_err.contains(bad), || {
            format!("daemon 3 (--user) logged {bad:?}:\n{d3_err}")
        });
    }
    let state = get("d3_state")?;
    c.eq(
        state.get("owner").map(String::as_str),
        Some("65534"),
        "daemon 3: state.json saved by uid 65534",
    );
    c.eq(
        state.get("has_nothing").map(String::as_str),
        Some("0"),
        "daemon 3: the saved table no longer holds the binding unbound while it ran",
    );
    let refused = &out.section("rs_unpin_refused")?.text;
    let case = |name: &str| -> String {
        refused
            .split("== ")
            .find(|c| c.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    let busy = case("busy");
    c.check(
        busy.contains("exit=1") && busy.contains("daemon holds"),
        || format!("unpin under a live daemon must refuse:\n{busy}"),
    );
    let wrong = case("wrong-dir");
    c.check(
        wrong.contains("exit=1") && wrong.contains("is not tsm-trace's"),
        || format!("unpin --pin-dir /sys/fs/bpf must refuse:\n{wrong}"),
    );
    let dry = case("dry-run");
    let listed = dry.matches("(link of program ").count();
    let links: usize = dry
        .lines()
        .find_map(|l| l.strip_prefix("links="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    c.check(
        dry.contains("exit=0") && links > 0 && listed == links && dry.contains("(map EVENTS)"),
        || format!("unpin --dry-run --force must pass every real pin ({links} links) and remove none:\n{dry}"),
    );
    let foreign = case("foreign");
    c.check(
        foreign.contains("exit=1") && foreign.contains("tsm-trace/foreign"),
        || format!("unpin with a foreign directory in the root must refuse, naming it:\n{foreign}"),
    );
    let unpin = &out.section("rs_unpin")?.text;
    c.check(
        unpin.contains("removed ") && unpin.contains("exit=0"),
        || format!("unpin:\n{unpin}"),
    );
    c.check(unpin.contains("left=0 state=no"), || {
        format!("unpin left something behind:\n{unpin}")
    });
    c.finish("restart", out)
}
