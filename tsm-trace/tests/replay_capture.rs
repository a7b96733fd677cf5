//! A capture recorded inside the test VM (Debian 6.1 kernel, stand-in TSM module, session A of
//! `tests/vm/scenarios/probes.sh`) replayed through the correlator: the same attribution and
//! leaks as the live session, with no kernel. Regenerate it from a `cargo xtask vm-test` run
//! (section `record_a.jsonl` of `.vm-cache/runs/*/data.log`) if the record format changes.

use std::io::BufReader;

use tsm_trace::{
    correlate::{Config, LeakReason},
    events::record,
    pipeline::{ReplayOptions, TraceFormat, replay},
};

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/standin-6.1.jsonl"
);

/// Replays the capture; `grace_ns` is the leak grace period (`--grace`).
fn run(metrics: bool, grace_ns: u64) -> tsm_trace::pipeline::ReplayReport {
    let f = std::fs::File::open(CAPTURE).expect("fixture");
    let (header, events) = record::read_all(BufReader::new(f), CAPTURE).expect("valid capture");
    assert_eq!(header.kernel, "6.1.0-57-amd64");
    assert_eq!(events.len(), 50);
    replay(
        events,
        &ReplayOptions {
            config: Config {
                leak_grace_ns: grace_ns,
                ..Config::default()
            },
            format: TraceFormat::Json,
            filters: Default::default(),
            clock: None,
            realtime_offset_ns: None,
            summary: true,
            metrics,
            openmetrics: false,
        },
        Box::new(std::io::sink()),
    )
    .expect("replay")
}

#[test]
fn errors_are_attributed_to_the_layer_that_produced_them() {
    let r = run(true, 1_000_000_000);
    let m = r.metrics.expect("exposition");
    for (op, layer, errno) in [
        ("bind", "iommufd", "EOPNOTSUPP"),
        ("bind", "iommufd", "ENOENT"),
        ("bind", "iommufd", "ENODEV"),
        ("invalid", "iommufd", "EINVAL"),
        ("bind", "tsm_core", "EINVAL"),
        ("bind", "tsm_driver", "EIO"),
        ("bind", "iommufd", "EFAULT"),
        ("bind", "pci_tsm", "EBUSY"),
        ("unbind", "tsm_core", "EINVAL"),
    ] {
        let series = format!(
            "tsm_trace_operations_total{{errno=\"{errno}\",layer=\"{layer}\",op=\"{op}\",result=\"error\"}} 1"
        );
        assert!(m.contains(&series), "missing {series} in\n{m}");
    }
    assert_eq!(r.failures, 9);
}

#[test]
fn leaks_are_found_with_their_reasons() {
    // The VM is destroyed and its VMM exits less than 1 s before the capture ends: with a
    // 1 s grace period, nobody can tell yet whether they would have unbound in time.
    let r = run(false, 1_000_000_000);
    assert_eq!(r.leaks_detected, 2);
    assert!(r.leaks.is_empty(), "{:?}", r.leaks);
    assert!(
        r.summary.contains(
            "  2 bindings not judged: the input ended before their grace period (leak_unconfirmed)"
        ),
        "{}",
        r.summary
    );
    // 5 ms: both grace periods end inside the capture.
    let r = run(false, 5_000_000);
    assert_eq!(r.leaks_detected, 4);
    let mut open: Vec<(LeakReason, String)> = r
        .leaks
        .iter()
        .map(|l| (l.reason, l.device.to_string()))
        .collect();
    open.sort();
    assert_eq!(
        open,
        vec![
            (LeakReason::VmDestroyed, "0000:00:03.0".to_string()),
            (LeakReason::VmmExited, "0000:00:02.0".to_string()),
        ]
    );
    assert!(
        r.summary.contains(
            "leaks (one per device and reason): 4 detected, 2 cleared, 2 still leaked, on 2 devices"
        ),
        "{}",
        r.summary
    );
}

// ---------------------------------------------------------------------------------------
// Times, names and lines: every time from the events themselves (issue items 3, 4, 10, 11,
// 12). Expected values are read from the captures' own events, not from the code under test.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tsm_trace::{
    events::{Event, ProbeId, VmSelector},
    exporters::trace::Filters,
};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/record");

