//! `cargo xtask soak`'s measuring program: a month of a busy host compressed into one run.
//!
//! A synthetic host (`host.rs`) creates and destroys VMs, connects, binds, tears down, leaks,
//! cleans up and disconnects devices, and unloads and reloads a module; its kernel events go
//! through the daemon's own userspace path: [`Pipeline::handle`] per event and
//! [`Pipeline::tick`] per batch (`event_loop::handle_batch`), [`Pipeline::module_unloaded`]
//! on a module unload, [`Pipeline::reconcile`] with a sysfs snapshot of the host's truth, the
//! state file saved after each batch as `event_loop::save_state` does
//! ([`correlate::state::save`], on tmpfs as `/run/tsm-trace` is), and scrapes every
//! `--sample-every` operations through what the HTTP server serves (`Metrics::render` for
//! `/metrics`, `BindingsView` for `/bindings`).
//!
//! Each sample is a CSV row (`--out DIR/soak.csv`): RSS, series, state-file size, scrape
//! time, every table's size and the counters of what happens at each bound. The run fails
//! (exit 1) as soon as a table exceeds its bound, or the leak series disagree with the leak
//! table. The end prints `key=value` lines (parsed by `xtask/src/soak/`).

mod host;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tsm_trace::correlate::{self, AnomalyKind, Config};
use tsm_trace::events::Event;
use tsm_trace::exporters::json::BindingsView;
use tsm_trace::exporters::metrics::Metrics;
use tsm_trace::pipeline::Pipeline;

/// The system allocator, counting the bytes in use: the heap the program holds, whatever the
/// allocator keeps besides (RSS also counts free memory an allocator has not returned).
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            IN_USE.fetch_add(l.size(), Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        IN_USE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            IN_USE.fetch_sub(l.size(), Relaxed);
            IN_USE.fetch_add(new, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct Args {
    ops: u64,
    devices: usize,
    live_vms: usize,
    batch_events: usize,
    sample_every: u64,
    reconcile_every: u64,
    module_every: u64,
    cfg: Config,
    out: PathBuf,
}

fn parse() -> Result<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} needs a number")),
            None => Ok(default),
        }
    };
    let d = Config::default();
    let cfg = Config {
        max_bindings: get("--max-bindings", 4_096)? as usize,
        max_leaks: get("--max-leaks", 1_024)? as usize,
        max_threads: get("--max-threads", 512)? as usize,
        max_vm_checks: get("--max-vm-checks", 256)? as usize,
        ..d
    };
    let out = match args.iter().position(|a| a == "--out") {
        Some(i) => PathBuf::from(args.get(i + 1).context("--out needs a directory")?),
        None => PathBuf::from("target/soak"),
    };
    Ok(Args {
        ops: get("--ops", 1_000_000)?,
        devices: get("--devices", 12_288)? as usize,
        live_vms: get("--live-vms", 48)? as usize,
        batch_events: get("--batch-events", 1_024)?.max(1) as usize,
        sample_every: get("--sample-every", 10_000)?.max(1),
        reconcile_every: get("--reconcile-every", 50_000)?.max(1),
        module_every: get("--module-every", 100_000)?.max(1),
        cfg,
        out,
    })
}

/// What happens at each bound, as the correlator counts it.
const AT_BOUNDS: [(AnomalyKind, &str); 6] = [
    (AnomalyKind::BindingEvicted, "binding_evicted"),
    (AnomalyKind::LeakTableFull, "leak_table_full"),
    (AnomalyKind::ThreadEvicted, "thread_evicted"),
    (AnomalyKind::PendingOverflow, "pending_overflow"),
    (AnomalyKind::VmCheckOverflow, "vm_check_overflow"),
    (AnomalyKind::DeviceTableFull, "device_table_full"),
];

const COLUMNS: &str = "ops,events,event_s,wall_s,rss_kib,hwm_kib,heap_kib,series,leak_series,exposition_bytes,scrape_ns,bindings_json_ns,bindings_json_bytes,state_bytes,save_ns,bindings,leaks,devices,threads,pending_frames,vm_checks,deferred,truth_bound,binding_evicted,leak_table_full,thread_evicted,pending_overflow,vm_check_overflow,device_table_full,module_unloaded,vms,devices_used";

