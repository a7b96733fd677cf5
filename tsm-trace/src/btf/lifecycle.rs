//! Offsets for the PCI TSM lifecycle probes (drivers/pci/tsm.c and the TSM driver ops):
//! `pci_dev.tsm`, `pci_tsm.{tsm_dev,tdi}`, the TSM's name, `pci_tdi.{pdev,kvm,tdi_id}`, where
//! the guest-request arguments are, and whether each driver op's prototype is the shape of
//! the `struct pci_tsm_ops` member it stands for.

use tsm_trace_common::{ARG_PCI_DEV, ARG_PCI_TDI, GuestReqArgs, OFFSET_UNKNOWN, Offsets};

use super::{Agg, Functions, Objects, Out, found, from_param, from_param_or_name, types::Want};
use crate::events::ProbeId;

/// The outcome of checking one driver op's prototype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrototypeCheck {
    pub probe: ProbeId,
    pub function: String,
    /// `Err(why)`: the function is not the shape of the op; it is not attached.
    pub result: Result<(), String>,
}

/// Parameters of each driver op as [`Objects::param_shape`] describes them: the struct a
/// pointer points to, `""` for a scalar, `"*"` for another pointer; `None`: anything.
fn expected_shape(probe: ProbeId) -> &'static [&'static [Option<&'static str>]] {
    const PDEV: Option<&str> = Some("pci_dev");
    match probe {
        ProbeId::DriverProbe => &[&[Some("tsm_dev"), PDEV]],
        ProbeId::DriverConnect | ProbeId::DriverDisconnect => &[&[PDEV]],
        ProbeId::DriverBind => &[&[PDEV, Some("kvm"), Some("")]],
        // Upstream `unbind(struct pci_tdi *)`; older drivers and the stand-in `(pci_dev *)`.
        ProbeId::DriverUnbind => &[&[Some("pci_tdi")], &[PDEV]],
        ProbeId::DriverGuestReq => &[&[
            Some("pci_tdi"),
            Some(""),
            None,
            Some(""),
            None,
            Some(""),
            Some("*"),
        ]],
        _ => &[],
    }
}

fn check_prototype(objs: &Objects, probe: ProbeId, func: &str) -> Result<(), String> {
    let Some((obj, params)) = objs.prototype(func)? else {
        return Err(format!(
            "{func} is not in BTF ({}), so its arguments cannot be checked",
            objs.searched()
        ));
    };
    let got: Vec<String> = params.iter().map(|&id| objs.param_shape(obj, id)).collect();
    let fits = |want: &[Option<&str>]| {
        want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| w.is_none_or(|w| w == g))
    };
    let shapes = expected_shape(probe);
    if shapes.iter().any(|w| fits(w)) {
        return Ok(());
    }
    let want: Vec<String> = shapes[0]
        .iter()
        .map(|w| w.unwrap_or("?").to_string())
        .collect();
    Err(format!(
        "{func}({}) is not the shape of the {} op ({})",
        show(&got),
        probe.as_str(),
        show(&want)
    ))
}

