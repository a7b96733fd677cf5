//! Host-side benchmarks for `cargo xtask bench` (run in release mode), through the library API:
//!
//! - `throughput --events N`: a synthetic capture (binds and unbinds through the ioctl, four
//!   frames each, interleaved over many VMMs, plus teardowns and VM destructions) replayed on
//!   one core through [`Pipeline::handle`] (correlator + metrics, what `tsm-trace replay` and
//!   the daemon do per event, without trace output) and through [`Correlator::handle`] alone.
//! - `scale --devices D --vms V`: D devices bound across V VMs through a pipeline, then the
//!   `/metrics` exposition rendered `--renders` times; reports render time and the process's
//!   peak RSS (VmHWM).
//! - `otlp --events N`: the same capture through a pipeline exporting OTLP spans to a
//!   receiver in this process (HTTP/1.1, answers 200 to every POST) and through one without:
//!   what the export adds per operation on the event loop's thread (building the spans and
//!   handing them to the batch processor; the sending is on its own thread), and what the
//!   export delivered and dropped with the default bounded queue.
//!
//! Output: one `key=value` per line (parsed by xtask/src/bench/).

use std::sync::Arc;
use std::time::Instant;

use tsm_trace::correlate::{Config, Correlator, UAPI_OP_BIND, UAPI_OP_UNBIND};
use tsm_trace::events::{Event, Name, ProbeId, Vm, VmId};
use tsm_trace::exporters::metrics::Metrics;
use tsm_trace::pipeline::Pipeline;

fn usage() -> ! {
    eprintln!(
        "usage: bench_host throughput [--events N]\n       bench_host scale [--devices D] [--vms V] [--renders R]\n       bench_host otlp [--events N]"
    );
    std::process::exit(2)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage()),
        None => default,
    }
}

