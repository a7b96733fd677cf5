//! Sentences `run`, `trace` and `check` print about what the probes do beyond this process:
//! what a stop leaves running, and which commands attach probes of late-loaded modules.
//! Kept here (not in the binary's `commands/`) so that they are tested against what really happens.

use std::path::Path;

/// The line `run` logs when a signal stops it. Pinned programs are not detached: they keep
/// counting into the pinned maps for the next daemon (`tsm-trace unpin` removes them);
/// without pins, dropping the session detaches them.
pub fn stop_message(signal: &str, pinned: Option<(&Path, u32)>) -> String {
    match pinned {
        Some((dir, epoch)) => format!(
            "{signal}: exiting; the pinned probes of epoch {epoch} in {} keep running for the next daemon (`tsm-trace unpin` removes them)",
            dir.display()
        ),
        None => format!("{signal}: detaching probes and exiting"),
    }
}

/// `check`'s line about requested programs whose module is not loaded yet.
pub fn late_attach(waiting: &[String], keep: &[String]) -> String {
    format!(
        "late attach: {} requested programs are not attached but may be when their module loads ({}); `trace` attaches them whenever the module loads, `run` during --late-attach-window (default 10m), keeping {} until then, then only CAP_BPF",
        waiting.len(),
        waiting.join(", "),
        keep.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_with_pins_does_not_claim_to_detach() {
        let s = stop_message("SIGTERM", Some((Path::new("/sys/fs/bpf/tsm-trace"), 3)));
        assert!(!s.contains("detaching"), "{s}");
        assert!(
            s.contains("keep running") && s.contains("tsm-trace unpin"),
            "{s}"
        );
        assert!(s.contains("epoch 3 in /sys/fs/bpf/tsm-trace"), "{s}");
        assert_eq!(
            stop_message("SIGINT", None),
            "SIGINT: detaching probes and exiting"
        );
    }

    #[test]
    fn late_attach_names_trace_and_run() {
        let s = late_attach(
            &["kprobe driver_bind".into()],
            &["CAP_BPF".into(), "CAP_PERFMON".into()],
        );
        assert!(s.starts_with("late attach: 1 requested programs"), "{s}");
        assert!(s.contains("`trace` attaches them whenever"), "{s}");
        assert!(s.contains("`run` during --late-attach-window"), "{s}");
    }
}
