//! Types from BTF: widths, enum values, return kinds (the synthetic BTF of `super`).

use super::*;

/// Widths, signedness and kinds from BTF: each integer read with its own width, enum values
/// from the enum, return types from each function's own prototype.
#[test]
fn synthetic_types_enum_values_and_return_kinds() {
    use tsm_trace_common::ProbeId;
    let dir = synthetic();
    let r = resolve(&BtfSources::in_dir(&dir), &SYNTH_FNS).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let o = &r.offsets;
    let u32k = IntKind::of(4, false);
    assert_eq!(
        (
            o.kinds.tsm_op_op,
            o.kinds.tsm_op_flags,
            o.kinds.tsm_op_vdevice_id,
            o.kinds.obj_id
        ),
        (u32k, u32k, u32k, u32k)
    );
    assert_eq!(o.kinds.vdev_virt_id, IntKind::of(8, false));
    assert_eq!(o.kinds.tdi_tdi_id, u32k);
    // v5: enum iommu_vdevice_tsm_op_type in the module.
    assert_eq!((o.uapi_op_bind, o.uapi_op_unbind), (1, 2));
    let note = field(&r, "iommu_vdevice_tsm_op values")
        .note
        .clone()
        .unwrap();
    assert_eq!(
        note,
        "bind=1 unbind=2 (enum iommu_vdevice_tsm_op_type in tsm_standin)"
    );
    let k = |p: ProbeId| o.ret[p as usize];
    assert_eq!(k(ProbeId::TsmOpIoctl), IntKind::of(4, true));
    assert_eq!(k(ProbeId::TsmBind), u32k);
    assert_eq!(k(ProbeId::VdeviceAbort), ret::VOID);
    assert_eq!(k(ProbeId::PciTsmGuestReq), IntKind::of(8, false));
    // The driver's bind op returns a pointer here: never decoded as an int.
    assert_eq!(k(ProbeId::DriverBind), ret::PTR);
    // Not in BTF: unknown, and the probe stays detached with the reason.
    assert_eq!(k(ProbeId::TsmUnbind), ret::UNKNOWN);
    let check = |p: ProbeId| &r.prototypes.iter().find(|c| c.probe == p).unwrap().result;
    let Err(why) = check(ProbeId::TsmUnbind) else {
        panic!("a function without BTF must not be decoded")
    };
    assert!(why.contains("tsm_unbind is not in BTF"), "{why}");
    assert!(why.contains("return type is unknown"), "{why}");
    // A shape mismatch is kept (not replaced by the return check).
    assert!(check(ProbeId::DriverConnect).is_err());
    assert_eq!(check(ProbeId::TsmBind), &Ok(()));
    // What BTF shows of the series: v5's traits in the module.
    let (members, obj) = r.patch.uapi_members.clone().unwrap();
    assert_eq!(obj, "tsm_standin");
    assert!(members.contains(&"type".to_string()));
    assert!(
        r.patch
            .patch_functions
            .contains(&"tsm_bind (tsm_standin)".to_string())
    );
}
