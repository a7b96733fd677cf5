//! Correlator scenarios. Helpers are `pub(crate)` so exporter, pipeline and HTTP tests build
//! the same event streams.

use super::nesting::MAX_CHAIN_FRAMES;
use super::*;
use crate::events::{Event, Layer, ProbeId, Vm, VmId};
use crate::sysfs::{DeviceState, Snapshot, fake};

pub(crate) const KVM: VmId = VmId::from_bits(0x8880_1234_0000);
pub(crate) const TGID: u32 = 4242;
pub(crate) const DEV: &str = "0000:01:00.0";

pub(crate) const EPERM: i64 = -1;
pub(crate) const ENOENT: i64 = -2;
pub(crate) const EIO: i64 = -5;
pub(crate) const ENXIO: i64 = -6;
pub(crate) const EFAULT: i64 = -14;
pub(crate) const EBUSY: i64 = -16;
pub(crate) const ENODEV: i64 = -19;
pub(crate) const EINVAL: i64 = -22;
pub(crate) const EOPNOTSUPP: i64 = -95;

pub(crate) fn vm() -> Vm {
    Vm {
        id: KVM,
        pid: Some(TGID as i32),
        stats_id: Some("kvm-4242".into()),
        vmm: None,
    }
}

pub(crate) fn ev(probe: ProbeId, start: u64, end: u64, tid: u32, ret: Option<i64>) -> Event {
    Event {
        ret,
        ..Event::new(probe, start, end, TGID, tid, "qemu".into())
    }
}

pub(crate) fn ioctl(op: u32, t0: u64, tid: u32, ret: i64) -> Event {
    let mut e = ev(ProbeId::TsmOpIoctl, t0, t0 + 1_000_000, tid, Some(ret));
    e.op = Some(op);
    e.flags = Some(0);
    e.vdevice_id = Some(3);
    e
}

/// A bind-path frame (tsm_bind / pci_tsm_bind / driver_bind) at nesting level `lvl` (1..=3).
pub(crate) fn bind_frame(
    probe: ProbeId,
    lvl: u64,
    t0: u64,
    tid: u32,
    dev: &str,
    ret: i64,
) -> Event {
    let mut e = ev(
        probe,
        t0 + lvl * 100_000,
        t0 + 1_000_000 - lvl * 100_000,
        tid,
        Some(ret),
    );
    e.device = Some(dev.into());
    e.vm = Some(vm());
    e.tdi_id = Some(7);
    e
}

pub(crate) fn unbind_frame(
    probe: ProbeId,
    lvl: u64,
    t0: u64,
    tid: u32,
    dev: &str,
    ret: Option<i64>,
) -> Event {
    let mut e = ev(
        probe,
        t0 + lvl * 100_000,
        t0 + 1_000_000 - lvl * 100_000,
        tid,
        ret,
    );
    e.device = Some(dev.into());
    e
}

/// The events of `ioctl(BIND) → tsm_bind → pci_tsm_bind → driver bind`, in delivery (return)
/// order. `None` leaves a frame out.
pub(crate) fn bind_stack(
    tid: u32,
    t0: u64,
    dev: &str,
    ioctl_ret: Option<i64>,
    tsm_ret: Option<i64>,
    pci_ret: Option<i64>,
    drv_ret: Option<i64>,
) -> Vec<Event> {
    let mut v = Vec::new();
    if let Some(r) = drv_ret {
        v.push(bind_frame(ProbeId::DriverBind, 3, t0, tid, dev, r));
    }
    if let Some(r) = pci_ret {
        v.push(bind_frame(ProbeId::PciTsmBind, 2, t0, tid, dev, r));
    }
    if let Some(r) = tsm_ret {
        v.push(bind_frame(ProbeId::TsmBind, 1, t0, tid, dev, r));
    }
    if let Some(r) = ioctl_ret {
        v.push(ioctl(UAPI_OP_BIND, t0, tid, r));
    }
    v
}

/// A successful bind through the ioctl, all four frames.
pub(crate) fn bind_via_ioctl(tid: u32, t0: u64, dev: &str, ret: i64) -> Vec<Event> {
    bind_stack(tid, t0, dev, Some(ret), Some(0), Some(0), Some(0))
}

pub(crate) fn unbind_via_ioctl(tid: u32, t0: u64, dev: &str) -> Vec<Event> {
    vec![
        unbind_frame(ProbeId::DriverUnbind, 3, t0, tid, dev, None),
        unbind_frame(ProbeId::PciTsmUnbind, 2, t0, tid, dev, None),
        unbind_frame(ProbeId::TsmUnbind, 1, t0, tid, dev, Some(0)),
        ioctl(UAPI_OP_UNBIND, t0, tid, 0),
    ]
}

/// `iommufd_vdevice_abort`, with (patched kernel) or without the inner unbind.
pub(crate) fn teardown(tid: u32, t0: u64, dev: &str, with_unbind: bool) -> Vec<Event> {
    let mut v = Vec::new();
    if with_unbind {
        v.push(unbind_frame(ProbeId::PciTsmUnbind, 2, t0, tid, dev, None));
        v.push(unbind_frame(ProbeId::TsmUnbind, 1, t0, tid, dev, Some(0)));
    }
    let mut a = ev(ProbeId::VdeviceAbort, t0, t0 + 1_000_000, tid, None);
    a.device = Some(dev.into());
    a.obj_id = Some(3);
    a.virt_id = Some(7);
    v.push(a);
    v
}

