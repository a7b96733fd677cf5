//! The one event loop `run` and `trace` share: events from the ring buffer into the pipeline,
//! module loads and unloads from the control ring into the session, and the timers
//! (correlator deadlines, sysfs reconciliation, re-attach after a module load, the end of a
//! `--duration`).

use std::{path::PathBuf, sync::Mutex, time::Duration};

use anyhow::{Context, Result};
use tokio::time::Instant;

use crate::{
    aggregates::Aggregates,
    correlate,
    events::Control,
    events::{DecodeError, Event},
    exporters::metrics::Metrics,
    pipeline::Pipeline,
    probes::{KernelCounts, chain},
    session::{LiveSession, Session},
    sysfs::Snapshot,
};

/// How long after a module load to look for probe targets again (its BTF and symbols are
/// registered while it initializes).
pub const RESCAN_DELAY: Duration = Duration::from_millis(500);

/// A batch of decoded ring-buffer records.
pub type Batch = Vec<Result<Event, DecodeError>>;

/// What the loop does besides feeding the pipeline.
pub struct LoopOptions {
    /// Compare the binding table with sysfs (`run`).
    pub reconcile: Option<Reconcile>,
    /// Stop at this instant (`trace --duration`).
    pub end: Option<Instant>,
    /// `run`: probes may attach on module loads until then (`None`: always, as `trace`).
    pub late_attach: Option<LateAttach>,
    /// `run`: keep the binding and leak tables in this file (saved when they change).
    pub state: Option<StateFile>,
    /// In-flight entries older than this are expired (`probes/expiry.rs`).
    pub inflight_timeout: Duration,
    /// Log the operations in flight longer than this, again every as long (`--stuck-after`;
    /// zero: never).
    pub stuck_after: Duration,
    /// `trace`: with each stuck thread's kernel stack (`/proc/<tgid>/task/<tid>/stack`, which
    /// needs the privileges `run` drops after attaching).
    pub stuck_stacks: bool,
    /// `run`: `/readyz`, set ready or degraded (`doctor::coverage`) once the loop runs and
    /// again whenever a module load or unload changes what is attached.
    pub readiness: Option<crate::http::Readiness>,
}

/// `/readyz` from what the session's probes cover now.
fn judge_readiness(readiness: Option<&crate::http::Readiness>, live: &LiveSession) {
    let Some(r) = readiness else { return };
    match crate::doctor::coverage(&live.session().attach) {
        crate::doctor::Coverage::Full => r.set_ready(),
        crate::doctor::Coverage::Degraded(why) => r.set_degraded(why),
    }
}

/// How often stale kernel-side entries are swept and the kernel's miss counts read while
/// anything happens: events or control records arrived since the last sweep, or it left
/// entries in flight.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);

/// The operations in flight come from each sweep's walk of the kernel-side entries (every
/// [`HOUSEKEEPING_EVERY`] while anything happens or is in flight). While the daemon is idle
/// (the sweep every [`HOUSEKEEPING_IDLE_EVERY`]) a call that enters sends nothing until it
/// returns, so the entries are also read this often then. Never more often: each walk of the
/// map can make the kernel skip probe programs on its CPU (BPF recursion misses), which a
/// storm of calls would pay for.
pub const IN_FLIGHT_IDLE_EVERY: Duration = HOUSEKEEPING_EVERY;

/// The sweep's period while nothing happens (no event, no control record, nothing in flight):
/// there is nothing to sweep then, and an idle daemon should cost next to nothing (each sweep
/// reads the info of every program and link, the counters and the in-flight maps through
/// bpf(2)). A call whose every record was lost (entry parked, return missed, nothing sent) is
/// still swept, and its kretprobe miss counted, within this period.
pub const HOUSEKEEPING_IDLE_EVERY: Duration = Duration::from_secs(60);

/// Where the tables are kept across restarts (`correlate/state.rs`).
pub struct StateFile {
    pub path: PathBuf,
    pub boot_id: String,
}

/// The window during which probes still attach on module loads (`--late-attach-window`).
pub struct LateAttach {
    pub until: Instant,
    /// At its end, drop what attaching needed (keep only CAP_BPF).
    pub drop_capabilities: bool,
}

