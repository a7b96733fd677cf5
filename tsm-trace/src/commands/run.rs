//! `tsm-trace run`: the daemon.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tsm_trace::{
    cli::{PrintFormat, RunArgs},
    event_loop::{self, LateAttach, LoopOptions, Reconcile, Stop, publish_session},
    exporters::{
        metrics::Metrics,
        trace::{Clock, Filters},
    },
    http::{self, HttpState, Readiness},
    pipeline::{Pipeline, TraceFormat, TraceSink},
    session::LiveSession,
};

use super::{LOG, start_session};
use crate::verdict;

/// Puts the saved binding and leak tables back into the pipeline, and says what happened.
fn restore_state(
    pipeline: &Mutex<Pipeline>,
    metrics: &Metrics,
    live: &mut LiveSession,
    path: &std::path::Path,
    boot_id: &str,
) {
    use tsm_trace::correlate::state::{self, Missing};
    match state::load(path, boot_id) {
        Ok(Ok(mut saved)) => {
            let mark = saved.ring.take();
            let pending = saved.pending.iter().map(|p| p.frames.len()).sum::<usize>();
            let checks = saved.vm_checks.len();
            let (b, l) = pipeline.lock().expect("pipeline lock").restore(saved);
            log::info!(target: LOG,
                "restored {b} bindings, {l} open leaks, {pending} calls of operations in progress and {checks} VM checks from {} (saved by the previous run of this boot)",
                path.display()
            );
            resume_ring(live, mark);
        }
        Ok(Err(Missing::NoFile)) => {
            log::debug!(target: LOG,
                "no state file at {}: starting with empty tables",
                path.display()
            )
        }
        Ok(Err(Missing::OtherBoot)) => log::info!(target: LOG,
            "{} was written in an earlier boot: its bindings are gone; starting with empty tables",
            path.display()
        ),
        Err(e) => {
            metrics.state_load_failed(e.reason());
            log::error!(target: LOG,
                "{}; bindings made before this start are learned from sysfs where the kernel shows them (tsm/bound)",
                tsm_trace::probes::chain(&e)
            )
        }
    }
}

/// Reads the pinned ring from where the saved state ends: records before it are in the
/// restored tables already, records after it are not.
fn resume_ring(live: &mut LiveSession, mark: Option<tsm_trace::correlate::state::RingMark>) {
    let Some(m) = mark else { return };
    let here = live.ring_position();
    let pos = tsm_trace::probes::ring::Position {
        map_id: m.map_id,
        pos: m.pos,
    };
    match live.resume_at(pos) {
        Some(0) => {}
        Some(n) => log::info!(target: LOG,
            "skipped {n} bytes of ring-buffer records that the previous run had applied and saved"
        ),
        None if m.map_id != here.map_id => log::info!(target: LOG,
            "the state file was saved against another ring buffer (map {}; now {}): the records the previous run had not read are gone with it",
            m.map_id, here.map_id
        ),
        None => log::warn!(target: LOG,
            "the state file ends at ring position {} but the ring has committed up to {}: records in between were committed without being saved (a failed save?); continuing from the ring",
            m.pos, here.pos
        ),
    }
}

/// Keeps CAP_BPF (map reads) and, while requested probes may still attach (`waiting`), what
/// attaching them needs; drops everything else.
fn drop_capabilities(live: &LiveSession, waiting: bool, window: Duration) {
    use tsm_trace::privileges::capabilities;
    let keep = capabilities::to_keep(waiting);
    let names = capabilities::names(&keep);
    let why = if waiting {
        format!(
            "{} requested probes may still attach when their module loads, for --late-attach-window {}",
            live.missing(),
            tsm_trace::exporters::trace::fmt_duration(window.as_nanos() as u64)
        )
    } else if live.missing() > 0 {
        format!(
            "{} requested probes are not attached and will not be (--late-attach-window 0s)",
            live.missing()
        )
    } else {
        "all requested probes attached".to_string()
    };
    match capabilities::drop_all_but(&keep) {
        Ok(()) => log::info!(target: LOG,
            "dropped all capabilities but {} ({why}; --keep-capabilities keeps them all)",
            names.join(", ")
        ),
        Err(e) => log::warn!(target: LOG, "could not drop capabilities: {e}; continuing with them"),
    }
}

