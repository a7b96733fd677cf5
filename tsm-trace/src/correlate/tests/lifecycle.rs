//! The PCI TSM lifecycle through the correlator: connect, guest requests, disconnect and
//! removal while bound, as the real core's call chains deliver them (return order).

use super::tests::{DEV, EIO, ENXIO, ev, vm};
use super::*;
use crate::events::{Event, Layer, ProbeId, UnbindCause, Vm, VmId};

const TSM: &str = "tsm0";

pub(super) fn dev_frame(probe: ProbeId, start: u64, end: u64, ret: Option<i64>) -> Event {
    let mut e = ev(probe, start, end, 7, ret);
    e.device = Some(DEV.into());
    e
}

/// `echo tsm0 > tsm/connect` → probe → connect, returning `len` or an errno.
fn connect(t0: u64, probe_ret: i64, connect_ret: Option<i64>, store_ret: i64) -> Vec<Event> {
    let mut v = Vec::new();
    let mut p = dev_frame(ProbeId::DriverProbe, t0 + 10, t0 + 20, Some(probe_ret));
    p.ret_is_ptr = true;
    p.ret_null_is_err = true;
    p.tsm = Some(TSM.into());
    v.push(p);
    if let Some(r) = connect_ret {
        v.push(dev_frame(
            ProbeId::DriverConnect,
            t0 + 30,
            t0 + 900,
            Some(r),
        ));
    }
    let mut s = dev_frame(ProbeId::Connect, t0, t0 + 1_000, Some(store_ret));
    s.tsm = Some(TSM.into());
    v.push(s);
    v
}

/// A bare `pci_tsm_bind` (and the driver's bind below it) of DEV.
fn bind(t0: u64) -> Vec<Event> {
    let mut d = dev_frame(
        ProbeId::DriverBind,
        t0 + 10,
        t0 + 90,
        Some(0xffff_8880_0000_1000u64 as i64),
    );
    d.ret_is_ptr = true;
    d.vm = Some(vm());
    let mut p = dev_frame(ProbeId::PciTsmBind, t0, t0 + 100, Some(0));
    p.vm = Some(vm());
    p.tdi_id = Some(7);
    vec![d, p]
}

/// The core's own unbind of DEV inside a disconnect or removal.
fn core_unbind(t0: u64) -> Vec<Event> {
    let mut u = dev_frame(ProbeId::PciTsmUnbindAny, t0, t0 + 50, Some(0));
    u.vm = Some(Vm {
        id: vm().id,
        pid: None,
        stats_id: None,
        vmm: None,
    });
    u.tdi_id = Some(7);
    vec![dev_frame(ProbeId::DriverUnbind, t0 + 10, t0 + 40, None), u]
}

/// `outer` (disconnect_store or __pci_tsm_destroy) → __pci_tsm_disconnect → unbind → driver
/// disconnect.
fn disconnect(t0: u64, outer: Event) -> Vec<Event> {
    let mut v = core_unbind(t0 + 20);
    v.push(dev_frame(
        ProbeId::DriverDisconnect,
        t0 + 100,
        t0 + 200,
        None,
    ));
    let mut d = dev_frame(ProbeId::PciTsmDisconnect, t0 + 10, t0 + 300, None);
    d.tsm = Some(TSM.into());
    v.push(d);
    v.push(outer);
    v
}

pub(super) fn run(c: &mut Correlator, evs: Vec<Event>) -> Vec<Output> {
    let mut out = Vec::new();
    for e in evs {
        let t = e.end_ns;
        out.extend(c.handle(e, t));
    }
    out.extend(c.tick(u64::MAX / 2));
    out
}

pub(super) fn ops(out: &[Output]) -> Vec<&Operation> {
    out.iter()
        .filter_map(|o| match o {
            Output::Operation(op) => Some(op),
            _ => None,
        })
        .collect()
}

