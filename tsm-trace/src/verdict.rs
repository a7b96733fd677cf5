//! What `run`, `trace` and `check` take from `tsm-trace doctor`: its verdict on the host
//! before anything is loaded, its words when no bind-path probe attached, and the exit status
//! they document.

use std::time::Duration;

use anyhow::Result;
use tsm_trace::session::{Session, SessionOptions};

/// Doctor's facts about this host, and its verdict before anything is loaded: where
/// `doctor` would say "cannot run", `run`, `trace` and `check` stop with its FAIL line
/// (exit status 2, see `main`).
pub fn preflight(
    opts: &SessionOptions,
    pin_dir: &std::path::Path,
) -> Result<tsm_trace::doctor::Facts> {
    use tsm_trace::doctor;
    let facts = doctor::host(&doctor::Paths::default(), opts, pin_dir);
    doctor::preflight(&facts)?;
    Ok(facts)
}

/// `--sysfs-root` that has no `bus/pci/devices`: reconciliation would see nothing, say so.
pub fn warn_sysfs_root(root: &std::path::Path, every: Duration) {
    if every.is_zero() {
        return;
    }
    if let Some(why) = tsm_trace::sysfs::root_problem(root) {
        log::warn!("{why}");
    }
}

/// Why no bind will be seen (no bind-path probe attached), in doctor's words; `None` when a
/// bind-path probe is attached.
pub fn bind_path_gap(facts: &mut tsm_trace::doctor::Facts, s: &Session) -> Option<String> {
    facts.probes = tsm_trace::doctor::ProbeFacts::Attached {
        reports: s.attach.clone(),
        unresolved: Vec::new(),
    };
    tsm_trace::doctor::bind_path_gap(facts)
}