/// A `Write` the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn events_of(path: &str) -> Vec<Event> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    record::read_all(BufReader::new(f), path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .1
}

fn events_of_text(jsonl: &str) -> Vec<Event> {
    record::read_all(jsonl.as_bytes(), "inline.jsonl")
        .expect("inline capture")
        .1
}

fn replay_events(
    events: Vec<Event>,
    grace_ns: u64,
    format: TraceFormat,
    filters: Filters,
) -> (tsm_trace::pipeline::ReplayReport, String) {
    let out = Shared::default();
    let report = replay(
        events,
        &ReplayOptions {
            config: Config {
                leak_grace_ns: grace_ns,
                ..Config::default()
            },
            format,
            filters,
            clock: None,
            realtime_offset_ns: None,
            summary: false,
            metrics: false,
            openmetrics: false,
        },
        Box::new(out.clone()),
    )
    .expect("replay");
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    (report, text)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The one event of the capture with this probe and device (and the predicate).
fn the_event<'a>(
    evs: &'a [Event],
    probe: ProbeId,
    device: Option<&str>,
    pred: impl Fn(&Event) -> bool,
) -> &'a Event {
    let found: Vec<&Event> = evs
        .iter()
        .filter(|e| e.probe == probe && e.device.as_deref() == device && pred(e))
        .collect();
    assert_eq!(found.len(), 1, "{probe:?} {device:?}: {found:?}");
    found[0]
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

const D2: &str = "0000:00:02.0";
const D3: &str = "0000:00:03.0";

#[test]
fn a_kernel_internal_unbind_clears_at_its_own_time() {
    let evs = events_of(CAPTURE);
    let teardown_end = the_event(&evs, ProbeId::VdeviceAbort, Some(D3), |_| true).end_ns;
    let unbind_end = the_event(&evs, ProbeId::TsmUnbind, Some(D3), |_| true).end_ns;
    let (_, text) = replay_events(evs, 1_000_000_000, TraceFormat::Json, Filters::default());
    let v = json_lines(&text);
    let cleared: Vec<&Value> = v
        .iter()
        .filter(|l| l["type"] == "leak" && l["event"] == "cleared" && l["device"] == D3)
        .collect();
    assert_eq!(cleared.len(), 1, "{text}");
    assert_eq!(cleared[0]["reason"], "vdevice_teardown_without_unbind");
    assert_eq!(u(&cleared[0]["detected_ns"]), teardown_end);
    // 5.85 ms after the teardown, as the events say (not when the correlator got to it).
    assert_eq!(u(&cleared[0]["cleared_ns"]), unbind_end);
    let closed: Vec<&Value> = v
        .iter()
        .filter(|l| l["type"] == "binding_closed" && l["binding"]["device"] == D3)
        .collect();
    assert_eq!(closed.len(), 1, "{text}");
    assert_eq!(u(&closed[0]["closed_ns"]), unbind_end, "{text}");
}

#[test]
fn a_vm_destroyed_counts_the_bind_its_thread_made_before() {
    let evs = events_of(CAPTURE);
    let destroy_end = the_event(&evs, ProbeId::KvmDestroyVm, None, |_| true).end_ns;
    let (r, text) = replay_events(evs, 0, TraceFormat::Json, Filters::default());
    let v = json_lines(&text);
    let gone: Vec<&Value> = v
        .iter()
        .filter(|l| l["type"] == "vm_event" && l["event"] == "vm_destroyed")
        .collect();
    assert_eq!(gone.len(), 1, "{text}");
    // 0000:00:03.0 was bound to it (tsm_bind at 0.189, no ioctl) before it was destroyed.
    assert_eq!(gone[0]["bound_devices"], 1, "{text}");
    // --grace 0s: the leak is reported, at the VM event's own time.
    let leak = r
        .leaks
        .iter()
        .find(|l| l.reason == LeakReason::VmDestroyed)
        .unwrap_or_else(|| panic!("no vm_destroyed leak: {:?}", r.leaks));
    assert_eq!(&*leak.device, D3);
    assert_eq!(leak.detected_ns, destroy_end);
}