/// `--user`: the pin directory and the state directory, written after the switch, become
/// that user's (`privileges/ownership.rs`). What cannot be handed over is said, with its cost.
fn hand_over_files(args: &RunArgs, s: &tsm_trace::session::Session, uid: u32, gid: u32) {
    use tsm_trace::privileges::ownership;
    if let Some(p) = &s.pinned
        && let Err(e) = ownership::give_tree(&args.pin_dir, uid, gid)
    {
        log::warn!(target: LOG,
            "--user: could not hand {} to uid {uid}: {e}; probes that attach later cannot be pinned, and the next start must run as root to take over (dir {})",
            args.pin_dir.display(),
            p.dir.display()
        );
    }
    if args.no_persist {
        return;
    }
    match ownership::own_state_dir(&args.state_file) {
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(dir)
                .and_then(|()| ownership::give_tree(dir, uid, gid).map(drop))
            {
                log::warn!(target: LOG,
                    "--user: could not hand {} to uid {uid}: {e}; the binding table will not be saved (a restart then reports bound devices as sysfs_bound_without_owner)",
                    dir.display()
                );
            }
        }
        None => log::warn!(target: LOG,
            "--user: {} is not in a directory of tsm-trace's own (named tsm-trace), so it is left as it is; if uid {uid} cannot write there, the binding table will not be saved",
            args.state_file.display()
        ),
    }
}

/// `--user`, started as root again: what the previous run handed to the user is taken back
/// before the key, the pins and the state are opened (`privileges/ownership.rs`).
fn take_back_files(args: &RunArgs) {
    use tsm_trace::privileges::ownership;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let mut dirs: Vec<&std::path::Path> = Vec::new();
    if !args.no_persist {
        dirs.push(&args.pin_dir);
        dirs.extend(ownership::own_state_dir(&args.state_file));
    }
    dirs.extend(ownership::own_state_dir(&args.probes.vm_key));
    dirs.dedup();
    for e in ownership::take_back(&dirs) {
        log::warn!(target: LOG, "--user: could not take back what the previous run was given: {e}");
    }
}

/// `--user`: becomes that user (before capabilities are reduced).
fn switch_user(uid: u32, gid: u32, keep_all: bool) -> Result<()> {
    use tsm_trace::privileges::capabilities;
    capabilities::switch_user(uid, gid).with_context(|| {
        format!("--user {uid}:{gid}: switching user (needs CAP_SETUID and CAP_SETGID at start)")
    })?;
    if keep_all {
        // Effective again: the switch cleared it, permitted was kept.
        capabilities::raise_permitted().context("--user: restoring capabilities")?;
    }
    log::info!(target: LOG, "now running as uid {uid}, gid {gid}");
    Ok(())
}

