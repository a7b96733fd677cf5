//! End to end: a real Prometheus (Debian package, loopback) scrapes tsm-trace in the test VM
//! through a forwarded port; every PromQL expression of the dashboard and rules must return data.
//!
//! Flow:
//! 1. Boot the newest 7.x kernel with a virtio-net NIC (qemu user networking, guest port 9477
//!    forwarded to a free host port) and `tests/vm/scenarios/e2e.sh`, which starts `tsm-trace
//!    run --listen 0.0.0.0:9477` and waits for the host.
//! 2. Start `/usr/bin/prometheus` on 127.0.0.1 (temp dir: config, TSDB, TEST COPIES of
//!    `dashboards/alerts.yml` and `recording.yml` with every `for:` shortened to 5s), scraping
//!    the forwarded port every 1s as job `tsm-trace`, evaluating rules every 1s.
//! 3. A small control server on the host (the guest reaches it as 10.0.2.2) sequences the run:
//!    the guest starts the scenario once Prometheus has scraped it (`/ready`), reports the end
//!    (`/scenario-done`) and stays up until the host has queried everything (`/done`).
//! 4. Checks: the target is up, every rule loaded with health ok, `TsmLeakedBinding` is firing
//!    for both leaks, every dashboard panel / annotation / variable query and every rule
//!    expression returns a non-empty result via `/api/v1/query` (except the commented
//!    [`MAY_BE_EMPTY`] list), and every metric any of them reads has series.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::vm::{self, KernelSpec, RunOptions, qemu::VmHandle};

pub const SCRIPT: &str = "tests/vm/scenarios/e2e.sh";
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// Port tsm-trace listens on in the guest.
const GUEST_PORT: u16 = 9477;
/// `for:` of every rule in the test copies of the rule files.
const TEST_FOR: &str = "5s";

/// Grafana variables of the dashboard and what stands in for them (dashboards/README.md).
/// `$layer`: the stand-in on 7.x probes tsm_bind, so `tsm_core` has bind frames (the run
/// prints every layer that has data).
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__range", "1h"),
    ("$instance", ".+"),
    ("$job", "tsm-trace"),
    ("$layer", "tsm_core"),
    ("$device", ".*"),
    ("$vm", ".*"),
];

/// Queries that may legitimately return no data after this short, healthy run, and why.
/// Keys: a dashboard expression as written in the JSON (whitespace-normalised), or
/// `alert <name> severity=<severity>` for an alerting rule. Everything else must have data.
/// For these, too, every metric the expression reads must have series (checked separately),
/// so a typo in a metric name still fails.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "max by (instance, field) (tsm_trace_btf_field_resolved{instance=~\"$instance\"}) == 0",
        "panel lists BTF fields that did NOT resolve; on the test kernel every field resolves",
    ),
    (
        "alert TsmLeakedBinding severity=warning",
        "reason=\"sysfs_bound_without_owner\" needs a device bound in sysfs (tsm/bound); the \
         stand-in's devices have no tsm/bound file (tsm_trace_sysfs_devices{state=\"unknown\"})",
    ),
    (
        "sum by (op, result) (instance_op_result:tsm_trace_operations:rate5m{op=~\"connect|disconnect|guest_request\", instance=~\"$instance\"})",
        "the e2e VM (pc machine, stand-in module) registers no link TSM, so nothing connects; \
         the lifecycle VM suite (xtask/src/vm/suites/lifecycle/) checks these operations' metrics",
    ),
    (
        "histogram_quantile(0.99, sum by (layer, le) (instance_op_layer:tsm_trace_operation_duration_seconds_bucket:rate5m{op=\"connect\", instance=~\"$instance\"}))",
        "no connect in the e2e run (see above)",
    ),
    (
        "alert TsmConnectFailureRateHigh",
        "no connect in the e2e run (see above)",
    ),
    (
        "alert TsmConnectLatencyHigh",
        "no connect in the e2e run (see above)",
    ),
    (
        "alert TsmBindLatencyHigh",
        "needs a bind p99 > 10s; the scenario's slowest bind takes 15 ms",
    ),
    (
        "alert TsmProbesNotAttached",
        "every probe is attached, and none was detached during the run",
    ),
    (
        "alert TsmEventsLost",
        "no event is lost (ringbuf not full, no orphan returns) in a healthy run",
    ),
    (
        "alert TsmTraceDown",
        "`up == 0 or absent(up)`: the target is up for the whole run",
    ),
    (
        "alert TsmSysfsMismatch",
        "needs sysfs tsm/bound denying a binding; the stand-in's devices have no tsm/bound file",
    ),
    (
        "alert TsmSysfsReconcileFailing",
        "no sysfs read error, and reconcile runs every 2s (--reconcile-interval 2s), so \
         `increase(runs[30m]) == 0` is false",
    ),
];

