//! `tsm-trace doctor`: can this host run tsm-trace, and what will it see? One screen, one
//! line per fact with what to do about it, and an exit status for automation:
//! 0 ok, 1 degraded (runs, sees less), 2 cannot run.
//!
//! `facts.rs` reads the host (the probes through the same load and attach as `check`, or,
//! where they cannot be loaded, the same lookup without loading); `assess.rs` judges each
//! fact. Nothing here needs a privilege to explain why a privilege is missing.

mod assess;
pub mod coverage;
pub mod facts;

use serde::Serialize;

pub use assess::{assess, assess_host, kernel_version};
pub use coverage::{Coverage, coverage};
pub use facts::{Facts, Paths, ProbeFacts, gather, host};

/// The exit status of `doctor`, `check`, `run` and `trace` where tsm-trace cannot run.
pub const EXIT_CANNOT_RUN: i32 = 2;

/// tsm-trace cannot run on this host: doctor's first FAIL finding. `run`, `trace` and `check`
/// stop with it (exit status [`EXIT_CANNOT_RUN`]) before loading anything, so every mode
/// names the same cause in the same words as `doctor`.
#[derive(Debug, thiserror::Error)]
#[error("cannot run on this host: {}; `tsm-trace doctor` checks everything", .0.one_line())]
pub struct CannotRun(pub Finding);

/// Doctor's judgement of the host alone (kernel, BTF, kprobes, lockdown, capabilities):
/// `Err` with the first FAIL finding where doctor's verdict would be "cannot run".
pub fn preflight(f: &Facts) -> Result<(), CannotRun> {
    match assess_host(f).into_iter().find(|x| x.level == Level::Fatal) {
        Some(fatal) => Err(CannotRun(fatal)),
        None => Ok(()),
    }
}

/// With the probes attached (`f.probes` is [`ProbeFacts::Attached`]): why no bind will be
/// seen, if none of the bind-path probes is attached, in doctor's words (`None`: one is).
pub fn bind_path_gap(f: &Facts) -> Option<String> {
    let ProbeFacts::Attached { reports, .. } = &f.probes else {
        return None;
    };
    if reports
        .iter()
        .any(|r| r.attached && assess::bind_path(r.probe))
    {
        return None;
    }
    let t = assess::tsm(f);
    Some(if t.level == Level::Ok {
        format!(
            "no bind-path probe attached (tsm_op_ioctl, tsm_bind, pci_tsm_bind) although doctor finds {}: each probe line says why",
            t.fact
        )
    } else {
        format!("no bind-path probe attached: {}", t.one_line())
    })
}

/// How a fact bears on running tsm-trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Good, or nothing to do.
    Ok,
    /// Worth knowing; does not stop anything.
    Info,
    /// tsm-trace runs but sees or keeps less.
    Degraded,
    /// tsm-trace cannot run here.
    Fatal,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Degraded => "WARN",
            Level::Fatal => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub topic: &'static str,
    pub level: Level,
    pub fact: String,
    /// What to do about it (`None`: nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub todo: Option<String>,
}

impl Finding {
    pub fn new(topic: &'static str, level: Level, fact: impl Into<String>) -> Finding {
        Finding {
            topic,
            level,
            fact: fact.into(),
            todo: None,
        }
    }

    pub fn todo(mut self, todo: impl Into<String>) -> Finding {
        self.todo = Some(todo.into());
        self
    }

    /// `topic: fact -> what to do`, for one log or error line.
    pub fn one_line(&self) -> String {
        match &self.todo {
            Some(t) => format!("{}: {} -> {t}", self.topic, self.fact),
            None => format!("{}: {}", self.topic, self.fact),
        }
    }
}

/// The overall answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Degraded,
    CannotRun,
}

impl Verdict {
    pub fn of(findings: &[Finding]) -> Verdict {
        match findings.iter().map(|f| f.level).max() {
            Some(Level::Fatal) => Verdict::CannotRun,
            Some(Level::Degraded) => Verdict::Degraded,
            _ => Verdict::Ok,
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Ok => 0,
            Verdict::Degraded => 1,
            Verdict::CannotRun => 2,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Verdict::Ok => "ok: tsm-trace can run here",
            Verdict::Degraded => {
                "degraded: tsm-trace runs here but sees or keeps less (WARN lines)"
            }
            Verdict::CannotRun => "cannot run: fix the FAIL lines first",
        }
    }
}

/// The report as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub exit_code: i32,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(findings: Vec<Finding>) -> Report {
        let verdict = Verdict::of(&findings);
        Report {
            verdict,
            exit_code: verdict.exit_code(),
            findings,
        }
    }

    /// One line per fact; what to do on the line below it.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!(
                "{:<4}  {:<12} {}\n",
                f.level.label(),
                f.topic,
                f.fact
            ));
            if let Some(t) = &f.todo {
                out.push_str(&format!("{:<18} -> {t}\n", ""));
            }
        }
        out.push_str(&format!(
            "verdict: {} (exit {})\n",
            self.verdict.describe(),
            self.exit_code
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_is_the_worst_level() {
        let f = |l| Finding::new("t", l, "x");
        assert_eq!(Verdict::of(&[]), Verdict::Ok);
        assert_eq!(Verdict::of(&[f(Level::Ok), f(Level::Info)]), Verdict::Ok);
        assert_eq!(
            Verdict::of(&[f(Level::Ok), f(Level::Degraded)]).exit_code(),
            1
        );
        assert_eq!(
            Verdict::of(&[f(Level::Fatal), f(Level::Degraded)]).exit_code(),
            2
        );
    }

    #[test]
    fn text_puts_what_to_do_under_the_fact() {
        let r = Report::new(vec![
            Finding::new("kernel", Level::Ok, "Linux 7.3.4"),
            Finding::new("kprobes", Level::Fatal, "no kprobe PMU").todo("boot another kernel"),
        ]);
        let t = r.render_text();
        assert!(t.contains("ok    kernel       Linux 7.3.4\n"), "{t}");
        assert!(t.contains("FAIL  kprobes      no kprobe PMU\n"), "{t}");
        assert!(t.contains("-> boot another kernel\n"), "{t}");
        assert!(t.ends_with("(exit 2)\n"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["verdict"], "cannot_run");
        assert_eq!(j["findings"][1]["level"], "fatal");
        assert!(j["findings"][0].get("todo").is_none());
    }
}