#[test]
fn grace_not_expired_at_the_end_of_a_capture_is_not_a_leak() {
    let evs = events_of(CAPTURE);
    let exit_end = the_event(&evs, ProbeId::VmmExit, None, |_| true).end_ns;
    let destroy_end = the_event(&evs, ProbeId::KvmDestroyVm, None, |_| true).end_ns;
    let last = evs.iter().map(|e| e.end_ns).max().unwrap();
    for grace in [5_000_000_000, 365 * 86_400 * 1_000_000_000] {
        let (r, text) = replay_events(evs.clone(), grace, TraceFormat::Json, Filters::default());
        let reasons: Vec<LeakReason> = r.leaks.iter().map(|l| l.reason).collect();
        assert!(
            !reasons.contains(&LeakReason::VmDestroyed)
                && !reasons.contains(&LeakReason::VmmExited),
            "grace {grace}: {reasons:?}"
        );
        assert!(
            json_lines(&text).iter().all(|l| l["type"] != "leak"
                || (l["reason"] != "vm_destroyed" && l["reason"] != "vmm_exited")),
            "{text}"
        );
        assert_eq!(r.leaks_detected, 2, "grace {grace}");
    }
    // A grace period that ends inside the capture: reported when it ends.
    let grace = 5_000_000;
    assert!(destroy_end + grace <= last && exit_end + grace <= last);
    let (r, _) = replay_events(evs, grace, TraceFormat::Json, Filters::default());
    let mut got: Vec<(LeakReason, String, u64)> = r
        .leaks
        .iter()
        .map(|l| (l.reason, l.device.to_string(), l.detected_ns))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (LeakReason::VmDestroyed, D3.to_string(), destroy_end + grace),
            (LeakReason::VmmExited, D2.to_string(), exit_end + grace),
        ]
    );
}

/// The time at the start of a text line, in µs.
fn line_us(l: &str) -> Option<u64> {
    let t = l.split_whitespace().next()?;
    let (s, f) = t.split_once('.')?;
    Some(s.parse::<u64>().ok()? * 1_000_000 + f.parse::<u64>().ok()?)
}

