//! The Prometheus server of the e2e test (on 127.0.0.1, with test copies of the rule files)
//! and its HTTP API; `promtool check metrics`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::http;
use crate::vm;

pub(super) const PROMETHEUS: &str = "/usr/bin/prometheus";
/// `for:` of every rule in the test copies of the rule files.
const TEST_FOR: &str = "5s";

/// A Prometheus server on 127.0.0.1, killed (and its temp dir removed) on drop.
pub(super) struct Prometheus {
    child: Child,
    pub(super) port: u16,
    pub(super) dir: PathBuf,
    keep: Arc<AtomicBool>,
    /// Rules in the rule files (`- alert:` and `- record:` entries).
    pub(super) rule_count: usize,
}

impl Prometheus {
    pub(super) fn start(root: &Path, target_port: u16, keep: bool) -> Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!(
            "tsm-trace-e2e-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        ));
        std::fs::create_dir_all(dir.join("data"))?;
        let mut rule_files = Vec::new();
        let mut rule_count = 0;
        let mut changed = Vec::new();
        for f in ["alerts.yml", "recording.yml"] {
            let src = std::fs::read_to_string(root.join("dashboards").join(f))
                .with_context(|| format!("reading dashboards/{f}"))?;
            let (copy, n, fors) = test_copy(&src, f);
            rule_count += n;
            changed.extend(fors);
            let dst = dir.join(f);
            std::fs::write(&dst, copy)?;
            rule_files.push(dst);
        }
        println!(
            "e2e: Prometheus loads TEST COPIES of dashboards/alerts.yml and recording.yml (in {}) \
             with every `for:` shortened to {TEST_FOR} (was: {})",
            dir.display(),
            changed.join(", ")
        );
        let port = vm::qemu::free_port()?;
        let config = format!(
            "# cargo xtask e2e (xtask/src/e2e/)\n\
             global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: tsm-trace\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
            rule_files
                .iter()
                .map(|p| format!("  - {}\n", p.display()))
                .collect::<String>()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Exemplars (scraped from the OpenMetrics exposition) kept and queryable.
            .arg("--enable-feature=exemplar-storage")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {PROMETHEUS}"))?;
        println!(
            "e2e: Prometheus on http://127.0.0.1:{port} (log {})",
            dir.join("prometheus.log").display()
        );
        Ok(Prometheus {
            child,
            port,
            dir,
            keep: Arc::new(AtomicBool::new(keep)),
            rule_count,
        })
    }

    pub(super) fn keep_dir(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    pub(super) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "prometheus.log tail:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep.load(Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The rule file with every `for:` set to [`TEST_FOR`]; also the number of rules and the
/// `for:` values replaced.
fn test_copy(src: &str, name: &str) -> (String, usize, Vec<String>) {
    let mut out = format!(
        "# TEST COPY of dashboards/{name} written by cargo xtask e2e: every `for:` is {TEST_FOR}.\n"
    );
    let mut rules = 0;
    let mut fors = Vec::new();
    let mut last_rule = String::new();
    for line in src.lines() {
        let t = line.trim_start();
        if let Some(r) = t
            .strip_prefix("- alert:")
            .or_else(|| t.strip_prefix("- record:"))
        {
            rules += 1;
            last_rule = r.trim().to_owned();
        }
        if let Some(v) = t.strip_prefix("for:") {
            let indent = &line[..line.len() - t.len()];
            out.push_str(&format!(
                "{indent}for: {TEST_FOR}  # e2e test copy; was {}\n",
                v.trim()
            ));
            fors.push(format!("{last_rule} {}", v.trim()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, rules, fors)
}

/// Prometheus's HTTP API.
pub(super) struct Api {
    pub(super) port: u16,
}

/// A `/api/v1/query` result.
pub(super) struct QueryResult(Value);

impl QueryResult {
    pub(super) fn series(&self) -> Vec<Value> {
        match &self.0["result"] {
            Value::Array(a)
                if self.0["resultType"] != "scalar" && self.0["resultType"] != "string" =>
            {
                a.clone()
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn has_data(&self) -> bool {
        match self.0["resultType"].as_str() {
            Some("scalar") | Some("string") => !self.0["result"].is_null(),
            _ => !self.series().is_empty(),
        }
    }
}

impl Api {
    pub(super) fn get(&self, path: &str) -> Result<Value> {
        self.get_with(path, &[])
    }

    fn get_with(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let (code, body) = http::get(self.port, path, query)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: HTTP {code}, not JSON: {body:.200}"))?;
        if code != 200 || v["status"] != "success" {
            bail!(
                "GET {path}: HTTP {code}: {} {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or(&body)
            );
        }
        Ok(v)
    }

    /// `/api/v1/query_exemplars`: the series with exemplars in [start, end] (Unix seconds).
    pub(super) fn query_exemplars(&self, expr: &str, start: f64, end: f64) -> Result<Vec<Value>> {
        let (s, e) = (format!("{start:.3}"), format!("{end:.3}"));
        let v = self.get_with(
            "/api/v1/query_exemplars",
            &[("query", expr), ("start", &s), ("end", &e)],
        )?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    pub(super) fn query(&self, expr: &str) -> Result<QueryResult> {
        let v = self.get_with("/api/v1/query", &[("query", expr)])?;
        Ok(QueryResult(v["data"].clone()))
    }
}

/// `promtool check metrics` on `text`: `None` when it parses (lint warnings about naming
/// conventions are not parse errors), else what promtool said.
pub(super) fn promtool_check_metrics(text: &str) -> Result<Option<String>> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (apt-get install prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code() == Some(1) || said.contains("error while linting")).then_some(said))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_is_shortened() {
        let src = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x\n        for: 2m\n      - record: r\n        expr: y\n";
        let (copy, n, fors) = test_copy(src, "alerts.yml");
        assert_eq!(n, 2);
        assert!(copy.contains(&format!(
            "        for: {TEST_FOR}  # e2e test copy; was 2m\n"
        )));
        assert!(!copy.contains("for: 2m\n"));
        assert_eq!(fors, vec!["A 2m".to_owned()]);
    }
}