#[derive(clap::Args, Debug, Clone, Default)]
pub struct E2eArgs {
    /// Kernel to boot (default: trixie-backports, the newest 7.x).
    #[arg(long, env = "TSM_VM_KERNEL")]
    pub kernel: Option<String>,
    /// Scenario rounds (one every 2s; the leaks happen in round 2).
    #[arg(long, default_value_t = 8)]
    pub rounds: u32,
    /// Keep Prometheus's temp dir (config, rule copies, TSDB, log) even if the test passes.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: &E2eArgs) -> Result<()> {
    let t0 = Instant::now();
    if !Path::new(PROMETHEUS).is_file() {
        bail!("{PROMETHEUS} not found: apt-get install prometheus (cargo xtask setup)");
    }
    let rounds = if args.rounds == 0 { 8 } else { args.rounds };
    let bin = crate::build::build_static()?;
    let spec = KernelSpec::parse(args.kernel.as_deref().unwrap_or("trixie-backports"))?;
    let kernel = vm::prepare(&[spec])?.remove(0);
    let script = std::fs::read_to_string(crate::util::root().join(SCRIPT))
        .with_context(|| format!("reading {SCRIPT}"))?;
    let prep = t0.elapsed();

    let ctl = CtlServer::start(&["scenario-done"])?;
    let mut vm = vm::qemu::spawn_in_vm(
        &kernel,
        &[(bin, "/bin/tsm-trace".into())],
        &script,
        &RunOptions {
            timeout: Duration::from_secs(600),
            extra_cmdline: format!("tsm_e2e.ctl={} tsm_e2e.rounds={rounds}", ctl.port),
            hostfwd: Some(GUEST_PORT),
            ..RunOptions::default()
        },
    )?;
    let target_port = vm.host_port.context("no forwarded port")?;
    println!(
        "e2e: booting Debian {} in qemu; tsm-trace :{GUEST_PORT} in the guest is 127.0.0.1:{target_port} here",
        kernel.version
    );

    let t1 = Instant::now();
    let mut report = Report::default();
    let host = host_side(&mut vm, &ctl, target_port, rounds, args.keep, &mut report);
    // Let the guest finish (it frames the daemon's logs), or stop it if the host side failed.
    ctl.open("done");
    if host.is_err() {
        let t = Instant::now();
        while vm.is_running() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
        }
        vm.kill();
    }
    let out = vm.wait();
    let vm_secs = t1.elapsed().as_secs_f64();
    let out = match (host, out) {
        (Err(e), out) => {
            let guest = match out {
                Ok(o) => format!("(guest logs in {})", o.run_dir.display()),
                Err(ve) => format!("guest: {ve:#}"),
            };
            return Err(e.context(guest));
        }
        (Ok(()), Err(e)) => return Err(e.context("e2e: the guest failed")),
        (Ok(()), Ok(o)) => o,
    };
    if let Ok(s) = out.section("story") {
        for l in s.text.lines() {
            println!("  guest {l}");
        }
    }
    check_steps(&out, &mut report);
    match vm::suites::leaks::check(&out) {
        Ok(n) => report.check(n > 0, || "no tsm-trace output was captured".into()),
        Err(e) => report.fail(format!("{e:#}")),
    }
    if out.run_rc != Some(0) {
        report.fail(format!(
            "guest scenario exited {:?} (logs in {})",
            out.run_rc,
            out.run_dir.display()
        ));
    }
    println!(
        "e2e: {} checks, {} allowed empty; prepare {:.1}s, VM + Prometheus {vm_secs:.1}s, total {:.1}s (guest logs {})",
        report.checks,
        report.allowed_empty,
        prep.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        out.run_dir.display()
    );
    if !report.failures.is_empty() {
        bail!(
            "e2e: {} of {} checks failed:\n  {}",
            report.failures.len(),
            report.checks,
            report.failures.join("\n  ")
        );
    }
    println!("e2e: ok");
    Ok(())
}