#[test]
fn replay_lines_come_in_event_time_order() {
    let mut paths = vec![CAPTURE.to_string()];
    for e in std::fs::read_dir(CORPUS).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            paths.push(p.display().to_string());
        }
    }
    let mut checked = 0;
    for p in paths {
        let f = std::fs::File::open(&p).unwrap();
        let Ok((_, evs)) = record::read_all(BufReader::new(f), &p) else {
            continue; // a refused format (fuzz corpus)
        };
        for grace in [0, 5_000_000] {
            let (_, text) =
                replay_events(evs.clone(), grace, TraceFormat::Text, Filters::default());
            // `trace --deep` lines follow their operation's line, indented, without a time.
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !(l.starts_with("    ") && line_us(l).is_none()))
                .collect();
            let times: Vec<u64> = lines.iter().copied().filter_map(line_us).collect();
            assert_eq!(times.len(), lines.len(), "{p}:\n{text}");
            assert!(times.is_sorted(), "{p} grace {grace}:\n{text}");
            checked += times.len();
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn ioctl_failed_after_bind_is_bound_since_the_inner_bind_returned() {
    let evs = events_of(CAPTURE);
    let ioctl = the_event(&evs, ProbeId::TsmOpIoctl, None, |e| e.ret == Some(-14));
    let bound = the_event(&evs, ProbeId::TsmBind, Some(D2), |e| {
        e.start_ns > ioctl.start_ns && e.end_ns < ioctl.end_ns
    });
    let (ioctl_end, bound_end) = (ioctl.end_ns, bound.end_ns);
    let (_, text) = replay_events(evs, 1_000_000_000, TraceFormat::Json, Filters::default());
    let leak: Vec<Value> = json_lines(&text)
        .into_iter()
        .filter(|l| l["type"] == "leak" && l["reason"] == "ioctl_failed_after_bind")
        .collect();
    assert_eq!(leak.len(), 2, "detected, cleared:\n{text}");
    assert_eq!(u(&leak[0]["detected_ns"]), ioctl_end);
    // 52.9 us before the ioctl returned, not 0.
    assert_eq!(u(&leak[0]["bound_since_ns"]), bound_end);
    assert_eq!(ioctl_end - bound_end, 52_920);
    let (_, text) = replay_events(
        events_of(CAPTURE),
        1_000_000_000,
        TraceFormat::Text,
        Filters::default(),
    );
    let line = text
        .lines()
        .find(|l| l.contains("LEAK     0000:00:02.0 ioctl_failed_after_bind"))
        .expect(&text);
    assert!(line.ends_with(" bound 52.9us"), "{line}");
}

#[test]
fn sibling_calls_are_not_drawn_as_nesting() {
    let (_, text) = replay_events(
        events_of(&format!("{CORPUS}/vm-7.3-lifecycle.jsonl")),
        0,
        TraceFormat::Text,
        Filters::default(),
    );
    let line = text
        .lines()
        .find(|l| l.contains(" disconnect 0000:00:04.0"))
        .expect(&text);
    // pci_tsm_disconnect unbinds two functions, one after the other, then disconnects.
    let tree = line
        .split("  ")
        .find(|p| p.starts_with("disconnect "))
        .expect(line);
    // Names and punctuation, without the durations ("148.1us," keeps its ",").
    let mut shape = String::new();
    for w in tree.split_whitespace() {
        if w.starts_with(|c: char| c.is_ascii_digit()) {
            shape.extend(w.chars().filter(|c| matches!(c, ',' | ')')));
        } else {
            if !shape.is_empty() {
                shape.push(' ');
            }
            shape.push_str(w);
        }
    }
    assert_eq!(
        shape,
        "disconnect > pci_tsm_disconnect > (pci_tsm_unbind_any > driver_unbind, \
         pci_tsm_unbind_any > driver_unbind, driver_disconnect)",
        "{line}"
    );
}

#[test]
fn summary_says_leaks_and_devices() {
    let r = run(false, 5_000_000);
    assert!(
        r.summary.contains("2 still leaked, on 2 devices"),
        "{}",
        r.summary
    );
}

#[test]
fn one_vm_has_one_name() {
    let path = format!("{CORPUS}/vm-7.3-lifecycle.jsonl");
    let (_, all) = replay_events(events_of(&path), 0, TraceFormat::Text, Filters::default());
    assert!(!all.contains("vm#"), "{all}");
    let (_, text) = replay_events(
        events_of(&path),
        0,
        TraceFormat::Text,
        Filters {
            vm: Some(VmSelector::Pid(134)),
            ..Default::default()
        },
    );
    let unbind = text
        .lines()
        .find(|l| l.contains(" unbind   0000:00:04.0"))
        .expect(&text);
    assert!(unbind.contains(" vm=kvm-134 "), "{unbind}");
}

#[test]
fn vm_filter_keeps_the_vms_unbinds_and_teardowns() {
    let (_, text) = replay_events(
        events_of(CAPTURE),
        5_000_000,
        TraceFormat::Text,
        Filters {
            vm: Some(VmSelector::Pid(123)),
            ..Default::default()
        },
    );
    for kind in [
        " unbind   0000:00:02.0",
        " teardown 0000:00:02.0",
        " teardown 0000:00:03.0",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(kind) && l.contains("vm=kvm-123")),
            "{kind}:\n{text}"
        );
    }
}

#[test]
fn vmm_exit_names_the_vm_of_its_bindings() {
    let (_, text) = replay_events(
        events_of(CAPTURE),
        5_000_000,
        TraceFormat::Text,
        Filters::default(),
    );
    let line = text.lines().find(|l| l.contains("VMM-EXIT")).expect(&text);
    assert!(line.contains("vm=kvm-317 "), "{line}");
    assert!(line.contains("bound_devices=1"), "{line}");
}