pub(crate) fn kvm_destroy(t: u64) -> Event {
    let mut e = ev(ProbeId::KvmDestroyVm, t, t, 999, None);
    e.vm = Some(vm());
    e
}

pub(crate) fn vmm_exit(t: u64, tgid: u32) -> Event {
    let mut e = ev(ProbeId::VmmExit, t, t, tgid, None);
    e.tgid = tgid;
    e
}

/// Feeds events with now = each event's end time.
pub(crate) fn feed(c: &mut Correlator, events: Vec<Event>) -> Vec<Output> {
    let mut out = Vec::new();
    for e in events {
        let now = e.end_ns;
        out.extend(c.handle(e, now));
    }
    out
}

pub(crate) fn ops(out: &[Output]) -> Vec<&Operation> {
    out.iter()
        .filter_map(|o| match o {
            Output::Operation(op) => Some(op),
            _ => None,
        })
        .collect()
}

fn leaks_detected(out: &[Output]) -> Vec<&Leak> {
    out.iter()
        .filter_map(|o| match o {
            Output::LeakDetected(l) => Some(l),
            _ => None,
        })
        .collect()
}

fn leaks_cleared(out: &[Output]) -> Vec<&Leak> {
    out.iter()
        .filter_map(|o| match o {
            Output::LeakCleared(l) => Some(l),
            _ => None,
        })
        .collect()
}

fn anomalies(out: &[Output], kind: AnomalyKind) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Anomaly(a) if a.kind == kind))
        .count()
}

fn probes(op: &Operation) -> Vec<ProbeId> {
    op.frames.iter().map(|f| f.probe).collect()
}

fn err(op: &Operation) -> (i32, Layer, ProbeId) {
    match op.result {
        OpResult::Err {
            errno,
            layer,
            function,
        } => (errno, layer, function),
        OpResult::Ok => panic!("expected an error, got ok: {op:?}"),
    }
}

#[test]
fn successful_bind_via_ioctl() {
    let mut c = Correlator::default();
    let out = feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let ops = ops(&out);
    assert_eq!(ops.len(), 1, "{out:?}");
    let op = ops[0];
    assert_eq!(op.kind, OpKind::Bind);
    assert!(op.ok());
    assert_eq!(op.layer(), Layer::Iommufd);
    assert_eq!(
        probes(op),
        [
            ProbeId::TsmOpIoctl,
            ProbeId::TsmBind,
            ProbeId::PciTsmBind,
            ProbeId::DriverBind
        ]
    );
    assert_eq!(op.device.as_deref(), Some(DEV));
    assert_eq!(op.vdevice_id, Some(3));
    assert_eq!(op.tdi_id, Some(7));
    assert_eq!(op.vm.as_ref().map(Vm::name).as_deref(), Some("kvm-4242"));
    assert_eq!((op.start_ns, op.end_ns), (1_000_000, 2_000_000));
    assert_eq!(op.frames[0].duration_ns, 1_000_000);
    assert_eq!(op.frames[3].duration_ns, 400_000);
    assert_eq!((op.tgid, op.tid, &*op.comm), (TGID, 10, "qemu"));

    let b = c.binding(DEV).expect("bound");
    assert_eq!(b.path, BindPath::Ioctl);
    assert_eq!(b.vmm_tgid, TGID);
    assert_eq!(b.vdevice_id, Some(3));
    assert_eq!(b.tdi_id, Some(7));
    assert_eq!(b.vm.as_ref().unwrap().id, KVM);
    // Bound when tsm_bind returned (1.9 ms), not when the ioctl did (2.0 ms).
    assert_eq!(b.since_ns, 1_900_000);
    assert_eq!(c.pending_frames(), 0);
    assert!(leaks_detected(&out).is_empty());
    assert_eq!(c.stats().operations, 1);
}

