//! Field resolution: each offset the programs need, from the probed function's own prototype
//! where it has one, recorded with where it came from or why it is unknown.

use super::*;

#[derive(Clone)]
pub(super) struct Found {
    pub(super) offset: u32,
    pub(super) obj: String,
    pub(super) note: Option<String>,
}

#[derive(Default)]
pub(super) struct Out {
    pub(super) fields: Vec<FieldReport>,
}

impl Out {
    /// Records the outcome of `field` and returns its offset (or [`OFFSET_UNKNOWN`]).
    pub(super) fn put(&mut self, field: &'static str, r: Result<Found, String>) -> u32 {
        match r {
            Ok(f) => {
                self.fields.push(FieldReport {
                    field,
                    offset: Some(f.offset),
                    btf_object: Some(f.obj),
                    reason: None,
                    note: f.note,
                });
                f.offset
            }
            Err(reason) => {
                self.fields.push(FieldReport {
                    field,
                    offset: None,
                    btf_object: None,
                    reason: Some(reason),
                    note: None,
                });
                OFFSET_UNKNOWN
            }
        }
    }
}

pub(super) fn found(objs: &Objects, agg: &Agg, offset: u32, note: &Option<String>) -> Found {
    Found {
        offset,
        obj: objs.owner(agg.at).to_string(),
        note: note.clone(),
    }
}

pub(super) fn missing_fn(objs: &Objects, func: &str) -> String {
    format!("function {func} not in {}", objs.searched())
}

/// Struct pointed to by parameter `idx` of `func`; unresolved if the function is not in BTF.
pub(super) fn from_param(
    objs: &Objects,
    func: &str,
    idx: usize,
) -> Result<(Agg, Option<String>), String> {
    match objs.param_struct(func, idx)? {
        Some((agg, via)) => Ok((agg, Some(format!("via {via}")))),
        None => Err(missing_fn(objs, func)),
    }
}

/// Struct pointed to by parameter `idx` of `func`, or (only when `func` is not in BTF) the
/// first struct `name` in `order`.
pub(super) fn from_param_or_name(
    objs: &Objects,
    func: &str,
    idx: usize,
    name: &str,
    order: &[usize],
) -> Result<(Agg, Option<String>), String> {
    match objs.param_struct(func, idx)? {
        Some((agg, via)) => Ok((agg, Some(format!("via {via}")))),
        None => match objs.find_structs(name, order).first() {
            Some(&r) => {
                let agg = objs.as_struct(r)?;
                let note = format!(
                    "function {func} not in BTF; struct {name} taken by name from {}",
                    objs.owner(agg.at)
                );
                Ok((agg, Some(note)))
            }
            None => {
                let places: Vec<&str> = order.iter().map(|&i| objs.list[i].name.as_str()).collect();
                Err(format!(
                    "{}, and no struct {name} in {}",
                    missing_fn(objs, func),
                    places.join(", ")
                ))
            }
        },
    }
}

/// A member's offset and what [`Objects::member_typed`] found (kind or length).
pub(super) fn typed(
    objs: &Objects,
    agg: &Agg,
    m: &str,
    want: Want,
    note: &Option<String>,
) -> Result<(Found, u32), String> {
    let (off, extra, _) = objs.member_typed(agg, m, want)?;
    Ok((found(objs, agg, off, note), extra))
}

/// Splits a typed result into the offset report and the kind (unknown on error).
pub(super) fn split(r: Result<(Found, u32), String>) -> (Result<Found, String>, u32) {
    match r {
        Ok((f, k)) => (Ok(f), k),
        Err(e) => (Err(e), tsm_trace_common::IntKind::UNKNOWN),
    }
}

pub(super) const KVM_FIELDS: [(&str, &str); 4] = [
    ("kvm.userspace_pid (tsm_bind)", "kvm.stats_id (tsm_bind)"),
    (
        "kvm.userspace_pid (pci_tsm_bind)",
        "kvm.stats_id (pci_tsm_bind)",
    ),
    (
        "kvm.userspace_pid (driver_bind)",
        "kvm.stats_id (driver_bind)",
    ),
    (
        "kvm.userspace_pid (kvm_destroy_vm)",
        "kvm.stats_id (kvm_destroy_vm)",
    ),
];

