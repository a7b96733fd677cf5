//! promtool rule tests generated from real exposition sequences: each scenario
//! (`scenarios.rs`) replays prefixes of a capture with the tsm-trace binary (`replay
//! --metrics`: the exporter's state after those events is one scrape), turns the scrapes
//! into `input_series` (`series.rs`) and states which alerts fire when. Written to
//! target/tmp/alert-tests/ (kept for inspection) and run with `promtool test rules`.
//!
//! The rules under test are dashboards/alerts.yml without its annotations (written as
//! JSON, which promtool reads as YAML): promtool compares annotations too, and their text is
//! the hand-written tests' concern (dashboards/tests/alerts_test.yml); expressions, `for`
//! and labels are the file's own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::capture::Capture;
use super::scenarios::{self, Daemon, Scenario, Seg};
use super::series::{self, Exposition};
use crate::util::{cargo, output, root, run};

/// `replay` judges a VM's bindings once its grace period has passed by the last event's
/// time, so a prefix ending with a VM exit would never report the leak ("leak_unconfirmed"),
/// while the daemon reports it 5 s later, long before the next scrape (a minute apart). With
/// no grace the exposition is the state at the next scrape. (An unbind within 5 s after its
/// VM's exit, in the same prefix, would count a leak in tsm_trace_leaks_detected_total, which
/// no alert reads, and clear it before the scrape.)
const REPLAY_ARGS: [&str; 2] = ["--grace", "0s"];

/// Prometheus' target labels on every scraped series.
const TARGET: [(&str, &str); 2] = [("job", "tsm-trace"), ("instance", "cvm-host-1")];

/// The alert rules of a rule file: (alert, severity) and the file without annotations.
pub struct Rules {
    pub alerts: Vec<(String, String)>,
    pub stripped: Value,
    /// Metric names the rules' expressions read.
    pub metrics: BTreeSet<String>,
}

pub fn load_rules(path: &Path) -> Result<Rules> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut doc: Value = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: YAML: {e}", path.display()))?;
    let mut alerts = Vec::new();
    let mut metrics = BTreeSet::new();
    let groups = doc
        .get_mut("groups")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{}: no groups", path.display()))?;
    for rule in groups
        .iter_mut()
        .filter_map(|g| g.get_mut("rules").and_then(Value::as_array_mut))
        .flatten()
    {
        let Some(name) = rule.get("alert").and_then(Value::as_str) else {
            continue;
        };
        let severity = rule
            .pointer("/labels/severity")
            .and_then(Value::as_str)
            .unwrap_or("");
        alerts.push((name.to_string(), severity.to_string()));
        let expr = rule.get("expr").and_then(Value::as_str).unwrap_or("");
        metrics.extend(
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.starts_with("tsm_trace_"))
                .map(str::to_string),
        );
        if let Some(r) = rule.as_object_mut() {
            r.remove("annotations");
        }
    }
    Ok(Rules {
        alerts,
        stripped: doc,
        metrics,
    })
}

