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
//! 4. The daemon also sends its spans (`--otlp-endpoint`) to an OTLP receiver on the host
//!    ([`otlp`]), checked against the stand-in's ground truth once the guest has stopped.
//! 5. The daemon serves OpenMetrics to Prometheus (its `Accept` asks for it), with exemplars
//!    on the latency histogram buckets; Prometheus runs with `--enable-feature=exemplar-storage`,
//!    and every exemplar `/api/v1/query_exemplars` returns must be a span the OTLP receiver got
//!    for that series' operation, layer and result ([`exemplars`]).
//! 6. Checks: the target is up, every rule loaded with health ok, `TsmLeakedBinding` is firing
//!    for both leaks, every dashboard panel / annotation / variable query and every rule
//!    expression returns a non-empty result via `/api/v1/query` (except the commented
//!    [`queries::MAY_BE_EMPTY`] list), and every metric any of them reads has series.
//!
//! The pieces: [`prometheus`] (the server, its API, promtool), [`queries`] (what is
//! evaluated, the allow-list), [`ctl`] (the control server), [`http`] (GET on 127.0.0.1),
//! [`report`] (the checks).

mod ctl;
mod exemplars;
mod http;
mod otlp;
mod prometheus;
mod queries;
mod report;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::vm::{self, KernelSpec, RunOptions, qemu::VmHandle};
use ctl::CtlServer;
use prometheus::{Api, PROMETHEUS, Prometheus, promtool_check_metrics};
use queries::{dashboard_queries, evaluate, rule_queries};
use report::Report;

pub const SCRIPT: &str = "tests/vm/scenarios/e2e.sh";
/// Port tsm-trace listens on in the guest.
const GUEST_PORT: u16 = 9477;

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
    let bin = crate::build::build_shipped()?;
    let spec = KernelSpec::parse(args.kernel.as_deref().unwrap_or("trixie-backports"))?;
    let kernel = vm::prepare(&[spec])?.remove(0);
    let script = std::fs::read_to_string(crate::util::root().join(SCRIPT))
        .with_context(|| format!("reading {SCRIPT}"))?;
    let prep = t0.elapsed();

    let ctl = CtlServer::start(&["scenario-done"])?;
    let receiver = otlp::Receiver::start()?;
    let mut vm = vm::qemu::spawn_in_vm(
        &kernel,
        &[(bin, "/bin/tsm-trace".into())],
        &script,
        &RunOptions {
            timeout: Duration::from_secs(600),
            extra_cmdline: format!(
                "tsm_e2e.ctl={} tsm_e2e.rounds={rounds} tsm_e2e.otlp={}",
                ctl.port, receiver.port
            ),
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
    let mut stored = Vec::new();
    let host = host_side(
        &mut vm,
        &ctl,
        target_port,
        rounds,
        args.keep,
        &mut report,
        &mut stored,
    );
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
    // The daemon flushed its last spans when the guest stopped it.
    let (spans, errors) = receiver.spans();
    otlp::check(&out, &spans, &errors, &mut report);
    exemplars::check(&stored, &spans, &mut report);
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

/// Everything that happens while the guest runs. Errors end the test early; failed checks go
/// to `report`.
fn host_side(
    vm: &mut VmHandle,
    ctl: &CtlServer,
    target_port: u16,
    rounds: u32,
    keep: bool,
    report: &mut Report,
    stored: &mut Vec<exemplars::Stored>,
) -> Result<()> {
    let root = crate::util::root();
    let prom = Prometheus::start(&root, target_port, keep)?;
    let api = Api { port: prom.port };
    let t = Instant::now();
    wait_for_scrapes(vm, &prom, &api)?;
    println!(
        "e2e: Prometheus scrapes the guest (first scrape after {:.1}s); starting the scenario ({rounds} rounds, 2s apart)",
        t.elapsed().as_secs_f64()
    );
    check_exposition_at_start(target_port, report)?;
    ctl.open("ready");
    wait_for(vm, 60 + 4 * rounds as u64, "the guest scenario", || {
        Ok(ctl.seen("scenario-done"))
    })
    .with_context(|| format!("gates the guest asked for: {:?}", ctl.seen_all()))?;
    println!(
        "e2e: scenario done after {:.1}s; waiting for TsmLeakedBinding to fire",
        t.elapsed().as_secs_f64()
    );
    check_leak_alerts(vm, &api, report)?;
    exemplars::check_exposition(target_port, report)?;
    // A wide window: exemplar times are the guest's wall clock.
    *stored = exemplars::query(&api, exemplars::now() - 3600.0)?;

    // The target and the rules.
    let targets = api.get("/api/v1/targets")?;
    let active = targets["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    report.check(active.len() == 1 && active[0]["health"] == "up", || {
        format!("scrape target not up: {active:?}")
    });
    let (mut queries, loaded) = rule_queries(&api, prom.rule_count, report)?;

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

/// Prometheus is ready and has scraped the daemon's counters (at 0, before the scenario).
fn wait_for_scrapes(vm: &mut VmHandle, prom: &Prometheus, api: &Api) -> Result<()> {
    wait_for(vm, 30, "Prometheus to be ready", || {
        Ok(http::get(prom.port, "/-/ready", &[]).is_ok_and(|(c, _)| c == 200))
    })
    .with_context(|| prom.log_tail())?;

    // Scrapes must see the daemon's counters at 0 before the scenario starts.
    wait_for(vm, 240, "Prometheus to scrape tsm-trace in the VM", || {
        Ok(api.query("up{job=\"tsm-trace\"} == 1")?.has_data()
            && api.query("tsm_trace_build_info")?.has_data())
    })
    .with_context(|| prom.log_tail())?;
    Ok(())
}

/// The live exposition at start, before any operation: promtool accepts it, and the series
/// the failure alerts select exist at 0 (so `increase()` counts the first failure).
fn check_exposition_at_start(target_port: u16, report: &mut Report) -> Result<()> {
    let (code, start_exposition) = http::get(target_port, "/metrics", &[])?;
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
    Ok(())
}

/// The alert: both leaks of round 2, firing (for: shortened to 5s in the test copy).
fn check_leak_alerts(vm: &mut VmHandle, api: &Api, report: &mut Report) -> Result<()> {
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
        Ok(leak_alerts_firing(&firing(api)?))
    });
    let alerts = firing(api)?;
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
    Ok(())
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
