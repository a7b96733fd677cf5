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
