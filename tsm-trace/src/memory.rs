//! The process's own memory, as the kernel counts it (`/proc/self/status`): the daemon logs
//! its peak RSS (VmHWM) after each start-up phase at debug level, so where the peak comes
//! from is visible on any host (`--log-level debug`), and the bench reads the same field.

/// VmHWM (peak resident set) and VmRSS (now), in KiB; `None` if `/proc/self/status` is
/// unreadable or lacks them (no /proc mounted).
pub fn usage() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse(&status)
}

fn parse(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Logs the peak and current RSS after start-up phase `phase` (debug level).
pub fn log_phase(phase: &str) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    match usage() {
        Some((hwm, rss)) => log::debug!(
            "memory after {phase}: peak RSS (VmHWM) {:.1} MiB, RSS now {:.1} MiB",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0
        ),
        None => log::debug!("memory after {phase}: /proc/self/status has no VmHWM/VmRSS"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let s = "Name:\ttsm-trace\nVmHWM:\t   21712 kB\nVmRSS:\t    4876 kB\n";
        assert_eq!(parse(s), Some((21712, 4876)));
        assert_eq!(parse("VmRSS:\t1 kB\n"), None);
        assert!(usage().is_some_and(|(hwm, rss)| hwm >= rss && rss > 0));
    }
}