/// The stand-in's ground truth: every scenario step returned what the scenario meant it to.
fn check_steps(out: &vm::VmOutput, report: &mut Report) {
    let Ok(steps) = out.section("steps") else {
        report.fail(format!(
            "guest printed no steps (logs in {})",
            out.run_dir.display()
        ));
        return;
    };
    let mut n = 0;
    for line in steps.text.lines() {
        let kv = vm::parse_kv(line);
        let Some(name) = kv.get("step") else { continue };
        n += 1;
        let want = match name.rsplit('.').next().unwrap_or("") {
            "bind_ebusy" => -16,
            "bind_eio" => -5,
            "bind_efault" => -14,
            _ => 0,
        };
        let rc: Option<i32> = kv.get("rc").and_then(|r| r.parse().ok());
        report.check(rc == Some(want), || {
            format!("guest step {name}: rc {rc:?}, expected {want}: {line}")
        });
    }
    report.check(n > 0, || "guest ran no steps".to_owned());
}

#[derive(Default)]
struct Report {
    checks: usize,
    allowed_empty: usize,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    fn fail(&mut self, what: String) {
        self.check(false, || what);
    }
}

/// Everything that happens while the guest runs. Errors end the test early; failed checks go
/// to `report`.
fn host_side(
    vm: &mut VmHandle,
    ctl: &CtlServer,
    target_port: u16,
    rounds: u32,
    keep: bool,
    report: &mut Report,
) -> Result<()> {
    let root = crate::util::root();
    let prom = Prometheus::start(&root, target_port, keep)?;
    let api = Api { port: prom.port };
    let t = Instant::now();
    wait_for(vm, 30, "Prometheus to be ready", || {
        Ok(http_get(prom.port, "/-/ready").is_ok_and(|(c, _)| c == 200))
    })
    .with_context(|| prom.log_tail())?;

    // Scrapes must see the daemon's counters at 0 before the scenario starts.
    wait_for(vm, 240, "Prometheus to scrape tsm-trace in the VM", || {
        Ok(api.query("up{job=\"tsm-trace\"} == 1")?.has_data()
            && api.query("tsm_trace_build_info")?.has_data())
    })
    .with_context(|| prom.log_tail())?;
    println!(
        "e2e: Prometheus scrapes the guest (first scrape after {:.1}s); starting the scenario ({rounds} rounds, 2s apart)",
        t.elapsed().as_secs_f64()
    );
    // The live exposition at start, before any operation: promtool accepts it, and the
    // series the failure alerts select exist at 0 (so `increase()` counts the first failure).
    let (code, start_exposition) = http_get(target_port, "/metrics")?;
    report.check(code == 200, || format!("GET /metrics at start: {code}"));
    let lint = promtool_check_metrics(&start_exposition)?;
    report.check(lint.is_none(), || {
        format!("promtool check metrics on the live exposition at start: {lint:?}")
    });
    report.check(
        start_exposition.lines().any(|l| {
            l.starts_with("tsm_trace_operations_total{")
                && l.contains("result=\"error\"")
                && l.ends_with(" 0")
        }),
        || "the exposition at start has no error series at 0 of tsm_trace_operations_total".into(),
    );
    ctl.open("ready");
    wait_for(vm, 60 + 4 * rounds as u64, "the guest scenario", || {
        Ok(ctl.seen("scenario-done"))
    })
    .with_context(|| format!("gates the guest asked for: {:?}", ctl.seen_all()))?;
    println!(
        "e2e: scenario done after {:.1}s; waiting for TsmLeakedBinding to fire",
        t.elapsed().as_secs_f64()
    );

    // The alert: both leaks of round 2, firing (for: shortened to 5s in the test copy).
    let want = ["ioctl_failed_after_bind", "vdevice_teardown_without_unbind"];
    let firing = |api: &Api| -> Result<Vec<Value>> {
        let v = api.get("/api/v1/alerts")?;
        Ok(v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect())
    };
    let leak_alerts_firing = |alerts: &[Value]| {
        want.iter().all(|r| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == "TsmLeakedBinding"
                    && a["labels"]["severity"] == "critical"
                    && a["labels"]["reason"] == *r
            })
        })
    };
    let _ = wait_for(vm, 60, "TsmLeakedBinding to fire", || {
        Ok(leak_alerts_firing(&firing(&api)?))
    });
    let alerts = firing(&api)?;
    for a in &alerts {
        let l = &a["labels"];
        println!(
            "e2e: alert firing: {} severity={} {}",
            l["alertname"].as_str().unwrap_or("?"),
            l["severity"].as_str().unwrap_or("?"),
            ["device", "vm", "reason"]
                .iter()
                .filter_map(|k| l[*k].as_str().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    report.check(leak_alerts_firing(&alerts), || {
        format!("TsmLeakedBinding (critical) is not firing for both leaks {want:?}")
    });

    // The target and the rules.
    let targets = api.get("/api/v1/targets")?;
    let active = targets["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    report.check(active.len() == 1 && active[0]["health"] == "up", || {
        format!("scrape target not up: {active:?}")
    });
    let rules = api.get("/api/v1/rules")?;
    let mut queries = Vec::new();
    let mut loaded = 0;
    for g in rules["data"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            loaded += 1;
            let name = r["name"].as_str().unwrap_or("?");
            let labels = r["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!(" {k}={}", v.as_str().unwrap_or("?")))
                        .collect::<String>()
                })
                .unwrap_or_default();
            let key = if r["type"] == "alerting" {
                format!("alert {name}{labels}")
            } else {
                format!("record {name}{labels}")
            };
            report.check(r["health"] == "ok", || {
                format!("rule {key}: health {} {}", r["health"], r["lastError"])
            });
            queries.push(Query {
                what: format!("rule {key}"),
                key,
                expr: r["query"].as_str().unwrap_or_default().to_owned(),
                label: None,
            });
        }
    }
    let expected = prom.rule_count;
    report.check(loaded == expected, || {
        format!("Prometheus loaded {loaded} rules, the rule files have {expected}")
    });

    // The dashboard.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/tsm-trace.json"))
            .context("reading dashboards/tsm-trace.json")?,
    )
    .context("parsing dashboards/tsm-trace.json")?;
    queries.extend(dashboard_queries(&dash)?);

    evaluate(&api, &queries, report)?;
    println!(
        "e2e: {} queries evaluated ({} rules, {} from the dashboard)",
        queries.len(),
        loaded,
        queries.len() - loaded
    );
    if !report.failures.is_empty() {
        println!("e2e: Prometheus dir kept: {}", prom.dir.display());
        prom.keep_dir();
    }
    Ok(())
}

