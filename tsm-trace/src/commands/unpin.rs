//! `tsm-trace unpin`: remove what `run` pinned, and its state file.

use std::io::Write;

use anyhow::{Context, Result};
use tsm_trace::cli::UnpinArgs;

pub fn unpin(args: UnpinArgs) -> Result<()> {
    use tsm_trace::probes::unpin;
    let root = &args.pin_dir;
    // The lock first: a daemon that starts meanwhile waits for it (or refuses to start).
    let _lock = unpin::lock(root, args.force)?;
    let plan = unpin::plan(root)?;
    let state = tsm_trace::correlate::state::check_removable(&args.state_file)?;
    // A save cut short by a kill leaves its temporary file: ours too.
    let temp = tsm_trace::correlate::state::leftover_temp(&args.state_file);
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        for p in &plan.pins {
            writeln!(out, "would remove {}", p.describe())?;
        }
        for d in &plan.dirs {
            writeln!(out, "would remove {}/", d.display())?;
        }
        if state {
            writeln!(out, "would remove {}", args.state_file.display())?;
        }
        if let Some(t) = &temp {
            writeln!(out, "would remove {}", t.display())?;
        }
        if plan.is_empty() && !state && temp.is_none() {
            writeln!(
                out,
                "nothing pinned under {} and no state file at {}",
                root.display(),
                args.state_file.display()
            )?;
        }
        return Ok(());
    }
    let n = unpin::remove(&plan)?;
    if let Some(t) = &temp {
        std::fs::remove_file(t).with_context(|| format!("removing {}", t.display()))?;
    }
    let state = if state {
        std::fs::remove_file(&args.state_file)
            .with_context(|| format!("removing {}", args.state_file.display()))?;
        format!("removed {}", args.state_file.display())
    } else {
        format!("no state file at {}", args.state_file.display())
    };
    if plan.is_empty() {
        writeln!(out, "nothing pinned under {}; {state}", root.display())?;
    } else if n == 0 {
        writeln!(
            out,
            "nothing pinned under {} (its empty directories are removed); {state}",
            root.display()
        )?;
    } else {
        writeln!(
            out,
            "removed {n} pinned maps and links under {} (their probes are detached); {state}",
            root.display()
        )?;
    }
    Ok(())
}
