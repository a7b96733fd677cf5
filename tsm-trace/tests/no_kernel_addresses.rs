//! No kernel address leaves the process: ring-buffer records carrying realistic kernel
//! pointers (`struct kvm *`, returned `struct pci_tdi *` / `struct pci_tsm *`) go through the
//! real decoder and then every output — trace text and JSON lines (anomalies included), the
//! summary, `/metrics`, `/bindings`, the record file and its replay — is searched for
//! anything that looks like a kernel address (`0x?ff` + 14 hex digits, `ffff` + 12 hex
//! digits, either case) and for the pointers themselves in decimal.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tsm_trace::correlate::Config;
use tsm_trace::events::{Event, VmKey, record};
use tsm_trace::exporters::{json::BindingsView, metrics::Metrics, trace::Clock};
use tsm_trace::pipeline::{self, Pipeline, ReplayOptions, TraceFormat, TraceSink};
use tsm_trace_common::{ProbeId, RawEvent, flags, missing};

/// Two VMs and three returned objects, as a 7.x kernel with 5-level paging shows them.
const KVM_A: u64 = 0xff3a_bd96_4419_4400;
const KVM_B: u64 = 0xffff_8f21_0a3c_8000;
const TDI: u64 = 0xff3a_bd96_4419_5800;
const PCI_TSM: u64 = 0xffff_8f21_0b00_0c00;

/// Where `pattern` (a string of `h` = any hex digit, `x?` handled by the caller, and literal
/// characters) matches `text` at `i`, case-insensitively.
fn matches_at(text: &[u8], i: usize, pattern: &str) -> bool {
    let p = pattern.as_bytes();
    text.len() >= i + p.len()
        && p.iter().zip(&text[i..]).all(|(&pc, &tc)| match pc {
            b'h' => tc.is_ascii_hexdigit(),
            _ => tc.eq_ignore_ascii_case(&pc),
        })
}

/// Everything in `text` that looks like a kernel address: `0x?ff[0-9a-f]{14}` and
/// `ffff[0-9a-f]{12}`, case-insensitive.
fn kernel_addresses(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let fourteen = "h".repeat(14);
    for i in 0..b.len() {
        for pattern in [
            format!("0xff{fourteen}"),
            format!("0ff{fourteen}"),
            format!("ffff{}", "h".repeat(12)),
        ] {
            if matches_at(b, i, &pattern) {
                found.push(text[i..i + pattern.len()].to_string());
            }
        }
    }
    found
}

fn assert_clean(what: &str, text: &str) {
    let found = kernel_addresses(text);
    assert!(
        found.is_empty(),
        "{what} shows kernel addresses {found:?}:\n{text}"
    );
    for p in [KVM_A, KVM_B, TDI, PCI_TSM] {
        for form in [p.to_string(), (p as i64).to_string(), format!("{p:x}")] {
            assert!(!text.contains(&form), "{what} shows {form}:\n{text}");
        }
    }
}

fn raw(probe: ProbeId, start: u64, end: u64, tid: u32) -> RawEvent {
    let mut r = RawEvent::zeroed();
    r.probe = probe as u32;
    r.start_ns = start;
    r.end_ns = end;
    r.pid_tgid = (u64::from(tid) << 32) | u64::from(tid);
    r.comm[..4].copy_from_slice(b"qemu");
    r
}

fn put(dst: &mut [u8], s: &str) {
    dst[..s.len()].copy_from_slice(s.as_bytes());
}

fn bind_frame(probe: ProbeId, t: u64, tid: u32, dev: &str, kvm: u64, pid: Option<i32>) -> RawEvent {
    let mut r = raw(probe, t, t + 1_000, tid);
    put(&mut r.dev_name, dev);
    r.kvm = kvm;
    r.tdi_id = 7;
    match pid {
        Some(p) => {
            r.kvm_pid = p;
            put(&mut r.kvm_stats_id, &format!("kvm-{p}"));
        }
        None => r.missing |= missing::KVM_PID | missing::KVM_STATS_ID,
    }
    r
}

