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