/// One PromQL query to check.
struct Query {
    /// Where it comes from (for messages).
    what: String,
    /// The [`MAY_BE_EMPTY`] key.
    key: String,
    /// PromQL, variables substituted.
    expr: String,
    /// For `label_values(SELECTOR, label)`: the label the results must carry.
    label: Option<String>,
}

/// `promtool check metrics` on `text`: `None` when it parses (lint warnings about naming
/// conventions are not parse errors), else what promtool said.
fn promtool_check_metrics(text: &str) -> Result<Option<String>> {
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

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, val) in VARIABLES {
        e = e.replace(var, val);
    }
    e
}

/// The allow-list reason for `q`, if any (alert keys match with or without their labels).
fn may_be_empty(q: &Query) -> Option<&'static str> {
    MAY_BE_EMPTY.iter().find_map(|(k, why)| {
        let hit = normalise(k) == normalise(&q.key)
            || (k.starts_with("alert ") && q.key.starts_with(&format!("{k} ")));
        hit.then_some(*why)
    })
}

/// Panel targets (rows included), annotation queries and `label_values` variable queries.
fn dashboard_queries(dash: &Value) -> Result<Vec<Query>> {
    fn panels(p: &Value, out: &mut Vec<Query>) {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(Query {
                    what: format!("panel {title:?} {}", t["refId"].as_str().unwrap_or("")),
                    key: normalise(e),
                    expr: substitute(e),
                    label: None,
                });
            }
        }
        for c in p["panels"].as_array().into_iter().flatten() {
            panels(c, out);
        }
    }
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        panels(p, &mut out);
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push(Query {
                what: format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                key: normalise(e),
                expr: substitute(e),
                label: None,
            });
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?");
        let def = v["definition"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        let Some((sel, label)) = def
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
        else {
            bail!(
                "variable ${name}: query {def:?} is not label_values(SELECTOR, label); teach xtask/src/e2e.rs about it"
            );
        };
        out.push(Query {
            what: format!("variable ${name} ({def})"),
            key: normalise(def),
            expr: substitute(sel.trim()),
            label: Some(label.trim().to_owned()),
        });
    }
    if out.is_empty() {
        bail!("no queries found in dashboards/tsm-trace.json");
    }
    Ok(out)
}