pub async fn run(args: RunArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    readiness.set_not_ready("probes are being attached");
    // The web config is checked before anything is attached: a wrong file fails fast.
    let web = args.web.config()?;
    verdict::warn_sysfs_root(&args.sysfs_root, args.reconcile_interval);
    metrics.set_reconcile_interval(args.reconcile_interval);
    let mut facts = verdict::preflight(&args.probes.session_options(), &args.pin_dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (use --listen to pick another address)",
                args.listen
            )
        })?;
    if args.user.is_some() {
        take_back_files(&args);
    }
    // Span times: the events' CLOCK_MONOTONIC plus this offset, taken once.
    let otlp = super::start_otlp(
        &args.otlp,
        &metrics,
        tsm_trace::clock::realtime_offset_ns(),
        tsm_trace::exporters::otlp::WhenFull::Drop,
    )?;
    let mut live = start_session(
        &args.probes,
        (!args.no_persist).then(|| args.pin_dir.clone()),
    )?;
    publish_session(&metrics, live.session());
    // /metrics counts operations from the kernel's exact aggregation, read on every scrape.
    if let Some(agg) = live.session_mut().take_aggregates() {
        metrics.use_kernel_aggregates(Box::new(move || Ok(agg.read()?)));
    }
    let waiting = live.missing() > 0 && !args.late_attach_window.is_zero();
    if let Some((uid, gid)) = args.user {
        hand_over_files(&args, live.session(), uid, gid);
        switch_user(uid, gid, args.keep_capabilities)?;
    }
    if !args.keep_capabilities {
        drop_capabilities(&live, waiting, args.late_attach_window);
    }
    if let Some(why) = verdict::bind_path_gap(&mut facts, live.session()) {
        log::warn!(target: LOG, "{why}");
    }
    // Ready or degraded (docs/metrics.md, "Readiness"): the event loop sets it once it runs.
    if let tsm_trace::doctor::Coverage::Degraded(why) =
        tsm_trace::doctor::coverage(&live.session().attach)
    {
        log::warn!(target: LOG, "/readyz will say degraded: {why}");
    }
    let cfg = args.correlate.config();
    let sink = args.print.map(|f| {
        TraceSink::new(
            Box::new(std::io::stdout()),
            match f {
                PrintFormat::Text => TraceFormat::Text,
                PrintFormat::Json => TraceFormat::Json,
            },
            Filters::default(),
            Clock::wall_now(),
        )
    });
    let pipeline = Arc::new(Mutex::new(
        Pipeline::new(cfg.clone(), metrics.clone(), sink).with_extra(tsm_trace::pipeline::Extra {
            timeline: None,
            otlp,
        }),
    ));
    let boot_id = tsm_trace::correlate::state::boot_id();
    if !args.no_persist {
        restore_state(&pipeline, &metrics, &mut live, &args.state_file, &boot_id);
    }
    let state = HttpState::new(pipeline.clone(), readiness.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let auth = if web.basic_auth.is_some() {
        ", basic auth"
    } else {
        ""
    };
    let limits = args.web.limits();
    let grace = limits.shutdown_grace;
    let server = tokio::spawn(http::serve_with(listener, state, web, limits, async move {
        let _ = stop_rx.await;
    }));
    log::info!(target: LOG,
        "serving {scheme}://{}/metrics{auth} ({} programs attached); Ctrl-C or SIGTERM stops",
        args.listen,
        live.session().attached_count()
    );

    let opts = LoopOptions {
        reconcile: Some(Reconcile {
            root: args.sysfs_root.clone(),
            every: (!args.reconcile_interval.is_zero()).then_some(args.reconcile_interval),
        }),
        end: None,
        late_attach: waiting.then(|| LateAttach {
            until: tokio::time::Instant::now() + args.late_attach_window,
            drop_capabilities: !args.keep_capabilities,
        }),
        state: (!args.no_persist).then(|| event_loop::StateFile {
            path: args.state_file.clone(),
            boot_id,
        }),
        inflight_timeout: args.probes.inflight_timeout,
        stuck_after: args.probes.stuck_after,
        // Read from /proc with privileges the daemon has dropped by then.
        stuck_stacks: false,
        readiness: Some(readiness.clone()),
    };
    let stop = event_loop::run(&mut live, &pipeline, &metrics, &cfg, &opts, None).await?;
    if let Stop::Signal(sig) = stop {
        let pinned = live.session().pinned_at();
        log::info!(target: LOG, "{}", tsm_trace::notices::stop_message(sig, pinned));
    }
    // Detach first (pinned programs stay for the next daemon): whatever the HTTP clients do,
    // this process's probes are gone at once.
    readiness.set_not_ready("shutting down");
    drop(live);
    // The last spans go (bounded by the export timeout; the runtime waits meanwhile).
    let otlp = pipeline.lock().expect("pipeline lock").take_extra().otlp;
    super::finish_otlp(otlp);
    let _ = stop_tx.send(());
    // The server returns within its grace; the margin covers a stalled runtime.
    match tokio::time::timeout(grace + Duration::from_millis(500), server).await {
        Ok(r) => r
            .context("the HTTP server task")?
            .context("the HTTP server")?,
        Err(_) => log::warn!(target: LOG, "the HTTP server did not stop in time; exiting anyway"),
    }
    Ok(())
}