/// sysfs reconciliation: once at start, then every `every`.
pub struct Reconcile {
    pub root: PathBuf,
    pub every: Option<Duration>,
}

/// Why the loop returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Signal(&'static str),
    Duration,
}

/// Called with every batch before the pipeline sees it (`trace --record`).
pub type Tap<'a> = &'a mut dyn FnMut(&Batch) -> Result<()>;

/// Runs until a signal or the end of `--duration`. Events still in the ring buffer at that
/// point are the caller's to drain (see [`LiveSession::drain_now`]).
pub async fn run(
    live: &mut LiveSession,
    pipeline: &Mutex<Pipeline>,
    metrics: &Metrics,
    cfg: &correlate::Config,
    opts: &LoopOptions,
    mut tap: Option<Tap<'_>>,
) -> Result<Stop> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut batch: Batch = Vec::new();
    let mut controls: Vec<Option<Control>> = Vec::new();
    let mut rescan_at: Option<Instant> = None;
    // After a module unload: look at kallsyms and BTF again for the generation only (the
    // unloaded module may have carried the patch). Needs no capability.
    let mut redetect_at: Option<Instant> = None;
    let mut window_end = opts.late_attach.as_ref().map(|w| w.until);
    // With a window, attaching stops when it closes; `trace` (no window) always attaches.
    let mut attach_open = true;
    let every = opts.reconcile.as_ref().and_then(|r| r.every);
    let mut next_reconcile = every.map(|d| Instant::now() + d);
    if let Some(r) = &opts.reconcile {
        // Once at start: bindings made before we started show up here.
        reconcile(live, pipeline, metrics, &r.root, &mut batch, &mut tap)?;
    }
    if live.session().pinned.is_some() {
        // Taken-over maps: the loss counted so far was an earlier process's to report.
        if let Ok(k) = live.kernel_counts() {
            pipeline.lock().expect("pipeline lock").loss_since(k);
        }
    }
    if opts.state.is_some() {
        live.commit_when_saved();
    }
    let mut saver = Saver::default();
    let mut pins_missing = 0;
    let mut wall_offset = crate::clock::realtime_offset_ns();
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
    let mut next_in_flight = Instant::now() + IN_FLIGHT_IDLE_EVERY;
    let mut stuck =
        crate::in_flight::StuckLog::new(opts.stuck_after).with_stacks(opts.stuck_stacks);
    judge_readiness(opts.readiness.as_ref(), live);
    // Something happened since the last sweep (see HOUSEKEEPING_IDLE_EVERY).
    let mut active = true;
    let stop = loop {
        // Before waiting: the kernel wakes no reader that holds uncommitted records.
        save_state(live, pipeline, metrics, opts.state.as_ref(), &mut saver);
        let deadline = next_deadline(&pipeline.lock().expect("pipeline lock"), cfg)
            .map(|d| Instant::now() + d);
        let wake = [
            deadline,
            next_reconcile,
            rescan_at,
            redetect_at,
            window_end,
            Some(next_housekeeping),
            Some(next_in_flight),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            sig = &mut shutdown => break Stop::Signal(sig?),
            _ = sleep_until(opts.end) => break Stop::Duration,
            r = live.next(&mut batch, &mut controls) => {
                r?;
                if !batch.is_empty() {
                    feed(pipeline, metrics, &mut batch, &mut tap)?;
                    report_loss(pipeline, metrics, live);
                }
                if !active {
                    // Waking from the idle period: sweep on the active schedule.
                    active = true;
                    next_housekeeping = next_housekeeping.min(Instant::now() + HOUSEKEEPING_EVERY);
                }
                for c in controls.drain(..) {
                    if let Some(Control::ModuleFreed { name: Some(name) }) = &c {
                        end_module_bindings(live, pipeline, metrics, name, &mut batch, &mut tap)?;
                    }
                    if matches!(c, Some(Control::ModuleFreed { name: Some(_) })) {
                        redetect_at.get_or_insert_with(|| Instant::now() + RESCAN_DELAY);
                    }
                    let look_again = control(live, metrics, c);
                    judge_readiness(opts.readiness.as_ref(), live);
                    if look_again {
                        if attach_open {
                            rescan_at.get_or_insert_with(|| Instant::now() + RESCAN_DELAY);
                        } else {
                            log::debug!(
                                "a module was loaded after --late-attach-window: not attaching (restart tsm-trace to attach)"
                            );
                        }
                    }
                }
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if window_end.is_some_and(|t| t <= now) {
                    window_end = None;
                    attach_open = false;
                    rescan_at = None;
                    close_late_attach(live, opts.late_attach.as_ref().is_some_and(|w| w.drop_capabilities));
                }
                if next_housekeeping <= now {
                    let in_flight = housekeeping(live, metrics, opts.inflight_timeout, Some(&mut stuck));
                    check_pins(live, metrics, &mut pins_missing);
                    check_wall_clock(pipeline, metrics, &mut wall_offset);
                    next_housekeeping = now + sweep_period(active, in_flight);
                    active = false;
                    next_in_flight = now + IN_FLIGHT_IDLE_EVERY;
                } else if next_in_flight <= now {
                    // Idle (the sweep is far): read the entries alone.
                    let f = live.session().in_flight();
                    show_in_flight(f, metrics, &mut stuck);
                    next_in_flight = now + IN_FLIGHT_IDLE_EVERY;
                }
                if rescan_at.is_some_and(|t| t <= now) {
                    rescan_at = None;
                    rescan(live, metrics);
                    judge_readiness(opts.readiness.as_ref(), live);
                }
                if redetect_at.is_some_and(|t| t <= now) {
                    redetect_at = None;
                    redetect(live, metrics);
                }
                if next_reconcile.is_some_and(|t| t <= now) {
                    if let Some(r) = &opts.reconcile {
                        reconcile(live, pipeline, metrics, &r.root, &mut batch, &mut tap)?;
                    }
                    next_reconcile = every.map(|d| Instant::now() + d);
                }
                let mut p = pipeline.lock().expect("pipeline lock");
                p.tick(monotonic_ns());
                if let Some(s) = p.sink_mut() {
                    s.flush();
                }
            }
        }
    };
    if opts.state.is_some() {
        // A clean stop applies what is in the ring and saves it with the operations still
        // in progress: the next daemon continues them (pinned probes keep recording).
        let mut batch = Vec::new();
        live.drain_now(&mut batch);
        feed(pipeline, metrics, &mut batch, &mut tap)?;
    }
    save_state(live, pipeline, metrics, opts.state.as_ref(), &mut saver);
    Ok(stop)
}