/// Run every query; then check that each metric any of them reads has series.
fn evaluate(api: &Api, queries: &[Query], report: &mut Report) -> Result<()> {
    let mut used = BTreeSet::new();
    let mut allowed_hits = BTreeSet::new();
    for q in queries {
        used.extend(metric_names(&q.expr));
        report.check(!q.expr.contains('$'), || {
            format!("{}: unsubstituted variable in {:?}", q.what, q.expr)
        });
        let r = match api.query(&q.expr) {
            Ok(r) => r,
            Err(e) => {
                report.fail(format!("{}: {e:#}\n    {}", q.what, q.expr));
                continue;
            }
        };
        let allowed = may_be_empty(q);
        if let Some(why) = allowed {
            allowed_hits.insert(
                MAY_BE_EMPTY
                    .iter()
                    .position(|(_, w)| *w == why)
                    .unwrap_or(0),
            );
        }
        match (r.has_data(), allowed) {
            (true, _) => report.check(true, String::new),
            (false, Some(why)) => {
                report.allowed_empty += 1;
                println!("e2e: empty (allowed: {why}): {}", q.what);
            }
            (false, None) => report.fail(format!("{}: no data\n    {}", q.what, q.expr)),
        }
        if let Some(label) = &q.label {
            let values: BTreeSet<String> = r
                .series()
                .iter()
                .filter_map(|s| s["metric"][label.as_str()].as_str().map(str::to_owned))
                .collect();
            println!("e2e: {} -> {values:?}", q.what);
            report.check(!values.is_empty(), || {
                format!("{}: no series carries label {label:?}", q.what)
            });
            let must = match label.as_str() {
                "job" => Some("tsm-trace"),
                "layer" => Some("tsm_core"),
                _ => None,
            };
            if let Some(m) = must {
                report.check(values.contains(m), || {
                    format!(
                        "{}: {m:?} (the value the test substitutes) not among {values:?}",
                        q.what
                    )
                });
            }
        }
    }
    for (i, (k, _)) in MAY_BE_EMPTY.iter().enumerate() {
        if !allowed_hits.contains(&i) {
            println!("e2e: note: allow-list entry {k:?} matches no query any more");
        }
    }
    for m in &used {
        let r = api.query(&format!("count({{__name__=\"{m}\"}})"))?;
        report.check(r.has_data(), || {
            format!("metric {m} (read by a dashboard or rule query) has no series")
        });
    }
    println!(
        "e2e: {} metrics read by the queries all checked for series",
        used.len()
    );
    Ok(())
}

/// Metric names in an expression: `tsm_trace_*`, recording rules (`...:tsm_trace_...:...`),
/// `up` and `process_*`.
fn metric_names(expr: &str) -> Vec<String> {
    // Drop string literals (label values) first.
    let mut plain = String::new();
    let mut in_str = false;
    for c in expr.chars() {
        if c == '"' {
            in_str = !in_str;
            plain.push(' ');
        } else if !in_str {
            plain.push(c);
        }
    }
    plain
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.contains("tsm_trace_") || t.starts_with("process_") || *t == "up")
        .map(str::to_owned)
        .collect()
}