/// Records in ring-buffer order (by return time): a connect whose driver probe returns a
/// pointer; a bind of VM A through every layer (the driver returns a `struct pci_tdi *`); a
/// bind of VM B, whose pid is unknown (named by its hash); a guest request; the core's
/// unbind of A inside a disconnect (VM known only by pointer); VM B destroyed while bound
/// (a leak); and a bind that fails with an `ERR_PTR`.
fn records() -> Vec<RawEvent> {
    const A: &str = "0000:01:00.0";
    const B: &str = "0000:02:00.0";
    let mut v = Vec::new();

    let mut connect = raw(ProbeId::Connect, 1_000, 90_000, 10);
    put(&mut connect.dev_name, A);
    put(&mut connect.tsm_name, "tsm0\n");
    connect.ret = 5;
    let mut probe = raw(ProbeId::DriverProbe, 2_000, 3_000, 10);
    put(&mut probe.dev_name, A);
    probe.ret = PCI_TSM as i64;
    probe.flags = flags::RET_IS_PTR | flags::RET_NULL_IS_ERR;
    v.extend([probe, connect]);

    let t = 100_000;
    let mut ioctl = raw(ProbeId::TsmOpIoctl, t, t + 50_000, 4242);
    ioctl.op = 1;
    ioctl.vdevice_id = 3;
    ioctl.ret = 0;
    let tsm = bind_frame(ProbeId::TsmBind, t + 1_000, 4242, A, KVM_A, Some(4242));
    let pci = bind_frame(ProbeId::PciTsmBind, t + 2_000, 4242, A, KVM_A, Some(4242));
    let mut drv = bind_frame(ProbeId::DriverBind, t + 3_000, 4242, A, KVM_A, Some(4242));
    drv.ret = TDI as i64;
    drv.flags = flags::RET_IS_PTR;
    let (mut tsm, mut pci) = (tsm, pci);
    tsm.end_ns = t + 40_000;
    pci.end_ns = t + 30_000;
    drv.end_ns = t + 20_000;
    v.extend([drv, pci, tsm, ioctl]);

    let t = 200_000;
    let pci_b = bind_frame(ProbeId::PciTsmBind, t, 777, B, KVM_B, None);
    v.push(pci_b);

    let t = 300_000;
    let mut gr = raw(ProbeId::PciTsmGuestReq, t, t + 5_000, 4242);
    put(&mut gr.dev_name, A);
    put(&mut gr.tsm_name, "tsm0");
    gr.scope = 1;
    gr.in_len = 16;
    gr.out_len = 64;
    gr.tsm_code = 0xabc;
    gr.ret = 0;
    v.push(gr);

    let t = 400_000;
    let mut disc = raw(ProbeId::Disconnect, t, t + 50_000, 11);
    put(&mut disc.dev_name, A);
    put(&mut disc.tsm_name, "tsm0\n");
    disc.ret = 5;
    let mut pdisc = raw(ProbeId::PciTsmDisconnect, t + 1_000, t + 40_000, 11);
    put(&mut pdisc.dev_name, A);
    let mut any = raw(ProbeId::PciTsmUnbindAny, t + 2_000, t + 20_000, 11);
    put(&mut any.dev_name, A);
    any.kvm = KVM_A;
    any.tdi_id = 7;
    any.flags = flags::RET_VOID;
    pdisc.flags = flags::RET_VOID;
    v.extend([any, pdisc, disc]);

    let t = 500_000;
    let mut destroy = raw(ProbeId::KvmDestroyVm, t, t, 777);
    destroy.kvm = KVM_B;
    destroy.missing |= missing::KVM_PID | missing::KVM_STATS_ID;
    destroy.flags = flags::POINT;
    v.push(destroy);

    // A bind that fails in the driver with ERR_PTR(-EIO), VM B's pointer reused by VM C.
    let t = 600_000;
    let mut fail = bind_frame(ProbeId::DriverBind, t, 888, B, KVM_B, Some(888));
    fail.ret = -5;
    fail.flags = flags::RET_IS_PTR;
    let mut fail_pci = bind_frame(ProbeId::PciTsmBind, t - 100, 888, B, KVM_B, Some(888));
    fail_pci.ret = -5;
    fail_pci.end_ns = t + 2_000;
    v.extend([fail, fail_pci]);

    // Time moves on past every grace period.
    let mut late = raw(ProbeId::VmmExit, 20_000_000_000, 20_000_000_000, 4242);
    late.flags = flags::POINT;
    v.push(late);
    v
}