/// The time to the next sweep: the active period while anything happened since the last
/// one, anything is still in flight, or the sweep failed (`None`: tried again soon); the idle
/// period otherwise.
fn sweep_period(active: bool, in_flight: Option<usize>) -> Duration {
    if active || in_flight != Some(0) {
        HOUSEKEEPING_EVERY
    } else {
        HOUSEKEEPING_IDLE_EVERY
    }
}

/// The late-attach window is over: probes still missing will not attach; drop what
/// attaching needed.
fn close_late_attach(live: &LiveSession, drop_capabilities: bool) {
    let missing = live.session().waiting();
    let what = if missing.is_empty() {
        "every requested probe is attached".to_string()
    } else {
        format!(
            "{} will not attach (load their module, then restart tsm-trace, or raise --late-attach-window)",
            missing.join(", ")
        )
    };
    if drop_capabilities {
        let keep = crate::privileges::capabilities::to_keep(false);
        match crate::privileges::capabilities::drop_all_but(&keep) {
            Ok(()) => log::info!(
                "the late-attach window is over: dropped all capabilities but CAP_BPF; {what}"
            ),
            Err(e) => {
                log::warn!("the late-attach window is over; dropping capabilities failed: {e}")
            }
        }
    } else {
        log::info!("the late-attach window is over; {what}");
    }
}

