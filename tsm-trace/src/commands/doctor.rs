//! `tsm-trace doctor`: can this host run tsm-trace, and what will it see.

use std::io::Write;

use anyhow::Result;
use tsm_trace::cli::DoctorArgs;

/// `tsm-trace doctor`: the report, and the exit status it implies.
pub fn doctor(args: DoctorArgs) -> Result<i32> {
    use tsm_trace::doctor;
    let facts = doctor::gather(
        &doctor::Paths::default(),
        &args.probes.session_options(false),
        &args.pin_dir,
    );
    let report = doctor::Report::new(doctor::assess(&facts));
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.render_text())?;
    }
    out.flush()?;
    Ok(report.exit_code)
}
