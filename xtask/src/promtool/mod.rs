//! promtool checks of the alert and recording rules in `dashboards/`: `promtool check
//! rules`, the hand-written rule tests, and rule tests generated from real exposition
//! sequences (`generate.rs`: captures replayed by tsm-trace, scraped once a minute).

mod capture;
mod generate;
mod scenarios;
mod series;

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
    generate::run_all()
}