#[test]
fn errno_attribution_at_every_layer() {
    struct Case {
        name: &'static str,
        events: Vec<Event>,
        kind: OpKind,
        errno: i32,
        layer: Layer,
        function: ProbeId,
    }
    let t0 = 1_000_000;
    let only_ioctl = |op: u32, ret: i64| vec![ioctl(op, t0, 1, ret)];
    let cases = vec![
        Case {
            name: "flags != 0",
            events: only_ioctl(1, EOPNOTSUPP),
            kind: OpKind::Bind,
            errno: 95,
            layer: Layer::Iommufd,
            function: ProbeId::TsmOpIoctl,
        },
        Case {
            name: "no such vdevice",
            events: only_ioctl(1, ENOENT),
            kind: OpKind::Bind,
            errno: 2,
            layer: Layer::Iommufd,
            function: ProbeId::TsmOpIoctl,
        },
        Case {
            name: "vIOMMU without KVM",
            events: only_ioctl(2, ENODEV),
            kind: OpKind::Unbind,
            errno: 19,
            layer: Layer::Iommufd,
            function: ProbeId::TsmOpIoctl,
        },
        Case {
            name: "bad op",
            events: only_ioctl(9, EINVAL),
            kind: OpKind::Invalid,
            errno: 22,
            layer: Layer::Iommufd,
            function: ProbeId::TsmOpIoctl,
        },
        Case {
            name: "non-PCI device",
            events: bind_stack(1, t0, DEV, Some(EINVAL), Some(EINVAL), None, None),
            kind: OpKind::Bind,
            errno: 22,
            layer: Layer::TsmCore,
            function: ProbeId::TsmBind,
        },
        Case {
            name: "bound to another VM",
            events: bind_stack(1, t0, DEV, Some(EBUSY), Some(EBUSY), Some(EBUSY), None),
            kind: OpKind::Bind,
            errno: 16,
            layer: Layer::PciTsm,
            function: ProbeId::PciTsmBind,
        },
        Case {
            name: "not a link TSM",
            events: bind_stack(1, t0, DEV, Some(ENXIO), Some(ENXIO), Some(ENXIO), None),
            kind: OpKind::Bind,
            errno: 6,
            layer: Layer::PciTsm,
            function: ProbeId::PciTsmBind,
        },
        Case {
            name: "no TSM context",
            events: bind_stack(1, t0, DEV, Some(EINVAL), Some(EINVAL), Some(EINVAL), None),
            kind: OpKind::Bind,
            errno: 22,
            layer: Layer::PciTsm,
            function: ProbeId::PciTsmBind,
        },
        Case {
            name: "firmware failure",
            events: bind_stack(1, t0, DEV, Some(EIO), Some(EIO), Some(EIO), Some(EIO)),
            kind: OpKind::Bind,
            errno: 5,
            layer: Layer::TsmDriver,
            function: ProbeId::DriverBind,
        },
        Case {
            name: "driver error rewritten by pci_tsm: pci_tsm produced the ioctl's errno",
            events: bind_stack(1, t0, DEV, Some(EPERM), Some(EPERM), Some(EPERM), Some(EIO)),
            kind: OpKind::Bind,
            errno: 1,
            layer: Layer::PciTsm,
            function: ProbeId::PciTsmBind,
        },
        Case {
            name: "bare pci_tsm_bind failure (no outer frame), flushed at finish",
            events: bind_stack(1, t0, DEV, None, None, Some(EBUSY), None),
            kind: OpKind::Bind,
            errno: 16,
            layer: Layer::PciTsm,
            function: ProbeId::PciTsmBind,
        },
    ];
    for case in cases {
        let mut c = Correlator::default();
        let mut out = feed(&mut c, case.events);
        out.extend(c.finish(10_000_000));
        let ops = ops(&out);
        assert_eq!(ops.len(), 1, "{}: {out:?}", case.name);
        assert_eq!(ops[0].kind, case.kind, "{}", case.name);
        assert_eq!(
            err(ops[0]),
            (case.errno, case.layer, case.function),
            "{}",
            case.name
        );
        assert_eq!(ops[0].layer(), case.layer, "{}", case.name);
        assert_eq!(
            c.binding_count(),
            0,
            "{}: a failed bind binds nothing",
            case.name
        );
        assert!(leaks_detected(&out).is_empty(), "{}", case.name);
    }
}

#[test]
fn efault_after_bind_leaks_until_rebind_or_unbind() {
    let mut c = Correlator::default();
    let out = feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, EFAULT));
    let op = ops(&out)[0];
    assert_eq!(err(op), (14, Layer::Iommufd, ProbeId::TsmOpIoctl));
    // The device stays bound while userspace saw a failure.
    assert!(c.binding(DEV).is_some());
    let leaks = leaks_detected(&out);
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].reason, LeakReason::IoctlFailedAfterBind);
    // Seen when the ioctl returned (2.0 ms); bound since tsm_bind returned (1.9 ms): the
    // event times, whenever the correlator handled them.
    assert_eq!(leaks[0].detected_ns, 2_000_000);
    assert_eq!(leaks[0].bound_since_ns, Some(1_900_000));
    assert_eq!(
        leaks[0].vm.as_ref().map(Vm::name).as_deref(),
        Some("kvm-4242")
    );
    assert_eq!(leaks[0].vmm_tgid, Some(TGID));
    assert_eq!(c.leak_counts()[&LeakReason::IoctlFailedAfterBind], 1);

    // The VMM retries; pci_tsm_bind is idempotent for the same VM: the leak clears.
    let out = feed(&mut c, bind_via_ioctl(10, 5_000_000, DEV, 0));
    let cleared = leaks_cleared(&out);
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].cleared_by, Some(ClearCause::Rebound));
    assert_eq!(c.leaks().count(), 0);
    // The binding keeps its original time (tsm_bind's return).
    assert_eq!(c.binding(DEV).unwrap().since_ns, 1_900_000);
    // The detected counter stays.
    assert_eq!(
        c.stats().leaks_detected[&LeakReason::IoctlFailedAfterBind],
        1
    );

    // EFAULT again, then an unbind clears it the other way.
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, EFAULT));
    let out = feed(&mut c, unbind_via_ioctl(10, 3_000_000, DEV));
    assert_eq!(leaks_cleared(&out)[0].cleared_by, Some(ClearCause::Unbound));
    assert!(c.binding(DEV).is_none());
}

#[test]
fn unbind_via_ioctl_removes_binding() {
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let out = feed(&mut c, unbind_via_ioctl(11, 3_000_000, DEV));
    let op = ops(&out)[0];
    assert_eq!(op.kind, OpKind::Unbind);
    assert!(op.ok());
    assert_eq!(
        probes(op),
        [
            ProbeId::TsmOpIoctl,
            ProbeId::TsmUnbind,
            ProbeId::PciTsmUnbind,
            ProbeId::DriverUnbind
        ]
    );
    assert_eq!(c.binding_count(), 0);
    assert!(leaks_detected(&out).is_empty());
}