/// A module is being freed: what its exit path did is applied first (the events before it
/// are drained), then the bindings made through its probed functions end with cause
/// `module_unloaded`: none can outlive the module that held its state.
fn end_module_bindings(
    live: &mut LiveSession,
    pipeline: &Mutex<Pipeline>,
    metrics: &Metrics,
    module: &str,
    batch: &mut Batch,
    tap: &mut Option<Tap<'_>>,
) -> Result<()> {
    let probes: Vec<crate::events::ProbeId> = live
        .session()
        .attach
        .iter()
        .filter(|r| r.attached && r.module.as_deref() == Some(module))
        .map(|r| r.probe)
        .collect();
    if probes.is_empty() {
        return Ok(());
    }
    live.drain_now(batch);
    feed(pipeline, metrics, batch, tap)?;
    let outs = pipeline
        .lock()
        .expect("pipeline lock")
        .module_unloaded(&probes, monotonic_ns());
    let devices: Vec<&str> = outs
        .iter()
        .filter_map(|o| match o {
            correlate::Output::BindingClosed(c) => Some(&*c.binding.device),
            _ => None,
        })
        .collect();
    if !devices.is_empty() {
        log::warn!(
            "module {module} was unloaded with {} binding{} made through it and no unbind seen ({}): ended them (cause module_unloaded), their state went with the module",
            devices.len(),
            if devices.len() == 1 { "" } else { "s" },
            devices.join(", ")
        );
    }
    Ok(())
}

/// Applies one control record; true when the session should look for probe targets again.
fn control(live: &mut LiveSession, metrics: &Metrics, c: Option<Control>) -> bool {
    match c {
        None => {
            log::warn!(
                "dropped an undecodable control record (tsm-trace and its eBPF object disagree?); looking for probe targets again"
            );
            true
        }
        Some(Control::ModuleFreed { name: Some(name) }) => {
            let gone = live.session_mut().module_unloaded(&name);
            if !gone.is_empty() {
                log::warn!(
                    "module {name} was unloaded: detached {} until it loads again",
                    gone.join(", ")
                );
                publish_session(metrics, live.session());
            }
            false
        }
        // Without the name, kallsyms tells which probes lost their function.
        Some(Control::ModuleFreed { name: None }) => true,
        // Always: a probe may attach, and the generation may have changed.
        Some(Control::ModuleLoaded { .. }) => true,
    }
}

/// After a module load or unload: attach what became available, detach what went away.
pub fn rescan(live: &mut LiveSession, metrics: &Metrics) {
    match live.session_mut().rescan() {
        Ok((gained, gone)) => {
            if !gone.is_empty() {
                log::warn!(
                    "a module was unloaded: detached {} until it loads again",
                    gone.join(", ")
                );
            }
            if gained.is_empty() {
                log::info!(
                    "looked again after a module load or unload ({}); no new probe could attach ({} requested probes still missing)",
                    live.session().generation.summary(),
                    live.missing()
                );
            } else {
                log::info!(
                    "a module load made more probes available; now attached: {}",
                    gained.join(", ")
                );
                for line in live.session().report_lines() {
                    log::info!("{line}");
                }
                log::info!("now attached: {} programs", live.session().attached_count());
            }
            // Also when nothing attached or detached: the generation may have changed.
            publish_session(metrics, live.session());
        }
        Err(e) => log::warn!(
            "looking for probe targets after a module load failed: {}; the probes attached before keep running",
            chain(&e)
        ),
    }
}

/// After a module unload: which generation the kernel carries now.
fn redetect(live: &mut LiveSession, metrics: &Metrics) {
    match live.session_mut().redetect() {
        Ok(true) => {
            let g = &live.session().generation;
            log::info!("after a module unload: kernel {}", g.summary());
            metrics.set_kernel_info(&g.tsm_patch, g.pci_tsm);
        }
        Ok(false) => {}
        Err(e) => log::warn!(
            "detecting the kernel's generation after a module unload failed: {}; tsm_trace_kernel_info keeps the last one",
            chain(&e)
        ),
    }
}

/// Publishes probe and BTF state as self-metrics.
pub fn publish_session(metrics: &Metrics, s: &Session) {
    for r in &s.attach {
        metrics.set_probe_attached(r.probe, &r.function, r.kind.as_str(), r.attached);
        if r.attached {
            metrics.misses().declare(r.probe, r.kind);
        }
    }
    metrics.set_btf_fields(s.btf.fields.iter().map(|f| (f.field, f.offset.is_some())));
    metrics.set_kernel_info(&s.generation.tsm_patch, s.generation.pci_tsm);
}