/// Parameter shapes ([`Objects::param_shape`]) in C words: `struct pci_dev *, scalar`.
fn show(v: &[String]) -> String {
    v.iter()
        .map(|s| match s.as_str() {
            "" => "scalar".to_string(),
            "*" => "pointer".to_string(),
            s if s.starts_with("struct ") || s == "?" => s.to_string(),
            s => format!("struct {s} *"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--symbol PROBE=FUNCTION`: `func` must take what the probe's own function takes (the
/// first of `defaults` in BTF), as a driver op must take what its `pci_tsm_ops` member takes:
/// the programs read its arguments where the default function has them. No default in BTF:
/// nothing to compare with, so no check.
fn check_override(
    objs: &Objects,
    probe: ProbeId,
    func: &str,
    defaults: &[&str],
) -> Result<(), String> {
    let Some((reference, (robj, rparams))) = defaults
        .iter()
        .find_map(|d| Some((*d, objs.prototype(d).ok().flatten()?)))
    else {
        return Ok(());
    };
    let want: Vec<String> = rparams
        .iter()
        .map(|&id| objs.param_shape(robj, id))
        .collect();
    let Some((obj, params)) = objs.prototype(func)? else {
        return Err(format!(
            "--symbol {}={func}: {func} is not in BTF ({}), so its prototype cannot be checked against {reference}({})",
            probe.as_str(),
            objs.searched(),
            show(&want)
        ));
    };
    let got: Vec<String> = params.iter().map(|&id| objs.param_shape(obj, id)).collect();
    if got == want {
        return Ok(());
    }
    Err(format!(
        "--symbol {}={func}: {func}({}) is not the prototype of {reference}({}), the function {} probes",
        probe.as_str(),
        show(&got),
        show(&want),
        probe.as_str()
    ))
}

/// Parameters of a guest request at entry: (scope, in_len, out_len, tsm_code) are
/// parameters 1, 3, 5 and 6 of the seven.
fn guest_req_args(objs: &Objects, func: &str) -> Result<GuestReqArgs, String> {
    let locs = objs
        .arg_locations(func)?
        .ok_or_else(|| format!("function {func} not in {}", objs.searched()))?;
    if locs.len() != 7 {
        return Err(format!(
            "{func} has {} parameters, not the 7 of pci_tsm_guest_req",
            locs.len()
        ));
    }
    Ok(GuestReqArgs {
        scope: locs[1],
        in_len: locs[3],
        out_len: locs[5],
        tsm_code: locs[6],
    })
}

pub(super) fn resolve(
    objs: &Objects,
    fns: &Functions,
    o: &mut Offsets,
    out: &mut Out,
) -> Vec<PrototypeCheck> {
    let mut checks = fns
        .driver_ops
        .iter()
        .map(|(probe, func)| PrototypeCheck {
            probe: *probe,
            function: func.to_string(),
            result: check_prototype(objs, *probe, func),
        })
        .collect::<Vec<_>>();
    for (probe, func, defaults) in fns.overrides {
        if checks.iter().any(|c| c.probe == *probe) {
            continue;
        }
        checks.push(PrototypeCheck {
            probe: *probe,
            function: func.to_string(),
            result: check_override(objs, *probe, func, defaults),
        });
    }
    if let Some(f) = fns.pci_tsm_guest_req {
        o.guest_req = put_args(out, "pci_tsm_guest_req arguments", guest_req_args(objs, f));
    }
    if let Some(f) = fns.driver_op(ProbeId::DriverGuestReq) {
        o.drv_guest_req = put_args(out, "driver guest_req arguments", guest_req_args(objs, f));
    }
    // The driver unbind op's argument: upstream's `struct pci_tdi *` or a `struct pci_dev *`.
    if let Some(f) = fns.driver_op(ProbeId::DriverUnbind) {
        let arg = match objs.prototype(f) {
            Ok(Some((obj, params))) if !params.is_empty() => {
                match objs.param_shape(obj, params[0]).as_str() {
                    "pci_tdi" => Ok(ARG_PCI_TDI),
                    "pci_dev" => Ok(ARG_PCI_DEV),
                    other => Err(format!(
                        "parameter 0 of {f} points to {other:?}, not pci_tdi or pci_dev"
                    )),
                }
            }
            Ok(Some(_)) => Err(format!("{f} has no parameters")),
            Ok(None) => Err(format!("function {f} not in {}", objs.searched())),
            Err(e) => Err(e),
        };
        o.drv_unbind_arg = match arg {
            Ok(a) => {
                out.fields.push(super::FieldReport {
                    field: "driver unbind argument",
                    offset: Some(a),
                    btf_object: None,
                    reason: None,
                    note: Some(
                        if a == ARG_PCI_TDI {
                            "struct pci_tdi *"
                        } else {
                            "struct pci_dev *"
                        }
                        .into(),
                    ),
                });
                a
            }
            Err(e) => {
                out.put("driver unbind argument", Err(e));
                OFFSET_UNKNOWN
            }
        };
    }

    // The PCI TSM context: only when a probe reads it (the core's own functions, or driver
    // ops handed a `struct tsm_dev *` or `struct pci_tdi *`).
    let driver_needs_context = fns.driver_op(ProbeId::DriverProbe).is_some()
        || fns.driver_op(ProbeId::DriverGuestReq).is_some()
        || o.drv_unbind_arg == ARG_PCI_TDI;
    if fns.pci_tsm_unbind_any.is_none() && !driver_needs_context {
        return checks;
    }
    // struct pci_dev, from the prototype of a function that takes one.
    let pdev = match fns.pci_tsm_unbind_any {
        Some(f) => from_param(objs, f, 0),
        None => Err(String::new()),
    }
    .or_else(|_| from_param_or_name(objs, fns.pci_tsm_bind, 0, "pci_dev", &[0]));
    let pdev_tsm = pdev.and_then(|(pdev, note)| {
        let (off, _, t) = objs.member_typed(&pdev, "tsm", Want::Ptr)?;
        Ok((found(objs, &pdev, off, &note), t, note))
    });
    o.pci_dev_tsm = out.put(
        "pci_dev.tsm",
        pdev_tsm
            .as_ref()
            .map(|(f, ..)| f.clone())
            .map_err(Clone::clone),
    );
    let pci_tsm: Result<(Agg, Option<String>), String> = pdev_tsm.and_then(|(_, t, note)| {
        objs.deref_struct(t)
            .map(|a| (a, note))
            .map_err(|e| format!("pci_dev.tsm: {e}"))
    });
    let member_of = |agg: &Result<(Agg, Option<String>), String>, m: &str, want: Want| {
        agg.as_ref().map_err(Clone::clone).and_then(|(a, note)| {
            let (off, kind, t) = objs.member_typed(a, m, want)?;
            Ok((found(objs, a, off, note), t, kind))
        })
    };
    let tsm_dev = member_of(&pci_tsm, "tsm_dev", Want::Ptr).map(|(f, t, _)| (f, t));
    let tdi = member_of(&pci_tsm, "tdi", Want::Ptr).map(|(f, t, _)| (f, t));
    o.pci_tsm_tsm_dev = out.put(
        "pci_tsm.tsm_dev",
        tsm_dev
            .as_ref()
            .map(|(f, _)| f.clone())
            .map_err(Clone::clone),
    );
    o.pci_tsm_tdi = out.put(
        "pci_tsm.tdi",
        tdi.as_ref().map(|(f, _)| f.clone()).map_err(Clone::clone),
    );

    // dev_name(&tsm_dev->dev): tsm_dev.dev + device.kobj + kobject.name.
    let tsm_name = tsm_dev.and_then(|(_, t)| {
        let td = objs
            .deref_struct(t)
            .map_err(|e| format!("pci_tsm.tsm_dev: {e}"))?;
        let (dev_off, _, dt) = objs.member_typed(&td, "dev", Want::Embedded)?;
        let dev = objs
            .as_struct(dt)
            .map_err(|e| format!("tsm_dev.dev: {e}"))?;
        let (kobj_off, kt) = objs.member(&dev, "kobj")?;
        let kobj = objs
            .as_struct(kt)
            .map_err(|e| format!("device.kobj: {e}"))?;
        let (name_off, _, _) = objs.member_typed(&kobj, "name", Want::StrPtr)?;
        Ok(found(objs, &td, dev_off + kobj_off + name_off, &None))
    });
    o.tsm_dev_name = out.put("tsm_dev.dev.kobj.name", tsm_name);

    // struct pci_tdi: what pci_tsm.tdi points to.
    let tdi_agg = tdi.and_then(|(_, t)| {
        objs.deref_struct(t)
            .map(|a| (a, None))
            .map_err(|e| format!("pci_tsm.tdi: {e}"))
    });
    let tdi_field = |m: &str, want: Want| member_of(&tdi_agg, m, want);
    o.tdi_pdev = out.put(
        "pci_tdi.pdev",
        tdi_field("pdev", Want::Ptr).map(|(f, ..)| f),
    );
    o.tdi_kvm = out.put("pci_tdi.kvm", tdi_field("kvm", Want::Ptr).map(|(f, ..)| f));
    let tdi_id = tdi_field("tdi_id", Want::Int(8));
    o.kinds.tdi_tdi_id = tdi_id.as_ref().map_or(0, |(_, _, k)| *k);
    o.tdi_tdi_id = out.put("pci_tdi.tdi_id", tdi_id.map(|(f, ..)| f));

    checks
}

/// Records the argument locations of a guest request function as a field report.
fn put_args(out: &mut Out, name: &'static str, r: Result<GuestReqArgs, String>) -> GuestReqArgs {
    match r {
        Ok(a) => {
            out.fields.push(super::FieldReport {
                field: name,
                offset: Some(a.tsm_code),
                btf_object: None,
                reason: None,
                note: Some(format!(
                    "scope, in_len, out_len, tsm_code at {}",
                    [a.scope, a.in_len, a.out_len, a.tsm_code]
                        .iter()
                        .map(|&l| describe_loc(l))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            });
            a
        }
        Err(reason) => {
            out.put(name, Err(reason));
            GuestReqArgs::UNKNOWN
        }
    }
}

/// `rdi`, `r9`, `stack+16`.
pub fn describe_loc(loc: u32) -> String {
    const REGS: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];
    match loc {
        l if (l as usize) < REGS.len() => REGS[l as usize].to_string(),
        OFFSET_UNKNOWN => "unknown".into(),
        l => format!("stack+{}", l - tsm_trace_common::ArgLoc::STACK),
    }
}
