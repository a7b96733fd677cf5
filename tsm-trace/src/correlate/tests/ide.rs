//! PCIe IDE streams through the correlator: the steps of a link TSM's connect and disconnect
//! (SEV-TIO's order), a stream that never reaches Secure, one a disconnect leaves registered,
//! and the stream table against sysfs after a restart.

use super::lifecycle_tests::{dev_frame, ops, run};
use super::tests::{DEV, ENXIO, ev};
use super::*;
use crate::events::{Event, IdeStream, ProbeId};
use crate::sysfs::{DeviceState, Snapshot, fake};

const TSM: &str = "tsm0";
const RP: &str = "0000:00:06.0";

/// A `pci_ide_stream_<step>` of stream 0.0.0 of DEV on `port`, at [t, t+10].
fn step(probe: ProbeId, port: &str, t: u64, ret: Option<i64>, registered: bool) -> Event {
    let mut e = ev(probe, t, t + 10, 7, ret);
    e.device = Some(port.into());
    e.ide = Some(Box::new(IdeStream {
        endpoint: Some(DEV.into()),
        stream_id: Some(if probe == ProbeId::IdeStreamAlloc {
            -1
        } else {
            0
        }),
        host_bridge_stream: Some(0),
        rp_index: Some(0),
        ep_index: Some(0),
        name: registered.then(|| "stream0.0.0".into()),
        unnamed: !registered,
    }));
    e
}

/// Connect: alloc, setup EP and RP, enable RP then EP (`ep_enable` is the EP's result),
/// register; inside the driver's connect, inside the store. Return order.
fn connect(t0: u64, ep_enable: i64) -> Vec<Event> {
    let mut v = vec![
        step(ProbeId::IdeStreamAlloc, DEV, t0 + 100, Some(0x1000), false),
        step(ProbeId::IdeStreamSetup, DEV, t0 + 200, None, false),
        step(ProbeId::IdeStreamSetup, RP, t0 + 220, None, false),
        step(ProbeId::IdeStreamEnable, RP, t0 + 300, Some(0), false),
        step(
            ProbeId::IdeStreamEnable,
            DEV,
            t0 + 320,
            Some(ep_enable),
            false,
        ),
        step(ProbeId::IdeStreamRegister, DEV, t0 + 400, Some(0), true),
    ];
    v[0].ret_is_ptr = true;
    v[0].ret_null_is_err = true;
    v.push(dev_frame(
        ProbeId::DriverConnect,
        t0 + 30,
        t0 + 900,
        Some(0),
    ));
    let mut s = dev_frame(ProbeId::Connect, t0, t0 + 1_000, Some(5));
    s.tsm = Some(TSM.into());
    v.push(s);
    v
}

/// Disconnect: with `release`, disable EP/RP, unregister, teardown EP/RP, free; without, the
/// driver forgets the stream.
fn disconnect(t0: u64, release: bool) -> Vec<Event> {
    let mut v = Vec::new();
    if release {
        v.extend([
            step(ProbeId::IdeStreamDisable, DEV, t0 + 110, None, true),
            step(ProbeId::IdeStreamDisable, RP, t0 + 130, None, true),
            step(ProbeId::IdeStreamUnregister, DEV, t0 + 150, None, true),
            step(ProbeId::IdeStreamTeardown, DEV, t0 + 170, None, false),
            step(ProbeId::IdeStreamTeardown, RP, t0 + 180, None, false),
            step(ProbeId::IdeStreamFree, DEV, t0 + 190, None, false),
        ]);
    }
    v.push(dev_frame(
        ProbeId::DriverDisconnect,
        t0 + 100,
        t0 + 200,
        None,
    ));
    let mut d = dev_frame(ProbeId::PciTsmDisconnect, t0 + 10, t0 + 300, None);
    d.tsm = Some(TSM.into());
    v.push(d);
    let mut s = dev_frame(ProbeId::Disconnect, t0, t0 + 1_000, Some(5));
    s.tsm = Some(TSM.into());
    v.push(s);
    v
}