fn decoded() -> Vec<Event> {
    let key = VmKey::from_bytes([0x5a; 32]);
    records()
        .iter()
        .map(|r| Event::decode(r, &key).expect("decodable"))
        .collect()
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn config() -> Config {
    Config {
        leak_grace_ns: 1_000_000,
        ..Config::default()
    }
}

/// The live path: decoded events through the pipeline, as `run --print` and `trace` do.
fn live(format: TraceFormat) -> (String, String, String, String) {
    let metrics = Arc::new(Metrics::new());
    let out = Shared::default();
    let mut sink = TraceSink::new(
        Box::new(out.clone()),
        format,
        Default::default(),
        Clock::Relative { base_ns: 0 },
    );
    sink.anomalies = true;
    let mut p = Pipeline::new(config(), metrics.clone(), Some(sink));
    let mut now = 0;
    let mut bindings = String::new();
    for ev in decoded() {
        now = now.max(ev.end_ns);
        p.handle(ev, now);
        // While bindings are open (before the late event ends everything).
        if now == 600_000 + 2_000 {
            bindings = BindingsView::of(p.correlator()).to_json();
        }
    }
    let end_bindings = BindingsView::of(p.correlator()).to_json();
    p.finish(now);
    if let Some(s) = p.sink_mut() {
        s.flush();
    }
    (
        out.text(),
        p.render_summary(),
        metrics.render(),
        bindings + &end_bindings,
    )
}

#[test]
fn no_output_shows_a_kernel_address() {
    // The scanner finds what it must.
    assert_eq!(
        kernel_addresses("kvm=0xFF3ABD9644194400 x ffff8f210a3c8000 0ff3abd9644194400").len(),
        3
    );
    assert!(kernel_addresses("vm#3f9a0c51e2b7 tsm_code=0xabc 18446744073709551615").is_empty());

    for format in [TraceFormat::Text, TraceFormat::Json] {
        let (trace, summary, exposition, bindings) = live(format);
        assert_clean(&format!("trace ({format:?})"), &trace);
        assert_clean("summary", &summary);
        assert_clean("/metrics", &exposition);
        assert_clean("/bindings", &bindings);
        // The scenario really produced VM names of both kinds, leaks and pointer returns.
        assert!(trace.contains("kvm-4242"), "{trace}");
        assert!(trace.contains("vm#"), "{trace}");
        assert!(
            trace.contains("LEAK") || trace.contains("\"type\":\"leak\""),
            "{trace}"
        );
        assert!(bindings.contains("\"vm#"), "{bindings}");
        assert!(exposition.contains("vm=\"vm#"), "{exposition}");
    }

    // The record file, and what its replay prints.
    let mut rec = Vec::new();
    {
        let mut w = record::Writer::new(&mut rec, "7.3.4+deb13-amd64").unwrap();
        for ev in decoded() {
            w.write(&ev).unwrap();
        }
    }
    let rec = String::from_utf8(rec).unwrap();
    assert_clean("record", &rec);
    let (_, events) = record::read_all(rec.as_bytes(), "mem").unwrap();
    assert_eq!(events, decoded(), "a replay sees the same VM names");
    let out = Shared::default();
    let report = pipeline::replay(
        events,
        &ReplayOptions {
            config: config(),
            format: TraceFormat::Json,
            summary: true,
            metrics: true,
            ..Default::default()
        },
        Box::new(out.clone()),
    )
    .unwrap();
    assert_clean("replay", &out.text());
    assert!(report.leaks_detected > 0, "{}", out.text());
}

/// The same VM keeps its name across events, other VMs get other names, and the name is the
/// one the record stores.
#[test]
fn one_vm_one_name() {
    let evs = decoded();
    let ids = |kvm_of: &dyn Fn(&RawEvent) -> bool| -> Vec<String> {
        records()
            .iter()
            .zip(&evs)
            .filter(|(r, _)| kvm_of(r))
            .filter_map(|(_, e)| e.vm.as_ref().map(|v| v.id.to_string()))
            .collect()
    };
    let a = ids(&|r| r.kvm == KVM_A);
    let b = ids(&|r| r.kvm == KVM_B);
    assert!(a.len() >= 4 && b.len() >= 3, "{a:?} {b:?}");
    assert!(a.iter().all(|n| n == &a[0]) && b.iter().all(|n| n == &b[0]));
    assert_ne!(a[0], b[0]);
}