/// Runs the calling thread on CPU 0 only ("one core").
fn pin_to_one_core() -> bool {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Names are made once, as the decoder's interner makes them once (`events::name`): each
/// event carries a shared reference, as a decoded one does.
struct Gen {
    vms: Vec<Vm>,
    comm: Name,
    devices: Vec<Name>,
}

impl Gen {
    fn new(vms: usize, devices: usize) -> Gen {
        Gen {
            comm: "qemu-system-x86".into(),
            devices: (0..devices).map(|d| Self::device(d).into()).collect(),
            vms: (0..vms)
                .map(|i| Vm {
                    id: VmId::from_bits(0x8880_0000_0000 + (i as u64) * 0x1_0000),
                    pid: Some(10_000 + i as i32),
                    stats_id: Some(format!("kvm-{}", 10_000 + i).into()),
                    vmm: None,
                })
                .collect(),
        }
    }

    fn device(d: usize) -> String {
        format!(
            "0000:{:02x}:{:02x}.{}",
            (d >> 8) & 0xff,
            (d >> 3) & 0x1f,
            d & 7
        )
    }

    fn base(&self, probe: ProbeId, vm: usize, start: u64, end: u64) -> Event {
        let tgid = 10_000 + vm as u32;
        Event {
            ret: Some(0),
            ..Event::new(probe, start, end, tgid, tgid, self.comm.clone())
        }
    }

    /// One operation in delivery order (innermost frame first): a bind or unbind ioctl, a bind
    /// that fails with EBUSY in the PCI TSM layer (no driver frame), or a vdevice teardown
    /// (`iommufd_vdevice_abort` around the unbind chain).
    fn op(&self, out: &mut Vec<Event>, kind: OpKind, vm: usize, dev: usize, t0: u64) {
        const EBUSY: i64 = -16;
        let name = &self.devices[dev];
        let bind = matches!(kind, OpKind::Bind | OpKind::BindBusy);
        let layers: &[ProbeId] = match kind {
            OpKind::Bind => &[ProbeId::DriverBind, ProbeId::PciTsmBind, ProbeId::TsmBind],
            OpKind::BindBusy => &[ProbeId::PciTsmBind, ProbeId::TsmBind],
            OpKind::Unbind | OpKind::Teardown => &[
                ProbeId::DriverUnbind,
                ProbeId::PciTsmUnbind,
                ProbeId::TsmUnbind,
            ],
        };
        for (i, probe) in layers.iter().copied().enumerate() {
            let lvl = (layers.len() - i) as u64;
            let mut e = self.base(probe, vm, t0 + lvl * 1_000, t0 + 10_000 - lvl * 1_000);
            e.device = Some(name.clone());
            if bind {
                e.vm = Some(self.vms[vm].clone());
                e.tdi_id = Some(dev as u64);
                if kind == OpKind::BindBusy {
                    e.ret = Some(EBUSY);
                }
            } else if probe != ProbeId::TsmUnbind {
                e.ret = None;
            }
            out.push(e);
        }
        if kind == OpKind::Teardown {
            let mut e = self.base(ProbeId::VdeviceAbort, vm, t0, t0 + 10_000);
            e.ret = None;
            e.device = Some(name.clone());
            e.obj_id = Some(dev as u32);
            e.virt_id = Some(dev as u64);
            out.push(e);
            return;
        }
        let mut e = self.base(ProbeId::TsmOpIoctl, vm, t0, t0 + 10_000);
        e.op = Some(if bind { UAPI_OP_BIND } else { UAPI_OP_UNBIND });
        e.flags = Some(0);
        e.vdevice_id = Some(dev as u32);
        if kind == OpKind::BindBusy {
            e.ret = Some(EBUSY);
        }
        out.push(e);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Bind,
    BindBusy,
    Unbind,
    Teardown,
}

/// A synthetic capture of at least `n` events: every device is bound, then unbound, in rounds;
/// one bind in 8 fails with EBUSY from the PCI TSM layer, one unbind in 8 is a vdevice teardown.
fn capture(n: usize, devices: usize, vms: usize) -> Vec<Event> {
    let g = Gen::new(vms, devices);
    let mut out = Vec::with_capacity(n + 8);
    let mut t = 1_000_000_000u64;
    let mut round = 0usize;
    while out.len() < n {
        let bind = round.is_multiple_of(2);
        for d in 0..devices {
            if out.len() >= n {
                break;
            }
            let kind = match (bind, d % 8 == 7) {
                (true, false) => OpKind::Bind,
                (true, true) => OpKind::BindBusy,
                (false, false) => OpKind::Unbind,
                (false, true) => OpKind::Teardown,
            };
            g.op(&mut out, kind, d % vms, d, t);
            t += 20_000;
        }
        round += 1;
    }
    out
}

fn throughput(args: &[String]) {
    let n = arg(args, "--events", 2_000_000) as usize;
    let pinned = pin_to_one_core();
    let events = capture(n, 1024, 64);
    let n = events.len();
    let copy = events.clone();

    let metrics = Arc::new(Metrics::new());
    let mut p = Pipeline::new(Config::default(), metrics.clone(), None);
    let t = Instant::now();
    let mut now = 0;
    for ev in events {
        now = ev.end_ns;
        p.handle(ev, now);
    }
    p.finish(now);
    let secs = t.elapsed().as_secs_f64();
    let ops = p.correlator().stats().operations;

    let mut c = Correlator::new(Config::default());
    let t = Instant::now();
    for ev in copy {
        now = ev.end_ns;
        c.handle(ev, now);
    }
    c.finish(now);
    let csecs = t.elapsed().as_secs_f64();

    println!("pinned_one_core={pinned}");
    println!("events={n}");
    println!("operations={ops}");
    println!("pipeline_events_per_s={:.0}", n as f64 / secs);
    println!("pipeline_ns_per_event={:.1}", secs * 1e9 / n as f64);
    println!("correlator_events_per_s={:.0}", n as f64 / csecs);
    println!("correlator_ns_per_event={:.1}", csecs * 1e9 / n as f64);
    // Sanity: the capture must have been understood, not dropped as anomalies.
    if ops * 4 < n as u64 * 9 / 10 {
        eprintln!("bench_host: only {ops} operations from {n} events: the capture is wrong");
        std::process::exit(1);
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn scale(args: &[String]) {
    let devices = arg(args, "--devices", 4096) as usize;
    let vms = arg(args, "--vms", 256) as usize;
    let renders = arg(args, "--renders", 20).max(1) as usize;
    let g = Gen::new(vms, devices);
    let metrics = Arc::new(Metrics::new());
    let mut p = Pipeline::new(Config::default(), metrics.clone(), None);
    let mut t = 1_000_000_000u64;
    let mut buf = Vec::with_capacity(4);
    for d in 0..devices {
        buf.clear();
        g.op(&mut buf, OpKind::Bind, d % vms, d, t);
        for ev in buf.drain(..) {
            let now = ev.end_ns;
            p.handle(ev, now);
        }
        t += 20_000;
    }
    p.tick(t);
    let bound = p.correlator().binding_count();
    let mut times: Vec<f64> = Vec::with_capacity(renders);
    let mut bytes = 0;
    for _ in 0..renders {
        let t = Instant::now();
        let body = metrics.render();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = body.len();
        std::hint::black_box(body);
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    println!("devices={devices}");
    println!("vms={vms}");
    println!("bound={bound}");
    println!("exposition_bytes={bytes}");
    println!("render_ms_first={first:.3}");
    println!("render_ms_p50={:.3}", times[times.len() / 2]);
    println!("render_ms_max={:.3}", times[times.len() - 1]);
    println!("vm_hwm_kib={}", status_kib("VmHWM:"));
    println!("vm_rss_kib={}", status_kib("VmRSS:"));
    if bound != devices {
        eprintln!("bench_host: {bound} bindings, expected {devices}");
        std::process::exit(1);
    }
}

/// An OTLP/HTTP receiver that reads each request and answers 200 (no decoding: the cost
/// measured is tsm-trace's). Returns its base URL.
fn sink_receiver() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = conn.try_clone() else { return };
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err()
                        || w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn otlp(args: &[String]) {
    use tsm_trace::exporters::otlp::{DEFAULT_QUEUE, Otlp, OtlpConfig, WhenFull};
    let n = arg(args, "--events", 400_000) as usize;
    let events = capture(n, 1024, 64);
    let n = events.len();
    let run = |export: bool| {
        let metrics = Arc::new(Metrics::new());
        let mut p = Pipeline::new(Config::default(), metrics.clone(), None);
        if export {
            let cfg = OtlpConfig {
                url: format!("{}/v1/traces", sink_receiver()),
                headers: Default::default(),
                timeout: std::time::Duration::from_secs(10),
            };
            let o = Otlp::start(
                &cfg,
                metrics.otlp().clone(),
                0,
                DEFAULT_QUEUE,
                WhenFull::Drop,
            )
            .expect("OTLP exporter");
            p = p.with_extra(tsm_trace::pipeline::Extra {
                timeline: None,
                otlp: Some(o),
            });
        }
        let t = Instant::now();
        let mut now = 0;
        for ev in events.clone() {
            now = ev.end_ns;
            p.handle(ev, now);
        }
        p.finish(now);
        let secs = t.elapsed().as_secs_f64();
        let ops = p.correlator().stats().operations;
        let t = Instant::now();
        let report = p.take_extra().otlp.map(|mut o| o.finish());
        (secs, ops, report, t.elapsed().as_secs_f64())
    };
    let (base, ops, _, _) = run(false);
    let (with, _, report, flush) = run(true);
    let r = report.expect("report");
    let added_ns = (with - base) * 1e9 / ops.max(1) as f64;
    println!("events={n}");
    println!("operations={ops}");
    println!(
        "base_ns_per_operation={:.1}",
        base * 1e9 / ops.max(1) as f64
    );
    println!(
        "otlp_ns_per_operation={:.1}",
        with * 1e9 / ops.max(1) as f64
    );
    println!("otlp_added_ns_per_operation={added_ns:.1}");
    println!("spans={}", r.spans);
    println!("spans_exported={}", r.exported);
    println!("spans_dropped_queue_full={}", r.dropped_queue_full);
    println!(
        "spans_dropped_other={}",
        r.dropped_export_failed + r.dropped_shutdown
    );
    println!("final_flush_s={flush:.3}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("throughput") => throughput(&args[1..]),
        Some("scale") => scale(&args[1..]),
        Some("otlp") => otlp(&args[1..]),
        _ => usage(),
    }
}