pub(super) fn resolve_fields(
    objs: &Objects,
    fns: &Functions,
) -> (Offsets, Vec<FieldReport>, Vec<PrototypeCheck>, ReqNames) {
    let mut o = Offsets::UNKNOWN;
    let mut out = Out::default();

    // iommufd_ucmd.cmd, from the ioctl handler's prototype.
    let ucmd = from_param(objs, fns.tsm_op_ioctl, 0);
    o.ucmd_cmd = out.put(
        "iommufd_ucmd.cmd",
        ucmd.and_then(|(a, note)| Ok(typed(objs, &a, "cmd", Want::Ptr, &note)?.0)),
    );

    // The UAPI command struct, preferring the object that defines the ioctl handler.
    let ioctl_obj = objs.find_func(fns.tsm_op_ioctl).map(|r| r.obj);
    let order = objs.order(ioctl_obj.as_slice());
    let uapi = crate::targets::UAPI_OP_STRUCT;
    let tsm_op = objs
        .find_structs(uapi, &order)
        .first()
        .copied()
        .ok_or_else(|| format!("no struct {uapi} in {}", objs.searched()))
        .and_then(|r| objs.as_struct(r));
    let op_field = |names: &[&'static str]| {
        tsm_op.as_ref().map_err(Clone::clone).and_then(|a| {
            let (off, kind, name) = objs.member_any(a, names, Want::Int(4))?;
            Ok((found(objs, a, off, &None), kind, name))
        })
    };
    let op = op_field(&generation::op_member_names());
    let op_member = op.as_ref().ok().map(|(_, _, n)| *n);
    let (r, k) = split(op.map(|(f, k, _)| (f, k)));
    o.tsm_op_op = out.put("iommu_vdevice_tsm_op.op", r);
    o.kinds.tsm_op_op = k;
    let (r, k) = split(op_field(&["flags"]).map(|(f, k, _)| (f, k)));
    o.tsm_op_flags = out.put("iommu_vdevice_tsm_op.flags", r);
    o.kinds.tsm_op_flags = k;
    let (r, k) = split(op_field(&["vdevice_id"]).map(|(f, k, _)| (f, k)));
    o.tsm_op_vdevice_id = out.put("iommu_vdevice_tsm_op.vdevice_id", r);
    o.kinds.tsm_op_vdevice_id = k;
    (o.uapi_op_bind, o.uapi_op_unbind) =
        generation::put_op_values(&mut out, generation::op_values(objs, &order, op_member));

    // iommufd_object.id, from the teardown function's prototype.
    let obj = from_param(objs, fns.vdevice_abort, 0);
    let (r, k) = split(obj.and_then(|(a, note)| typed(objs, &a, "id", Want::Int(4), &note)));
    o.obj_id = out.put("iommufd_object.id", r);
    o.kinds.obj_id = k;

    // struct iommufd_vdevice: the teardown function's object, then vmlinux, then the rest.
    let abort_obj = objs.find_func(fns.vdevice_abort).map(|r| r.obj);
    let vdev = objs
        .find_structs("iommufd_vdevice", &objs.order(abort_obj.as_slice()))
        .first()
        .copied()
        .ok_or_else(|| format!("no struct iommufd_vdevice in {}", objs.searched()))
        .and_then(|r| objs.as_struct(r));
    let vfield = |m: &str, want: Want| {
        vdev.as_ref()
            .map_err(Clone::clone)
            .and_then(|a| typed(objs, a, m, want, &None))
    };
    o.vdev_obj = out.put(
        "iommufd_vdevice.obj",
        split(vfield("obj", Want::Embedded)).0,
    );
    let (r, k) = split(vfield("virt_id", Want::Int(8)));
    o.vdev_virt_id = out.put("iommufd_vdevice.virt_id", r);
    o.kinds.vdev_virt_id = k;
    o.vdev_idev = out.put("iommufd_vdevice.idev", split(vfield("idev", Want::Ptr)).0);
    let idev_dev = vdev
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|a| {
            let (_, t) = objs.member(a, "idev")?;
            objs.deref_struct(t)
                .map_err(|e| format!("iommufd_vdevice.idev: {e}"))
        })
        .and_then(|idev| Ok(typed(objs, &idev, "dev", Want::Ptr, &None)?.0));
    o.idev_dev = out.put("iommufd_device.dev", idev_dev);

    // dev_name(): device.kobj + kobject.name.
    let dev_name =
        from_param_or_name(objs, fns.tsm_bind, 0, "device", &[0]).and_then(|(dev, note)| {
            let (kobj_off, kt) = objs.member(&dev, "kobj")?;
            let kobj = objs
                .as_struct(kt)
                .map_err(|e| format!("device.kobj: {e}"))?;
            let (name_off, _, _) = objs.member_typed(&kobj, "name", Want::StrPtr)?;
            Ok(found(objs, &dev, kobj_off + name_off, &note))
        });
    o.dev_name = out.put("device.kobj.name", dev_name);

    // pci_dev.dev.
    let pdev = from_param_or_name(objs, fns.pci_tsm_bind, 0, "pci_dev", &[0])
        .and_then(|(pdev, note)| Ok(typed(objs, &pdev, "dev", Want::Embedded, &note)?.0));
    o.pci_dev_dev = out.put("pci_dev.dev", pdev);

    // struct kvm per function, from that function's own prototype.
    let kvm_order: Vec<usize> = objs.obj_index("kvm").into_iter().chain([0]).collect();
    let kvm_fns: [(Option<&str>, usize); 4] = [
        (Some(fns.tsm_bind), 1),
        (Some(fns.pci_tsm_bind), 1),
        (fns.driver_bind, 1),
        (Some(fns.kvm_destroy_vm), 0),
    ];
    let mut kvm_offsets = [KvmOffsets::UNKNOWN; 4];
    for (i, (func, idx)) in kvm_fns.into_iter().enumerate() {
        let Some(func) = func else { continue };
        let kvm = from_param_or_name(objs, func, idx, "kvm", &kvm_order);
        let field = |m: &str, want: Want| {
            kvm.as_ref()
                .map_err(Clone::clone)
                .and_then(|(a, note)| typed(objs, a, m, want, note))
        };
        let (pid_name, stats_name) = KVM_FIELDS[i];
        let (pid, pid_kind) = split(field("userspace_pid", Want::Int(4)));
        let (stats, stats_len) = split(field("stats_id", Want::CharArray));
        kvm_offsets[i] = KvmOffsets {
            userspace_pid: out.put(pid_name, pid),
            stats_id: out.put(stats_name, stats),
            userspace_pid_kind: pid_kind,
            stats_id_len: stats_len,
        };
    }
    [
        o.kvm_tsm_bind,
        o.kvm_pci_tsm_bind,
        o.kvm_driver_bind,
        o.kvm_destroy_vm,
    ] = kvm_offsets;

    // struct module::name, from vmlinux: the module tracepoints name the module.
    let module = objs
        .find_structs("module", &[0])
        .first()
        .copied()
        .ok_or_else(|| "no struct module in vmlinux BTF".to_string())
        .and_then(|r| objs.as_struct(r))
        .and_then(|a| {
            let (off, _) = objs.member(&a, "name")?;
            Ok(found(objs, &a, off, &None))
        });
    o.module_name = out.put("module.name", module);

    // The VMM's argv at bind time: current->mm->arg_start..arg_end, from vmlinux.
    let vmlinux_struct = |name: &str| {
        objs.find_structs(name, &[0])
            .first()
            .copied()
            .ok_or_else(|| format!("no struct {name} in vmlinux BTF"))
            .and_then(|r| objs.as_struct(r))
    };
    let task = vmlinux_struct("task_struct");
    o.task_mm = out.put(
        "task_struct.mm",
        task.and_then(|a| Ok(typed(objs, &a, "mm", Want::Ptr, &None)?.0)),
    );
    let mm = vmlinux_struct("mm_struct");
    let mm_field = |m: &str| {
        mm.as_ref()
            .map_err(Clone::clone)
            .and_then(|a| Ok(typed(objs, a, m, Want::Int(8), &None)?.0))
    };
    o.mm_arg_start = out.put("mm_struct.arg_start", mm_field("arg_start"));
    o.mm_arg_end = out.put("mm_struct.arg_end", mm_field("arg_end"));

    if fns.ide {
        super::ide::resolve(objs, &mut o, &mut out);
    }
    let mut prototypes = lifecycle::resolve(objs, fns, &mut o, &mut out);
    returns::resolve(objs, fns, &mut o, &mut out, &mut prototypes);
    let names = guest_req::resolve(objs, fns, &mut o, &mut out);
    (o, out.fields, prototypes, names)
}