#[test]
fn unbind_ioctl_without_inner_frames_finds_device_by_vdevice_id() {
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let out = feed(&mut c, vec![ioctl(UAPI_OP_UNBIND, 3_000_000, 10, 0)]);
    assert_eq!(ops(&out)[0].kind, OpKind::Unbind);
    assert_eq!(c.binding_count(), 0);
    assert_eq!(anomalies(&out, AnomalyKind::UnbindWithoutDevice), 0);
}

#[test]
fn teardown_with_unbind_does_not_leak() {
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let out = feed(&mut c, teardown(12, 3_000_000, DEV, true));
    let op = ops(&out)[0];
    assert_eq!(op.kind, OpKind::Teardown);
    assert_eq!(
        probes(op),
        [
            ProbeId::VdeviceAbort,
            ProbeId::TsmUnbind,
            ProbeId::PciTsmUnbind
        ]
    );
    assert_eq!(op.virt_id, Some(7));
    assert_eq!(op.vdevice_id, Some(3));
    assert_eq!(c.binding_count(), 0);
    assert!(leaks_detected(&out).is_empty());
}

#[test]
fn teardown_without_unbind_leaks() {
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let out = feed(&mut c, teardown(12, 3_000_000, DEV, false));
    assert_eq!(ops(&out)[0].kind, OpKind::Teardown);
    let leaks = leaks_detected(&out);
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].reason, LeakReason::VdeviceTeardownWithoutUnbind);
    assert_eq!(&*leaks[0].device, DEV);
    assert_eq!(leaks[0].detected_ns, 4_000_000);
    assert_eq!(leaks[0].bound_since_ns, Some(1_900_000));
    assert!(c.binding(DEV).is_some(), "still bound");

    // Teardown of an unbound device is not a leak.
    let mut c = Correlator::default();
    let out = feed(&mut c, teardown(12, 3_000_000, DEV, false));
    assert!(leaks_detected(&out).is_empty());
}

#[test]
fn vm_destroyed_leaks_only_after_grace() {
    let grace = 5_000_000_000;
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let t = 10_000_000;
    let out = c.handle(kvm_destroy(t), t);
    assert!(
        matches!(
            &out[..],
            [Output::VmEvent(VmEvent {
                event: VmEventKind::VmDestroyed,
                bound_devices: 1,
                ..
            })]
        ),
        "{out:?}"
    );
    assert!(
        c.tick(t + grace - 1).is_empty(),
        "not before the grace period"
    );
    let out = c.tick(t + grace);
    let leaks = leaks_detected(&out);
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].reason, LeakReason::VmDestroyed);
    assert_eq!(c.pending_vm_checks(), 0);
    // Not detected twice.
    assert!(c.tick(t + 2 * grace).is_empty());
    // A late unbind clears it; the detected counter stays.
    let out = feed(&mut c, unbind_via_ioctl(10, t + 3 * grace, DEV));
    assert_eq!(leaks_cleared(&out).len(), 1);
    assert_eq!(c.leak_counts()[&LeakReason::VmDestroyed], 0);
    assert_eq!(c.stats().leaks_detected[&LeakReason::VmDestroyed], 1);
}

#[test]
fn vm_destroyed_then_unbound_within_grace_is_fine() {
    let grace = 5_000_000_000;
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let t = 10_000_000;
    c.handle(kvm_destroy(t), t);
    // Teardown order varies: the vdevice goes after the VM.
    feed(&mut c, teardown(10, t + 1_000_000, DEV, true));
    let out = c.tick(t + grace + 1);
    assert!(leaks_detected(&out).is_empty(), "{out:?}");
    // Other VMs' devices are not touched.
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let mut other = kvm_destroy(t);
    other.vm = Some(Vm {
        id: VmId::from_bits(0x1000),
        pid: Some(1),
        stats_id: None,
        vmm: None,
    });
    c.handle(other, t);
    assert!(leaks_detected(&c.tick(t + grace)).is_empty());
}

#[test]
fn vm_destroyed_before_a_pending_bare_bind_is_flushed() {
    // The bind is still waiting for an outer frame when the VM dies: the check after the
    // grace period still sees it.
    let grace = 5_000_000_000;
    let mut c = Correlator::default();
    feed(
        &mut c,
        bind_stack(10, 1_000_000, DEV, None, Some(0), Some(0), None),
    );
    assert_eq!(c.binding_count(), 0);
    c.handle(kvm_destroy(3_000_000), 3_000_000);
    let out = c.tick(3_000_000 + grace);
    assert_eq!(ops(&out).len(), 1);
    assert_eq!(leaks_detected(&out)[0].reason, LeakReason::VmDestroyed);
}

