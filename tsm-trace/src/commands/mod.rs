//! What each subcommand does: `tsm-trace <name>` runs `commands::<name>`. The clap
//! definitions are in the library's `cli`.

pub mod check;
pub mod doctor;
pub mod generate;
pub mod replay;
pub mod run;
pub mod trace;
pub mod unpin;

use std::path::PathBuf;

use anyhow::{Context, Result};
use tsm_trace::{cli::ProbeArgs, session::LiveSession};

/// The target of the commands' log lines (`target` in JSON logs): `tsm_trace`, as when they
/// were written in `main.rs`.
pub const LOG: &str = "tsm_trace";

/// The OTLP exporter, if `--otlp-endpoint` or the `OTEL_EXPORTER_OTLP_*` variables ask for
/// one (a bad setting is an error before anything starts).
fn start_otlp(
    args: &tsm_trace::cli::OtlpArgs,
    metrics: &tsm_trace::exporters::metrics::Metrics,
    offset_ns: i64,
    when_full: tsm_trace::exporters::otlp::WhenFull,
) -> Result<Option<tsm_trace::exporters::otlp::Otlp>> {
    use tsm_trace::exporters::otlp::{DEFAULT_QUEUE, Otlp, OtlpError, config};
    let Some(cfg) = config::resolve(args.otlp_endpoint.as_deref(), |k| std::env::var(k).ok())
        .map_err(OtlpError::from)?
    else {
        return Ok(None);
    };
    let otlp = Otlp::start(
        &cfg,
        metrics.otlp().clone(),
        offset_ns,
        DEFAULT_QUEUE,
        when_full,
    )?;
    log::info!(target: LOG, "sending spans to {} (OTLP http/protobuf)", cfg.url);
    Ok(Some(otlp))
}

/// Sends what is left and logs what the export did (a warning if anything was lost).
fn finish_otlp(otlp: Option<tsm_trace::exporters::otlp::Otlp>) {
    if let Some(mut o) = otlp {
        let r = o.finish();
        let lost = r.dropped_queue_full + r.dropped_export_failed + r.dropped_shutdown;
        if lost > 0 || r.export_errors > 0 {
            log::warn!(target: LOG, "{}", r.describe());
        } else {
            log::info!(target: LOG, "{}", r.describe());
        }
    }
}

fn start_session(probes: &ProbeArgs, pin_root: Option<PathBuf>) -> Result<LiveSession> {
    let (key, source) = tsm_trace::events::vm_key::load_or_create(&probes.vm_key)
        .context("the VM-name key (--vm-key)")?;
    match source {
        tsm_trace::events::vm_key::KeySource::InMemory { .. } => {
            log::info!(target: LOG, "{}", source.describe())
        }
        _ => log::debug!(target: LOG, "{}", source.describe()),
    }
    let mut opts = probes.session_options();
    opts.pin_root = pin_root;
    let live = LiveSession::start(&opts, key)?;
    tsm_trace::probes::others::warn_if_any(opts.pin_root.as_deref());
    // Probe lines carry their facts as fields too (JSON logs); they come in report order.
    let mut reports = live.session().attach.iter();
    for line in live.session().report_lines() {
        let report = if line.starts_with("probe ") {
            reports.next()
        } else {
            None
        };
        match report {
            Some(r) => log::info!(target: LOG,
                probe = r.probe.as_str(),
                kind = r.kind.as_str(),
                function = r.function.as_str(),
                attached = r.attached,
                requested = r.requested,
                reason = r.reason.as_deref().unwrap_or("");
                "{line}"
            ),
            None => log::info!(target: LOG, "{line}"),
        }
    }
    if let Some(p) = &live.session().pinned {
        let h = &p.handover;
        match p.previous {
            Some(g) => log::info!(target: LOG,
                "took over from the pinned programs of epoch {g} (they kept running while no daemon ran; what they saw is read now): now epoch {}, pinned in {}{}",
                p.epoch,
                p.dir.display(),
                if h.old_links > 0 {
                    format!(", {} old links removed", h.old_links)
                } else {
                    String::new()
                }
            ),
            None => log::info!(target: LOG,
                "probes and state pinned in {} (epoch {}): they keep running across restarts; `tsm-trace unpin` removes them",
                p.dir.display(),
                p.epoch
            ),
        }
        for l in &h.other_layouts {
            log::warn!(target: LOG,
                "removed the pinned state of layout {l} (another tsm-trace version's record layout): events it had not delivered are lost; the binding table comes from the state file"
            );
        }
        for l in &h.left_alone {
            log::warn!(target: LOG,
                "left alone in the pin directory: {l}; check --pin-dir (tsm-trace's own directory holds only what it pinned)"
            );
        }
    }
    Ok(live)
}