fn statm_rss_kib() -> u64 {
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page / 1024)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This thread's CPU time (ns): what the timings use, so that other work on the machine
/// does not inflate them (the soak is single-threaded, as the daemon's event loop).
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The state file's directory: tmpfs, as the daemon's `/run/tsm-trace`.
fn state_dir(out: &std::path::Path) -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm.join(format!("tsm-trace-soak-{}", std::process::id()))
    } else {
        out.join("state")
    }
}

/// `Correlator::state_version`.
type Version = (u64, u64, usize, usize, usize);

struct Saves {
    count: u64,
    bytes: u64,
    ns: u64,
    last_bytes: u64,
    last_ns: u64,
    /// Sizes of the last state saved: leaks, device links, deferred VM events (the state
    /// itself is dropped after the save, as the daemon does).
    last: (usize, usize, usize),
}

/// `event_loop::save_state`: the whole state, if it changed, atomically.
fn save(
    p: &Pipeline,
    path: &std::path::Path,
    pos: u64,
    s: &mut Saves,
    key: &mut Option<Version>,
) -> Result<()> {
    let v = p.correlator().state_version();
    if *key == Some(v) {
        return Ok(());
    }
    *key = Some(v);
    let t = cpu_ns();
    let mut snap = p.correlator().saved_state("soak");
    snap.ring = Some(correlate::state::RingMark { map_id: 1, pos });
    let n = correlate::state::save(path, &snap).context("saving the state file")?;
    let ns = cpu_ns() - t;
    p.metrics().state_saved(Ok(n));
    s.count += 1;
    s.bytes += n;
    s.ns += ns;
    s.last_bytes = n;
    s.last_ns = ns;
    s.last = (
        snap.leaks.len(),
        snap.devices.len(),
        snap.deferred_points.len(),
    );
    Ok(())
}

