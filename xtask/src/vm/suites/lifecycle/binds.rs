//! The lifecycle suite's binds through the stand-in's ioctl and its guest requests, each
//! through the real PCI TSM core into the link TSM.

use anyhow::Result;

use super::ops::{Ops, Want, check_vm, driver_frames};
use super::output::{Record, raw};
use super::truth::{Truth, failing_link_op, ptr, t};
use crate::vm::checks::{Checks, s};
use crate::vm::kv::pe_name;

/// A bind through the standin's ioctl (realpci 1 → the real pci_tsm_bind → linktsm_bind).
pub(super) fn bind(
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

/// Guest requests through the real pci_tsm_guest_req.
pub(super) fn guest_requests(
    c: &mut Checks,
    truth: &Truth,
    rec: &Record,
    ops: &mut Ops,
    tsm: &str,
) -> Result<()> {
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
    Ok(())
}