#[test]
fn connect_then_bind_carries_the_tsm() {
    let mut c = Correlator::default();
    let out = run(
        &mut c,
        connect(1_000, 0xffff_8880_0000_2000u64 as i64, Some(0), 5),
    );
    let o = ops(&out);
    assert_eq!(o.len(), 1, "{out:#?}");
    assert_eq!(o[0].kind, OpKind::Connect);
    assert!(o[0].ok());
    assert_eq!(o[0].tsm.as_deref(), Some(TSM));
    let probes: Vec<ProbeId> = o[0].frames.iter().map(|f| f.probe).collect();
    assert_eq!(
        probes,
        [
            ProbeId::Connect,
            ProbeId::DriverProbe,
            ProbeId::DriverConnect
        ]
    );
    assert!(
        !out.iter().any(|x| matches!(x, Output::Anomaly(_))),
        "sibling driver ops are not overlapping frames: {out:#?}"
    );
    assert_eq!(c.device_states()[&TsmState::Connected], 1);

    let out = run(&mut c, bind(10_000));
    assert_eq!(ops(&out)[0].kind, OpKind::Bind);
    assert_eq!(c.binding(DEV).unwrap().tsm.as_deref(), Some(TSM));
    let s = c.device_states();
    assert_eq!((s[&TsmState::Connected], s[&TsmState::Bound]), (0, 1));
}

#[test]
fn connect_failures_name_the_layer() {
    // The driver's connect op failed: its errno, from tsm_driver.
    let mut c = Correlator::default();
    let out = run(
        &mut c,
        connect(1_000, 0xffff_8880_0000_2000u64 as i64, Some(EIO), EIO),
    );
    let op = ops(&out)[0];
    assert_eq!(
        op.result,
        OpResult::Err {
            errno: 5,
            layer: Layer::TsmDriver,
            function: ProbeId::DriverConnect
        }
    );
    // The driver's probe returned NULL: connect_store says -ENXIO, the driver is the cause.
    let out = run(&mut c, connect(5_000, 0, None, ENXIO));
    let op = ops(&out)[0];
    assert_eq!(
        op.result,
        OpResult::Err {
            errno: 6,
            layer: Layer::TsmDriver,
            function: ProbeId::DriverProbe
        }
    );
    assert!(op.frames[1].null_return);
    // Neither connected the device.
    assert_eq!(c.device_states()[&TsmState::Connected], 0);
}