/// Wait until `f` is true, `secs` at most; fail early if the VM stopped.
fn wait_for(
    vm: &mut VmHandle,
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f().unwrap_or(false) {
            return Ok(());
        }
        if !vm.is_running() {
            bail!("the VM stopped while waiting for {what}");
        }
        if Instant::now() > deadline {
            bail!("timed out after {secs}s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------- Prometheus

/// A Prometheus server on 127.0.0.1, killed (and its temp dir removed) on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
    keep: Arc<AtomicBool>,
    /// Rules in the rule files (`- alert:` and `- record:` entries).
    rule_count: usize,
}

impl Prometheus {
    fn start(root: &Path, target_port: u16, keep: bool) -> Result<Prometheus> {
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
            "# cargo xtask e2e (xtask/src/e2e.rs)\n\
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

    fn keep_dir(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    fn log_tail(&self) -> String {
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
struct Api {
    port: u16,
}

/// A `/api/v1/query` result.
struct QueryResult(Value);

impl QueryResult {
    fn series(&self) -> Vec<Value> {
        match &self.0["result"] {
            Value::Array(a)
                if self.0["resultType"] != "scalar" && self.0["resultType"] != "string" =>
            {
                a.clone()
            }
            _ => Vec::new(),
        }
    }

    fn has_data(&self) -> bool {
        match self.0["resultType"].as_str() {
            Some("scalar") | Some("string") => !self.0["result"].is_null(),
            _ => !self.series().is_empty(),
        }
    }
}

impl Api {
    fn get(&self, path: &str) -> Result<Value> {
        let (code, body) = http_get(self.port, path)?;
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

    fn query(&self, expr: &str) -> Result<QueryResult> {
        let v = self.get(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        Ok(QueryResult(v["data"].clone()))
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:port → (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: malformed HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

// ------------------------------------------------------------ control server

/// The host end of the guest's `gate` calls: `GET /<gate>` answers 200 once `open(gate)` was
/// called, 503 before; every requested gate is remembered (`seen`).
struct CtlServer {
    port: u16,
    state: Arc<Mutex<(BTreeSet<String>, BTreeSet<String>)>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CtlServer {
    fn start(open: &[&str]) -> Result<CtlServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the control server")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new((
            open.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
            BTreeSet::new(),
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = serve_gate(s, &st);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(CtlServer {
            port,
            state,
            stop,
            thread: Some(thread),
        })
    }

    fn open(&self, gate: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.0.insert(gate.to_owned());
        }
    }

    fn seen_all(&self) -> BTreeSet<String> {
        self.state.lock().map(|s| s.1.clone()).unwrap_or_default()
    }

    fn seen(&self, gate: &str) -> bool {
        self.state.lock().is_ok_and(|s| s.1.contains(gate))
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Gates = Mutex<(BTreeSet<String>, BTreeSet<String>)>;

fn serve_gate(mut s: TcpStream, state: &Gates) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let req = String::from_utf8_lossy(&buf);
    let gate = req
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let open = {
        let mut st = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        st.1.insert(gate.clone());
        st.0.contains(&gate)
    };
    let reply = if open {
        "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ngo\n"
    } else {
        "HTTP/1.0 503 Wait\r\nContent-Length: 5\r\n\r\nwait\n"
    };
    s.write_all(reply.as_bytes())?;
    Ok(())
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

    #[test]
    fn variables_and_names() {
        let e = substitute(
            "sum(rate(tsm_trace_x_total{instance=~\"$instance\", layer=\"$layer\"}[$__rate_interval])) / up{job=~\"$job\"}",
        );
        assert!(!e.contains('$'));
        assert!(e.contains("[1m]") && e.contains("\"tsm_core\""));
        assert_eq!(metric_names(&e), vec!["tsm_trace_x_total", "up"]);
        assert_eq!(
            metric_names("instance_op:tsm_trace_a:rate5m{op=\"tsm_trace_not\"}"),
            vec!["instance_op:tsm_trace_a:rate5m"]
        );
    }

    #[test]
    fn allow_list_keys() {
        let q = |key: &str| Query {
            what: String::new(),
            key: key.into(),
            expr: String::new(),
            label: None,
        };
        assert!(may_be_empty(&q("alert TsmTraceDown severity=warning")).is_some());
        assert!(may_be_empty(&q("alert TsmLeakedBinding severity=critical")).is_none());
        assert!(may_be_empty(&q("alert TsmLeakedBinding severity=warning")).is_some());
        assert!(may_be_empty(&q("alert TsmTraceDownX severity=warning")).is_none());
    }

    #[test]
    fn encoding() {
        assert_eq!(url_encode("a{b=\"c\"} > 0"), "a%7Bb%3D%22c%22%7D%20%3E%200");
    }
}