/// Reads the kernel's counters into the metrics; returns them (`None`: the read failed, and
/// was logged).
pub fn sync_kernel_counts(metrics: &Metrics, s: &LiveSession) -> Option<KernelCounts> {
    match s.kernel_counts() {
        Ok(k) => {
            metrics.set_kernel_counters(&k);
            Some(k)
        }
        Err(e) => {
            log::warn!("reading kernel-side counters failed: {}", chain(&e));
            None
        }
    }
}

/// After a batch: the kernel's counters into the metrics, and a loss record into the trace
/// stream for each loss counter that grew since the last (`exporters/loss.rs`).
fn report_loss(pipeline: &Mutex<Pipeline>, metrics: &Metrics, live: &LiveSession) {
    if let Some(k) = sync_kernel_counts(metrics, live) {
        let lost = pipeline.lock().expect("pipeline lock").report_loss(&k);
        LOSS_LOG
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&lost, std::time::Instant::now());
    }
}

/// Takes what is in the ring buffer now (through the tap, then the pipeline) and reports
/// the loss counted meanwhile: the end of a `trace`.
pub fn drain(
    live: &mut LiveSession,
    pipeline: &Mutex<Pipeline>,
    metrics: &Metrics,
    mut tap: Option<Tap<'_>>,
) -> Result<()> {
    let mut batch = Vec::new();
    live.drain_now(&mut batch);
    feed(pipeline, metrics, &mut batch, &mut tap)?;
    report_loss(pipeline, metrics, live);
    Ok(())
}

/// The kernel's exact operation counts (the maps `run` serves `tsm_trace_operations_total`
/// from), read once: `trace`'s summary totals. `None` if the session has none or the read
/// failed (logged).
pub fn read_aggregates(live: &mut LiveSession) -> Option<Aggregates> {
    let agg = live.session_mut().take_aggregates()?;
    agg.read()
        .map_err(|e| {
            log::warn!(
                "reading the kernel's operation counts failed: {}",
                chain(&e)
            )
        })
        .ok()
}

/// Sweeps kernel-side entries whose return will never come and reads what the kernel counted
/// as missed; says what was found and what to do about it. Returns how many entries are still
/// in flight, `None` if the sweep failed.
pub fn housekeeping(
    live: &mut LiveSession,
    metrics: &Metrics,
    inflight_timeout: Duration,
    stuck: Option<&mut crate::in_flight::StuckLog>,
) -> Option<usize> {
    let mut in_flight = None;
    match live.session_mut().expire_stale(inflight_timeout) {
        Ok((e, running)) => {
            if let Some(stuck) = stuck {
                show_in_flight(running, metrics, stuck);
            }
            in_flight = Some(e.still_in_flight);
            if !e.inflight.is_empty() || e.unfinished_operations > 0 {
                let mut by: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
                for (p, r) in &e.inflight {
                    *by.entry((p.map_or("unknown", |p| p.as_str()), r.as_str()))
                        .or_default() += 1;
                }
                let what: Vec<String> = by
                    .iter()
                    .map(|((p, r), n)| format!("{n} {p} ({r})"))
                    .collect();
                log::warn!(
                    "calls whose return never came: {}; {} operations left out of the counts. Their kretprobe missed (see tsm_trace_kernel_misses_total; many concurrent calls exhaust maxactive) or the thread died in the call",
                    if what.is_empty() {
                        "none in flight".to_string()
                    } else {
                        what.join(", ")
                    },
                    e.unfinished_operations
                );
            }
            metrics.misses().observe_expired(&e);
        }
        Err(err) => log::warn!("sweeping stale in-flight entries failed: {}", chain(&err)),
    }
    match live.session().kernel_misses() {
        Ok(m) => metrics.misses().observe_programs(&m),
        Err(err) => log::warn!("reading the kernel's miss counts failed: {}", chain(&err)),
    }
    sync_kernel_counts(metrics, live);
    in_flight
}

/// Hands the operations in flight to `/metrics` and `/bindings`, and logs those running
/// longer than `--stuck-after`.
fn show_in_flight(
    f: crate::in_flight::InFlight,
    metrics: &Metrics,
    stuck: &mut crate::in_flight::StuckLog,
) {
    if let Some(line) = stuck.line(&f, monotonic_ns()) {
        log::warn!("{line}");
    }
    metrics.set_in_flight(f);
}