#[test]
fn a_vm_event_waits_for_a_bind_of_another_thread_that_returned_before_it() {
    // A bare bind (no ioctl) returns at 1.9 ms on thread 10 and waits for a possible outer
    // frame; the VM is destroyed at 3 ms on thread 999. The VM event counts that binding.
    let mut c = Correlator::default();
    let mut out = feed(
        &mut c,
        bind_stack(10, 1_000_000, DEV, None, Some(0), Some(0), None),
    );
    out.extend(c.handle(kvm_destroy(3_000_000), 3_000_000));
    // Thread 10 moves on: its bind can have no outer frame any more.
    out.extend(feed(
        &mut c,
        vec![ioctl(UAPI_OP_BIND, 5_000_000, 10, EINVAL)],
    ));
    let kinds: Vec<String> = out
        .iter()
        .map(|o| match o {
            Output::Operation(op) => format!("{} {}", op.kind.as_str(), op.start_ns),
            Output::VmEvent(v) => format!("{} {}", v.event.as_str(), v.bound_devices),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["bind 1100000", "vm_destroyed 1", "bind 5000000"],
        "{out:?}"
    );
}

#[test]
fn vmm_exit_leaks_after_grace() {
    let grace = 5_000_000_000;
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let t = 20_000_000;
    // Some other process exits: nothing.
    c.handle(vmm_exit(t, 777), t);
    let out = c.handle(vmm_exit(t + 1, TGID), t + 1);
    assert!(matches!(
        &out[..],
        [Output::VmEvent(VmEvent {
            event: VmEventKind::VmmExited,
            bound_devices: 1,
            ..
        })]
    ));
    assert!(leaks_detected(&c.tick(t + grace)).is_empty());
    let out = c.tick(t + 1 + grace);
    let leaks = leaks_detected(&out);
    assert_eq!(leaks.len(), 1, "{out:?}");
    assert_eq!(leaks[0].reason, LeakReason::VmmExited);
    assert_eq!(leaks[0].vmm_comm.as_deref(), Some("qemu"));
}

#[test]
fn a_vm_check_waits_for_an_unbind_that_ended_before_its_deadline() {
    // The VM dies at t with DEV bound; a bare unbind (no ioctl: a kernel-internal caller)
    // on another thread returns at t + 0.9 ms and waits for a possible outer frame; the
    // grace period (2 ms) ends while it waits. By the events, DEV was unbound in time.
    let grace = 2_000_000;
    let mut c = Correlator::new(Config {
        leak_grace_ns: grace,
        ..Config::default()
    });
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let t = 10_000_000;
    let mut out = c.handle(kvm_destroy(t), t);
    out.extend(feed(
        &mut c,
        vec![
            unbind_frame(ProbeId::PciTsmUnbind, 2, t, 11, DEV, None),
            unbind_frame(ProbeId::TsmUnbind, 1, t, 11, DEV, Some(0)),
        ],
    ));
    // Another thread's call, after the deadline.
    out.extend(feed(
        &mut c,
        vec![ioctl(UAPI_OP_BIND, t + 3_000_000, 12, EINVAL)],
    ));
    out.extend(c.tick(t + 3_000_000));
    out.extend(c.finish(t + 4_000_000));
    assert!(leaks_detected(&out).is_empty(), "{out:?}");
    assert_eq!(c.binding_count(), 0);
    let closed: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::BindingClosed(b) => Some(b.closed_ns),
            _ => None,
        })
        .collect();
    assert_eq!(closed, [t + 900_000]);
}

#[test]
fn a_leak_is_seen_at_its_deadline_and_cleared_at_the_unbinds_return() {
    let grace = 2_000_000;
    let mut c = Correlator::new(Config {
        leak_grace_ns: grace,
        ..Config::default()
    });
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let t = 10_000_000;
    c.handle(kvm_destroy(t), t);
    // The unbind's frames are handled (all at once, late) after the deadline.
    let mut out = Vec::new();
    for e in unbind_via_ioctl(10, t + 5_000_000, DEV) {
        out.extend(c.handle(e, t + 50_000_000));
    }
    let detected = leaks_detected(&out);
    assert_eq!(detected.len(), 1, "{out:?}");
    assert_eq!(detected[0].reason, LeakReason::VmDestroyed);
    assert_eq!(detected[0].detected_ns, t + grace);
    assert_eq!(detected[0].bound_since_ns, Some(1_900_000));
    let cleared = leaks_cleared(&out);
    assert_eq!(cleared.len(), 1, "{out:?}");
    // tsm_unbind returned at t + 5.9 ms.
    assert_eq!(cleared[0].cleared_ns, Some(t + 5_900_000));
}

#[test]
fn bare_bind_without_outer_frame() {
    // Kernel without the iommufd patch: tsm_bind called by something else.
    let mut c = Correlator::default();
    let out = feed(
        &mut c,
        bind_stack(10, 1_000_000, DEV, None, Some(0), Some(0), Some(0)),
    );
    assert!(ops(&out).is_empty(), "waits for a possible outer frame");
    assert_eq!(c.pending_frames(), 3);
    // A later call on the same thread starting after it: it cannot have an outer frame.
    let out = feed(
        &mut c,
        bind_stack(10, 5_000_000, "0000:02:00.0", None, None, Some(0), None),
    );
    let ops1 = ops(&out);
    assert_eq!(ops1.len(), 1);
    assert_eq!(
        probes(ops1[0]),
        [ProbeId::TsmBind, ProbeId::PciTsmBind, ProbeId::DriverBind]
    );
    assert_eq!(c.binding(DEV).unwrap().path, BindPath::TsmBind);
    // The second one flushes by timeout.
    assert!(c.tick(5_800_000 + 999_999_999).is_empty());
    let out = c.tick(5_800_000 + 1_000_000_000);
    assert_eq!(ops(&out).len(), 1);
    assert_eq!(
        c.binding("0000:02:00.0").unwrap().path,
        BindPath::PciTsmBind
    );
    assert_eq!(c.pending_frames(), 0);
}

