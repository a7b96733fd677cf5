//! For tests that cannot run on every machine (no root, no BTF, a tool not installed).
//!
//! Outside CI such a test says why and passes without checking anything; under `CI=true` it
//! fails instead, because CI promises a machine where every test runs, and a test that skips
//! there has silently stopped protecting anything.

/// Is this a CI run (`CI=true` or `CI=1`, as CI services set it)?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Call where a test cannot run, then return from the test. Outside CI this prints `reason`;
/// under CI it panics with it (and with what to do about it).
pub fn skip_unless_ci(reason: &str) {
    if in_ci() {
        panic!(
            "this test cannot run here and CI=true forbids skipping it: {reason}; \
             give the CI machine what the test needs (or unset CI to skip locally)"
        );
    }
    eprintln!("SKIPPED (would fail under CI=true): {reason}");
}

/// `promtool check metrics` (Debian's prometheus package) on an exposition: `Some(Ok(()))`
/// when promtool has nothing to say (no parse error, no lint), `Some(Err(what it said))`
/// otherwise, `None` where promtool is not installed (the test returns; under CI this panics).
pub fn promtool_check_metrics(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    let promtool = std::path::Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        skip_unless_ci("/usr/bin/promtool not installed (apt-get install prometheus)");
        return None;
    }
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && complaints.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {complaints}", out.status))
    })
}

/// The Python client's OpenMetrics parser (Debian's python3-prometheus-client), a strict
/// one: `Some(Ok(families))`, `Some(Err(what it said))`, `None` where it is not installed
/// (the test returns; under CI it panics).
pub fn openmetrics_parse(text: &str) -> Option<Result<String, String>> {
    use std::io::Write;
    let python = "/usr/bin/python3";
    let ok = std::process::Command::new(python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        crate::test_support::skip_unless_ci(
            "python3-prometheus-client not installed (apt-get install python3-prometheus-client)",
        );
        return None;
    }
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
        for f in p(sys.stdin.read()):\n\
        \x20   print(f.name, f.type)\n\
        \x20   for s in f.samples:\n\
        \x20       print(' ', s.name, sorted(s.labels.items()), s.value, s.exemplar)\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(if out.status.success() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}