/// Records `batch` through the tap, then runs it through the pipeline.
fn feed(
    pipeline: &Mutex<Pipeline>,
    metrics: &Metrics,
    batch: &mut Batch,
    tap: &mut Option<Tap<'_>>,
) -> Result<()> {
    if let Some(t) = tap.as_mut() {
        t(batch)?;
    }
    handle_batch(pipeline, metrics, batch);
    Ok(())
}

/// Runs a batch through the pipeline (and empties it).
pub fn handle_batch(pipeline: &Mutex<Pipeline>, metrics: &Metrics, batch: &mut Batch) {
    let now = monotonic_ns();
    let mut p = pipeline.lock().expect("pipeline lock");
    for r in batch.drain(..) {
        match r {
            Ok(ev) => {
                metrics.call_returned(ev.tid, ev.probe, ev.start_ns);
                p.handle(ev, now);
            }
            Err(e) => {
                metrics.decode_error();
                p.decode_error();
                log::warn!("dropped an undecodable ring-buffer record: {e}");
            }
        }
    }
    p.tick(now);
    if let Some(s) = p.sink_mut() {
        s.flush();
    }
}

/// Compares the binding table with sysfs, leaving alone every device whose state may have
/// changed while sysfs was read: the ring buffer is drained (every call that returned is
/// applied), sysfs is read, then the calls still running and the calls that returned meanwhile
/// (a second drain) name the devices to skip. A bind makes `tsm/bound` visible before its
/// return is recorded: it is either still running at the second look or in the second drain,
/// never both missed (a return program records before it forgets the entry).
fn reconcile(
    live: &mut LiveSession,
    pipeline: &Mutex<Pipeline>,
    metrics: &Metrics,
    root: &std::path::Path,
    batch: &mut Batch,
    tap: &mut Option<Tap<'_>>,
) -> Result<()> {
    let mut skip = live.session().devices_in_flight();
    live.drain_now(batch);
    feed(pipeline, metrics, batch, tap)?;
    let snap = Snapshot::read(root);
    skip.extend(live.session().devices_in_flight());
    live.drain_now(batch);
    skip.extend(batch.iter().filter_map(|e| {
        e.as_ref()
            .ok()
            .and_then(|e| e.device.as_deref().map(str::to_string))
    }));
    feed(pipeline, metrics, batch, tap)?;
    report_loss(pipeline, metrics, live);
    pipeline
        .lock()
        .expect("pipeline lock")
        .reconcile(&snap, &skip, monotonic_ns());
    sync_kernel_counts(metrics, live);
    Ok(())
}

/// When the correlator next needs a timer: pending frames or leak grace periods.
fn next_deadline(p: &Pipeline, cfg: &correlate::Config) -> Option<Duration> {
    let c = p.correlator();
    if c.pending_vm_checks() > 0 {
        Some(Duration::from_nanos(
            cfg.leak_grace_ns.min(cfg.pending_timeout_ns).max(1_000_000),
        ))
    } else if c.pending_frames() > 0 {
        Some(Duration::from_nanos(cfg.pending_timeout_ns))
    } else {
        None
    }
}

async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

pub use crate::clock::monotonic_ns;

mod safety;
use safety::{LOSS_LOG, Saver, check_pins, check_wall_clock, save_state};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_daemon_sweeps_rarely_and_a_busy_one_on_schedule() {
        assert_eq!(sweep_period(false, Some(0)), HOUSEKEEPING_IDLE_EVERY);
        assert_eq!(sweep_period(true, Some(0)), HOUSEKEEPING_EVERY);
        // Nothing arrived, but a call is still in flight (its return may never come).
        assert_eq!(sweep_period(false, Some(1)), HOUSEKEEPING_EVERY);
        // The sweep failed: it does not wait the idle period to try again.
        assert_eq!(sweep_period(false, None), HOUSEKEEPING_EVERY);
        assert!(HOUSEKEEPING_IDLE_EVERY > HOUSEKEEPING_EVERY);
    }
}