fn ide_leaks(out: &[Output]) -> (Vec<&IdeLeakChange>, Vec<&IdeLeakChange>) {
    let mut d = Vec::new();
    let mut cl = Vec::new();
    for o in out {
        match o {
            Output::IdeStreamLeaked(l) => d.push(l),
            Output::IdeStreamLeakCleared(l) => cl.push(l),
            _ => {}
        }
    }
    (d, cl)
}

fn state(c: &Correlator, s: IdeState) -> usize {
    c.ide_counts().by_state[IdeState::ALL.iter().position(|x| *x == s).unwrap()]
}

#[test]
fn a_connect_sets_up_a_secure_stream_and_its_disconnect_releases_it() {
    let mut c = Correlator::default();
    let out = run(&mut c, connect(1_000, 0));
    let ops = ops(&out);
    assert_eq!(ops.len(), 1, "one connect with its IDE frames: {out:#?}");
    assert_eq!(ops[0].frames.iter().filter(|f| f.probe.is_ide()).count(), 6);
    let s: Vec<&IdeStreamRecord> = c.ide_streams().collect();
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].endpoint.as_str(), s[0].key.as_str()), (DEV, "0.0.0"));
    assert_eq!(s[0].state, IdeState::Enabled);
    assert!(s[0].registered && s[0].ep.enabled && s[0].rp.enabled);
    assert_eq!(s[0].root_port.as_deref(), Some(RP));
    assert_eq!(s[0].name.as_deref(), Some("stream0.0.0"));
    assert_eq!(s[0].stream_id, Some(0));
    assert_eq!(s[0].tsm.as_deref(), Some(TSM));
    assert_eq!(c.ide_counts().registered, 1);

    let out = run(&mut c, disconnect(10_000, true));
    assert_eq!(ide_leaks(&out), (vec![], vec![]), "{out:#?}");
    assert_eq!(c.ide_streams().count(), 0, "freed");
    assert_eq!(c.stats().ide_untracked, 0);
}

#[test]
fn a_stream_that_never_reaches_secure_is_not_secure_inside_an_ok_connect() {
    let mut c = Correlator::default();
    let out = run(&mut c, connect(1_000, ENXIO));
    let op = ops(&out)[0];
    assert!(
        op.ok(),
        "SEV-TIO tolerates the -ENXIO: the connect succeeds"
    );
    let s = c.ide_streams().next().unwrap();
    assert_eq!(s.state, IdeState::NotSecure);
    assert_eq!(s.ep.enable_errno, Some(6));
    assert!(!s.ep.enabled && s.rp.enabled);
    assert_eq!(state(&c, IdeState::NotSecure), 1);
}

#[test]
fn a_disconnect_that_leaves_the_stream_registered_leaks_it_until_sysfs_drops_it() {
    let mut c = Correlator::default();
    run(&mut c, connect(1_000, 0));
    let out = run(&mut c, disconnect(10_000, false));
    let (d, cl) = ide_leaks(&out);
    assert_eq!(d.len(), 1, "{out:#?}");
    assert!(cl.is_empty());
    assert_eq!(d[0].reason, IdeLeakReason::DeviceDisconnected);
    assert_eq!(d[0].stream.label(), "stream0.0.0");
    assert_eq!(d[0].time_ns, 11_000, "when the disconnect returned");
    assert_eq!(c.ide_counts().leaked, [1, 0, 0]);
    assert_eq!(c.stats().ide_leaks_detected, [1, 0, 0]);

    // A second disconnect does not detect it again.
    let out = run(&mut c, disconnect(20_000, false));
    assert!(ide_leaks(&out).0.is_empty());

    // The stream survives a restart through the state file, leak included.
    let saved = c.saved_state("boot");
    let mut c2 = Correlator::default();
    c2.restore(saved);
    assert_eq!(c2.ide_counts().leaked, [1, 0, 0]);

    // sysfs no longer shows it (someone unregistered it unseen): gone, leak cleared.
    let dir = tempfile::tempdir().unwrap();
    fake::device(dir.path(), DEV, Some(""));
    fake::connect(dir.path(), DEV, "");
    std::fs::create_dir_all(dir.path().join("devices/pci0000:00")).unwrap();
    let snap = Snapshot::read(dir.path());
    let out = c2.reconcile(&snap, &Default::default(), 30_000);
    let (d, cl) = ide_leaks(&out);
    assert!(d.is_empty());
    assert_eq!(cl.len(), 1, "{out:#?}");
    assert_eq!(cl[0].cleared_by, Some("sysfs_gone"));
    assert_eq!(c2.ide_streams().count(), 0);
    assert_eq!(c2.stats().ide_sysfs_gone, 1);
}

