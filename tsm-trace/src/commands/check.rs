//! `tsm-trace check`: which probes attach here, and why not.

use std::io::Write;

use anyhow::{Result, bail};
use tsm_trace::{cli::CheckArgs, session::Session};

use crate::verdict;

pub fn check(args: CheckArgs) -> Result<()> {
    let opts = args.probes.session_options(args.strict);
    let mut facts = verdict::preflight(
        &opts,
        std::path::Path::new(tsm_trace::probes::pin::DEFAULT_ROOT),
    )?;
    let session = Session::start(&opts)?;
    tsm_trace::probes::others::warn_if_any(None);
    let mut out = std::io::stdout().lock();
    for line in session.report_lines() {
        writeln!(out, "{line}")?;
    }
    let attached = session.attached_count();
    writeln!(out, "{attached} programs attached")?;
    let late = session.waiting();
    if !late.is_empty() {
        let keep = tsm_trace::privileges::capabilities::names(
            &tsm_trace::privileges::capabilities::to_keep(true),
        );
        writeln!(out, "{}", tsm_trace::notices::late_attach(&late, &keep))?;
    }
    if let Some(why) = verdict::bind_path_gap(&mut facts, &session) {
        bail!("{why}");
    }
    Ok(())
}