/// VMM 4242 binds a device through its vdevice 4; then fails two ioctls on that vdevice
/// (flags 1, op 7); then VMM 5151 unbinds the device through its own vdevice.
const CROSS: &str = r#"{"tsm_trace_record":2,"tsm_trace_version":"0.1.0","kernel":"test"}
{"probe":"tsm_bind","start_ns":1100,"end_ns":1900,"tgid":4242,"tid":4242,"comm":"qemu","ret":0,"device":"0000:01:00.0","vm":{"id":"vm#000000004242","pid":4242,"stats_id":"kvm-4242"},"tdi_id":7}
{"probe":"tsm_op_ioctl","start_ns":1000,"end_ns":2000,"tgid":4242,"tid":4242,"comm":"qemu","ret":0,"op":1,"flags":0,"vdevice_id":4}
{"probe":"tsm_op_ioctl","start_ns":3000,"end_ns":3100,"tgid":4242,"tid":4242,"comm":"qemu","ret":-95,"op":1,"flags":1,"vdevice_id":4}
{"probe":"tsm_op_ioctl","start_ns":4000,"end_ns":4100,"tgid":4242,"tid":4242,"comm":"qemu","ret":-22,"op":7,"flags":0,"vdevice_id":4}
{"probe":"tsm_unbind","start_ns":5100,"end_ns":5900,"tgid":5151,"tid":5151,"comm":"qemu","ret":0,"device":"0000:01:00.0"}
{"probe":"tsm_op_ioctl","start_ns":5000,"end_ns":6000,"tgid":5151,"tid":5151,"comm":"qemu","ret":0,"op":2,"flags":0,"vdevice_id":1}
"#;

#[test]
fn a_failed_ioctl_shows_its_cause_and_its_device() {
    let (_, text) = replay_events(
        events_of_text(CROSS),
        0,
        TraceFormat::Text,
        Filters::default(),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[1].starts_with("    0.000002 bind     0000:01:00.0 vdev=4 flags=0x1  EOPNOTSUPP"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("    0.000003 invalid  0000:01:00.0 vdev=4 op=7  EINVAL"),
        "{text}"
    );
}

#[test]
fn an_unbind_says_whose_binding_it_ended() {
    let (_, text) = replay_events(
        events_of_text(CROSS),
        0,
        TraceFormat::Text,
        Filters {
            vm: Some(VmSelector::Pid(4242)),
            ..Default::default()
        },
    );
    let lines: Vec<&str> = text.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains(" unbind   0000:01:00.0"))
        .expect(&text);
    assert!(lines[i].contains("tgid=5151"), "{text}");
    // The binding it ended: kvm-4242's, from the return of its tsm_bind (1900 ns) to that of
    // the tsm_unbind (5900 ns).
    assert!(
        lines[i + 1].starts_with("    0.000004 UNBOUND  0000:01:00.0 by unbind  vm=kvm-4242")
            && lines[i + 1].ends_with(" bound 4.0us"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// Batches: the live loop (`event_loop::handle_batch`) hands the pipeline each ring-buffer
// batch (`Pipeline::handle` per event), then `Pipeline::tick(now)`; at the end,
// `Pipeline::finish`. Whatever the batch boundaries, the same events must give the same
// operations, bindings, leaks and times.

use tsm_trace::{correlate::Output, exporters::metrics::Metrics, pipeline::Pipeline};

/// xorshift64*: a seeded, dependency-free PRNG.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// Runs `events` through a pipeline in batches of the given sizes. As in the live loop, one
/// "now" serves the whole batch: here the latest return in it (the ring buffer is drained as
/// soon as events come; the live clock is later still).
fn run_in_batches(events: &[Event], sizes: &[usize], grace_ns: u64) -> (Vec<Output>, String) {
    let cfg = Config {
        leak_grace_ns: grace_ns,
        ..Config::default()
    };
    let mut p = Pipeline::new(cfg, Arc::new(Metrics::new()), None);
    let mut out = Vec::new();
    let mut rest = events;
    let mut now = 0;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at(n.clamp(1, rest.len()));
        rest = tail;
        now = batch.iter().map(|e| e.end_ns).fold(now, u64::max);
        for ev in batch {
            out.extend_from_slice(p.handle(ev.clone(), now));
        }
        out.extend(p.tick(now));
    }
    out.extend(p.finish(now));
    let tables = format!(
        "{:?}\n{:?}\n{:?}",
        p.correlator().bindings(),
        p.correlator().leaks().collect::<Vec<_>>(),
        p.correlator().stats()
    );
    (out, tables)
}

#[test]
fn batch_boundaries_change_nothing() {
    let paths = capture_paths();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut runs = 0;
    for path in &paths {
        let f = std::fs::File::open(path).unwrap();
        let Ok((_, events)) = record::read_all(BufReader::new(f), path) else {
            continue;
        };
        for grace in [0, 5_000_000, 1_000_000_000] {
            let (want, want_tables) = run_in_batches(&events, &[events.len().max(1)], grace);
            for round in 0..48 {
                let sizes: Vec<usize> = match round {
                    0 => vec![1],
                    _ => (0..8).map(|_| 1 + rng.below(8)).collect(),
                };
                let (got, tables) = run_in_batches(&events, &sizes, grace);
                assert_eq!(
                    got, want,
                    "{path}, grace {grace} ns, batches of {sizes:?}: outputs differ"
                );
                assert_eq!(tables, want_tables, "{path}, grace {grace}, {sizes:?}");
                runs += 1;
            }
        }
    }
    assert!(runs >= 4 * 3 * 48, "{runs}");
}

/// Every capture in the repository: the fixture and the fuzz corpus's recordings.
fn capture_paths() -> Vec<String> {
    let mut paths = vec![CAPTURE.to_string()];
    for e in std::fs::read_dir(CORPUS).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            paths.push(p.display().to_string());
        }
    }
    paths.sort();
    paths
}

