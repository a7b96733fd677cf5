//! `tsm-trace doctor` on the machine running the tests: whatever this host is, the report
//! parses, its exit status is its verdict, and its facts match the host's own files. On a
//! kernel without kprobes (the development machines' own) it must say so and say that
//! nothing was loaded because of it.

use std::process::Command;

use serde_json::Value;

fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tsm-trace"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("running tsm-trace doctor");
    (
        out.status.code().expect("doctor exited by a signal"),
        String::from_utf8(out.stdout).expect("UTF-8 report"),
    )
}

fn finding<'a>(r: &'a Value, topic: &str) -> (&'a str, &'a str) {
    let f = r["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|x| x["topic"] == topic))
        .unwrap_or_else(|| panic!("no {topic} finding in {r}"));
    (f["level"].as_str().unwrap(), f["fact"].as_str().unwrap())
}

#[test]
fn doctor_reports_this_host() {
    let (rc, out) = doctor(&["--json"]);
    let r: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(r["exit_code"].as_i64(), Some(i64::from(rc)), "{out}");
    assert!((0..=2).contains(&rc));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(finding(&r, "kernel").1.contains(release.trim()), "{out}");
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let (level, _) = finding(&r, "kprobes");
    if kprobes {
        assert_eq!(level, "ok", "{out}");
    } else {
        assert_eq!(level, "fatal", "{out}");
        assert_eq!(rc, 2, "{out}");
        let (level, fact) = finding(&r, "probes");
        assert_eq!(level, "info", "{out}");
        assert!(fact.contains("no kprobes"), "{fact}");
    }
    // The text report says the same.
    let (rc_text, text) = doctor(&[]);
    assert_eq!(rc_text, rc);
    assert!(text.trim_end().ends_with(&format!("(exit {rc})")), "{text}");
    for f in r["findings"].as_array().unwrap() {
        assert!(text.contains(f["fact"].as_str().unwrap()), "{text}");
    }
}

fn tsm_trace(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tsm-trace"))
        .args(args)
        .env_remove("TSM_TRACE_LOG_FORMAT")
        .output()
        .expect("running tsm-trace");
    (
        out.status.code().expect("exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where doctor says "cannot run" (this machine without kprobes: exit 2), `check`, `trace`
/// and `run` say the same cause, in doctor's words, in one error line, with exit status 2,
/// and load nothing (no probe lines, no late-attach promise, no kallsyms blame).
#[test]
fn every_mode_gives_doctors_root_cause() {
    let (rc, out) = doctor(&["--json"]);
    let r: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    if rc != 2 {
        eprintln!(
            "SKIPPED: doctor says this host can run tsm-trace (exit {rc}); nothing to compare"
        );
        return;
    }
    let fatal = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["level"] == "fatal")
        .expect("exit 2 has a FAIL finding");
    let fact = fatal["fact"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("vm.key");
    let key = key.to_str().unwrap();
    for args in [
        vec!["check"],
        vec!["trace", "--duration", "1s", "--vm-key", key],
        vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--no-persist",
            "--vm-key",
            key,
        ],
    ] {
        let (rc, stdout, stderr) = tsm_trace(&args);
        assert_eq!(rc, 2, "{args:?}: {stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one error line, got:\n{stderr}");
        assert!(
            lines[0].starts_with("tsm-trace: error: cannot run on this host: ")
                && lines[0].contains(fact),
            "{args:?}: {stderr}"
        );
        for wrong in [
            "module not loaded",
            "may still attach",
            "attach failed",
            "needs 6.7",
        ] {
            assert!(
                !stderr.contains(wrong) && !stdout.contains(wrong),
                "{args:?}: {wrong:?} in {stdout}{stderr}"
            );
        }
    }
}