#[test]
fn out_of_order_delivery_with_reorder_window() {
    let cfg = Config {
        reorder_window_ns: 1_000_000,
        ..Config::default()
    };
    let mut c = Correlator::new(cfg);
    let mut evs = bind_stack(
        10,
        1_000_000,
        DEV,
        Some(EBUSY),
        Some(EBUSY),
        Some(EBUSY),
        None,
    );
    evs.reverse(); // ioctl first, pci_tsm_bind last
    let out = feed(&mut c, evs);
    assert!(ops(&out).is_empty());
    let out = c.tick(2_000_000 + 1_000_000);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1, "{out:?}");
    assert_eq!(
        probes(ops[0]),
        [ProbeId::TsmOpIoctl, ProbeId::TsmBind, ProbeId::PciTsmBind]
    );
    assert_eq!(err(ops[0]), (16, Layer::PciTsm, ProbeId::PciTsmBind));
}

#[test]
fn out_of_order_without_window_counts_late_frames() {
    let mut c = Correlator::default();
    let mut evs = bind_stack(
        10,
        1_000_000,
        DEV,
        Some(EBUSY),
        Some(EBUSY),
        Some(EBUSY),
        None,
    );
    evs.reverse();
    let out = feed(&mut c, evs);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1);
    assert_eq!(probes(ops[0]), [ProbeId::TsmOpIoctl]);
    assert_eq!(anomalies(&out, AnomalyKind::LateFrame), 2);
    assert_eq!(c.pending_frames(), 0);
}

#[test]
fn inner_frames_swapped_are_still_nested() {
    let mut c = Correlator::default();
    let mut evs = bind_via_ioctl(10, 1_000_000, DEV, 0);
    evs.swap(0, 1); // pci_tsm_bind before driver_bind
    let out = feed(&mut c, evs);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1);
    assert_eq!(
        probes(ops[0]),
        [
            ProbeId::TsmOpIoctl,
            ProbeId::TsmBind,
            ProbeId::PciTsmBind,
            ProbeId::DriverBind
        ]
    );
}

#[test]
fn duplicated_events_are_dropped_and_counted() {
    let mut c = Correlator::default();
    let evs: Vec<Event> = bind_via_ioctl(10, 1_000_000, DEV, 0)
        .into_iter()
        .flat_map(|e| [e.clone(), e])
        .collect();
    let out = feed(&mut c, evs);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1, "{out:?}");
    assert_eq!(ops[0].frames.len(), 4);
    assert_eq!(anomalies(&out, AnomalyKind::DuplicateEvent), 4);
    assert_eq!(c.stats().anomalies[&AnomalyKind::DuplicateEvent], 4);
    // Duplicate point events too.
    let t = 10_000_000;
    c.handle(kvm_destroy(t), t);
    let out = c.handle(kvm_destroy(t), t);
    assert_eq!(anomalies(&out, AnomalyKind::DuplicateEvent), 1);
    assert_eq!(c.pending_vm_checks(), 1);
}

#[test]
fn missing_inner_frames() {
    // Only the ioctl (inner probes absent): the op is reported, no device → no binding.
    let mut c = Correlator::default();
    let out = feed(&mut c, vec![ioctl(UAPI_OP_BIND, 1_000_000, 10, 0)]);
    assert_eq!(ops(&out)[0].kind, OpKind::Bind);
    assert!(ops(&out)[0].ok());
    assert_eq!(anomalies(&out, AnomalyKind::BindWithoutDevice), 1);
    assert_eq!(c.binding_count(), 0);
    // ioctl + driver frame only (tsm/pci probes missing): still one nested op.
    let mut c = Correlator::default();
    let out = feed(
        &mut c,
        bind_stack(10, 1_000_000, DEV, Some(EIO), None, None, Some(EIO)),
    );
    assert_eq!(ops(&out).len(), 1);
    assert_eq!(
        err(ops(&out)[0]),
        (5, Layer::TsmDriver, ProbeId::DriverBind)
    );
}

#[test]
fn entry_missing_frames() {
    let mut c = Correlator::default();
    let mut evs = bind_via_ioctl(10, 1_000_000, DEV, 0);
    // The ioctl's entry was lost: start and arguments unknown.
    let last = evs.last_mut().unwrap();
    last.entry_missing = true;
    last.start_ns = 0;
    last.op = None;
    last.vdevice_id = None;
    let out = feed(&mut c, evs);
    assert_eq!(anomalies(&out, AnomalyKind::EntryMissing), 1);
    let ops = ops(&out);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].frames.len(), 4);
    assert_eq!(ops[0].kind, OpKind::Bind, "inferred from the inner frames");
    assert_eq!(ops[0].start_ns, 1_100_000, "earliest known start");
    assert_eq!(ops[0].frames[0].duration_ns, 0);
    assert!(c.binding(DEV).is_some());
}

#[test]
fn time_reversed_event_is_repaired() {
    let mut c = Correlator::default();
    let mut e = ioctl(UAPI_OP_BIND, 5_000_000, 10, EINVAL);
    e.end_ns = 1_000;
    let out = c.handle(e, 1_000);
    assert_eq!(anomalies(&out, AnomalyKind::TimeReversed), 1);
    assert_eq!(ops(&out).len(), 1);
}

#[test]
fn binding_table_is_bounded() {
    let cfg = Config {
        max_bindings: 2,
        ..Config::default()
    };
    let mut c = Correlator::new(cfg);
    let mut all = Vec::new();
    for (i, dev) in ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0"]
        .iter()
        .enumerate()
    {
        all.extend(feed(
            &mut c,
            bind_via_ioctl(10, (i as u64 + 1) * 10_000_000, dev, 0),
        ));
    }
    assert_eq!(c.binding_count(), 2);
    assert!(c.binding("0000:01:00.0").is_none(), "oldest evicted");
    assert_eq!(anomalies(&all, AnomalyKind::BindingEvicted), 1);
}