/// Runs `events` with a restart after the first `cut`: the first pipeline's state goes
/// through the state file's format (as `run` saves it after each batch) into a second
/// pipeline, which handles the rest. Returns both pipelines' outputs and the final tables.
fn run_with_restart(events: &[Event], cut: usize, grace_ns: u64) -> (Vec<Output>, String) {
    let cfg = Config {
        leak_grace_ns: grace_ns,
        ..Config::default()
    };
    let mut out = Vec::new();
    let mut now = 0;
    let mut first = Pipeline::new(cfg.clone(), Arc::new(Metrics::new()), None);
    for ev in &events[..cut] {
        now = now.max(ev.end_ns);
        out.extend_from_slice(first.handle(ev.clone(), now));
        out.extend(first.tick(now));
    }
    let text = serde_json::to_string(&first.correlator().saved_state("boot")).unwrap();
    drop(first);
    let mut second = Pipeline::new(cfg, Arc::new(Metrics::new()), None);
    second.restore(serde_json::from_str(&text).unwrap());
    for ev in &events[cut..] {
        now = now.max(ev.end_ns);
        out.extend_from_slice(second.handle(ev.clone(), now));
        out.extend(second.tick(now));
    }
    out.extend(second.finish(now));
    let tables = format!(
        "{:?}\n{:?}",
        second.correlator().bindings(),
        second.correlator().leaks().collect::<Vec<_>>(),
    );
    (out, tables)
}

/// A daemon killed after any record and restarted from its state file (operations in
/// progress and VM checks in their grace period included) ends with the same bindings and
/// leaks, and reports the same operations and leaks, as one that never stopped.
#[test]
fn a_restart_after_any_record_changes_nothing() {
    let paths = capture_paths();
    let mut cuts = 0;
    let keep = |o: &Output| !matches!(o, Output::Anomaly(_));
    for path in &paths {
        let f = std::fs::File::open(path).unwrap();
        let Ok((_, events)) = record::read_all(BufReader::new(f), path) else {
            continue;
        };
        for grace in [0, 5_000_000, 1_000_000_000] {
            let (want, want_tables) = run_with_restart(&events, events.len(), grace);
            let want: Vec<&Output> = want.iter().filter(|o| keep(o)).collect();
            for cut in 0..events.len() {
                let (got, tables) = run_with_restart(&events, cut, grace);
                let got: Vec<&Output> = got.iter().filter(|o| keep(o)).collect();
                assert_eq!(
                    tables, want_tables,
                    "{path}, grace {grace} ns, restart after record {cut}: tables differ"
                );
                assert_eq!(
                    got, want,
                    "{path}, grace {grace} ns, restart after record {cut}: outputs differ"
                );
                cuts += 1;
            }
        }
    }
    assert!(cuts > 500, "{cuts}");
}