fn main() -> Result<()> {
    let a = parse()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let dir = state_dir(&a.out);
    std::fs::create_dir_all(&dir)?;
    let state_path = dir.join("state.json");
    let r = run(&a, &state_path);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn run(a: &Args, state_path: &std::path::Path) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let mut p = Pipeline::new(a.cfg.clone(), metrics.clone(), None);
    let mut host = host::Host::new(a.devices, a.live_vms, 0x50a4);
    let mut csv = String::from(COLUMNS);
    csv.push('\n');
    let mut batch: Vec<Event> = Vec::with_capacity(a.batch_events + 16);
    let mut saves = Saves {
        count: 0,
        bytes: 0,
        ns: 0,
        last_bytes: 0,
        last_ns: 0,
        last: (0, 0, 0),
    };
    let mut key = None;
    let (mut events, mut pos) = (0u64, 0u64);
    let (mut next_sample, mut next_reconcile, mut next_module) =
        (a.sample_every, a.reconcile_every, a.module_every);
    let mut module_out = false;
    let mut module_closed = 0u64;
    let (mut unloads, mut reconciles, mut samples) = (0u64, 0u64, 0u64);
    let (mut scrapes, mut handle_ns) = (Vec::new(), 0u64);
    let started = Instant::now();
    loop {
        while batch.len() < a.batch_events {
            host.step(&mut batch);
        }
        // One batch as `event_loop::handle_batch` runs it, then the save.
        let t = cpu_ns();
        let mut now = 0;
        for ev in batch.drain(..) {
            now = ev.end_ns;
            events += 1;
            pos += 232;
            p.handle(ev, now);
        }
        p.tick(now);
        handle_ns += cpu_ns() - t;
        save(&p, state_path, pos, &mut saves, &mut key)?;
        let ops = p.correlator().stats().operations;
        if ops >= next_module {
            next_module += a.module_every;
            if module_out {
                host.module_load(&mut batch);
            } else {
                unloads += 1;
                let outs = p.module_unloaded(&host::MODULE_PROBES, host.t);
                module_closed += outs
                    .iter()
                    .filter(|o| matches!(o, correlate::Output::BindingClosed(_)))
                    .count() as u64;
                host.module_unloaded();
                save(&p, state_path, pos, &mut saves, &mut key)?;
            }
            module_out = !module_out;
        }
        if ops >= next_reconcile {
            next_reconcile += a.reconcile_every;
            reconciles += 1;
            let snap = host.snapshot();
            p.reconcile(&snap, &Default::default(), host.t);
            save(&p, state_path, pos, &mut saves, &mut key)?;
        }
        if ops >= next_sample || ops >= a.ops {
            next_sample += a.sample_every;
            let row = sample(&p, &metrics, &host, &saves, events, started, module_closed)?;
            samples += 1;
            scrapes.push(row.scrape_ns);
            csv.push_str(&row.line);
            csv.push('\n');
            eprintln!("soak: {ops} operations, {}", row.brief);
        }
        if ops >= a.ops {
            break;
        }
    }
    let (full_bytes, full_ns) = full_size_save(&p.correlator().saved_state("soak"), state_path)?;
    let wall = started.elapsed().as_secs_f64();
    std::fs::write(a.out.join("soak.csv"), &csv)?;
    scrapes.sort_unstable();
    let c = p.correlator();
    let s = c.stats();
    let mut o = String::new();
    let _ = writeln!(o, "ops={}", s.operations);
    let _ = writeln!(o, "events={events}");
    let _ = writeln!(
        o,
        "event_seconds={:.0}",
        (host.t - 1_000_000_000) as f64 / 1e9
    );
    let _ = writeln!(o, "wall_s={wall:.1}");
    let _ = writeln!(o, "cpu_s={:.1}", cpu_ns() as f64 / 1e9);
    let _ = writeln!(o, "vms={}", host.vms_created);
    let _ = writeln!(o, "devices_used={}", host.devices_used);
    let _ = writeln!(o, "batch_events={}", a.batch_events);
    let _ = writeln!(o, "saves={}", saves.count);
    let _ = writeln!(o, "save_bytes={}", saves.bytes);
    let _ = writeln!(o, "save_s={:.3}", saves.ns as f64 / 1e9);
    let _ = writeln!(o, "handle_s={:.3}", handle_ns as f64 / 1e9);
    let _ = writeln!(o, "default_bounds_save_bytes={full_bytes}");
    let _ = writeln!(o, "default_bounds_save_ms={:.1}", full_ns as f64 / 1e6);
    let _ = writeln!(o, "scrape_ns_p50={}", scrapes[scrapes.len() / 2]);
    let _ = writeln!(o, "scrape_ns_max={}", scrapes[scrapes.len() - 1]);
    let _ = writeln!(o, "max_bindings={}", a.cfg.max_bindings);
    let _ = writeln!(o, "max_leaks={}", a.cfg.max_leaks);
    let _ = writeln!(o, "max_threads={}", a.cfg.max_threads);
    let _ = writeln!(o, "max_vm_checks={}", a.cfg.max_vm_checks);
    let _ = writeln!(o, "max_pending_per_thread={}", a.cfg.max_pending_per_thread);
    let _ = writeln!(o, "module_unloaded_closed={module_closed}");
    let _ = writeln!(o, "module_unloads={unloads}");
    let _ = writeln!(o, "reconciles={reconciles}");
    let _ = writeln!(o, "scrapes={samples}");
    let _ = writeln!(o, "live_vms={}", a.live_vms);
    let _ = writeln!(
        o,
        "leaks_detected={}",
        s.leaks_detected.values().sum::<u64>()
    );
    let _ = writeln!(o, "mismatches={}", s.mismatches.values().sum::<u64>());
    let _ = writeln!(o, "links_from_sysfs={}", s.links_from_sysfs);
    for (k, v) in &s.anomalies {
        let _ = writeln!(o, "anomaly_{}={v}", k.as_str());
    }
    print!("{o}");
    Ok(())
}