#[test]
fn reconcile_against_fake_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut c = Correlator::default();
    // Bound in our table and in sysfs: fine.
    feed(&mut c, bind_via_ioctl(10, 1_000_000, "0000:01:00.0", 0));
    // Bound in our table, unbound in sysfs: a missed unbind.
    feed(&mut c, bind_via_ioctl(10, 3_000_000, "0000:02:00.0", 0));
    // Bound in our table, no tsm/ directory: unknown, kept.
    feed(&mut c, bind_via_ioctl(10, 5_000_000, "0000:03:00.0", 0));
    fake::device(root, "0000:01:00.0", Some("tsm0"));
    fake::device(root, "0000:02:00.0", Some(""));
    fake::device(root, "0000:03:00.0", None);
    // Bound in sysfs, never seen: no owner.
    fake::device(root, "0000:04:00.0", Some("tsm0"));
    let snap = Snapshot::read(root);
    let out = c.reconcile(&snap, &Default::default(), 100_000_000);
    let mismatches: Vec<(MismatchKind, &str)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Mismatch(m) => Some((m.kind, &*m.device)),
            _ => None,
        })
        .collect();
    assert_eq!(
        mismatches,
        [
            (MismatchKind::DeniesBinding, "0000:02:00.0"),
            (MismatchKind::BoundWithoutOwner, "0000:04:00.0")
        ]
    );
    assert!(c.binding("0000:01:00.0").is_some());
    assert!(c.binding("0000:02:00.0").is_none(), "dropped");
    assert!(
        c.binding("0000:03:00.0").is_some(),
        "unknown is never unbound"
    );
    let leaks = leaks_detected(&out);
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].reason, LeakReason::SysfsBoundWithoutOwner);
    assert_eq!(leaks[0].tsm.as_deref(), Some("tsm0"));
    assert_eq!(c.stats().mismatches[&MismatchKind::DeniesBinding], 1);

    // Same state again: nothing new.
    let out = c.reconcile(&snap, &Default::default(), 200_000_000);
    assert!(out.is_empty(), "{out:?}");

    // The owner-less device gets unbound: its leak clears.
    fake::device(root, "0000:04:00.0", Some(""));
    let out = c.reconcile(&Snapshot::read(root), &Default::default(), 300_000_000);
    let cleared = leaks_cleared(&out);
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].cleared_by, Some(ClearCause::SysfsUnbound));
    assert_eq!(c.leaks().count(), 0);

    // An unreadable tree changes nothing.
    let out = c.reconcile(
        &Snapshot::read(&root.join("missing")),
        &Default::default(),
        400_000_000,
    );
    assert!(out.is_empty());
    assert_eq!(c.binding_count(), 2);
}

#[test]
fn reconcile_clears_teardown_leak_when_sysfs_says_unbound() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    feed(&mut c, teardown(10, 3_000_000, DEV, false));
    assert_eq!(c.leaks().count(), 1);
    fake::device(dir.path(), DEV, Some(""));
    let out = c.reconcile(&Snapshot::read(dir.path()), &Default::default(), 10_000_000);
    assert_eq!(
        leaks_cleared(&out)[0].cleared_by,
        Some(ClearCause::SysfsUnbound)
    );
    assert_eq!(c.binding_count(), 0);
}

#[test]
fn reconcile_ignores_binding_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Correlator::default();
    // tsm_bind returned but its outer ioctl has not yet.
    feed(
        &mut c,
        bind_stack(10, 1_000_000, DEV, None, Some(0), Some(0), None),
    );
    fake::device(dir.path(), DEV, Some("tsm0"));
    let out = c.reconcile(&Snapshot::read(dir.path()), &Default::default(), 2_000_000);
    assert!(out.is_empty(), "{out:?}");
}

