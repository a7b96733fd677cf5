//! promtool checks of the alert and recording rules in `dashboards/`.

use std::process::Command;

use anyhow::Result;

use crate::util::{root, run};

pub fn check() -> Result<()> {
    let d = root().join("dashboards");
    let rules: Vec<_> = ["alerts.yml", "recording.yml"]
        .iter()
        .map(|f| d.join(f))
        .filter(|p| p.exists())
        .collect();
    if !rules.is_empty() {
        run(Command::new("promtool")
            .arg("check")
            .arg("rules")
            .args(&rules))?;
    }
    let tests = d.join("tests/alerts_test.yml");
    if tests.exists() {
        run(Command::new("promtool")
            .current_dir(&d)
            .args(["test", "rules"])
            .arg(&tests))?;
    }
    Ok(())
}
