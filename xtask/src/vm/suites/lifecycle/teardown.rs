//! The lifecycle suite's teardowns: an unbind through the ioctl, a disconnect while bound, a
//! device removed while bound, the TSM unregistered while bound; each one operation with every
//! unbind inside, and the bindings it closed.

use anyhow::Result;
use serde_json::Value;

use super::ops::{Ops, Want, closed, driver_frames, unbind_any_frames};
use super::output::{Record, raw};
use super::truth::{A, B, C, Truth, t};
use crate::vm::checks::{Checks, s};

/// Unbind through the ioctl: the core's __pci_tsm_unbind and the driver inside.
pub(super) fn unbind_a(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    trace: &[Value],
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
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
    Ok(())
}

/// Disconnect while A and B are bound: one operation, every function unbound inside.
pub(super) fn disconnect_bound(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    trace: &[Value],
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
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

/// Remove C while bound.
pub(super) fn remove_c(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    trace: &[Value],
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
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

/// Unregister the TSM while A and B are bound.
pub(super) fn unregister(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    trace: &[Value],
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
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