/// One save of a state as large as the default bounds allow (65,536 bindings, leaks and
/// device links: the last saved state's entries repeated under new device names); the
/// median CPU time of three.
fn full_size_save(
    last: &correlate::state::SavedState,
    path: &std::path::Path,
) -> Result<(u64, u64)> {
    let d = Config::default();
    let mut st = last.clone();
    // Names need not be unique: only the size counts here.
    let grow = |n: usize| {
        let more = if n == 0 {
            0
        } else {
            d.max_bindings.saturating_sub(n)
        };
        (0..more).map(move |i| (i, i % n))
    };
    let rename = |dev: &str, i: usize| format!("{:04x}{}", 0x8000 + i / 4096, &dev[4..]);
    let (b, l, k) = (st.bindings.clone(), st.leaks.clone(), st.devices.clone());
    for (i, j) in grow(b.len()) {
        let mut x = b[j].clone();
        x.device = rename(&x.device, i).into();
        st.bindings.push(x);
    }
    for (i, j) in grow(l.len()) {
        let mut x = l[j].clone();
        x.device = rename(&x.device, i).into();
        st.leaks.push(x);
    }
    for (i, j) in grow(k.len()) {
        let mut x = k[j].clone();
        x.device = rename(&x.device, i).into();
        st.devices.push(x);
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..3 {
        let t = cpu_ns();
        bytes = correlate::state::save(path, &st).context("saving the full-size state")?;
        times.push(cpu_ns() - t);
    }
    times.sort_unstable();
    Ok((bytes, times[1]))
}

struct Row {
    line: String,
    brief: String,
    scrape_ns: u64,
}

/// One scrape of `/metrics` and `/bindings`, the process's memory and the tables; fails when
/// a table is over its bound or the leak series disagree with the leak table.
fn sample(
    p: &Pipeline,
    metrics: &Metrics,
    host: &host::Host,
    saves: &Saves,
    events: u64,
    started: Instant,
    module_closed: u64,
) -> Result<Row> {
    // The heap the tables hold, before the scrape's own buffers.
    let heap = IN_USE.load(Relaxed) / 1024;
    let t = cpu_ns();
    let body = metrics.render();
    let scrape_ns = cpu_ns() - t;
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let leak_series = body
        .lines()
        .filter(|l| l.starts_with("tsm_trace_leaked_binding_info{"))
        .count();
    let t = cpu_ns();
    let json = BindingsView::of(p.correlator()).to_json();
    let json_ns = cpu_ns() - t;
    let c = p.correlator();
    let cfg = c.config();
    let (_, links, deferred) = saves.last;
    let leaks = c.leaks().count();
    let checks = [
        ("bindings", c.binding_count(), cfg.max_bindings),
        ("leaks", leaks, cfg.max_leaks),
        ("devices", links, cfg.max_bindings),
        ("threads", c.thread_count(), cfg.max_threads),
        ("vm checks", c.pending_vm_checks(), cfg.max_vm_checks),
        ("deferred VM events", deferred, cfg.max_vm_checks),
        (
            "pending frames",
            c.pending_frames(),
            cfg.max_threads * cfg.max_pending_per_thread * 16,
        ),
    ];
    for (what, n, bound) in checks {
        if n > bound {
            bail!("{what}: {n}, over the bound {bound}");
        }
    }
    if leak_series != leaks {
        bail!("{leak_series} tsm_trace_leaked_binding_info series for {leaks} leaks");
    }
    let anomaly = |k: AnomalyKind| c.stats().anomalies.get(&k).copied().unwrap_or(0);
    let ops = c.stats().operations;
    let rss = statm_rss_kib();
    let mut line = format!(
        "{ops},{events},{:.3},{:.3},{rss},{},{},{series},{leak_series},{},{scrape_ns},{json_ns},{},{},{},{},{leaks},{},{},{},{},{},{}",
        (host.t - 1_000_000_000) as f64 / 1e9,
        started.elapsed().as_secs_f64(),
        status_kib("VmHWM:"),
        heap,
        body.len(),
        json.len(),
        saves.last_bytes,
        saves.last_ns,
        c.binding_count(),
        links,
        c.thread_count(),
        c.pending_frames(),
        c.pending_vm_checks(),
        deferred,
        host.bound_now(),
    );
    for (k, _) in AT_BOUNDS {
        let _ = write!(line, ",{}", anomaly(k));
    }
    let _ = write!(
        line,
        ",{module_closed},{},{}",
        host.vms_created, host.devices_used
    );
    let brief = format!(
        "RSS {:.1} MiB (heap {:.1}), {series} series, state {} KiB, scrape {:.2} ms, {} bindings, {leaks} leaks",
        rss as f64 / 1024.0,
        heap as f64 / 1024.0,
        saves.last_bytes / 1024,
        scrape_ns as f64 / 1e6,
        c.binding_count()
    );
    Ok(Row {
        line,
        brief,
        scrape_ns,
    })
}