#[test]
fn disconnect_while_bound_closes_the_binding_with_its_cause() {
    let mut c = Correlator::default();
    run(&mut c, connect(1_000, 0x1000, Some(0), 5));
    run(&mut c, bind(10_000));
    let mut store = dev_frame(ProbeId::Disconnect, 20_000, 21_000, Some(5));
    store.tsm = Some(TSM.into());
    let out = run(&mut c, disconnect(20_000, store));
    let o = ops(&out);
    assert_eq!(o.len(), 1, "one disconnect operation: {out:#?}");
    assert_eq!(o[0].kind, OpKind::Disconnect);
    assert_eq!(o[0].cause, Some(UnbindCause::Disconnect));
    // The core's frames know the VM only by pointer; the binding table names it.
    assert_eq!(o[0].vm, Some(vm()));
    let closed: Vec<&BindingClosed> = out
        .iter()
        .filter_map(|x| match x {
            Output::BindingClosed(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].cause, UnbindCause::Disconnect);
    assert_eq!(&*closed[0].binding.device, DEV);
    assert!(c.binding(DEV).is_none());
    // No leak, and sysfs (now unbound) finds nothing to complain about.
    assert_eq!(c.leak_counts().values().sum::<usize>(), 0);
    let s = c.device_states();
    assert_eq!((s[&TsmState::Bound], s[&TsmState::Disconnected]), (0, 1));
}

#[test]
fn removal_and_unregistration_while_bound() {
    for (unregister, cause) in [
        (false, UnbindCause::DeviceRemoval),
        (true, UnbindCause::TsmUnregister),
    ] {
        let mut c = Correlator::default();
        run(&mut c, bind(10_000));
        let mut destroy = dev_frame(ProbeId::PciTsmDestroy, 19_990, 21_000, None);
        destroy.tsm_unregister = unregister;
        let out = run(&mut c, disconnect(20_000, destroy));
        let o = ops(&out);
        assert_eq!(o.len(), 1, "{out:#?}");
        assert_eq!(o[0].cause, Some(cause));
        assert!(
            out.iter()
                .any(|x| matches!(x, Output::BindingClosed(b) if b.cause == cause))
        );
        assert!(c.binding(DEV).is_none());
    }
}

#[test]
fn guest_request_fields() {
    let mut c = Correlator::default();
    let mut g = dev_frame(ProbeId::PciTsmGuestReq, 1_000, 2_000, Some(16));
    g.scope = Some(1);
    g.scope_name = Some("state_change".into());
    g.in_len = Some(64);
    g.out_len = Some(128);
    g.tsm_code = Some(0x77);
    let out = run(&mut c, vec![g]);
    let op = ops(&out)[0];
    assert_eq!(op.kind, OpKind::GuestRequest);
    assert!(op.ok());
    let gr = op.guest_request.as_ref().unwrap();
    assert_eq!(
        (
            gr.scope_label().as_str(),
            gr.in_len,
            gr.out_len,
            gr.tsm_code,
            gr.residue
        ),
        ("state_change", Some(64), Some(128), Some(0x77), Some(16))
    );
}

/// A disconnect of function 0 unbinds function 1 first: the operation is function 0's (its
/// VM and tdi), and both bindings end with cause disconnect.
#[test]
fn disconnect_of_a_dsm_unbinds_its_functions() {
    const FN1: &str = "0000:01:00.1";
    let mut c = Correlator::default();
    run(&mut c, bind(10_000));
    let mut b = bind(12_000);
    for e in &mut b {
        e.device = Some(FN1.into());
        e.tdi_id = e.tdi_id.map(|_| 8);
        e.vm = Some(Vm {
            id: VmId::from_bits(0x8880_9999_0000),
            pid: Some(77),
            stats_id: Some("kvm-77".into()),
            vmm: None,
        });
    }
    run(&mut c, b);
    // Function 1's unbind (with the driver's) runs first inside __pci_tsm_disconnect.
    let mut drv = ev(ProbeId::DriverUnbind, 20_012, 20_016, 7, None);
    drv.device = Some(FN1.into());
    let mut u = ev(ProbeId::PciTsmUnbindAny, 20_011, 20_018, 7, Some(0));
    u.device = Some(FN1.into());
    u.tdi_id = Some(8);
    u.vm = Some(Vm {
        id: VmId::from_bits(0x8880_9999_0000),
        pid: None,
        stats_id: None,
        vmm: None,
    });
    let mut store = dev_frame(ProbeId::Disconnect, 20_000, 21_000, Some(5));
    store.tsm = Some(TSM.into());
    let mut evs = vec![drv, u];
    evs.extend(disconnect(20_000, store));
    let out = run(&mut c, evs);
    let o = ops(&out);
    assert_eq!(o.len(), 1, "{out:#?}");
    assert_eq!(o[0].device.as_deref(), Some(DEV));
    assert_eq!(o[0].tdi_id, Some(7));
    assert_eq!(o[0].vm, Some(vm()));
    let closed: Vec<&str> = out
        .iter()
        .filter_map(|x| match x {
            Output::BindingClosed(b) if b.cause == UnbindCause::Disconnect => {
                Some(&*b.binding.device)
            }
            _ => None,
        })
        .collect();
    assert_eq!(closed, [FN1, DEV]);
}

/// The series' path: ioctl → tsm_guest_req → pci_tsm_guest_req is one guest request that
/// starts at iommufd (its success's layer), with the vdevice of the ioctl, the op/tvm_arch
/// of tsm_guest_req (post-v5) and the scope PCI TSM saw; an unnamed value stays a number.
#[test]
fn guest_request_through_the_ioctl_is_one_operation() {
    let mut c = Correlator::default();
    let mut pci = dev_frame(ProbeId::PciTsmGuestReq, 1_200, 1_800, Some(16));
    pci.scope = Some(1);
    pci.scope_name = Some("state_change".into());
    pci.in_len = Some(64);
    pci.out_len = Some(128);
    pci.tsm_code = Some(0x5eed);
    let mut tsm = dev_frame(ProbeId::TsmGuestReq, 1_100, 1_900, Some(16));
    tsm.req_op = Some(5);
    tsm.req_op_name = Some("set_tdi_state".into());
    tsm.tvm_arch = Some(9);
    tsm.in_len = Some(64);
    tsm.out_len = Some(128);
    let mut ioctl = ev(ProbeId::GuestReqIoctl, 1_000, 2_000, 7, Some(16));
    ioctl.vdevice_id = Some(4);
    ioctl.req_op = Some(5);
    let out = run(&mut c, vec![pci, tsm, ioctl]);
    let o = ops(&out);
    assert_eq!(o.len(), 1, "{out:#?}");
    let op = o[0];
    assert_eq!(op.kind, OpKind::GuestRequest);
    assert_eq!(op.frames[0].probe, ProbeId::GuestReqIoctl);
    assert_eq!(op.frames.len(), 3);
    assert_eq!(op.vdevice_id, Some(4));
    assert_eq!(op.device.as_deref(), Some(DEV));
    let gr = op.guest_request.as_ref().unwrap();
    assert_eq!(gr.scope_label(), "state_change");
    assert_eq!(gr.req_op_name.as_deref(), Some("set_tdi_state"));
    assert_eq!(
        crate::correlate::label(gr.tvm_arch_name.as_deref(), gr.tvm_arch),
        "9"
    );
    assert_eq!((gr.tsm_code, gr.residue), (Some(0x5eed), Some(16)));
    let line =
        crate::exporters::trace::TraceFormatter::new(crate::clock::Clock::Relative { base_ns: 0 })
            .operation(op);
    assert!(line.contains("guest_request"), "{line}");
    assert!(
        line.contains("scope=state_change req_op=set_tdi_state tvm_arch=9"),
        "{line}"
    );
    assert!(line.contains("vdev=4"), "{line}");
}

#[test]
fn guest_request_carries_the_tsm() {
    let mut c = Correlator::default();
    let mut g = dev_frame(ProbeId::PciTsmGuestReq, 1_000, 2_000, Some(0));
    g.tsm = Some(TSM.into());
    let out = run(&mut c, vec![g]);
    assert_eq!(ops(&out)[0].tsm.as_deref(), Some(TSM));
}

/// `rmmod` of the module that made a binding (the stand-in frees its TDIs on exit without an
/// unbind): the binding ends with cause module_unloaded, in the table, the metrics and the
/// trace line; a binding made through another module's functions stays.
#[test]
fn module_unload_ends_the_bindings_made_through_it() {
    use super::tests::bind_via_ioctl;
    use crate::exporters::{
        metrics::Metrics,
        trace::{Clock, TraceFormatter},
    };
    use crate::pipeline::Pipeline;
    let metrics = std::sync::Arc::new(Metrics::new());
    let mut p = Pipeline::new(Config::default(), metrics.clone(), None);
    let other = "0000:00:03.0";
    let mut evs = bind_via_ioctl(1, 1_000, DEV, 0);
    evs.extend(lone_pci_bind(other, 5_000));
    for e in evs {
        let t = e.end_ns;
        p.handle(e, t);
    }
    p.tick(u64::MAX / 4);
    assert_eq!(p.correlator().binding_count(), 2);
    // The stand-in's functions: the ioctl, tsm_bind and its PCI layer.
    let outs = p.module_unloaded(&[ProbeId::TsmOpIoctl, ProbeId::TsmBind], 9_000_000);
    let closed: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::BindingClosed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 1, "{outs:?}");
    assert_eq!(&*closed[0].binding.device, DEV);
    assert_eq!(closed[0].cause, UnbindCause::ModuleUnloaded);
    assert_eq!(closed[0].closed_ns, 9_000_000);
    // /bindings: only the other module's binding is left.
    let left: Vec<&str> = p
        .correlator()
        .bindings()
        .iter()
        .map(|b| &*b.device)
        .collect();
    assert_eq!(left, [other]);
    let m = metrics.render();
    assert!(
        m.contains("tsm_trace_bindings_closed_total{cause=\"module_unloaded\"} 1"),
        "{m}"
    );
    let line = TraceFormatter::new(Clock::Relative { base_ns: 0 })
        .format(&outs[0])
        .unwrap();
    assert!(
        line.contains(&format!("UNBOUND  {DEV} by module_unloaded")),
        "{line}"
    );
}

/// A bare `pci_tsm_bind` of `dev` (the vmlinux PCI layer).
fn lone_pci_bind(dev: &str, t0: u64) -> Vec<Event> {
    let mut e = ev(ProbeId::PciTsmBind, t0, t0 + 100, 9, Some(0));
    e.device = Some(dev.into());
    e.vm = Some(vm());
    e.tdi_id = Some(8);
    vec![e]
}