/// After a restart the device table is empty: sysfs's `tsm/connect` rebuilds it (connected
/// devices count as connected, a disconnect made while no daemon ran is seen), except where a
/// call is running.
#[test]
fn reconcile_learns_device_links_from_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut c = Correlator::default();
    let states = |c: &Correlator| {
        let m = c.device_states();
        (m[&TsmState::Connected], m[&TsmState::Disconnected])
    };
    fake::device(root, "0000:01:00.0", Some(""));
    fake::connect(root, "0000:01:00.0", "tsm0");
    fake::device(root, "0000:02:00.0", Some(""));
    fake::connect(root, "0000:02:00.0", "tsm1");
    fake::device(root, "0000:03:00.0", Some(""));
    fake::connect(root, "0000:03:00.0", "");
    let in_flight: std::collections::BTreeSet<String> = ["0000:02:00.0".to_string()].into();
    let out = c.reconcile(&Snapshot::read(root), &in_flight, 1_000);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(c.device_tsm("0000:01:00.0").map(|t| &**t), Some("tsm0"));
    assert_eq!(
        c.device_tsm("0000:02:00.0"),
        None,
        "a call of its is running"
    );
    assert_eq!(
        states(&c),
        (1, 0),
        "never-connected devices are not counted"
    );
    assert_eq!(c.stats().links_from_sysfs, 1);

    // Next run: the second is connected now; the first was disconnected meanwhile.
    fake::connect(root, "0000:01:00.0", "");
    c.reconcile(&Snapshot::read(root), &Default::default(), 2_000);
    assert_eq!(c.device_tsm("0000:01:00.0"), None);
    assert_eq!(c.device_tsm("0000:02:00.0").map(|t| &**t), Some("tsm1"));
    assert_eq!(states(&c), (1, 1));
    // Nothing changed: nothing learned.
    c.reconcile(&Snapshot::read(root), &Default::default(), 3_000);
    assert_eq!(c.stats().links_from_sysfs, 3);
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub(crate) fn random_event(r: &mut Rng) -> Event {
    let probe = ProbeId::ALL[r.below(ProbeId::ALL.len() as u64) as usize];
    let start = r.below(1_000_000_000_000);
    let end = start + r.below(2_000_000_000);
    let tid = r.below(10_000) as u32;
    let ret = match r.below(4) {
        0 => None,
        1 => Some(0),
        2 => Some(-(r.below(4200) as i64)),
        _ => Some(r.next() as i64),
    };
    let mut e = ev(probe, start, end, tid, ret);
    e.tgid = r.below(50) as u32;
    e.entry_missing = r.below(10) == 0;
    if r.below(4) != 0 {
        e.device = Some(format!("0000:{:02x}:00.0", r.below(256)).into());
    }
    if r.below(2) == 0 {
        e.vm = Some(Vm {
            id: VmId::from_bits(r.below(8)),
            pid: Some(r.below(50) as i32),
            stats_id: None,
            vmm: None,
        });
    }
    e.op = Some(r.below(4) as u32);
    e.vdevice_id = Some(r.below(8) as u32);
    e.obj_id = Some(r.below(8) as u32);
    e
}

#[test]
fn bounded_under_a_flood_of_random_events() {
    let cfg = Config {
        max_bindings: 16,
        max_leaks: 16,
        max_threads: 8,
        max_pending_per_thread: 4,
        max_vm_checks: 8,
        ..Config::default()
    };
    let mut c = Correlator::new(cfg);
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut now = 0u64;
    for i in 0..30_000 {
        let e = random_event(&mut r);
        // "now" mostly moves forward, sometimes jumps.
        now = if r.below(50) == 0 {
            r.below(u64::MAX / 2)
        } else {
            now.max(e.end_ns)
        };
        let dup = (i % 97 == 0).then(|| e.clone());
        c.handle(e, now);
        if let Some(d) = dup {
            c.handle(d, now);
        }
        if i % 1000 == 0 {
            c.tick(now);
            let dir_snapshot = Snapshot {
                devices: (0..300u64)
                    .map(|d| {
                        let state = match r.below(3) {
                            0 => DeviceState::Bound("tsm0".into()),
                            1 => DeviceState::Unbound,
                            _ => DeviceState::Unknown,
                        };
                        (format!("0000:{d:02x}:00.0"), state)
                    })
                    .collect(),
                ..Default::default()
            };
            c.reconcile(&dir_snapshot, &Default::default(), now);
        }
        assert!(c.thread_count() <= 8);
        assert!(c.binding_count() <= 16);
        assert!(c.leaks().count() <= 16);
        assert!(c.pending_vm_checks() <= 8);
        assert!(c.pending_frames() <= 8 * 4 * MAX_CHAIN_FRAMES);
    }
    c.finish(now);
    assert_eq!(c.pending_frames(), 0);
    assert_eq!(c.pending_vm_checks(), 0);
    assert!(c.stats().anomalies.values().sum::<u64>() > 0);
    assert!(c.stats().operations > 1_000);
}

#[test]
fn teardown_with_unreadable_device_matches_by_vdevice_id() {
    let mut c = Correlator::default();
    feed(&mut c, bind_via_ioctl(10, 1_000_000, DEV, 0));
    let mut evs = teardown(12, 3_000_000, DEV, false);
    evs[0].device = None; // dev name read faulted; obj_id 3 = the bind ioctl's vdevice_id
    let out = feed(&mut c, evs);
    assert_eq!(&*leaks_detected(&out)[0].device, DEV);
}

/// The VMM's name, given to a bind's frames by the decoder, names the operation, the
/// binding, a later VM event of the same VM (which carries no name) and its leak; with
/// `--vm-name stats-id` none of them.
#[test]
fn a_vm_named_by_its_vmm_keeps_the_name_to_its_leak() {
    let named = |mut evs: Vec<Event>| {
        for e in &mut evs {
            if let Some(v) = e.vm.as_mut() {
                v.vmm = Some(crate::events::VmmName {
                    vmm: "qemu".into(),
                    name: "web-1".into(),
                });
            }
        }
        evs
    };
    for (names, want) in [(true, "web-1"), (false, "kvm-4242")] {
        let mut c = Correlator::new(Config {
            vmm_names: names,
            ..Config::default()
        });
        let out = feed(&mut c, named(bind_via_ioctl(10, 1_000_000, DEV, 0)));
        let op = ops(&out)[0];
        assert_eq!(&*op.vm.as_ref().unwrap().name(), want);
        let b = c.saved_state("b").bindings;
        assert_eq!(&*b[0].vm.as_ref().unwrap().name(), want);
        let t = 10_000_000;
        c.handle(kvm_destroy(t), t);
        let out = c.tick(t + 5_000_000_000);
        let leaks = leaks_detected(&out);
        assert_eq!(leaks.len(), 1);
        assert_eq!(&*leaks[0].vm_name(), want);
    }
}