/// Fails listing every alert rule no scenario fires, and every expectation naming a rule
/// that does not exist.
pub fn check_coverage(rules: &Rules, all: &[Scenario]) -> Result<()> {
    let fired: BTreeSet<(&str, &str)> = all
        .iter()
        .flat_map(|s| s.expect)
        .flat_map(|e| e.firing)
        .map(|a| (a.name, a.severity))
        .collect();
    let known: BTreeSet<(&str, &str)> = rules
        .alerts
        .iter()
        .map(|(a, s)| (a.as_str(), s.as_str()))
        .collect();
    let missing: Vec<String> = known
        .difference(&fired)
        .map(|(a, s)| format!("{a} (severity {s})"))
        .collect();
    let unknown: Vec<String> = fired
        .difference(&known)
        .map(|(a, s)| format!("{a} (severity {s})"))
        .collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "no generated alert test fires {} (add a scenario to xtask/src/promtool/scenarios.rs)",
            missing.join(", ")
        ));
    }
    if !unknown.is_empty() {
        problems.push(format!(
            "alert scenarios expect alerts dashboards/alerts.yml does not have: {}",
            unknown.join(", ")
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// Scrapes: `None` for a failed scrape, else the records `start..end` of the capture that
/// the daemon scraped has seen (`start` > 0 after a restart).
pub type Plan = Vec<Option<(usize, usize)>>;

/// The scrapes of a timeline (fails if it asks for more operations than the capture has).
pub fn plan(capture: &Capture, timeline: &[Seg]) -> Result<Plan> {
    let cuts = capture.cuts();
    let (mut cut, mut start) = (0, 0);
    let mut out = Vec::new();
    // The record after operation `cut`.
    let end_of = |cut: usize| -> Result<usize> {
        cuts.get(cut).copied().with_context(|| {
            format!(
                "{}: the timeline asks for operation {cut}; it has {}",
                capture.name,
                cuts.len() - 1
            )
        })
    };
    for seg in timeline {
        match *seg {
            Seg::Ops(n) => {
                for _ in 0..n {
                    cut += 1;
                    out.push(Some((start, end_of(cut)?)));
                }
            }
            Seg::Batch(n) => {
                cut += n;
                out.push(Some((start, end_of(cut)?)));
            }
            Seg::Rest => {
                while cut + 1 < cuts.len() {
                    cut += 1;
                    out.push(Some((start, cuts[cut])));
                }
            }
            Seg::Hold(n) => out.extend(std::iter::repeat_n(Some((start, cuts[cut])), n)),
            Seg::Down(n) => out.extend(std::iter::repeat_n(None, n)),
            Seg::Restart => start = cuts[cut],
        }
    }
    if out.first().is_none_or(Option::is_none) {
        bail!("{}: the timeline must start with a scrape", capture.name);
    }
    Ok(out)
}

/// A replay: the capture's name (with its derivation) and the records `start..end`.
type Key = (String, usize, usize);

/// Runs the replays not in `cache` (`jobs`: each a key and its records), a few at a time.
fn replay_all(
    bin: &Path,
    jobs: &[(Key, Capture)],
    metrics: &BTreeSet<String>,
    dir: &Path,
    cache: &mut HashMap<Key, Exposition>,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let keep = |n: &str| metrics.contains(n);
    let worker = || -> Result<Vec<(Key, Exposition)>> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((key, records)) = jobs.get(i) else {
                return Ok(out);
            };
            let file = dir.join(format!("replay-{i}.jsonl"));
            records.write(&file)?;
            let text = output(
                Command::new(bin)
                    .args(["replay", "--metrics", "--log-level", "off"])
                    .args(REPLAY_ARGS)
                    .arg(&file),
            )
            .with_context(|| format!("{}: replaying records {}..{}", key.0, key.1 + 1, key.2))?;
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            out.push((key.clone(), series::parse(&text, &keep)?));
        }
    };
    std::thread::scope(|sc| -> Result<()> {
        let handles: Vec<_> = (0..threads).map(|_| sc.spawn(worker)).collect();
        for h in handles {
            let done = h
                .join()
                .map_err(|_| anyhow::anyhow!("a replay thread panicked"))??;
            cache.extend(done);
        }
        Ok(())
    })
}

/// A scenario's capture (derived where it says so) and its scrape plan.
fn prepare(s: &Scenario) -> Result<(Capture, Plan)> {
    let base = Capture::load(&root().join(s.capture))?;
    let capture = s.derive.map_or_else(|| base.clone(), |d| d(&base));
    let plan = plan(&capture, s.timeline).with_context(|| s.name.to_string())?;
    Ok((capture, plan))
}

/// The scrapes of one scenario from the replays in `cache`, daemon values applied.
fn scrapes(
    s: &Scenario,
    capture: &Capture,
    plan: &[Option<(usize, usize)>],
    cache: &HashMap<Key, Exposition>,
    metrics: &BTreeSet<String>,
) -> Result<Vec<Option<Exposition>>> {
    let mut out: Vec<Option<Exposition>> = Vec::new();
    let mut last: Option<((usize, usize), &Exposition)> = None;
    for (k, scrape) in plan.iter().enumerate() {
        let Some((start, end)) = *scrape else {
            out.push(None);
            continue;
        };
        let e = &cache[&(capture.name.clone(), start, end)];
        // One process must never count less after more events: else the cut is not a
        // scrape sequence Prometheus could see.
        if let Some(((pstart, pend), prev)) = last
            && pstart == start
        {
            let down = series::decreases(prev, e);
            if !down.is_empty() {
                bail!(
                    "{}: counters went down from records ..{pend} to ..{end} (scrape {k}): {}",
                    s.name,
                    down.join("; ")
                );
            }
        }
        last = Some(((start, end), e));
        out.push(Some(apply_daemon(s, k, e.clone(), metrics)?));
    }
    Ok(out)
}

fn apply_daemon(
    s: &Scenario,
    k: usize,
    mut e: Exposition,
    metrics: &BTreeSet<String>,
) -> Result<Exposition> {
    for d in s.daemon {
        let (key, f, set) = match *d {
            Daemon::Set(key, f) => (key, f, true),
            Daemon::Add(key, f) => (key, f, false),
        };
        if !metrics.contains(series::name(key)) {
            bail!("{}: daemon value for {key}, which no alert reads", s.name);
        }
        match (set, e.contains_key(key)) {
            (true, false) => bail!(
                "{}: Daemon::Set({key}): replay does not export that series (scrape {k})",
                s.name
            ),
            (false, true) => bail!(
                "{}: Daemon::Add({key}): replay exports that series: use Daemon::Set",
                s.name
            ),
            _ => {}
        }
        if let Some(v) = f(k) {
            e.insert(key.to_string(), format!("{v}"));
        }
    }
    Ok(e)
}

/// Error series absent at the first scrape whose first value is 1.
fn fresh_errors(scrapes: &[Option<Exposition>]) -> Vec<String> {
    let first = scrapes.first().cloned().flatten().unwrap_or_default();
    let mut firsts: BTreeMap<&String, &String> = BTreeMap::new();
    for e in scrapes.iter().flatten() {
        for (k, v) in e {
            firsts.entry(k).or_insert(v);
        }
    }
    firsts
        .into_iter()
        .filter(|(k, v)| {
            series::name(k) == "tsm_trace_operations_total"
                && k.contains("result=\"error\"")
                && !first.contains_key(*k)
                && v.as_str() == "1"
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// One promtool test group: the scenario's input series and, at each checkpoint, every
/// alert: the expected ones with their labels, the others none.
fn test_group(s: &Scenario, rules: &Rules, scrapes: &[Option<Exposition>]) -> Result<Value> {
    let names: BTreeSet<&str> = rules.alerts.iter().map(|(a, _)| a.as_str()).collect();
    let mut checks = Vec::new();
    for e in s.expect {
        if e.at >= scrapes.len() {
            bail!(
                "{}: checkpoint at {}m, after the last scrape ({}m)",
                s.name,
                e.at,
                scrapes.len() - 1
            );
        }
        for name in &names {
            let exp: Vec<Value> = e
                .firing
                .iter()
                .filter(|a| a.name == *name)
                .map(|a| {
                    let mut labels =
                        BTreeMap::from([("severity", a.severity), ("instance", TARGET[1].1)]);
                    labels.extend(a.labels.iter().copied());
                    json!({ "exp_labels": labels })
                })
                .collect();
            checks.push(json!({
                "eval_time": format!("{}m", e.at),
                "alertname": name,
                "exp_alerts": exp,
            }));
        }
    }
    Ok(json!({
        "name": s.name,
        "interval": "1m",
        "input_series": series::input_series(scrapes, &TARGET),
        "alert_rule_test": checks,
    }))
}

/// The debug tsm-trace binary (built if needed; the unit tests have built it already).
fn binary() -> Result<PathBuf> {
    run(cargo().args(["build", "--package", "tsm-trace"]))?;
    Ok(root().join("target/debug/tsm-trace"))
}

/// Generates the tests for `all` into `dir` (emptied first) and runs promtool on them.
pub fn run_scenarios(all: &[Scenario], dir: &Path) -> Result<()> {
    let t = Instant::now();
    let rules = load_rules(&root().join("dashboards/alerts.yml"))?;
    check_coverage(&rules, all)?;
    let bin = binary()?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("alerts.json"),
        serde_json::to_string_pretty(&rules.stripped)?,
    )?;
    let built = Instant::now();
    let prepared = all.iter().map(prepare).collect::<Result<Vec<_>>>()?;
    let mut jobs: Vec<(Key, Capture)> = Vec::new();
    let mut queued = BTreeSet::new();
    for (capture, plan) in &prepared {
        for &(start, end) in plan.iter().flatten() {
            let key = (capture.name.clone(), start, end);
            if queued.insert(key.clone()) {
                jobs.push((key, capture.skip(start).take(end - start)));
            }
        }
    }
    let mut cache = HashMap::new();
    replay_all(&bin, &jobs, &rules.metrics, dir, &mut cache)?;
    let mut groups = Vec::new();
    for (s, (capture, plan)) in all.iter().zip(&prepared) {
        let scrapes = scrapes(s, capture, plan, &cache, &rules.metrics)?;
        let fresh = fresh_errors(&scrapes);
        if fresh.len() < s.fresh_errors {
            bail!(
                "{}: {} error series appear at 1 after being absent ({}), want at least {}",
                s.name,
                fresh.len(),
                fresh.join(", "),
                s.fresh_errors
            );
        }
        groups.push(test_group(s, &rules, &scrapes)?);
    }
    let replayed = Instant::now();
    promtool_tests(dir, groups)?;
    println!(
        "generated alert tests: {} scenarios ({} replays), every alert rule fired; build {:.1}s, replays {:.1}s, promtool {:.1}s",
        all.len(),
        jobs.len(),
        built.duration_since(t).as_secs_f64(),
        replayed.duration_since(built).as_secs_f64(),
        replayed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes the test groups into two files and runs promtool on both at once (its evaluation
/// is single-threaded; the machine has two cores).
fn promtool_tests(dir: &Path, groups: Vec<Value>) -> Result<()> {
    let mut files: Vec<Vec<Value>> = vec![Vec::new(), Vec::new()];
    for (i, g) in groups.into_iter().enumerate() {
        files[i % 2].push(g);
    }
    let mut children = Vec::new();
    for (i, tests) in files.into_iter().enumerate() {
        let file = dir.join(format!("alerts_test_{}.json", i + 1));
        let doc = json!({
            "rule_files": ["alerts.json"],
            "evaluation_interval": "1m",
            "tests": tests,
        });
        std::fs::write(&file, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let mut cmd = Command::new("promtool");
        cmd.current_dir(dir).args(["test", "rules"]).arg(&file);
        println!("+ {}", crate::util::show(&cmd));
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", crate::util::show(&cmd)))?;
        children.push((file, child));
    }
    let mut failed = Vec::new();
    for (file, child) in children {
        let out = child
            .wait_with_output()
            .with_context(|| format!("promtool test rules {}", file.display()))?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            failed.push(file.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "generated alert tests failed: promtool test rules {} (rules and tests in {})",
            failed.join(" "),
            dir.display()
        );
    }
    Ok(())
}

/// All scenarios, into target/tmp/alert-tests/.
pub fn run_all() -> Result<()> {
    run_scenarios(scenarios::ALL, &root().join("target/tmp/alert-tests"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        load_rules(&root().join("dashboards/alerts.yml")).unwrap()
    }

    #[test]
    fn every_alert_rule_is_fired_by_a_scenario() {
        check_coverage(&rules(), scenarios::ALL).unwrap();
    }

    #[test]
    fn an_alert_no_scenario_fires_is_named() {
        let mut r = rules();
        r.alerts.push(("TsmNew".into(), "critical".into()));
        let e = check_coverage(&r, scenarios::ALL).unwrap_err().to_string();
        assert!(e.contains("TsmNew (severity critical)"), "{e}");
        let e = check_coverage(&r, &scenarios::ALL[..1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("TsmTraceDown"), "{e}");
    }

    #[test]
    fn annotations_are_stripped_and_metrics_found() {
        let r = rules();
        assert!(!r.stripped.to_string().contains("annotations"));
        assert!(
            r.metrics
                .contains("tsm_trace_operation_duration_seconds_bucket")
        );
        assert!(r.metrics.contains("tsm_trace_leaked_binding_info"));
    }

    /// Timelines fit their captures and every checkpoint has data (no binary needed).
    #[test]
    fn timelines_and_checkpoints_fit() {
        for s in scenarios::ALL {
            let base = Capture::load(&root().join(s.capture)).unwrap();
            let c = s.derive.map_or_else(|| base.clone(), |d| d(&base));
            let p = plan(&c, s.timeline).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            for e in s.expect {
                assert!(e.at < p.len(), "{}: checkpoint {}m", s.name, e.at);
            }
        }
    }

    #[test]
    fn a_restart_starts_from_nothing() {
        let c = Capture::load(&root().join(scenarios::LATE_MODULE)).unwrap();
        let p = plan(
            &c,
            &[
                Seg::Hold(1),
                Seg::Ops(2),
                Seg::Down(1),
                Seg::Restart,
                Seg::Hold(1),
                Seg::Ops(1),
            ],
        )
        .unwrap();
        let cuts = c.cuts();
        assert_eq!(
            p,
            vec![
                Some((0, 0)),
                Some((0, cuts[1])),
                Some((0, cuts[2])),
                None,
                Some((cuts[2], cuts[2])),
                Some((cuts[2], cuts[3])),
            ]
        );
    }
}