#[test]
fn after_a_restart_without_state_sysfs_streams_are_learned_and_judged_by_their_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // DEV: not connected, its stream still registered. Another endpoint connected, with a
    // stream of its own: learned, not leaked.
    fake::device(root, DEV, Some(""));
    fake::connect(root, DEV, "");
    fake::device(root, "0000:02:00.0", Some(""));
    fake::connect(root, "0000:02:00.0", TSM);
    fake::ide_stream(root, "pci0000:00", "0.0.0", DEV);
    fake::ide_stream(root, "pci0000:00", "1.1.1", "0000:02:00.0");
    let snap = Snapshot::read(root);
    assert_eq!(snap.ide_streams.as_ref().map(Vec::len), Some(2));
    assert_eq!(snap.state(DEV), Some(&DeviceState::Unbound));

    let mut c = Correlator::default();
    let out = c.reconcile(&snap, &Default::default(), 5_000);
    let (d, _) = ide_leaks(&out);
    assert_eq!(d.len(), 1, "{out:#?}");
    assert_eq!(d[0].stream.endpoint, DEV);
    assert_eq!(d[0].stream.host_bridge.as_deref(), Some("pci0000:00"));
    assert_eq!(d[0].reason, IdeLeakReason::DeviceDisconnected);
    assert_eq!(c.ide_streams().count(), 2);
    assert_eq!(state(&c, IdeState::Unknown), 2);
    assert_eq!(c.stats().ide_from_sysfs, 2);

    // The same snapshot again changes nothing.
    let out = c.reconcile(&snap, &Default::default(), 6_000);
    assert_eq!(ide_leaks(&out), (vec![], vec![]));

    // An endpoint with a call in flight is left alone (its connect may be registering).
    let mut c = Correlator::default();
    let busy = [DEV.to_string()].into_iter().collect();
    let out = c.reconcile(&snap, &busy, 5_000);
    assert!(ide_leaks(&out).0.is_empty());
    assert_eq!(
        c.ide_streams().count(),
        1,
        "only the other endpoint's stream"
    );
}

#[test]
fn a_removed_endpoint_s_stream_is_leaked_as_device_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake::device(root, "0000:02:00.0", Some(""));
    fake::ide_stream(root, "pci0000:00", "0.0.0", DEV);
    let snap = Snapshot::read(root);
    let mut c = Correlator::default();
    let out = c.reconcile(&snap, &Default::default(), 5_000);
    let (d, _) = ide_leaks(&out);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].reason, IdeLeakReason::DeviceRemoved);
}

#[test]
fn ide_steps_with_no_probed_caller_change_no_device_link_and_leak_nothing() {
    let mut c = Correlator::default();
    run(&mut c, connect(1_000, 0));
    assert_eq!(c.device_tsm(DEV).map(|t| &**t), Some(TSM));
    // The driver disables its stream outside any connect or disconnect (kind disconnect):
    // the device stays connected, and nothing is leaked.
    let out = run(
        &mut c,
        vec![step(ProbeId::IdeStreamDisable, RP, 5_000, None, true)],
    );
    assert!(ide_leaks(&out).0.is_empty(), "{out:#?}");
    assert_eq!(
        c.device_tsm(DEV).map(|t| &**t),
        Some(TSM),
        "still connected"
    );
    assert!(c.ide_streams().next().unwrap().registered);
    // Released on its own (release, and free inside it): the stream is gone, the link stays.
    let mut rel = step(ProbeId::IdeStreamRelease, DEV, 6_000, None, true);
    rel.end_ns = 6_100;
    let free = step(ProbeId::IdeStreamFree, DEV, 6_050, None, false);
    let out = run(&mut c, vec![free, rel]);
    assert!(ide_leaks(&out).0.is_empty(), "{out:#?}");
    assert_eq!(c.ide_streams().count(), 0);
    assert_eq!(
        c.device_tsm(DEV).map(|t| &**t),
        Some(TSM),
        "still connected"
    );
}
